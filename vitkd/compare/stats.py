"""Statistics for ``vitkd compare``: is a distillation row better than its baseline, and by how much?

Every function here is pure (numbers in, numbers out; no files, no global random state) and depends
only on numpy and scipy. Accuracies are in percent and differences ("delta", Δ) in percentage points,
always *row minus baseline*.

The views, from the one the report leans on to the descriptive ones:

* :func:`paired_t` -- the paired t-test on per-seed top-1 (row and baseline trained with the same
  seeds). It answers: over training seeds, on *this* test set, is the mean difference non-zero? It is
  the primary test; its p-values go into :func:`holm` within a family of rows.
* :func:`paired_bootstrap` -- a two-level bootstrap over seeds and test images, from per-image
  correctness. It also counts the test set as a sample of images, so its interval is usually wider
  than the t-interval. A second view, not a replacement (see its docstring for where it is valid).
* :func:`mcnemar` -- which images a method fixes and which it breaks against its baseline, with
  McNemar's exact test on the pooled (seed, image) pairs. Descriptive: the pairs are not independent.
* :func:`holm` -- Holm's step-down adjustment of a family of p-values.
* :func:`critical_t`, :func:`paired_t_power`, :func:`seeds_for_power` -- planning: how many seeds
  does a family of m comparisons need to detect a given Δ?
* :func:`compare_rows` -- the first three at once, flattened by ``.to_row()`` into one CSV row.

The comparison functions never raise for lack of data (fewer than 2 seeds, zero spread, untestable
rows in a family); they return ``nan`` or the documented 0/1 values instead. Malformed input
(mismatched shapes, non-finite accuracies, non-binary correctness, no cells at all) raises
``ValueError``, and so do planning questions without an answer (fewer than 2 seeds, ``sd <= 0``,
``delta == 0``).

Requires numpy >= 1.24 and scipy >= 1.11 (nothing newer is used).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional

import numpy as np
from scipy import stats as _st

__all__ = [
    "PairedT", "paired_t",
    "Bootstrap", "paired_bootstrap",
    "McNemar", "mcnemar",
    "Holm", "holm",
    "critical_t", "paired_t_power", "seeds_for_power", "smallest_delta",
    "RowComparison", "compare_rows",
]

NAN = float("nan")


# --------------------------------------------------------------------------------------------------
# 1. paired t-test on per-seed top-1
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairedT:
    """Paired t-test of a row against its baseline over seeds (Δ = row - baseline, in points).

    ``ci_low``/``ci_high`` is the two-sided ``1 - alpha`` t-interval for the mean Δ, ``p`` the
    two-sided p-value of H0: mean Δ = 0, ``df = n - 1``.
    """
    n: int
    mean_delta: float
    sd_delta: float
    t: float
    df: int
    ci_low: float
    ci_high: float
    p: float
    alpha: float
    test: str = "paired_t"

    def to_row(self) -> Dict[str, Any]:
        """Flat dict for a CSV row: ``test, n, mean_delta, sd_delta, t, df, ci_low, ci_high, p_raw, alpha``."""
        return {"test": self.test, "n": self.n, "mean_delta": self.mean_delta, "sd_delta": self.sd_delta,
                "t": self.t, "df": self.df, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "p_raw": self.p, "alpha": self.alpha}


def paired_t(row_top1, base_top1, alpha: float = 0.05) -> PairedT:
    """Paired t-test of per-seed top-1 of a row against its baseline.

    ``row_top1[k]`` and ``base_top1[k]`` must come from the same seed (same seeds, same order). With
    ``n >= 2`` and non-zero spread of the differences the result equals
    ``scipy.stats.ttest_rel(row_top1, base_top1)`` (statistic, df, p-value and
    ``confidence_interval(1 - alpha)``).

    Degenerate cases (no exception, no warning):

    * ``n == 0``: everything ``nan`` (``df = 0``).
    * ``n == 1``: ``mean_delta`` is the single difference; ``sd_delta``, ``t``, interval and ``p`` are
      ``nan`` and ``df = 0`` -- one seed cannot be tested.
    * ``n >= 2`` and every difference equal (spread below ``1e-12`` times the largest accuracy, i.e.
      floating-point noise only): ``sd_delta = 0`` and the interval is ``[Δ, Δ]``. If that common
      difference is 0 (the row matches its baseline on every seed) then ``t = 0`` and ``p = 1``. If it
      is not 0 then ``t = ±inf`` and ``p = nan``: the t-test has no variance estimate and the row is
      *untestable* by it (scipy would report ``p = 0``, which would let a handful of identical runs --
      often a sign that the seed did not reach the run -- pass any correction). Use the bootstrap or
      McNemar views for such a row.
    """
    r, b = _paired_1d(row_top1, base_top1, "row_top1", "base_top1")
    _check_alpha(alpha)
    n = int(r.size)
    if n == 0:
        return PairedT(0, NAN, NAN, NAN, 0, NAN, NAN, NAN, alpha)
    d = r - b
    mean = float(d.mean())
    if n == 1:
        return PairedT(1, mean, NAN, NAN, 0, NAN, NAN, NAN, alpha)
    df = n - 1
    scale = max(1.0, float(np.abs(r).max()), float(np.abs(b).max()))
    tol = 1e-12 * scale
    if float(np.ptp(d)) <= tol:                       # zero spread: the t statistic is x / 0 or 0 / 0
        if abs(mean) <= tol:
            return PairedT(n, mean, 0.0, 0.0, df, mean, mean, 1.0, alpha)
        return PairedT(n, mean, 0.0, math.copysign(math.inf, mean), df, mean, mean, NAN, alpha)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    t = mean / se
    p = float(min(1.0, 2.0 * _st.t.sf(abs(t), df)))
    q = float(_st.t.isf(alpha / 2.0, df))
    return PairedT(n, mean, sd, float(t), df, mean - q * se, mean + q * se, p, alpha)


# --------------------------------------------------------------------------------------------------
# 2. two-level paired bootstrap over seeds and test images
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bootstrap:
    """Two-level paired bootstrap of Δ of mean accuracy (points) over seeds and test images.

    ``delta`` is the observed Δ (mean over seeds and images); ``boot_mean``/``boot_sd`` the mean and
    SD of the ``n_boot`` bootstrap replicates; ``ci_low``/``ci_high`` the percentile interval at
    ``1 - alpha``; ``p`` the two-sided bootstrap p-value (see :func:`paired_bootstrap`); ``images``
    the image-resampling scheme (``"shared"`` or ``"per_seed"``).
    """
    delta: float
    boot_mean: float
    boot_sd: float
    ci_low: float
    ci_high: float
    p: float
    n_seeds: int
    n_images: int
    n_boot: int
    alpha: float
    images: str

    @property
    def test(self) -> str:
        return f"bootstrap_{self.images}"

    def to_row(self) -> Dict[str, Any]:
        """Flat dict for a CSV row: ``test, mean_delta, boot_mean, boot_sd, ci_low, ci_high, p_raw, n_seeds,
        n_images, n_boot, alpha``."""
        return {"test": self.test, "mean_delta": self.delta, "boot_mean": self.boot_mean,
                "boot_sd": self.boot_sd, "ci_low": self.ci_low, "ci_high": self.ci_high, "p_raw": self.p,
                "n_seeds": self.n_seeds, "n_images": self.n_images, "n_boot": self.n_boot, "alpha": self.alpha}


_IMAGE_SCHEMES = ("shared", "per_seed")
_CHUNK_CELLS = 1 << 21          # bootstrap replicates are built in blocks of about this many floats


def paired_bootstrap(row_correct, base_correct, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                     images: str = "shared") -> Bootstrap:
    """Two-level paired bootstrap of the accuracy difference, from per-image correctness.

    ``row_correct`` and ``base_correct`` are boolean (or 0/1) arrays ``[seeds, images]`` (a 1-D array
    is one seed): entry ``[k, i]`` says whether the run with the k-th seed classified test image i
    correctly. Both arrays must use the same seeds in the same order and the same images in the same
    order. The statistic is Δ = mean accuracy of the row minus that of the baseline, in points.

    One bootstrap replicate: draw ``seeds`` seed indices with replacement; draw ``images`` image
    indices with replacement; Δ* is the mean over the drawn seeds of the row-minus-baseline accuracy on
    the drawn images. Row and baseline always get the *same* seed and image indices (paired), so only
    the per-cell difference matters. ``images`` chooses how image indices are drawn:

    * ``"shared"`` (default): one image draw per replicate, used for every drawn seed (the "pigeonhole"
      bootstrap for crossed data). This matches the design of ``vitkd compare``, where every seed is
      evaluated on the *same* test images (seeds and images are crossed, not nested), so image effects
      that persist across seeds (images a method fixes or breaks on every seed) stay in the variance.
    * ``"per_seed"``: a fresh image draw for every drawn seed (the textbook nested two-stage scheme).
      Right only if each seed were tested on its own, independent set of images. On a shared test set
      where a method systematically fixes particular images it divides that image-to-image variance
      by the number of seeds, and the interval is too narrow.

    What the interval is for: the population Δ, averaged over training seeds *and* over images drawn
    like the test set. (The t-interval of :func:`paired_t` is for the mean over seeds on this one test
    set; it is narrower and does not cover the population Δ when image effects matter.)

    Where it is valid. Write a cell's difference as seed effect + image effect + cell noise (a seed
    getting an image right by luck). Simulated coverage of the nominal 95% interval, 1000 or 600
    runs, n_boot 500-2000:

    ===================================================  =============  ===============
    regime (300 images)                                   ``"shared"``   ``"per_seed"``
    ===================================================  =============  ===============
    persistent image effects + seed effects, 3-8 seeds    95.5-96.2%     75-76% (8 seeds)
    cell noise only (no seed or image effects), 3-8        ~100%          98-99%
    seed effects dominate, no image effects, 8 seeds       92%            90%
    seed effects dominate, no image effects, 5 / 3 seeds   91% / 86%      89% / 83%
    ===================================================  =============  ===============

    So: ``"shared"`` is honest (within 95 ± 3%, the tested regime: 8 seeds x 300 images, persistent
    image effects plus per-seed random effects) when persistent image effects are at least comparable
    to the other sources; conservative when per-cell noise dominates (it counts that noise about three
    times: once through the seed means, once through the per-image means, once in their product); too
    narrow when seed-to-seed variation dominates and there are few seeds, because resampling ``S`` seeds
    shrinks their variance by ``(S-1)/S`` and has normal-like tails. With 3-5 seeds and a large
    seed-to-seed spread, trust the paired t-interval (its t quantiles account for few seeds).

    The p-value inverts the percentile interval: with ``k_lt``, ``k_0``, ``k_gt`` the numbers of
    replicates below, at and above 0, and ``k = min(k_lt, k_gt) + k_0 / 2`` (ties count half on each
    side), ``p = min(1, 2 * (k + 1) / (n_boot + 1))``. So ``p <= alpha`` roughly when the ``1 - alpha``
    percentile interval excludes 0; ``p`` is never 0 (its floor is ``2 / (n_boot + 1)``). It is a
    second view: put :func:`paired_t`'s p-value, not this one, through :func:`holm`.

    Implementation: vectorised numpy with ``np.random.default_rng(seed)``; results depend only on the
    inputs, ``n_boot``, ``seed`` and ``images``. For ``"per_seed"`` the image draw of one seed enters only
    through how many drawn images the row alone gets right (``+1``) and the baseline alone gets right
    (``-1``), which are multinomial counts; they are drawn as two binomials, exactly the same
    distribution as drawing the indices, in ``O(n_boot * seeds)`` time.
    """
    r, b = _correct_2d(row_correct, "row_correct"), _correct_2d(base_correct, "base_correct")
    if r.shape != b.shape:
        raise ValueError(f"row_correct and base_correct differ in shape: {r.shape} vs {b.shape}")
    S, N = r.shape
    if S == 0 or N == 0:
        raise ValueError(f"need at least one seed and one image, got shape {r.shape}")
    if images not in _IMAGE_SCHEMES:
        raise ValueError(f"images must be one of {_IMAGE_SCHEMES}, got {images!r}")
    n_boot = int(n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    _check_alpha(alpha)
    d = r.astype(np.int8) - b.astype(np.int8)          # per cell: +1 row only, -1 baseline only, 0 same
    delta = 100.0 * float(d.mean())
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, S, size=(n_boot, S))
    if images == "shared":
        reps = _boot_shared(rng, d, seed_idx)
    else:
        reps = _boot_per_seed(rng, d, seed_idx)
    reps *= 100.0
    lo, hi = np.percentile(reps, [50.0 * alpha, 100.0 - 50.0 * alpha])
    ties = float(np.count_nonzero(reps == 0.0))
    k_le = float(np.count_nonzero(reps < 0.0)) + 0.5 * ties
    k_ge = float(np.count_nonzero(reps > 0.0)) + 0.5 * ties
    p = min(1.0, 2.0 * (min(k_le, k_ge) + 1.0) / (n_boot + 1.0))
    return Bootstrap(delta, float(reps.mean()), float(reps.std(ddof=1)) if n_boot > 1 else NAN,
                     float(lo), float(hi), p, S, N, n_boot, alpha, images)


def _boot_shared(rng: np.random.Generator, d: np.ndarray, seed_idx: np.ndarray) -> np.ndarray:
    """Replicates with one image draw per replicate shared by all drawn seeds (fractions, not points)."""
    B, S = seed_idx.shape
    N = d.shape[1]
    # how often each seed was drawn in each replicate: [B, S]
    flat = (seed_idx + S * np.arange(B)[:, None]).ravel()
    counts = np.bincount(flat, minlength=B * S).reshape(B, S).astype(np.float64)
    df = d.astype(np.float64)
    out = np.empty(B)
    chunk = max(1, min(B, _CHUNK_CELLS // N))
    for start in range(0, B, chunk):
        stop = min(B, start + chunk)
        # [chunk, N]: per image, the sum of Δ over the drawn seeds. einsum rather than a BLAS matmul:
        # the product is thin (S rows), and threaded BLAS on a busy machine is slower, not faster.
        per_image = np.einsum("bs,sn->bn", counts[start:stop], df)
        img_idx = rng.integers(0, N, size=(stop - start, N))
        img_idx += N * np.arange(stop - start)[:, None]   # flat indices into per_image
        out[start:stop] = per_image.ravel()[img_idx].mean(axis=1) / S
    return out


def _boot_per_seed(rng: np.random.Generator, d: np.ndarray, seed_idx: np.ndarray) -> np.ndarray:
    """Replicates with an independent image draw for every drawn seed (fractions, not points)."""
    N = d.shape[1]
    k_plus = np.count_nonzero(d > 0, axis=1)              # per seed: row right, baseline wrong
    k_minus = np.count_nonzero(d < 0, axis=1)             # per seed: baseline right, row wrong
    kp, km = k_plus[seed_idx], k_minus[seed_idx]
    # N draws with replacement from one seed's images -> multinomial counts of (+1, -1, 0)
    n_plus = rng.binomial(N, kp / N)
    rest = N - kp
    p_minus = np.divide(km, rest, out=np.zeros(km.shape), where=rest > 0)
    n_minus = rng.binomial(N - n_plus, np.clip(p_minus, 0.0, 1.0))
    return ((n_plus - n_minus) / N).mean(axis=1)


# --------------------------------------------------------------------------------------------------
# 3. per-image agreement: McNemar on pooled (seed, image) pairs
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class McNemar:
    """Discordant pairs of a row against its baseline, pooled over seeds x images.

    ``b``: pairs the row gets right and the baseline wrong (fixed); ``c``: the reverse (broken);
    ``n_pairs``: all (seed, image) pairs. ``p_exact`` is the exact two-sided binomial p-value of
    H0: b and c are equally likely; ``chi2``/``p_chi2`` the continuity-corrected chi-square version;
    ``fixed_share = b / n_pairs`` and ``broken_share = c / n_pairs`` (per seed, the share of test
    images the method fixes / breaks, averaged over seeds).
    """
    b: int
    c: int
    n_pairs: int
    p_exact: float
    chi2: float
    p_chi2: float
    fixed_share: float
    broken_share: float
    test: str = "mcnemar_exact"

    def to_row(self) -> Dict[str, Any]:
        """Flat dict for a CSV row: ``test, b, c, n_pairs, p_raw (exact), chi2, p_chi2, fixed_share, broken_share``."""
        return {"test": self.test, "b": self.b, "c": self.c, "n_pairs": self.n_pairs, "p_raw": self.p_exact,
                "chi2": self.chi2, "p_chi2": self.p_chi2, "fixed_share": self.fixed_share,
                "broken_share": self.broken_share}


def mcnemar(row_correct, base_correct) -> McNemar:
    """McNemar's test and fix/break shares of a row against its baseline, pooled over seeds x images.

    Inputs as for :func:`paired_bootstrap` (boolean ``[seeds, images]``, or ``[images]``). Every (seed,
    image) cell is one pair. The exact p-value is ``scipy.stats.binomtest(b, b + c, 0.5)`` (two-sided),
    the chi-square is ``max(|b - c| - 1, 0)^2 / (b + c)`` on 1 df. With no discordant pairs (``b + c == 0``)
    both p-values are 1 and chi2 is 0.

    Caveat: pooling treats all ``seeds x images`` pairs as independent, but one image appears once per
    seed and all images of one seed share its training run. With more than one seed the p-values are
    therefore too small as a test of "the method is better"; read them as a description of how
    lopsided the disagreements are, and use :func:`paired_t` / :func:`paired_bootstrap` for inference.
    With one seed it is the classical McNemar test on that run.
    """
    r, b_ = _correct_2d(row_correct, "row_correct"), _correct_2d(base_correct, "base_correct")
    if r.shape != b_.shape:
        raise ValueError(f"row_correct and base_correct differ in shape: {r.shape} vs {b_.shape}")
    n_pairs = int(r.size)
    if n_pairs == 0:
        raise ValueError("need at least one (seed, image) pair")
    b = int(np.count_nonzero(r & ~b_))
    c = int(np.count_nonzero(~r & b_))
    if b + c == 0:
        p_exact, chi2, p_chi2 = 1.0, 0.0, 1.0
    else:
        p_exact = float(min(1.0, _st.binomtest(b, b + c, 0.5).pvalue))
        chi2 = max(abs(b - c) - 1, 0) ** 2 / (b + c)
        p_chi2 = float(_st.chi2.sf(chi2, 1))
    return McNemar(b, c, n_pairs, p_exact, float(chi2), p_chi2, b / n_pairs, c / n_pairs)


# --------------------------------------------------------------------------------------------------
# 4. Holm correction within a family
# --------------------------------------------------------------------------------------------------

class Holm(NamedTuple):
    """Holm-adjusted p-values (``nan`` where the raw p-value was ``nan``) and reject decisions."""
    p_adjusted: np.ndarray
    reject: np.ndarray


def holm(p_values, alpha: float = 0.05) -> Holm:
    """Holm's step-down correction of one family of raw p-values (family-wise error rate ``alpha``).

    Sort the m testable p-values ascending, ``p_(1) <= ... <= p_(m)``. The adjusted values are
    ``p~_(j) = min(1, max_{i <= j} (m - i + 1) * p_(i))`` -- monotone in the order of the raw values and
    capped at 1 -- and ``H_(j)`` is rejected iff ``p~_(j) <= alpha``, the same decisions as the step-down
    rule "reject while ``p_(j) <= alpha / (m - j + 1)``, stop at the first failure".

    ``nan`` marks an untestable row (e.g. one seed): it is left out of the family (it does not count
    in m), its adjusted value is ``nan`` and it is never rejected. Results are in the input order.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {p.shape}")
    _check_alpha(alpha)
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0.0) | (p[ok] > 1.0)):
        raise ValueError(f"p-values must lie in [0, 1] (or be nan), got {p[ok].tolist()}")
    adjusted = np.full(p.shape, np.nan)
    reject = np.zeros(p.shape, dtype=bool)
    idx = np.flatnonzero(ok)
    m = idx.size
    if m:
        order = idx[np.argsort(p[idx], kind="stable")]
        steps = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
        adjusted[order] = steps
        reject[order] = steps <= alpha
    return Holm(adjusted, reject)


# --------------------------------------------------------------------------------------------------
# 5. planning: critical |t| and seeds needed for a given power
# --------------------------------------------------------------------------------------------------

def critical_t(n_seeds: int, family_size: int = 1, alpha: float = 0.05) -> float:
    """The |t| a paired t-test with ``n_seeds`` seeds must exceed at Holm's strictest threshold.

    Two-sided test at level ``alpha / family_size`` (the threshold Holm applies to the smallest p-value
    of a family of ``family_size``; later steps are looser), ``df = n_seeds - 1``:
    ``t.isf(alpha / (2 * family_size), n_seeds - 1)``. E.g. 5 seeds, 21 rows, alpha 0.05: about 6.85.
    Needs ``n_seeds >= 2``.
    """
    n, m = _check_n_m(n_seeds, family_size)
    _check_alpha(alpha)
    return float(_st.t.isf(alpha / (2.0 * m), n - 1))


def paired_t_power(n_seeds: int, sd: float, delta: float, family_size: int = 1, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha / family_size`` with ``n_seeds`` seeds.

    ``sd`` is the SD of the per-seed differences (points), ``delta`` the true mean difference (points).
    Under the alternative the t statistic is noncentral t with ``df = n - 1`` and noncentrality
    ``delta * sqrt(n) / sd``; power = P(|T| > :func:`critical_t`). Both signs of the difference count.
    """
    n, m = _check_n_m(n_seeds, family_size)
    _check_alpha(alpha)
    sd = _check_sd(sd)
    tc = critical_t(n, m, alpha)
    nc = float(delta) * math.sqrt(n) / sd
    df = n - 1
    with np.errstate(divide="ignore"):     # scipy 1.11's boost nct warns spuriously at small df (values are right)
        tails = _st.nct.sf(tc, df, nc) + _st.nct.cdf(-tc, df, nc)
    return float(min(1.0, tails))


def seeds_for_power(sd: float, delta: float, family_size: int = 1, alpha: float = 0.05, power: float = 0.8,
                    max_seeds: int = 100_000) -> int:
    """Smallest number of seeds whose paired t-test at ``alpha / family_size`` reaches ``power``.

    ``sd`` is the SD of per-seed differences from a pilot, ``delta`` the smallest difference worth
    detecting (both in points; only ``|delta| / sd`` matters). Uses :func:`paired_t_power` (noncentral
    t, exact for normal per-seed differences). The Holm threshold ``alpha / m`` is the worst case; rows
    that are not the family's smallest p-value face a looser one, so this n is conservative for them.

    The pilot SD is itself uncertain (from 3 pilot seeds its 95% interval spans about 0.5x to 6x); plan
    with a pessimistic SD. Raises ``ValueError`` if ``max_seeds`` seeds are not enough (or ``delta == 0``).
    """
    sd = _check_sd(sd)
    _check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    if not math.isfinite(delta) or delta == 0.0:
        raise ValueError(f"delta must be finite and non-zero, got {delta}")
    _, m = _check_n_m(2, family_size)

    def enough(n: int) -> bool:
        return paired_t_power(n, sd, delta, m, alpha) >= power

    # power grows with n: double until enough, then bisect on (lo, hi]
    lo, hi = 1, 2
    while not enough(hi):
        if hi >= max_seeds:
            raise ValueError(f"more than max_seeds={max_seeds} seeds needed for power {power} "
                             f"(|delta| / sd = {abs(delta) / sd:.3g}, family size {m}, alpha {alpha})")
        lo, hi = hi, min(2 * hi, max_seeds)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi


def smallest_delta(n_seeds: int, sd: float, family_size: int = 1, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest |difference| (points) that ``n_seeds`` seeds resolve: the one at which the paired t-test at
    ``alpha / family_size`` reaches ``power`` (:func:`paired_t_power`, increasing in |delta|), by bisection to
    1e-6 of ``sd``. The inverse of :func:`seeds_for_power` in delta."""
    n, m = _check_n_m(n_seeds, family_size)
    sd = _check_sd(sd)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    lo, hi = 0.0, sd
    while paired_t_power(n, sd, hi, m, alpha) < power:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-6 * sd:
        mid = 0.5 * (lo + hi)
        if paired_t_power(n, sd, mid, m, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


# --------------------------------------------------------------------------------------------------
# 6. one row against its baseline, flattened for a CSV
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RowComparison:
    """All views of one row against its baseline; ``bootstrap``/``mcnemar`` need per-image correctness."""
    paired: PairedT
    bootstrap: Optional[Bootstrap] = None
    mcnemar: Optional[McNemar] = None

    def to_row(self) -> Dict[str, Any]:
        """One flat dict: the paired t-test's fields unprefixed (``test, n, mean_delta, sd_delta, t, df,
        ci_low, ci_high, p_raw, alpha``), then ``boot_*`` and ``mcnemar_*`` fields when available
        (``boot_ci_low``, ``boot_p_raw``, ``mcnemar_b``, ``mcnemar_fixed_share``, ...)."""
        out = self.paired.to_row()
        if self.bootstrap is not None:
            out.update({f"boot_{k}": v for k, v in self.bootstrap.to_row().items() if k != "test"})
            out["boot_images"] = self.bootstrap.images
        if self.mcnemar is not None:
            out.update({f"mcnemar_{k}": v for k, v in self.mcnemar.to_row().items() if k != "test"})
        return out


def compare_rows(row_top1, base_top1, *, row_correct=None, base_correct=None, alpha: float = 0.05,
                 n_boot: int = 2000, seed: int = 0, images: str = "shared") -> RowComparison:
    """Compare one row with its baseline: :func:`paired_t` on per-seed top-1 and, when per-image
    correctness ``[seeds, images]`` of both is given (same seeds in the same order as the top-1 lists),
    :func:`paired_bootstrap` and :func:`mcnemar` too. ``.to_row()`` gives the CSV fields; collect
    ``p_raw`` over a family and pass it to :func:`holm`."""
    paired = paired_t(row_top1, base_top1, alpha)
    if (row_correct is None) != (base_correct is None):
        raise ValueError("give both row_correct and base_correct, or neither")
    if row_correct is None:
        return RowComparison(paired)
    rc, bc = _correct_2d(row_correct, "row_correct"), _correct_2d(base_correct, "base_correct")
    if rc.shape[0] != paired.n:
        raise ValueError(f"per-image correctness has {rc.shape[0]} seeds but top-1 has {paired.n}")
    boot = paired_bootstrap(rc, bc, n_boot=n_boot, alpha=alpha, seed=seed, images=images)
    return RowComparison(paired, boot, mcnemar(rc, bc))


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------

def _paired_1d(x, y, xname: str, yname: str):
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"{xname} and {yname} must be one-dimensional (one value per seed), "
                         f"got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"{xname} and {yname} need one value per seed for the same seeds, "
                         f"got {a.size} and {b.size} values")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"{xname} and {yname} must be finite (drop missing seeds from both first)")
    return a, b


def _correct_2d(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name} must be [seeds, images] (or [images] for one seed), got shape {a.shape}")
    if a.dtype != np.bool_:
        if a.size and not np.all((a == 0) | (a == 1)):
            raise ValueError(f"{name} must be boolean or 0/1 correctness")
        a = a.astype(bool)
    return a


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def _check_n_m(n_seeds: int, family_size: int):
    n, m = int(n_seeds), int(family_size)
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 seeds, got {n_seeds}")
    if m < 1:
        raise ValueError(f"family_size must be >= 1, got {family_size}")
    return n, m


def _check_sd(sd: float) -> float:
    sd = float(sd)
    if not (math.isfinite(sd) and sd > 0.0):
        raise ValueError(f"sd of per-seed differences must be positive and finite, got {sd}")
    return sd
