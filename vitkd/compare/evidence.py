"""The README's results block, composed from committed suite results: the paired main table (with the rows of
extension suites appended), the studies (data size, capacity) with their plots, the pareto plot, and one
paragraph per claim saying what the evidence says and where it is silent.

Everything is read from the suites' ``results.csv`` / ``teachers.csv`` / ``timing.json``; the claims are
declared in a YAML file (``configs/compare/readme.yaml``) as comparisons the suites already made (each row
against its baseline, paired by seed, Holm-corrected within its family), and the verdict of each claim is
computed from those verdicts, never written by hand:

* ``direction`` (``expect: better | worse | same``): supported when a comparison is significant in the
  expected direction; contradicted when one is significant the other way and none the expected way; silent
  when none is significant. ``same``: supported when none is significant and every 95% interval lies within
  ``±margin`` points (a non-significant difference alone is not shown to be small), silent when an interval
  reaches past it, contradicted when a difference is significant;
* ``sweep`` (the data-size study): per method, the sizes at which its gain is significant; supported when a
  method's gain is significant at the smallest size, not at the largest, and smaller at the largest.
* ``grows`` (the schedule study): the rows, listed in order (e.g. one method at 1x, 2x and 4x the schedule),
  each against its own baseline; the per-seed gain of the last minus that of the first, a paired t-test over
  the seeds all four ran (the interaction), decides: supported when it is significantly positive, contradicted
  when significantly negative, silent otherwise.

A study or the cost picture whose suite has not run yet is listed as awaiting its results. Claims whose suite
has not run yet are declared under ``awaiting`` (the same schema): each is judged like the others
once every results folder it names holds results, and until then listed as awaiting them (the suite's folder named),
so a new suite's claims are written down before it runs and ``vitkd report`` still works from what is committed.

``vitkd report configs/compare/readme.yaml --readme README.md`` writes the block between the
``<!-- results:start -->`` / ``<!-- results:end -->`` markers.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..config import ConfigError, build_dataclass, check_name, read_yaml
from ..io import atomic_write_text
from .landscape import PictureSpec, draw as draw_picture, points as picture_points, table as picture_table
from .report import block_markers

__all__ = ["ReadmeSpec", "load_readme_spec", "compose", "write_readme", "judge"]


@dataclass
class Evidence:
    results: str                       # a suite's results folder
    rows: List[str] = field(default_factory=list)
    # compare the rows with this row of the same suite instead of their own baselines: a paired t-test over the
    # seeds both ran (their per-seed test top-1), Holm-corrected over the claim's such comparisons
    against: Optional[str] = None


@dataclass
class ClaimSpec:
    title: str
    kind: str                          # direction | sweep | grows
    expect: str = "better"             # direction: better | worse | same
    evidence: List[Evidence] = field(default_factory=list)
    margin: float = 5.0                # same: how far (points) the interval may reach and still count as the same

    def __post_init__(self):
        if self.kind not in JUDGES:
            raise ConfigError(f"claims.{self.title}.kind: one of {', '.join(JUDGES)}, got {self.kind!r}")
        if self.expect not in ("better", "worse", "same"):
            raise ConfigError(f"claims.{self.title}.expect: better, worse or same, got {self.expect!r}")


@dataclass
class StudySpec:
    results: str
    title: str
    plot: Optional[str] = None
    text: str = ""


@dataclass
class ReadmeSpec:
    main: str                                        # the main suite's results folder
    more: List[str] = field(default_factory=list)    # suites whose new rows join the main table
    studies: List[StudySpec] = field(default_factory=list)
    claims: List[ClaimSpec] = field(default_factory=list)
    # claims of suites that may not have run yet: judged once every results folder they name holds results
    awaiting: List[ClaimSpec] = field(default_factory=list)
    # the cost picture (vitkd/compare/landscape.py): its heading, text, and what it draws
    picture: Optional[PictureSpec] = None
    picture_heading: str = "Accuracy against cost"
    picture_text: str = ""
    # the README block it fills (between <!-- BLOCK:start --> and <!-- BLOCK:end -->), so that one README holds the
    # blocks of several specs; the headings and the test split its table states
    block: str = "results"
    heading: str = "The paired main table"
    claims_heading: str = "What the evidence says"
    test_split: str = "the 400-image digits test split"

    def __post_init__(self):
        check_name(self.block, "readme.block", "block name")

    def markers(self) -> Tuple[str, str]:
        return block_markers(self.block)


def load_readme_spec(path) -> ReadmeSpec:
    return build_dataclass(ReadmeSpec, read_yaml(Path(path)), "readme")


def _num(v) -> Optional[float]:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if x != x else x


class Suite:
    """One suite's committed results."""

    def __init__(self, folder):
        self.folder = Path(folder)
        path = self.folder / "results.csv"
        if not path.is_file():
            raise ConfigError(f"{path}: no results (run the suite first: vitkd compare)")
        with open(path, newline="") as f:
            self.rows = list(csv.DictReader(f))
        self.by_name = {r["row"]: r for r in self.rows}
        tpath = self.folder / "teachers.csv"
        self.teachers = list(csv.DictReader(open(tpath, newline=""))) if tpath.is_file() else []
        timing = self.folder / "timing.json"
        self.timing = json.loads(timing.read_text()) if timing.is_file() else {}
        self.name = self.folder.name

    def row(self, name: str) -> dict:
        if name not in self.by_name:
            raise ConfigError(f"{self.folder}/results.csv: no row '{name}'")
        return self.by_name[name]

    def wall_line(self) -> str:
        w = self.timing.get("empty_cache_wall_s")
        if w:
            return f"{w:.0f} s ({w / 60:.1f} min) from an empty cache"
        w = self.timing.get("shared_cache_wall_s")
        if w:
            return (f"{w:.0f} s ({w / 60:.1f} min) run right after suite {self.timing['shares']}, reusing only its "
                    f"{self.timing['shared_runs_reused']} runs")
        runs = self.timing.get("per_run_s") or {}
        env = self.folder / "environment.json"
        jobs = (json.loads(env.read_text()).get("jobs") if env.is_file() else None) or 1
        return (f"its own {len(runs)} jobs ran {sum(runs.values()):.0f} s, {jobs} at a time "
                f"(about {sum(runs.values()) / jobs / 60:.1f} min; the rest reused from the cache it shares)")


def _delta(r: dict) -> str:
    d, lo, hi = _num(r.get("delta")), _num(r.get("ci_low")), _num(r.get("ci_high"))
    if d is None:
        return ""
    return f"{d:+.2f} [{lo:+.1f}, {hi:+.1f}]" if lo is not None else f"{d:+.2f}"


def _p(r: dict) -> str:
    p, ph = _num(r.get("p_raw")), _num(r.get("p_holm"))
    if p is None:
        return ""
    return f"{p:.3g} / {ph:.3g}" if ph is not None else f"{p:.3g}"


def _pstr(v) -> str:
    x = _num(v)
    return "n/a" if x is None else f"{x:.3g}"


def _evidence_line(suite: Suite, r: dict) -> str:
    return (f"`{r['row']}` vs `{r['baseline']}` ({suite.name}, {r.get('paired_seeds') or r['seeds']} seeds): "
            f"Δ {_delta(r)}, p {_p(r)} ({r.get('verdict') or 'n/a'})")


# ------------------------------------------------------------------------------------------------ claims
def _against(claim: ClaimSpec, suites: Dict[str, Suite]) -> Dict[tuple, dict]:
    """The claim's comparisons of rows with another row than their baseline ({(evidence index, row): result row})."""
    from . import stats
    out = {}
    for i, e in enumerate(claim.evidence):
        if e.against is None:
            continue
        s = suites[e.results]
        base = s.row(e.against)
        for n in e.rows:
            a, b = ([float(x) for x in s.row(n)["test_top1_all"].split()], [float(x) for x in base["test_top1_all"].split()])
            if len(a) != len(b) or len(a) < 2:
                raise ConfigError(f"claims.{claim.title}: {n} and {e.against} in {s.folder} do not share 2+ seeds")
            t = stats.paired_t(a, b)
            out[(i, n)] = {**s.row(n), "baseline": e.against, "delta": t.mean_delta, "ci_low": t.ci_low,
                                   "ci_high": t.ci_high, "p_raw": t.p, "paired_seeds": t.n}
    if out:
        h = stats.holm([r["p_raw"] for r in out.values()])
        for r, ph, rej in zip(out.values(), h.p_adjusted, h.reject):
            r.update(p_holm=float(ph), verdict=("better" if r["delta"] > 0 else "worse") if bool(rej) else "n.s.")
    return out


def _judge_direction(claim: ClaimSpec, suites: Dict[str, Suite]) -> tuple:
    extra = _against(claim, suites)
    items = [(suites[e.results], extra.get((i, n)) or suites[e.results].row(n))
             for i, e in enumerate(claim.evidence) for n in e.rows]
    verdicts = [r.get("verdict") for _, r in items]
    lines = [_evidence_line(s, r) for s, r in items]
    if claim.expect == "same":
        moved = [v for v in verdicts if v in ("better", "worse")]
        wide = [r["row"] for _, r in items
                if not (-claim.margin <= (_num(r.get("ci_low")) or -1e9) and (_num(r.get("ci_high")) or 1e9) <= claim.margin)]
        if moved:
            verdict = "contradicted: a difference is significant"
        elif wide:
            verdict = (f"silent: no difference is significant, but the interval of {', '.join(wide)} reaches past "
                       f"±{claim.margin:g} points, so a difference that large is not ruled out")
        else:
            verdict = f"supported: no difference is significant and every interval lies within ±{claim.margin:g} points"
        return verdict, lines
    other = {"better": "worse", "worse": "better"}[claim.expect]
    if claim.expect in verdicts:
        verdict = "supported"
    elif other in verdicts:
        verdict = "contradicted"
    else:
        verdict = "silent: no comparison is significant at this scale"
    return verdict, lines


def _judge_sweep(claim: ClaimSpec, suites: Dict[str, Suite]) -> tuple:
    lines, supported, any_called = [], [], False
    for e in claim.evidence:
        s = suites[e.results]
        for method in e.rows:
            pts = sorted((r for r in s.rows if r.get("sweep_of") == method), key=lambda r: float(r["sweep_value"]))
            if not pts:
                raise ConfigError(f"{s.folder}/results.csv: no sweep rows of '{method}'")
            sig = [f"{float(r['sweep_value']):g}" for r in pts if r.get("verdict") == "better"]
            hurt = [f"{float(r['sweep_value']):g}" for r in pts if r.get("verdict") == "worse"]
            any_called = any_called or bool(sig or hurt)
            first, last = pts[0], pts[-1]
            if (first.get("verdict") == "better" and last.get("verdict") != "better"
                    and _num(last["delta"]) < _num(first["delta"])):
                supported.append(method)
            steps = "; ".join(f"{float(r['sweep_value']):g}: {_delta(r)} (p Holm {_pstr(r.get('p_holm'))})"
                              for r in pts)
            where = (f"significant at {', '.join(sig)} images" if sig else "significant at no size") + \
                    (f", significantly worse at {', '.join(hurt)}" if hurt else "")
            lines.append(f"`{method}` ({where}): {steps}")
    if supported:
        verdict = f"supported by {', '.join(supported)}: a significant gain at the smallest size that fades by the largest"
    elif any_called:
        verdict = "not supported: the significant gains do not shrink with data as claimed"
    else:
        verdict = "silent: no gain is significant at any size (Holm within the study)"
    return verdict, lines


def _seed_tops(s: Suite, name: str) -> List[float]:
    """A row's per-seed test top-1, in the suite's seed order (rows of one suite share it)."""
    return [float(x) for x in s.row(name)["test_top1_all"].split()]


def _judge_grows(claim: ClaimSpec, suites: Dict[str, Suite]) -> tuple:
    from . import stats
    lines, calls = [], []
    for e in claim.evidence:
        s = suites[e.results]
        if len(e.rows) < 2:
            raise ConfigError(f"claims.{claim.title}: kind grows needs 2+ rows in order, got {e.rows}")
        lines += [_evidence_line(s, s.row(n)) for n in e.rows]
        first, last = s.row(e.rows[0]), s.row(e.rows[-1])
        tops = [_seed_tops(s, n) for n in (first["row"], first["baseline"], last["row"], last["baseline"])]
        seeds = range(len(tops[0]))
        if len(seeds) < 2 or any(len(t) != len(tops[0]) for t in tops):
            raise ConfigError(f"claims.{claim.title}: {e.rows[0]}, {e.rows[-1]} and their baselines in {s.folder} "
                              f"do not share 2+ seeds")
        gain_first = [tops[0][k] - tops[1][k] for k in seeds]
        gain_last = [tops[2][k] - tops[3][k] for k in seeds]
        t = stats.paired_t(gain_last, gain_first)
        called = "n.s." if t.p >= 0.05 else ("grows" if t.mean_delta > 0 else "shrinks")
        calls.append(called)
        lines.append(f"gain of `{e.rows[-1]}` minus gain of `{e.rows[0]}` ({s.name}, {t.n} seeds): "
                     f"{t.mean_delta:+.2f} [{t.ci_low:+.1f}, {t.ci_high:+.1f}], p {t.p:.3g} ({called})")
    if "grows" in calls and "shrinks" not in calls:
        verdict = "supported: the gain grows significantly from the first to the last"
    elif "shrinks" in calls:
        verdict = "contradicted: the gain shrinks significantly from the first to the last"
    else:
        verdict = "silent: the gain does not change significantly from the first to the last"
    return verdict, lines


JUDGES = {"direction": _judge_direction, "sweep": _judge_sweep, "grows": _judge_grows}


def judge(claim: ClaimSpec, suites: Dict[str, Suite]) -> tuple:
    """(verdict sentence, evidence lines) of one claim."""
    return JUDGES[claim.kind](claim, suites)


# ------------------------------------------------------------------------------------------------ block
def _rel(path: Path, readme: Path) -> str:
    return os.path.relpath(path, readme.parent).replace(os.sep, "/")


def _main_table(main: Suite, more: List[Suite]) -> List[str]:
    L = ["| suite | group | row | family | teacher | seeds | test top-1 | Δ vs baseline [95% CI] | p raw / Holm | "
         "verdict | train MMACs/img | wall s/run |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for s in [main] + more:
        for r in s.rows:
            if r["row"] in seen:
                continue
            seen.add(r["row"])
            base = r.get("baseline") or ""
            delta = _delta(r) + (f" vs `{base}`" if base and base != "no_kd" and r.get("delta") else "")
            L.append(f"| {s.name} | {r['group']} | {r['row']} | {r['family']} | {r['teachers'] or '-'} | {r['seeds']} | "
                     f"{float(r['test_top1_mean']):.2f} ± {float(r['test_top1_std']):.2f} | {delta} | {_p(r)} | "
                     f"{r.get('verdict') or ''} | {float(r['train_mmacs_per_image']):.1f} | "
                     f"{float(r['wall_s_per_run']):.0f} |")
    return L


def _teachers_line(suites: List[Suite]) -> str:
    """Each teacher the tables' rows read, with its own test and val top-1 (each suite's ``teachers.csv``)."""
    seen: Dict[str, str] = {}
    for s in suites:
        for t in s.teachers:
            seen.setdefault(t["label"], f"{t['label']} ({t['model']}) {float(t['test_top1']):.2f} test / "
                                        f"{float(t['val_top1']):.2f} val")
    return ("Teachers, top-1 alone: " + "; ".join(seen.values()) + ".") if seen else "No teachers."


def _study_table(s: Suite) -> List[str]:
    sweep = [r for r in s.rows if r.get("sweep_of")]
    if sweep:
        values = sorted({float(r["sweep_value"]) for r in sweep})
        methods = list(dict.fromkeys(r["sweep_of"] for r in sweep))
        L = ["| row | " + " | ".join(f"{v:g}" for v in values) + " |", "|---" * (len(values) + 1) + "|"]
        for m in methods:
            cells = []
            for v in values:
                r = next((x for x in sweep if x["sweep_of"] == m and float(x["sweep_value"]) == v), None)
                if r is None:
                    cells.append("")
                elif r.get("delta"):
                    cells.append(f"{float(r['test_top1_mean']):.1f}, Δ {_delta(r)} p {_pstr(r.get('p_holm'))}"
                                 f"{' **' + r['verdict'] + '**' if r.get('verdict') in ('better', 'worse') else ''}")
                else:
                    cells.append(f"{float(r['test_top1_mean']):.1f} ± {float(r['test_top1_std']):.1f}")
            L.append(f"| {m} | " + " | ".join(cells) + " |")
        tv = {}
        for t in s.teachers:
            if t.get("sweep_of"):
                tv.setdefault(t["label"].rsplit(" (", 1)[0], {})[float(t["sweep_value"])] = float(t["test_top1"])
        for label, acc in tv.items():
            L.append(f"| teacher {label} | " + " | ".join(f"{acc.get(v, float('nan')):.1f}" for v in values) + " |")
        return L
    L = ["| row | teacher | teacher top-1 | test top-1 | Δ vs baseline [95% CI] | p raw / Holm | verdict |",
         "|---|---|---|---|---|---|---|"]
    tacc = {t["label"]: float(t["test_top1"]) for t in s.teachers}
    for r in s.rows:
        t, base = r["teachers"], r.get("baseline") or ""
        L.append(f"| {r['row']} | {t or '-'} | {f'{tacc[t]:.2f}' if t in tacc else '-'} | "
                 f"{float(r['test_top1_mean']):.2f} ± {float(r['test_top1_std']):.2f} | "
                 f"{_delta(r) + (f' vs `{base}`' if r.get('delta') else '')} | {_p(r)} | {r.get('verdict') or ''} |")
    return L


def main_colors(results: str) -> Dict[str, str]:
    """The family colours of the suite whose results are in ``results`` (its committed ``suite.yaml``)."""
    from .suite import load_suite
    suite, _ = load_suite(Path(results) / "suite.yaml")
    return dict(suite.family_colors)


def compose(spec: ReadmeSpec, readme: Path, command: str, draw_to: Optional[Path] = None) -> str:
    """The block's text. The cost picture is drawn to its ``file`` (the block links there), or to ``draw_to``
    (a check that the block is current draws elsewhere, leaving the committed figure alone)."""
    ran = lambda f: (Path(f) / "results.csv").is_file()   # noqa: E731  (a study may be declared before it runs)
    folders = [spec.main, *spec.more, *(s.results for s in spec.studies if ran(s.results)),
               *(e.results for c in spec.claims for e in c.evidence)]
    suites = {f: Suite(f) for f in dict.fromkeys(folders)}
    main = suites[spec.main]
    more = [suites[f] for f in spec.more]
    L = [f"<!-- generated by `{command}`; do not edit by hand -->", "", f"### {spec.heading}", "",
         f"Test top-1 (%) on {spec.test_split}, mean ± std over seeds; Δ against the row's baseline "
         f"(no-KD unless named), paired by seed, with its 95% t-interval; p raw / Holm-corrected within the row's "
         f"family of comparisons in its suite; a verdict only where Holm rejects at α = 0.05. Train cost: MACs per "
         f"train image (student forward + backward, teachers' forwards, connectors; a pipeline row: all its stages "
         f"per image and student epoch). `{main.name}`: {main.wall_line()}"
         + "".join(f"; `{s.name}`: {s.wall_line()}" for s in more) + ".", ""]
    L += _main_table(main, more)
    L += ["", _teachers_line([main] + more)]
    L += ["", f"![pareto]({_rel(main.folder / 'pareto.png', readme)})", ""]
    for st in spec.studies:
        L += [f"### {st.title}", ""]
        if not ran(st.results):
            L += [f"Awaiting results: `{st.results}` has none yet.", ""]
            continue
        s = suites[st.results]
        if st.text:
            L += [st.text.strip(), ""]
        L += [f"`{s.name}`: {s.wall_line()}.", ""] + _study_table(s) + [""]
        if st.plot:
            L += [f"![{Path(st.plot).stem}]({_rel(s.folder / st.plot, readme)})", ""]
    if spec.picture is not None and not all(ran(f) for f in spec.picture.suites):
        L += [f"### {spec.picture_heading}", "", "Awaiting results: "
              + ", ".join(f"`{f}`" for f in spec.picture.suites if not ran(f))
              + (" have" if sum(not ran(f) for f in spec.picture.suites) > 1 else " has") + " none yet.", ""]
    elif spec.picture is not None:
        pic = spec.picture
        pts = picture_points(pic)
        draw_picture(pic, pts, main_colors(spec.main), Path(draw_to) if draw_to is not None else Path(pic.file))
        L += [f"### {spec.picture_heading}", ""]
        if spec.picture_text:
            L += [spec.picture_text.strip(), ""]
        L += picture_table(pic, pts) + ["", f"![cost]({_rel(Path(pic.file), readme)})", ""]
    L += [f"### {spec.claims_heading}", ""]
    for c in spec.claims:
        verdict, lines = judge(c, suites)
        L.append(f"- **{c.title}.** Verdict: {verdict}.")
        L += [f"  - {line}" for line in lines]
    for c in spec.awaiting:
        missing = [f for f in dict.fromkeys(e.results for e in c.evidence) if not (Path(f) / "results.csv").is_file()]
        if missing:
            L.append(f"- **{c.title}.** Verdict: awaiting results ({', '.join(f'`{f}`' for f in missing)} has none "
                     f"yet).")
            continue
        verdict, lines = judge(c, {**suites, **{e.results: Suite(e.results) for e in c.evidence
                                                if e.results not in suites}})
        L.append(f"- **{c.title}.** Verdict: {verdict}.")
        L += [f"  - {line}" for line in lines]
    return "\n".join(L) + "\n"


def write_readme(spec_path, readme) -> None:
    readme = Path(readme)
    spec = load_readme_spec(spec_path)
    start, end = spec.markers()
    text = readme.read_text()
    if start not in text or end not in text:
        raise ConfigError(f"--readme {readme}: no '{start}' ... '{end}' block to fill")
    body = compose(spec, readme, f"vitkd report {spec_path} --readme {readme.name}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, head + start + "\n" + body + end + tail)
