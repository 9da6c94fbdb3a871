"""Latency intervals where users look, on injected timings: the results columns (default and
calibrated drift), the summary naming ties, best_under_budget's ties, frontier membership from
latency intervals, explorer validate's verdict, the runtime ratios, and the coverage benchmark.

Every timing here is exact within its run (CI of zero width, no probe), so a value's 90% interval
is ``[m exp(-h), m exp(h)]`` with ``h = 1.6449 x 0.09 = 0.148037`` (default drift) or
``h = ln(1.09)`` (calibrated below): bounds worked out by hand, not by the module under test.
"""
from __future__ import annotations

import math

import pandas as pd
import pytest

import sweep_fakes as F
from explorer.analysis.pareto import best_under_budget, frontier_membership
from explorer.commands import bench
from explorer.data import results
from explorer.data.space import load_space
from explorer.data.store import Store
from explorer.engine.coverage import CoverageOptions, CoverageReport, CoverageRun, run_coverage
from explorer.engine.options import SweepOptions
from explorer.engine.sweep import run_sweep
from explorer.measure.costs import EncoderCost, PrefillCost, ProjectorCost, Timing
from explorer.measure.e2e import E2ECheck
from explorer.measure.settings import MeasureSettings

H90 = 1.6448536269514722 * 0.09  # the default drift's 90% half-width on the log scale
SETTINGS = MeasureSettings(device="cpu")
SCALE: dict[str, float] = {}  # label -> factor applied to its median (the second sweep)
ENCODER_MS = {1: 10.0, 2: 11.0}  # per width at 64 px (x2 at 128 px): widths 1 and 2 are 10% apart


def exact(ms: float) -> Timing:
    return Timing(median_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, cv=0.0, n=20, ci_low_ms=ms, ci_high_ms=ms,
                  noisy=False)


def measure_encoder(name, knobs, resolution, settings, time=True):
    label = f"enc {knobs['width']}@{resolution}"
    s = F.shape(name, knobs, resolution)
    ms = ENCODER_MS[knobs["width"]] * resolution / 64 * SCALE.get(label, 1.0)
    return EncoderCost(encoder=name, knobs=dict(knobs), resolution=resolution, visual_tokens=s.visual_tokens,
                       out_channels=s.out_channels, params_m=s.params_m, gflops=resolution / 100, latency=exact(ms),
                       peak_mem_mb=1.0, peak_mem_method="fake")


def measure_projector(in_channels, hidden, tokens, settings, time=True):
    label = f"proj {in_channels} x{tokens}"
    return ProjectorCost(in_channels=in_channels, hidden=hidden, tokens=tokens, params_m=0.01, gflops=0.001,
                         latency=exact(1.0 * SCALE.get(label, 1.0)))


def measure_prefill(llm, tokens, settings, time=True):
    label = f"prefill x{tokens}"
    return PrefillCost(llm=llm, tokens=tokens, params_m=100.0, gflops=tokens * 0.2,
                       latency=exact(4.0 * SCALE.get(label, 1.0)), method="whole-model")


BACKEND = F.backend(measure_encoder=measure_encoder, measure_projector=measure_projector,
                    measure_prefill=measure_prefill)
LABELS = ["enc 1@64", "enc 1@128", "enc 2@64", "enc 2@128", "proj 64 x4", "proj 64 x16", "proj 128 x4",
          "proj 128 x16", "prefill x4", "prefill x16"]


def space():
    raw = {"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2]}}}, "resolutions": [64, 128],
           "llms": ["llm-a"], "text_tokens": [0]}
    return load_space(raw, shape_fn=F.shape, check_models=False)


def sweep(store, **options):
    return run_sweep(space(), SETTINGS, store, SweepOptions(isolation="inline", progress=False, **options), BACKEND)


@pytest.fixture
def store(tmp_path):
    SCALE.clear()
    s = Store(tmp_path / "r")
    sweep(s)
    yield s
    s.close()
    SCALE.clear()


def row(df, width, resolution):
    return df[(df.knobs == f'{{"width":{width}}}') & (df.resolution == resolution)].iloc[0]


def test_results_carry_each_factors_interval_and_ttft_as_their_sum(store):
    df = results.load(store)
    assert set(results.LATENCY_INTERVAL_COLUMNS) <= set(df.columns)
    r = row(df, 1, 64)  # encoder 10, projector 1, prefill 4 ms (4 visual tokens)
    assert r.encoder_latency_low_ms == pytest.approx(10 * math.exp(-H90))
    assert r.encoder_latency_high_ms == pytest.approx(10 * math.exp(H90))
    assert r.projector_latency_low_ms == pytest.approx(math.exp(-H90))
    assert r.ttft_ms == pytest.approx(15.0)
    assert (r.ttft_low_ms, r.ttft_high_ms) == pytest.approx((15 * math.exp(-H90), 15 * math.exp(H90)))
    assert r.latency_level == 0.9 and r.latency_drift == "default (sd 0.09)"
    assert math.isnan(r.preprocess_low_ms)  # not timed
    at_half = results.load(store, latency_level=0.5)
    h50 = 0.6744897501960817 * 0.09
    assert row(at_half, 1, 64).ttft_high_ms == pytest.approx(15 * math.exp(h50))


def test_the_stores_re_measurements_calibrate_the_drift(store):
    # every value measured again, each off by its own factor 1.01 ... 1.10: ten pairs, all of the
    # log ratio unexplained by the (exact) runs; the 90% drift is the 9th smallest, ln(1.09)
    SCALE.update({label: 1 + (i + 1) / 100 for i, label in enumerate(LABELS)})
    sweep(store, remeasure="all")
    assert len(store.history()) == 10
    df = results.load(store)
    r = row(df, 2, 128)  # encoder 22 x 1.04 (the current value), projector 1 x 1.08, prefill 4 x 1.10
    assert r.latency_drift == "calibrated from 10 re-measurements"
    assert r.encoder_latency_ms == pytest.approx(22 * 1.04)
    assert (r.encoder_latency_low_ms, r.encoder_latency_high_ms) == pytest.approx((22 * 1.04 / 1.09, 22 * 1.04 * 1.09))
    ttft = 22 * 1.04 + 1.08 + 4 * 1.10
    assert (r.ttft_low_ms, r.ttft_high_ms) == pytest.approx((ttft / 1.09, ttft * 1.09))


def summary_frame():
    """Two resolutions: at 512 A (100 [90-110]) and B (105 [95-115]) overlap, C (200) is apart; at
    256 D (50 [45-55]) is below E (80 [72-88])."""
    rows = []
    for name, res, ttft, lo, hi in (("a", 512, 100.0, 90.0, 110.0), ("b", 512, 105.0, 95.0, 115.0),
                                    ("c", 512, 200.0, 180.0, 220.0), ("d", 256, 50.0, 45.0, 55.0),
                                    ("e", 256, 80.0, 72.0, 88.0)):
        rows.append({"point_key": name, "llm": "l", "resolution": res, "encoder": "enc", "knobs": f'{{"w":"{name}"}}',
                     "visual_tokens": 4, "preprocess_ms": float("nan"), "encoder_latency_ms": ttft - 3,
                     "projector_latency_ms": 1.0, "prefill_latency_ms": 2.0, "ttft_ms": ttft, "status": "ok",
                     "ttft_includes_preprocess": False, "ttft_low_ms": lo, "ttft_high_ms": hi, "latency_level": 0.9,
                     "accuracy": float("nan")})
    return pd.DataFrame(rows)


def test_the_fastest_point_names_its_ties():
    best = results.fastest_per_resolution(summary_frame()).set_index("resolution")
    assert best.loc[512, "knobs"] == '{"w":"a"}' and best.loc[512, "n_tied"] == 1
    assert best.loc[512, "tied_with"] == "enc w=b"
    assert best.loc[256, "n_tied"] == 0 and best.loc[256, "tied_with"] == ""
    assert (best.loc[512, "ttft_low_ms"], best.loc[512, "ttft_high_ms"]) == (90.0, 110.0)


def test_the_summary_says_tied_instead_of_fastest():
    table, legend = results.summary_table(summary_frame())
    lines = table.splitlines()
    assert "fastest" in lines[0].split()
    at = {line.split()[1]: line for line in lines[1:]}
    assert "tied (2)" in at["512"] and "yes" not in at["512"].split()
    assert at["256"].split()[4] == "yes"
    assert legend is None  # nothing noisy or contended
    ties = results.tie_lines(summary_frame())
    assert ties == ("tied at 512 px (l): TTFT 90% intervals overlap, no order claimed: "
                    "enc w=a 100.0 [90.0-110.0], enc w=b 105.0 [95.0-115.0] ms")


def test_a_sweeps_closing_text_names_the_ties(store, tmp_path):
    # widths 1 and 2 are 10% apart at both resolutions, inside +-16%: tied at 64 and 128 px
    text = sweep(store).format(store)
    assert "tied (2)" in text
    assert "tied at 64 px (llm-a): TTFT 90% intervals overlap, no order claimed: toy width=1 15.0" in text
    assert "toy width=2 16.0" in text
    # far apart (width 2 three times slower), in a fresh store: the summary orders them
    ENCODER_MS[2] = 33.0
    try:
        other = Store(tmp_path / "far")
        text = sweep(other).format(other)
    finally:
        ENCODER_MS[2] = 11.0
    rows = [line.split() for line in text.splitlines() if line.startswith("llm-a")]
    assert "tied at" not in text and [r[4] for r in rows] == ["yes", "yes"]


def test_best_under_budget_names_accuracy_ties_and_an_uncertain_budget():
    df = pd.DataFrame({"ttft_ms": [90.0, 80.0, 70.0, 50.0], "ttft_low_ms": [80.0, 70.0, 60.0, 45.0],
                       "ttft_high_ms": [105.0, 90.0, 80.0, 55.0], "accuracy": [70.0, 68.0, 60.0, 50.0],
                       "accuracy_low": [66.0, 65.0, 58.0, 48.0], "accuracy_high": [74.0, 71.0, 62.0, 52.0]})
    best = best_under_budget(df, "ttft_ms", 100.0, "accuracy")
    assert best.loc[0, "row"] == 0 and best.loc[0, "n_tied"] == 1 and best.loc[0, "tied_with"] == (1,)
    assert best.loc[0, "within_budget"] == "possibly not"  # its TTFT interval reaches 105 > 100
    safe = best_under_budget(df, "ttft_ms", 85.0, "accuracy")  # rows 1..3 fit; row 1 (68 [65-71]) alone at the top
    assert safe.loc[0, "row"] == 1 and safe.loc[0, "n_tied"] == 0 and safe.loc[0, "within_budget"] == "possibly not"
    assert best_under_budget(df, "ttft_ms", 60.0, "accuracy").loc[0, "within_budget"] == "yes"  # row 3: 55 <= 60
    plain = best_under_budget(df[["ttft_ms", "accuracy"]], "ttft_ms", 100.0, "accuracy")
    assert plain.loc[0, "n_tied"] == 0 and plain.loc[0, "within_budget"] == "unknown"


def test_frontier_membership_from_latency_intervals():
    # exact accuracy; TTFT intervals. P (100 [90-110], 70) and Q (105 [95-115], 69): Q would need to be
    # faster at its best (95) than P at its worst (110) -- it could -- but P is surely more accurate:
    # Q is possibly off, not surely off (P surely dominates only if 110 < 95). R (300 [270-330], 69)
    # is surely dominated by P (110 < 270 and 70 > 69). S (50 [45-55], 40) no one can beat on TTFT.
    df = pd.DataFrame({"status": "ok", "ttft_ms": [100.0, 105.0, 300.0, 50.0],
                       "ttft_low_ms": [90.0, 95.0, 270.0, 45.0], "ttft_high_ms": [110.0, 115.0, 330.0, 55.0],
                       "accuracy": [70.0, 69.0, 69.0, 40.0]})
    got = frontier_membership(df, [("ttft_ms", "min"), ("accuracy", "max")]).tolist()
    assert got == ["certain", "possible", "dominated", "certain"]
    exact_ttft = frontier_membership(df.drop(columns=["ttft_low_ms", "ttft_high_ms"]),
                                     [("ttft_ms", "min"), ("accuracy", "max")]).tolist()
    assert exact_ttft == ["certain", "dominated", "dominated", "certain"]  # without intervals Q is ordered


def e2e_check(ratio, lo, hi, tolerance=0.1):
    t = exact(1.0)
    return E2ECheck(encoder="e", resolution=64, llm="l", text_tokens=0, visual_tokens=4, parts={"encoder": t},
                    factorised=t, end_to_end=t, ratio=ratio, ratio_p10=lo, ratio_p90=hi, rounds=10,
                    tolerance=tolerance, ratio_ci_low=lo, ratio_ci_high=hi)


@pytest.mark.parametrize("ratio, lo, hi, verdict, difference", [
    (0.97, 0.95, 0.99, "within", "faster"),
    (1.02, 0.96, 1.05, "within", "tied"),
    (1.08, 1.02, 1.15, "not settled", "slower"),
    (1.30, 1.20, 1.40, "outside", "slower"),
    (1.0, float("nan"), float("nan"), "not settled", "tied"),
])
def test_validate_verdicts(ratio, lo, hi, verdict, difference):
    check = e2e_check(ratio, lo, hi)
    assert (check.verdict, check.difference) == (verdict, difference)
    assert check.to_dict()["verdict"] == verdict


def test_runtime_ratios_are_bold_only_when_separated():
    from explorer.analysis.bench_report import ratio_cell

    base = exact(100.0)  # 90% interval 86.2 .. 116.0 (default drift)
    assert ratio_cell(exact(110.0), base) == "1.10 (tied)"
    assert ratio_cell(exact(150.0), base) == "**1.50**"  # 129.3 .. 174.0 clears 116.0
    assert ratio_cell(exact(70.0), base) == "**0.70**"


# --------------------------------------------------------------------------------------------
# The coverage benchmark, on fake runs


def fake_runs(factors_by_run, condition="quiet"):
    """Runs whose first has four exact values of 100 ms and whose later ones scale them."""
    keys = [("encoder", k) for k in "abcd"]
    runs = [CoverageRun(condition, 1, {k: exact(100.0).to_dict() for k in keys})]
    for i, factors in enumerate(factors_by_run, 2):
        runs.append(CoverageRun(condition, i, {k: exact(100.0 * f).to_dict() for k, f in zip(keys, factors)}))
    return runs


def test_coverage_share_per_level_by_hand():
    # 90% half-width 0.148 (x1.1595), 80%: 1.2816 x 0.09 = 0.1153 (x1.1222), 50%: 0.0607 (x1.0626),
    # 95%: 0.1764 (x1.1929). Later medians at x1.05, x1.10, x1.15, x1.30:
    report = CoverageReport(runs=fake_runs([(1.05, 1.10, 1.15, 1.30)]))
    cells = {c.level: c for c in report.cells()}
    assert [(cells[lv].covered, cells[lv].total) for lv in (0.5, 0.8, 0.9, 0.95)] == [(1, 4), (2, 4), (3, 4), (3, 4)]
    # median relative width at 90%: exp(h) - exp(-h) = 2 sinh(0.148037) = 0.29715
    assert cells[0.9].median_width == pytest.approx(0.29715, abs=1e-5)
    assert cells[0.9].holds is False and cells[0.95].holds is False  # 75% against 90% / 95%
    assert cells[0.8].holds is False and cells[0.5].holds is False   # 50% against 80%; 25% against 50%
    text = report.markdown()
    assert "| quiet | 90% | 3 / 4 | 75.0% | NO | 29.7% |" in text
    assert "130.0 *" in text and "105.0 |" in text


def test_coverage_holds_within_ten_points():
    # two later runs, ten values each: 9 of 10 inside the 90% interval in each
    keys = [("encoder", str(k)) for k in range(10)]
    first = CoverageRun("busy", 1, {k: exact(100.0).to_dict() for k in keys})
    later = [CoverageRun("busy", i, {k: exact(100.0 * (1.5 if n == 0 else 1.1)).to_dict() for n, k in enumerate(keys)})
             for i in (2, 3)]
    cell = CoverageReport(runs=[first, *later]).cell("busy", 0.9)
    assert (cell.covered, cell.total, cell.share, cell.holds) == (18, 20, 0.9, True)


def test_run_coverage_alternates_conditions_and_pauses_between_runs():
    taken, slept = [], []

    def measure(condition, index, neighbours):
        taken.append((condition, index, neighbours))
        return CoverageRun(condition, index, {("encoder", "a"): exact(100.0).to_dict()})

    report = run_coverage(options=CoverageOptions(runs=3, neighbours=1, gap_s=5.0), measure_run=measure,
                          sleep=slept.append)
    assert taken == [("quiet", 1, 0), ("busy", 1, 1), ("quiet", 2, 0), ("busy", 2, 1), ("quiet", 3, 0),
                     ("busy", 3, 1)]
    assert slept == [5.0] * 5
    assert [(c.condition, c.covered, c.total) for c in report.cells() if c.level == 0.9] == [("quiet", 2, 2),
                                                                                             ("busy", 2, 2)]
    quiet_only = run_coverage(options=CoverageOptions(runs=2, neighbours=0), measure_run=measure, sleep=slept.append)
    assert quiet_only.conditions() == ["quiet"]


def test_run_coverage_through_real_sweeps_of_fake_measurements(tmp_path):
    # the default run taker: run_sweep into fresh stores, every timed value kept (encoders,
    # projectors, prefills of the toy space); identical fakes: every later value inside
    from explorer.engine.coverage import sweep_run

    SCALE.clear()
    take = sweep_run(space(), SETTINGS, tmp_path, BACKEND)
    report = run_coverage(options=CoverageOptions(runs=2, neighbours=0), measure_run=take)
    run = report.runs[0]
    assert len(run.timings) == 10 and run.labels[next(k for k in run.timings if k[0] == "encoder")].startswith("toy")
    assert run.load_before and run.started
    assert [(c.covered, c.total) for c in report.cells()] == [(10, 10)] * 4


@pytest.mark.parametrize("argv, field", [(["coverage=true", "runs=1"], "runs=1"),
                                         (["coverage=true", "gap_s=-1"], "gap_s=-1")])
def test_bad_coverage_options_exit_2(capsys, argv, field):
    assert bench.main(argv) == 2
    assert field in capsys.readouterr().err


def test_the_coverage_command_writes_its_report(monkeypatch, tmp_path, capsys):
    import explorer.engine.coverage as coverage

    seen = {}

    def fake_run_coverage(space, settings, options, command="", on_run=None, **kw):
        seen.update(space=space.name, threads=settings.threads, options=options)
        report = CoverageReport(runs=fake_runs([(1.05, 1.10, 1.15, 1.30)]), command=command)
        for run in report.runs:
            on_run(run)
        return report

    monkeypatch.setattr(coverage, "run_coverage", fake_run_coverage)
    out = tmp_path / "coverage.md"
    assert bench.main(["coverage=true", "runs=2", "neighbours=0", "threads=1", f"out={out}"]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert seen == {"space": "stability", "threads": 1, "options": CoverageOptions(runs=2, neighbours=0)}
    assert text.startswith("## Coverage of the re-measurement intervals\n\nCommand: `python -m explorer bench "
                           "coverage=true runs=2 neighbours=0 threads=1`")
    assert "| quiet | 90% | 3 / 4 | 75.0% | NO | 29.7% |" in text


def test_the_report_lists_rows_possibly_on_the_frontier(store):
    # objectives TTFT and accuracy, the same exact accuracy everywhere: on the point values width 1
    # at 64 px (15 ms [12.9-17.4]) dominates every other row; width 2 at 64 px (16 ms [13.8-18.6])
    # overlaps it, so both are possibly on the frontier (neither certain); the 128 px rows (from
    # 21.6 ms) are surely off
    from explorer.analysis.report import render_report

    df = results.load(store).assign(accuracy=50.0, accuracy_low=50.0, accuracy_high=50.0, accuracy_source="test")
    page = render_report(df, title="t")
    assert "TTFT: the 90% interval a re-measurement in another run would fall in" in page
    assert "<b>0</b> row(s) are certainly on the overall frontier, <b>2</b> possibly" in page
    assert "and 2 certainly off it" in page
    assert "1 row(s) off the frontier of the point values but possibly on it" in page
    table = page[page.index('id="possible-frontier-table"'):]
    table = table[:table.index("</table>")]
    assert "<td>{\"width\":2}</td>" in table and "<td>64</td>" in table and "<td>128</td>" not in table


def test_a_budget_answer_says_when_it_is_tied_or_may_not_fit():
    from explorer.analysis.findings import budget_answer

    table = pd.DataFrame({"llm": ["a", "b"], "resolution": [256, 512], "ttft_ms": [90.0, 80.0],
                          "ttft_low_ms": [80.0, 70.0], "ttft_high_ms": [105.0, 90.0], "accuracy": [56.0, 55.0],
                          "accuracy_low": [54.0, 53.0], "accuracy_high": [58.0, 57.0],
                          "accuracy_source": ["published:x", "published:y"]})
    assert budget_answer(table, 100, "avg5") == (
        "a @ 256 px: avg5 56.0 [published:x], TTFT 90 ms, tied on avg5 with 1 other(s) under the budget, "
        "its TTFT interval reaches past the budget")
    assert budget_answer(table, 120, "avg5").endswith("under the budget")  # 105 <= 120: it fits


def test_the_hover_text_gives_the_ttft_interval(store):
    from explorer.analysis.plots import hover_text

    df = results.load(store)
    text = dict(zip(df.knobs + "@" + df.resolution.astype(str), hover_text(df)))['{"width":1}@64']
    assert "TTFT 90% re-measurement interval 12.9–17.4 ms" in text  # 15 exp(-+0.148037)
