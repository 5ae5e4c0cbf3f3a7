"""vitkd.compare.stats: paired t-test, two-level bootstrap, McNemar, Holm, seed-count planning.

Every random number here comes from a seeded numpy Generator, so the file is deterministic."""
import math
import warnings

import numpy as np
import pytest
from scipy import stats as st

from vitkd.compare.stats import (Bootstrap, McNemar, PairedT, RowComparison, compare_rows, critical_t, holm,
                                 mcnemar, paired_bootstrap, paired_t, paired_t_power, seeds_for_power)


# ----------------------------------------------------------------------------------------------
# 1. paired t-test
# ----------------------------------------------------------------------------------------------

def _ci_by_hand(d, alpha):
    n = len(d)
    se = np.std(d, ddof=1) / math.sqrt(n)
    q = st.t.ppf(1 - alpha / 2, n - 1)
    return np.mean(d) - q * se, np.mean(d) + q * se


@pytest.mark.parametrize("n", [2, 3, 5, 10])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_paired_t_equals_scipy_ttest_rel(n, alpha):
    rng = np.random.default_rng(100 * n + int(alpha * 100))
    base = 90 + rng.normal(0, 1, n)
    row = base + 0.4 + rng.normal(0, 0.5, n)
    res = paired_t(row, base, alpha=alpha)
    ref = st.ttest_rel(row, base)
    assert res.n == n and res.df == n - 1 == int(ref.df)
    assert res.t == pytest.approx(float(ref.statistic), rel=1e-12)
    assert res.p == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-15)
    assert res.mean_delta == pytest.approx(np.mean(row - base), rel=1e-12)
    assert res.sd_delta == pytest.approx(np.std(row - base, ddof=1), rel=1e-12)
    if hasattr(ref, "confidence_interval"):           # scipy >= 1.11 has it for ttest_rel
        lo, hi = ref.confidence_interval(confidence_level=1 - alpha)
    else:
        lo, hi = _ci_by_hand(row - base, alpha)
    assert (res.ci_low, res.ci_high) == (pytest.approx(float(lo), rel=1e-10), pytest.approx(float(hi), rel=1e-10))
    assert (res.ci_low, res.ci_high) == (pytest.approx(_ci_by_hand(row - base, alpha)[0], rel=1e-10),
                                         pytest.approx(_ci_by_hand(row - base, alpha)[1], rel=1e-10))


def test_paired_t_known_numbers():
    # Δ = [1, 2, 3]: mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3) = 3.4641, df 2,
    # p = 2 * P(T_2 > 3.4641) = 1 - 3.4641 / sqrt(2 + 12) = 0.074180 (closed form for 2 df),
    # 95% interval 2 -+ 4.302653 / sqrt(3) = [-0.484138, 4.484138]
    res = paired_t([91.0, 92.0, 93.0], [90.0, 90.0, 90.0])
    assert res.t == pytest.approx(2 * math.sqrt(3))
    assert res.p == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14))
    assert res.p == pytest.approx(0.074180, abs=1e-6)
    assert res.ci_low == pytest.approx(-0.484138, abs=1e-6)
    assert res.ci_high == pytest.approx(4.484138, abs=1e-6)


def test_paired_t_degenerate_cases_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = paired_t([], [])
        assert empty.n == 0 and math.isnan(empty.mean_delta) and math.isnan(empty.p)
        one = paired_t([91.0], [90.5])
        assert one.n == 1 and one.df == 0 and one.mean_delta == pytest.approx(0.5)
        assert all(math.isnan(x) for x in (one.sd_delta, one.t, one.ci_low, one.ci_high, one.p))
        same = paired_t([90.1, 90.2, 90.3], [90.1, 90.2, 90.3])           # row == baseline on every seed
        assert (same.t, same.p, same.sd_delta, same.ci_low, same.ci_high) == (0.0, 1.0, 0.0, 0.0, 0.0)
        # a constant shift of 10 points; 90.1 - 80.1 and 90.2 - 80.2 differ by float noise only
        shift = paired_t([90.1, 90.2, 90.3], [80.1, 80.2, 80.3])
        assert shift.sd_delta == 0.0 and shift.t == math.inf and math.isnan(shift.p)
        assert shift.ci_low == shift.ci_high == pytest.approx(10.0)
        down = paired_t([80.0, 80.0], [81.0, 81.0])
        assert down.t == -math.inf and math.isnan(down.p)


def test_paired_t_rejects_malformed_input():
    with pytest.raises(ValueError, match="same seeds"):
        paired_t([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        paired_t([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="one-dimensional"):
        paired_t([[1.0, 2.0]], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="alpha"):
        paired_t([1.0, 2.0], [1.0, 3.0], alpha=1.5)


# ----------------------------------------------------------------------------------------------
# 2. two-level paired bootstrap
# ----------------------------------------------------------------------------------------------

# A crossed seeds x images generative model with a known population Δ. Every image belongs to a type;
# a type fixes the probabilities that the row and the baseline get that image right, on every seed
# (image effects persist across seeds, as when a method systematically fixes certain images). Each
# seed adds its own random effect, u_s ~ U(-w, w) to the row's probabilities and v_s ~ U(-w, w) to the
# baseline's. Given (image, seed), row and baseline are independent Bernoulli draws. The probabilities
# stay inside [0, 1] for w <= 0.03, so the population Δ (over images and seeds) is exactly
#   100 * sum_type share * (p_row - p_base) = 100 * (0.10 * 0.8 - 0.08 * 0.8) = 1.6 points.
TYPES = {  # name: (share of images, P(row right), P(baseline right))
    "easy": (0.72, 0.97, 0.97),
    "hard": (0.10, 0.50, 0.50),
    "fixable": (0.10, 0.90, 0.10),
    "breakable": (0.08, 0.10, 0.90),
}
TRUE_DELTA = 1.6


def _draw(rng, seeds, images, w, types=TYPES):
    share = np.array([v[0] for v in types.values()])
    p_row = np.array([v[1] for v in types.values()])
    p_base = np.array([v[2] for v in types.values()])
    kind = rng.choice(len(share), size=images, p=share)
    u = rng.uniform(-w, w, size=(seeds, 1))
    v = rng.uniform(-w, w, size=(seeds, 1))
    row = rng.random((seeds, images)) < p_row[kind] + u
    base = rng.random((seeds, images)) < p_base[kind] + v
    return row, base


def test_true_delta_of_the_generative_model():
    assert 100 * sum(s * (a - b) for s, a, b in TYPES.values()) == pytest.approx(TRUE_DELTA)
    assert all(0.03 <= p <= 0.97 for _, a, b in TYPES.values() for p in (a, b))   # no clipping at w=0.03


def _coverage(sims, seeds, images, w, n_boot, scheme, types=TYPES, true_delta=TRUE_DELTA):
    rng = np.random.default_rng(20240611)
    hits = 0
    for k in range(sims):
        row, base = _draw(rng, seeds, images, w, types)
        res = paired_bootstrap(row, base, n_boot=n_boot, seed=k, images=scheme)
        hits += res.ci_low <= true_delta <= res.ci_high
    return hits / sims


def test_bootstrap_shared_images_covers_true_delta():
    # 1000 seeded simulations, 8 seeds x 300 images, persistent image effects, seed effects w = 0.03.
    # n_boot = 500 instead of 2000 keeps this under ~10 s: the 2.5% / 97.5% percentiles then rest on
    # ~12 replicates per tail, whose Monte-Carlo jitter moves coverage by well under 1 point here
    # (this exact design: 96.0% with n_boot = 500, 96.2% with n_boot = 2000, same 1000 data sets).
    # The binomial SE of a coverage estimate from 1000 runs is 0.7 points, so 95 +- 3 is a > 4 SE band.
    cov = _coverage(sims=1000, seeds=8, images=300, w=0.03, n_boot=500, scheme="shared")
    assert 0.92 <= cov <= 0.98, cov


def test_bootstrap_per_seed_images_covers_when_images_do_not_persist():
    # The nested ("per_seed") scheme is right when a seed's images carry no effect shared with other
    # seeds: one image type, P(row right) = 0.85, P(baseline right) = 0.83, so Δ = 2 points, and a
    # seed effect up to w = 0.05 (cheap: the per-seed scheme costs O(n_boot * seeds)). This design:
    # 93.9% with n_boot = 500, 94.3% with n_boot = 2000.
    iid = {"all": (1.0, 0.85, 0.83)}
    cov = _coverage(sims=1000, seeds=8, images=300, w=0.05, n_boot=500, scheme="per_seed", types=iid,
                    true_delta=2.0)
    assert 0.92 <= cov <= 0.98, cov


def test_bootstrap_per_seed_images_is_too_narrow_when_image_effects_persist():
    # Why "shared" is the default: on one test set shared by all seeds, the nested scheme divides the
    # image-to-image variance by the number of seeds (this design: 75-76% for a nominal 95%).
    cov = _coverage(sims=400, seeds=8, images=300, w=0.03, n_boot=500, scheme="per_seed")
    assert cov < 0.88, cov


def _literal_shared(d, n_boot, seed):
    # the definition, one replicate at a time, drawing the same random numbers as the implementation
    # (all seed indices first, then the image indices; one block since n_boot * N is small)
    S, N = d.shape
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, S, size=(n_boot, S))
    img_idx = rng.integers(0, N, size=(n_boot, N))
    return np.array([100 * d[seed_idx[b]][:, img_idx[b]].mean() for b in range(n_boot)])


def test_bootstrap_shared_matches_its_definition():
    rng = np.random.default_rng(3)
    row, base = _draw(rng, 4, 50, 0.03)
    d = row.astype(int) - base.astype(int)
    reps = _literal_shared(d, 300, seed=11)
    res = paired_bootstrap(row, base, n_boot=300, seed=11)
    assert res.delta == pytest.approx(100 * d.mean())
    assert res.boot_mean == pytest.approx(reps.mean(), rel=1e-12)
    assert res.boot_sd == pytest.approx(reps.std(ddof=1), rel=1e-12)
    assert res.ci_low == pytest.approx(np.percentile(reps, 2.5), rel=1e-12)
    assert res.ci_high == pytest.approx(np.percentile(reps, 97.5), rel=1e-12)


def test_bootstrap_per_seed_shortcut_has_the_distribution_of_index_resampling():
    # the implementation draws multinomial counts instead of image indices; compare it with literal
    # index resampling (each drawn seed gets its own image indices) on the same data
    rng = np.random.default_rng(5)
    row, base = _draw(rng, 5, 80, 0.03)
    d = row.astype(int) - base.astype(int)
    S, N = d.shape
    B = 4000
    lit_rng = np.random.default_rng(99)
    sidx = lit_rng.integers(0, S, size=(B, S))
    iidx = lit_rng.integers(0, N, size=(B, S, N))
    literal = 100 * d[sidx[:, :, None], iidx].mean(axis=(1, 2))
    res = paired_bootstrap(row, base, n_boot=B, seed=7, images="per_seed")
    # means agree within a few Monte-Carlo SEs; SDs within 5% (SE of an SD from 4000 draws ~1.1%)
    assert abs(res.boot_mean - literal.mean()) < 4 * literal.std() / math.sqrt(B)
    assert res.boot_sd == pytest.approx(literal.std(ddof=1), rel=0.05)


def test_bootstrap_is_seeded_and_handles_edge_cases():
    rng = np.random.default_rng(8)
    row, base = _draw(rng, 3, 120, 0.03)
    a = paired_bootstrap(row, base, n_boot=200, seed=1)
    assert a == paired_bootstrap(row, base, n_boot=200, seed=1)
    assert a != paired_bootstrap(row, base, n_boot=200, seed=2)
    assert isinstance(a, Bootstrap) and (a.n_seeds, a.n_images, a.n_boot) == (3, 120, 200)
    # identical predictions: every replicate is 0, interval [0, 0], p = 1
    same = paired_bootstrap(row, row, n_boot=200)
    assert (same.delta, same.ci_low, same.ci_high, same.p) == (0.0, 0.0, 0.0, 1.0)
    # the row is right exactly where the baseline is wrong: every replicate > 0, p at its floor
    flip = np.zeros((4, 40), dtype=bool)
    flip[:, :30] = True
    better = paired_bootstrap(np.ones_like(flip), flip, n_boot=199)
    assert better.delta == pytest.approx(25.0) and better.ci_low > 0
    assert better.p == pytest.approx(2 / 200)
    # one seed (1-D input) and 0/1 integers are accepted
    one = paired_bootstrap(row[0].astype(int), base[0].astype(int), n_boot=200, images="per_seed")
    assert one.n_seeds == 1 and one.n_images == 120
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(row, base[:, :10])
    with pytest.raises(ValueError, match="0/1"):
        paired_bootstrap(row * 2.0, base)
    with pytest.raises(ValueError, match="images"):
        paired_bootstrap(row, base, images="nested")


def test_bootstrap_p_value_agrees_with_the_interval():
    rng = np.random.default_rng(21)
    for _ in range(20):
        row, base = _draw(rng, 6, 200, 0.03)
        res = paired_bootstrap(row, base, n_boot=999, seed=3)
        if res.ci_low > 0 or res.ci_high < 0:
            assert res.p <= 0.05 + 2 / 1000
        else:
            assert res.p >= 0.05 - 2 / 1000


# ----------------------------------------------------------------------------------------------
# 3. McNemar / fix and break shares
# ----------------------------------------------------------------------------------------------

def test_mcnemar_hand_count():
    # 2 seeds x 6 images; 1 = correct
    row = np.array([[1, 1, 1, 0, 1, 0],
                    [1, 1, 0, 1, 1, 1]], dtype=bool)
    base = np.array([[1, 0, 0, 1, 1, 0],
                     [0, 0, 0, 0, 1, 1]], dtype=bool)
    # cell by cell (row, base):
    #   seed 0: (1,1) (1,0)b (1,0)b (0,1)c (1,1) (0,0)   -> b = 2, c = 1
    #   seed 1: (1,0)b (1,0)b (0,0) (1,0)b (1,1) (1,1)   -> b = 3, c = 0
    # b = 5, c = 1, 12 pairs. Exact two-sided: 2 * P(Bin(6, 1/2) <= 1) = 2 * (1 + 6) / 64 = 14 / 64.
    # Chi-square with continuity correction: (|5 - 1| - 1)^2 / 6 = 9 / 6 = 1.5, p = erfc(sqrt(1.5 / 2)).
    res = mcnemar(row, base)
    assert isinstance(res, McNemar)
    assert (res.b, res.c, res.n_pairs) == (5, 1, 12)
    assert res.p_exact == pytest.approx(14 / 64)
    assert res.chi2 == pytest.approx(1.5)
    assert res.p_chi2 == pytest.approx(math.erfc(math.sqrt(0.75)))
    assert res.fixed_share == pytest.approx(5 / 12) and res.broken_share == pytest.approx(1 / 12)
    assert res.to_row()["p_raw"] == res.p_exact
    # swapping row and baseline swaps b and c; the p-values are symmetric
    swapped = mcnemar(base, row)
    assert (swapped.b, swapped.c, swapped.p_exact) == (1, 5, res.p_exact)


def test_mcnemar_without_discordant_pairs_and_balanced():
    r = np.array([[True, False, True]])
    none = mcnemar(r, r)
    assert (none.b, none.c, none.p_exact, none.chi2, none.p_chi2) == (0, 0, 1.0, 0.0, 1.0)
    # b = c = 1: exact p = 1, corrected chi-square max(|0| - 1, 0)^2 / 2 = 0
    even = mcnemar([1, 0, 1], [0, 1, 1])
    assert (even.b, even.c, even.p_exact, even.chi2, even.p_chi2) == (1, 1, 1.0, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# 4. Holm
# ----------------------------------------------------------------------------------------------

def test_holm_hand_worked_four_hypotheses():
    # raw p: H1 0.010, H2 0.040, H3 0.030, H4 0.005; m = 4, alpha = 0.05
    # sorted: H4 0.005, H1 0.010, H3 0.030, H2 0.040
    #   step 1: 4 * 0.005 = 0.020                 -> adjusted 0.020  (0.005 <= 0.05/4 = 0.0125: reject)
    #   step 2: 3 * 0.010 = 0.030                 -> adjusted 0.030  (0.010 <= 0.05/3 = 0.0167: reject)
    #   step 3: 2 * 0.030 = 0.060                 -> adjusted 0.060  (0.030 >  0.05/2 = 0.025: stop)
    #   step 4: 1 * 0.040 = 0.040 < 0.060 so max  -> adjusted 0.060  (not rejected although 0.04 <= 0.05/1)
    res = holm([0.010, 0.040, 0.030, 0.005], alpha=0.05)
    np.testing.assert_allclose(res.p_adjusted, [0.030, 0.060, 0.060, 0.020])
    assert res.reject.tolist() == [True, False, False, True]


def test_holm_nan_cap_ties_and_empty():
    # nan rows are untestable: out of the family (m = 4 as above), adjusted nan, never rejected
    res = holm([0.010, float("nan"), 0.040, 0.030, 0.005])
    np.testing.assert_allclose(res.p_adjusted, [0.030, np.nan, 0.060, 0.060, 0.020])
    assert res.reject.tolist() == [True, False, False, False, True]
    # monotone: 3*0.3 = 0.9; 2*0.4 = 0.8 -> max 0.9; 1*0.6 = 0.6 -> max 0.9
    np.testing.assert_allclose(holm([0.4, 0.6, 0.3]).p_adjusted, [0.9, 0.9, 0.9])
    # capped: 2*0.6 = 1.2 -> 1; 1*0.7 -> max 1.2 -> 1
    np.testing.assert_allclose(holm([0.6, 0.7]).p_adjusted, [1.0, 1.0])
    tied = holm([0.02, 0.02, 0.02])          # 3 * 0.02 = 0.06 for all
    np.testing.assert_allclose(tied.p_adjusted, [0.06, 0.06, 0.06])
    assert not tied.reject.any()
    assert holm([0.01]).p_adjusted.tolist() == [0.01]
    empty = holm([])
    assert empty.p_adjusted.size == 0 and empty.reject.size == 0
    all_nan = holm([float("nan")] * 2)
    assert np.isnan(all_nan.p_adjusted).all() and not all_nan.reject.any()
    with pytest.raises(ValueError, match="0, 1"):
        holm([0.5, 1.2])


def test_holm_matches_the_step_down_rule_on_random_families():
    rng = np.random.default_rng(4)
    for _ in range(200):
        m = int(rng.integers(1, 12))
        p = rng.uniform(0, 0.1, m) ** rng.uniform(0.5, 2)
        res = holm(p, alpha=0.05)
        order = np.argsort(p, kind="stable")
        expect = np.zeros(m, dtype=bool)
        for j, i in enumerate(order):         # reject while p_(j) <= alpha / (m - j), stop at the first failure
            if p[i] > 0.05 / (m - j):
                break
            expect[i] = True
        assert res.reject.tolist() == expect.tolist()
        assert np.all(res.p_adjusted >= p) and np.all(res.p_adjusted <= 1)
        assert np.all(np.diff(res.p_adjusted[order]) >= 0)       # monotone in the order of the raw p


# ----------------------------------------------------------------------------------------------
# 5. planning
# ----------------------------------------------------------------------------------------------

def test_critical_t():
    # 5 seeds (df 4), 21 rows, alpha 0.05: two-sided at 0.05 / 21, i.e. t_{4}^{-1}(1 - 0.05 / 42)
    assert critical_t(5, 21, 0.05) == pytest.approx(6.847, abs=1e-3)
    assert critical_t(10) == pytest.approx(2.262157, abs=1e-6)                 # the textbook t_{9, .975}
    assert critical_t(3, 1, 0.05) == pytest.approx(4.302653, abs=1e-6)
    assert critical_t(3, 21) > critical_t(5, 21) > critical_t(10, 21) > critical_t(10, 1)
    with pytest.raises(ValueError, match="2 seeds"):
        critical_t(1, 21)


def test_seeds_for_power_known_value():
    # paired / one-sample t-test, effect size dz = delta / sd = 0.5, alpha 0.05 two-sided, power 0.8:
    # the standard answer (e.g. G*Power) is n = 34 (actual power 0.808; n = 33 gives 0.795)
    assert seeds_for_power(sd=2.0, delta=1.0) == 34
    assert paired_t_power(34, 2.0, 1.0) == pytest.approx(0.8078, abs=1e-4)
    assert paired_t_power(33, 2.0, 1.0) == pytest.approx(0.7954, abs=1e-4)
    assert seeds_for_power(sd=2.0, delta=-1.0) == 34                           # sign does not matter
    # no effect: the power is the size of the test, alpha / m
    assert paired_t_power(6, 1.0, 0.0, family_size=5) == pytest.approx(0.01, rel=1e-9)


def test_seeds_for_power_with_a_family_by_monte_carlo():
    # sd of per-seed differences 0.6 points, target 1 point, 21 rows: Holm's worst-case threshold 0.05/21
    sd, delta, m = 0.6, 1.0, 21
    n = seeds_for_power(sd, delta, family_size=m)
    assert paired_t_power(n, sd, delta, m) >= 0.8 > paired_t_power(n - 1, sd, delta, m)
    rng = np.random.default_rng(12)
    sims = 20000
    for k in (n - 1, n):
        d = rng.normal(delta, sd, size=(sims, k))
        t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(k))
        mc = np.mean(np.abs(t) > critical_t(k, m))
        # binomial SE at power ~0.8 from 20000 runs is ~0.003
        assert mc == pytest.approx(paired_t_power(k, sd, delta, m), abs=0.012)


def test_seeds_for_power_errors():
    with pytest.raises(ValueError, match="non-zero"):
        seeds_for_power(1.0, 0.0)
    with pytest.raises(ValueError, match="positive"):
        seeds_for_power(0.0, 1.0)
    with pytest.raises(ValueError, match="max_seeds"):
        seeds_for_power(10.0, 0.01, max_seeds=100)


# ----------------------------------------------------------------------------------------------
# 6. compare_rows
# ----------------------------------------------------------------------------------------------

def test_compare_rows_flat_row():
    rng = np.random.default_rng(30)
    row_c, base_c = _draw(rng, 3, 100, 0.03)
    row_top1, base_top1 = 100 * row_c.mean(axis=1), 100 * base_c.mean(axis=1)
    only_t = compare_rows(row_top1, base_top1)
    assert isinstance(only_t, RowComparison) and only_t.bootstrap is None and only_t.mcnemar is None
    flat_t = only_t.to_row()
    assert flat_t["test"] == "paired_t" and flat_t["p_raw"] == only_t.paired.p
    assert set(flat_t) == {"test", "n", "mean_delta", "sd_delta", "t", "df", "ci_low", "ci_high", "p_raw", "alpha"}

    full = compare_rows(row_top1, base_top1, row_correct=row_c, base_correct=base_c, n_boot=300, seed=4)
    assert isinstance(full.paired, PairedT)
    flat = full.to_row()
    assert set(flat_t) < set(flat)
    assert flat["boot_p_raw"] == full.bootstrap.p and flat["boot_ci_low"] == full.bootstrap.ci_low
    assert flat["boot_images"] == "shared" and flat["boot_n_boot"] == 300
    assert flat["mcnemar_b"] == full.mcnemar.b and flat["mcnemar_p_raw"] == full.mcnemar.p_exact
    # the bootstrap's observed Δ is the mean of the per-seed top-1 differences
    assert flat["boot_mean_delta"] == pytest.approx(flat["mean_delta"])
    assert all(isinstance(v, (int, float, str)) for v in flat.values())
    with pytest.raises(ValueError, match="both"):
        compare_rows(row_top1, base_top1, row_correct=row_c)
    with pytest.raises(ValueError, match="seeds"):
        compare_rows(row_top1[:2], base_top1[:2], row_correct=row_c, base_correct=base_c)


def test_smallest_delta_is_the_inverse_of_the_power_in_delta():
    from vitkd.compare.stats import smallest_delta
    for n, sd, m in ((3, 0.5, 1), (5, 1.2, 7), (10, 0.3, 21)):
        d = smallest_delta(n, sd, m)
        assert paired_t_power(n, sd, d, m) == pytest.approx(0.8, abs=1e-4)
        assert paired_t_power(n, sd, 0.99 * d, m) < 0.8 <= paired_t_power(n, sd, 1.001 * d, m)
    # more seeds resolve smaller differences; the seeds needed for that delta are the seeds given
    assert smallest_delta(5, 1.0) < smallest_delta(3, 1.0)
    assert seeds_for_power(1.0, smallest_delta(6, 1.0) * 1.0001) == 6
