"""Confidence where users look: flagged values in the results, the summary and the report, and
``sweep.remeasure`` taking exactly the flagged ones again with the earlier rows kept.

The fake measurer below flags chosen measurements (noisy and/or contended, on the latency or the
preprocessing timing) in the first sweep and nothing afterwards, with a different median each
round, so every expectation is a hand-written set of labels.
"""
from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

import sweep_fakes as F
from explorer.analysis.report import render_report
from explorer.checks import OptionError
from explorer.commands import sweep as sweep_cmd
from explorer.data import results
from explorer.data.space import load_space
from explorer.data.store import SCHEMA_VERSION, MeasurementRecord, Store
from explorer.engine.options import SweepOptions
from explorer.engine.sweep import plan_sweep, run_sweep
from explorer.measure.costs import EncoderCost, PrefillCost, ProjectorCost, Timing
from explorer.measure.settings import MeasureSettings

SETTINGS = MeasureSettings(device="cpu")

#: What the first round flags: label -> {timing field: (noisy, contended)}. Labels as the plan
#: writes them (encoder ``toy[width=W]@R``, prefill ``llm-a xTOKENS``).
FIRST_ROUND = {
    "toy[width=1]@64": {"latency": (True, False)},
    "toy[width=1]@128": {"latency": (True, True)},
    "toy[width=2]@64": {"preprocess_latency": (False, True)},  # only its preprocessing was contended
    "llm-a x4": {"latency": (True, False)},
}
FLAGS: dict[str, dict[str, tuple[bool, bool]]] = {}
ROUND = {"n": 1}  # medians are multiplied by this: a re-measured value differs from the earlier one
CALLS: list[str] = []


def timing(ms: float, noisy: bool = False, contended: bool = False) -> Timing:
    return Timing(median_ms=ms, p10_ms=ms * 0.9, p90_ms=ms * 1.1, mean_ms=ms, cv=0.05, n=5, ci_low_ms=ms * 0.95,
                  ci_high_ms=ms * 1.05, noisy=noisy, other_cores=1.5 if contended else 0.1, steal=0.0,
                  contended=contended)


def _timed(label: str, field: str, ms: float) -> Timing:
    noisy, contended = FLAGS.get(label, {}).get(field, (False, False))
    return timing(ms * ROUND["n"], noisy, contended)


def measure_encoder(name, knobs, resolution, settings, time=True):
    label = f"{name}[width={knobs['width']}]@{resolution}"
    CALLS.append(label)
    s = F.shape(name, knobs, resolution)
    return EncoderCost(encoder=name, knobs=dict(knobs), resolution=resolution, visual_tokens=s.visual_tokens,
                       out_channels=s.out_channels, params_m=s.params_m, gflops=resolution / 100,
                       latency=_timed(label, "latency", resolution / 10 * knobs["width"]), peak_mem_mb=1.0,
                       peak_mem_method="fake", preprocess_latency=_timed(label, "preprocess_latency", 2.0),
                       preprocess="fake")


def measure_projector(in_channels, hidden, tokens, settings, time=True):
    CALLS.append(f"mlp {in_channels}->{hidden} x{tokens}")
    return ProjectorCost(in_channels=in_channels, hidden=hidden, tokens=tokens, params_m=0.01, gflops=0.001,
                         latency=timing(0.1 * ROUND["n"]))


def measure_prefill(llm, tokens, settings, time=True):
    label = f"{llm} x{tokens}"
    CALLS.append(label)
    return PrefillCost(llm=llm, tokens=tokens, params_m=100.0, gflops=tokens * 0.2,
                       latency=_timed(label, "latency", tokens * 1.0), method="whole-model")


BACKEND = F.backend(measure_encoder=measure_encoder, measure_projector=measure_projector,
                    measure_prefill=measure_prefill)
ENCODERS = {"toy[width=1]@64", "toy[width=1]@128", "toy[width=2]@64", "toy[width=2]@128"}
PROJECTORS = {"mlp 64->32 x4", "mlp 64->32 x16", "mlp 128->32 x4", "mlp 128->32 x16"}
PREFILLS = {"llm-a x4", "llm-a x16"}
EVERYTHING = ENCODERS | PROJECTORS | PREFILLS


def space():
    # 2 widths x 2 resolutions, one LLM, no text: 4 points, 4 encoders, 4 projectors, 2 prefills
    raw = {"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2]}}}, "resolutions": [64, 128],
           "llms": ["llm-a"], "text_tokens": [0]}
    return load_space(raw, shape_fn=F.shape, check_models=False)


def sweep(store, **options):
    CALLS.clear()
    return run_sweep(space(), SETTINGS, store, SweepOptions(isolation="inline", progress=False, **options), BACKEND)


@pytest.fixture
def flagged_store(tmp_path):
    """A store after a first sweep that flagged FIRST_ROUND; later rounds flag nothing."""
    FLAGS.clear()
    FLAGS.update(FIRST_ROUND)
    ROUND["n"] = 1
    store = Store(tmp_path / "r")
    sweep(store)
    assert set(CALLS) == EVERYTHING and len(CALLS) == 10
    FLAGS.clear()
    ROUND["n"] = 3
    yield store
    store.close()


def _label(rec: MeasurementRecord) -> str:
    """The plan's label of a stored encoder or prefill measurement, from its inputs."""
    i = rec.inputs
    if rec.kind == "encoder":
        return f"{i['encoder']}[width={i['knobs']['width']}]@{i['resolution']}"
    return f"{i['llm']} x{i['tokens']}" if rec.kind == "prefill" else rec.kind


def _row(frame: pd.DataFrame, width: int, resolution: int) -> pd.Series:
    return frame[(frame.knobs == f'{{"width":{width}}}') & (frame.resolution == resolution)].iloc[0]


def test_results_columns_carry_the_flags_of_each_factor(flagged_store):
    df = results.load(flagged_store)
    assert list(df.columns) == list(results.COLUMNS + results.EXTRA_COLUMNS)
    assert set(results.CONFIDENCE_COLUMNS) <= set(results.EXTRA_COLUMNS)
    a, b, c, d = _row(df, 1, 64), _row(df, 1, 128), _row(df, 2, 64), _row(df, 2, 128)
    assert (a.encoder_noisy, a.encoder_contended, a.prefill_noisy, a.noisy, a.contended) == (True, False, True, True,
                                                                                              False)
    assert (b.encoder_noisy, b.encoder_contended, b.prefill_noisy, b.noisy, b.contended) == (True, True, False, True,
                                                                                              True)
    assert b.encoder_other_cores == pytest.approx(1.5) and a.encoder_other_cores == pytest.approx(0.1)
    # (2, 64): its encoder latency is clean, its preprocessing contended, its prefill (x4) noisy
    assert (c.encoder_contended, c.preprocess_contended, c.preprocess_noisy, c.contended, c.noisy) == (
        False, True, False, True, True)
    assert not d.noisy and not d.contended and not d.encoder_noisy and not d.projector_contended
    assert str(df["noisy"].dtype) == "boolean" and df["encoder_other_cores"].dtype == "float64"
    assert results.flag_counts(df) == {"noisy": 3, "contended": 2, "flagged": 3, "rows": 4}


def test_an_older_payload_without_contention_fields_reads_as_not_contended(tmp_path):
    store = Store(tmp_path / "old")
    sweep(store)  # FLAGS empty: nothing flagged
    enc = store.measurements(kind="encoder")[0]
    payload = dict(enc.payload)
    payload["latency"] = {k: v for k, v in payload["latency"].items() if k not in ("other_cores", "steal", "contended")}
    store.save_measurement(MeasurementRecord(**{**enc.__dict__, "payload": payload, "id": None}))
    row = results.load(store).set_index("point_key").loc[
        [p.key for p in store.points() if p.encoder_key == enc.key][0]]
    assert not pd.isna(row.encoder_contended) and not row.encoder_contended  # missing: not contended
    assert pd.isna(row.encoder_other_cores) and not pd.isna(row.encoder_noisy) and not row.encoder_noisy


def test_remeasure_noisy_measures_exactly_the_noisy_ones_and_keeps_the_earlier_values(flagged_store):
    store = flagged_store
    before = {(m.kind, m.key): m for m in store.measurements()}
    report = sweep(store, remeasure="noisy")
    assert sorted(CALLS) == sorted(["toy[width=1]@64", "toy[width=1]@128", "llm-a x4"])
    assert report.measured == {"encoder": 2, "projector": 0, "prefill": 1} and report.skipped == 7
    history = store.history()
    assert len(history) == 3 and all(h.superseded_at is not None for h in history)
    assert {_label(h) for h in history} == {"toy[width=1]@64", "toy[width=1]@128", "llm-a x4"}
    for h in history:  # the earlier rows, unchanged
        old = before[(h.kind, h.key)]
        assert h.payload == old.payload and h.id == old.id and h.finished_at == old.finished_at
        assert h.payload["latency"]["noisy"] is True
    assert len(store.history(kind="encoder")) == 2 and len(store.history(kind="prefill", env_key="fake-env")) == 1
    assert store.history(kind="projector") == []
    # the results show the new value (3x the first, not noisy any more); the rest is untouched
    df = results.load(store)
    a, d = _row(df, 1, 64), _row(df, 2, 128)
    assert a.encoder_latency_ms == pytest.approx(3 * 6.4) and a.prefill_latency_ms == pytest.approx(3 * 4.0)
    assert not a.noisy and d.encoder_latency_ms == pytest.approx(25.6)
    assert len(store.measurements()) == 10
    # nothing noisy is left: a second run measures nothing and the history stays as it was
    again = sweep(store, remeasure="noisy")
    assert CALLS == [] and sum(again.measured.values()) == 0 and len(store.history()) == 3


@pytest.mark.parametrize("mode, expected", [
    ("none", set()),
    ("noisy", {"toy[width=1]@64", "toy[width=1]@128", "llm-a x4"}),
    ("contended", {"toy[width=1]@128", "toy[width=2]@64"}),
    ("flagged", {"toy[width=1]@64", "toy[width=1]@128", "toy[width=2]@64", "llm-a x4"}),
    ("all", EVERYTHING),
])
def test_each_remeasure_mode_selects_its_set(flagged_store, mode, expected):
    plan = plan_sweep(space(), SETTINGS, flagged_store, SweepOptions(remeasure=mode), BACKEND)
    assert {j.label for j in plan.todo} == expected and plan.remeasured == len(expected)
    if mode != "none":
        assert f"sweep.remeasure={mode}: {len(expected)} stored value(s) measured again" in plan.describe()
    # without resume everything is measured again, whatever the mode
    fresh = plan_sweep(space(), SETTINGS, flagged_store, SweepOptions(remeasure=mode, resume=False), BACKEND)
    assert {j.label for j in fresh.todo} == EVERYTHING


def test_remeasure_leaves_failures_to_retry_failed(flagged_store):
    enc = [m for m in flagged_store.measurements(kind="encoder") if m.inputs["knobs"]["width"] == 2][0]
    flagged_store.save_measurement(MeasurementRecord(**{**enc.__dict__, "status": "failed", "payload": None,
                                                        "error": "RuntimeError: x", "id": None}))
    plan = plan_sweep(space(), SETTINGS, flagged_store, SweepOptions(remeasure="all"), BACKEND)
    assert len(plan.todo) == 9  # every ok value; the stored failure waits for sweep.retry_failed
    plan = plan_sweep(space(), SETTINGS, flagged_store, SweepOptions(remeasure="all", retry_failed=True), BACKEND)
    assert len(plan.todo) == 10


def test_summary_marks_flagged_values_and_a_legend_only_when_one_is(flagged_store):
    text = sweep(flagged_store).format(flagged_store)  # nothing left to measure: the summary of the first sweep
    assert CALLS == []
    # the fastest points are width 1: at 64 px a noisy encoder and prefill, at 128 px an encoder
    # both noisy and contended (preprocessing clean in both)
    table, legend = results.summary_table(results.load(flagged_store), "toy")
    lines = table.splitlines()
    assert len(lines) == 3 and '{"width":1}' in lines[1] and '{"width":1}' in lines[2]
    assert lines[1].split()[-5:] == ["2.0", "6.4~", "0.10", "4.0~", "12.5~"]
    assert lines[2].split()[-5:] == ["2.0", "12.8~!", "0.10", "16.0", "30.9~!"]  # TTFT takes its parts' marks
    assert legend in text and text.index(legend) > text.index(lines[2])  # under the table
    assert "~ = its 95% CI missed the target" in legend and "! = measured while other processes" in legend
    assert legend.endswith("python -m explorer sweep +space=toy sweep.remeasure=flagged")
    assert "3 of 4 points have a noisy or contended value (3 noisy, 2 contended" in text
    # after re-measuring everything flagged nothing is marked and no legend is printed
    clean = sweep(flagged_store, remeasure="flagged").format(flagged_store)
    table, legend = results.summary_table(results.load(flagged_store), "toy")
    assert legend is None and "~" not in table and "!" not in table
    assert "~" not in clean and "Re-measure" not in clean and "noisy or contended" not in clean


def test_legend_names_only_the_marks_present():
    df = pd.DataFrame([{"llm": "l", "resolution": 64, "encoder": "e", "knobs": "{}", "visual_tokens": 4,
                        "preprocess_ms": float("nan"), "encoder_latency_ms": 1.0, "projector_latency_ms": 0.5,
                        "prefill_latency_ms": 2.0, "ttft_ms": 3.5, "status": "ok", "ttft_includes_preprocess": False,
                        "encoder_noisy": False, "encoder_contended": True, "projector_noisy": False,
                        "projector_contended": False, "prefill_noisy": False, "prefill_contended": False}])
    table, legend = results.summary_table(df, "s")
    row = table.splitlines()[1].split()
    assert row[-4:] == ["1.0!", "0.50", "2.0", "3.5!"]
    assert legend.startswith("! = measured while other processes") and "~" not in legend
    assert legend.endswith("python -m explorer sweep +space=s sweep.remeasure=contended")


def test_the_html_report_counts_flagged_points_and_marks_hover_text(flagged_store):
    df = results.load(flagged_store)
    page = render_report(df, title="t")
    assert "3 of 4 points have a noisy or contended value" in page
    from explorer.analysis.plots import hover_text

    hover = hover_text(df).tolist()
    by_key = dict(zip(df.point_key, hover))
    a, d = _row(df, 1, 128), _row(df, 2, 128)
    assert "CI missed its target: encoder" in by_key[a.point_key]
    assert "measured under contention: encoder (1.5 other cores busy)" in by_key[a.point_key]
    assert "vision encoder 12.8~!" in by_key[a.point_key]
    assert "~" not in by_key[d.point_key] and "contention" not in by_key[d.point_key]
    sweep(flagged_store, remeasure="flagged")
    assert "noisy or contended" not in render_report(results.load(flagged_store), title="t")


def test_an_older_store_opens_and_gains_the_history_table(tmp_path):
    store = Store(tmp_path / "v3")
    sweep(store)
    rec = store.measurements(kind="encoder")[0]
    store.close()
    db = sqlite3.connect(tmp_path / "v3" / "store.db")  # as a version-3 explorer left it
    db.execute("DROP TABLE measurement_history")
    db.execute("UPDATE explorer_meta SET value='3' WHERE key='schema_version'")
    db.commit()
    db.close()
    with Store(tmp_path / "v3", create=False) as old:  # reading needs no upgrade
        assert old.schema_version() == 3 and old.history() == [] and len(results.load(old)) == 4
    with Store(tmp_path / "v3") as st:
        assert st.schema_version() == SCHEMA_VERSION == 4
        assert "measurement_history" in set(st.iter_tables())
        st.save_measurement(MeasurementRecord(**{**rec.__dict__, "payload": {"latency": None}, "id": None}))
        (old,) = st.history()
        assert old.payload == rec.payload and old.superseded_at is not None


@pytest.mark.timeout(120)  # a refusal, not a hang
def test_a_bad_remeasure_value_is_refused_naming_the_field(tmp_path, capsys, monkeypatch):
    with pytest.raises(OptionError, match=r"invalid sweep\.remeasure='bogus': one of none, noisy, contended, "
                                          r"flagged, all"):
        SweepOptions(remeasure="bogus")
    with pytest.raises(OptionError, match="sweep.remeasure"):
        SweepOptions(remeasure=True)
    monkeypatch.chdir(tmp_path)
    assert sweep_cmd.main(["+space=fastvithd", "sweep.remeasure=bogus", "sweep.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "invalid sweep.remeasure='bogus'" in err and "flagged" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_a_search_refuses_remeasure_before_any_work(tmp_path):
    # a search measures each proposed point once: remeasure would re-measure a flagged factor only
    # when a new point happened to share it, so it is refused rather than half-honoured
    with pytest.raises(OptionError, match=r"invalid sweep\.remeasure='flagged': none for a search"):
        F.search(space(), SETTINGS, tmp_path / "s", trials=2, sampler="random", remeasure="flagged")
    assert not (tmp_path / "s").exists()
