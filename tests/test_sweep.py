"""The sweep engine with fast fakes: factorisation, failures, resume, timeouts, Ctrl-C, results."""
from __future__ import annotations

import os
import signal

import pandas as pd
import pytest

import sweep_fakes as F
from explorer.data import results
from explorer.measure.settings import MeasureSettings
from explorer.data.space import enumerate_points, load_space
from explorer.data.store import Store
from explorer.engine.options import SweepOptions
from explorer.engine.sweep import plan_sweep, run_sweep

SETTINGS = MeasureSettings(device="cpu")


def space(**extra):
    raw = {"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2], "depth": [1, 2]}}},
           "resolutions": [64, 128], "llms": ["llm-a", "llm-b"], "text_tokens": [0, 8]}
    raw.update(extra)
    return load_space(raw, shape_fn=F.shape, check_models=False)


def sweep(sp, store, **kw):
    return F.run(sp, SETTINGS, store, **kw)


@pytest.fixture(autouse=True)
def _reset_calls():
    F.CALLS.clear()
    yield


def test_factorised_measurement_counts(tmp_path):
    sp = space()
    points = enumerate_points(sp, shape_fn=F.shape)
    assert len(points) == 32
    report = sweep(sp, Store(tmp_path / "r"))
    # encoders: unique (config, resolution) = 4 configs x 2 res, whatever the LLM / prompt
    enc = {(p.encoder, p.knobs, p.resolution) for p in points}
    # projectors: unique (channels, hidden, tokens); fake channels = 64*width, tokens = (res/32)^2
    proj = {(64 * dict(p.knobs)["width"], F.LLM_HIDDEN[p.llm], (p.resolution // 32) ** 2) for p in points}
    # prefills: unique (llm, visual + text tokens)
    pre = {(p.llm, (p.resolution // 32) ** 2 + p.text_tokens) for p in points}
    assert (len(enc), len(proj), len(pre)) == (8, 8, 8)
    assert F.CALLS == {"encoder": len(enc), "projector": len(proj), "prefill": len(pre)}
    assert report.measured == {"encoder": 8, "projector": 8, "prefill": 8}
    assert report.unique == {"encoder": 8, "projector": 8, "prefill": 8}
    assert report.n_points == 32 and not report.failures and not report.interrupted


def test_results_table_columns_and_ttft(tmp_path):
    store = Store(tmp_path / "r")
    sweep(space(), store)
    df = results.load(tmp_path / "r")
    assert list(df.columns) == list(results.COLUMNS + results.EXTRA_COLUMNS)
    assert len(df) == 32 and df["point_key"].is_unique and (df["status"] == "ok").all()
    row = df[(df.resolution == 128) & (df.llm == "llm-b") & (df.text_tokens == 8)].iloc[0]
    assert row.visual_tokens == 16 and row.prefill_tokens == 24
    assert row.encoder_latency_ms == pytest.approx(12.8) and row.prefill_latency_ms == pytest.approx(24.0)
    assert row.ttft_ms == pytest.approx(12.8 + 0.1 + 24.0)
    assert row.ttft_gflops == pytest.approx(1.28 + 0.001 + 24 * 0.2)
    assert row.device == "fake" and row.threads == 1 and row.space == "toy" and row.env_key == "fake-env"
    assert isinstance(row.measured_at, pd.Timestamp)
    assert row.error is None or pd.isna(row.error)
    # the same through a .db path and a URL
    assert len(results.load(tmp_path / "r" / "store.db")) == 32
    assert len(results.load(store.url)) == 32
    best = results.fastest_per_resolution(df)
    assert len(best) == 4 and set(best.llm) == {"llm-a", "llm-b"}


def test_failure_is_isolated(tmp_path):
    sp = space(encoders={"toy": {"knobs": {"width": [1], "fail": [False, True]}}})
    store = Store(tmp_path / "r")
    report = sweep(sp, store)
    assert len(report.failures) == 2 and {f["status"] for f in report.failures} == {"failed"}
    assert all("RuntimeError: boom" in f["error"] for f in report.failures)
    df = results.load(tmp_path / "r")
    bad = df[df.knobs.str.contains('"fail":true')]
    good = df[~df.knobs.str.contains('"fail":true')]
    assert len(bad) == len(good) == 8
    assert (bad.status == "failed").all() and bad.error.str.startswith("encoder: RuntimeError: boom").all()
    assert bad.ttft_ms.isna().all() and bad.encoder_latency_ms.isna().all()
    assert bad.prefill_latency_ms.notna().all()  # the other factors were still measured
    assert (good.status == "ok").all() and good.ttft_ms.notna().all()
    # a stored failure is not retried on resume unless asked
    F.CALLS.clear()
    sweep(sp, store)
    assert F.CALLS["encoder"] == 0
    report = sweep(sp, store, retry_failed=True)
    assert F.CALLS["encoder"] == 2 and report.measured["encoder"] == 2


def test_resume_measures_nothing_and_keeps_rows(tmp_path):
    sp = space()
    store = Store(tmp_path / "r")
    sweep(sp, store)
    before = {(m.kind, m.key): (m.id, m.finished_at) for m in store.measurements()}
    F.CALLS.clear()
    report = sweep(sp, store)
    assert sum(F.CALLS.values()) == 0 and sum(report.measured.values()) == 0 and report.skipped == 24
    assert {(m.kind, m.key): (m.id, m.finished_at) for m in store.measurements()} == before
    # resume=False re-measures everything in place (same rows, new timestamps)
    report = sweep(sp, store, resume=False)
    assert sum(F.CALLS.values()) == 24
    after = {(m.kind, m.key): (m.id, m.finished_at) for m in store.measurements()}
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert all(after[k][1] > before[k][1] for k in before)


def test_growing_the_space_measures_only_the_new_parts(tmp_path):
    store = Store(tmp_path / "r")
    sweep(space(), store)
    F.CALLS.clear()
    report = sweep(space(llms=["llm-a", "llm-b"], resolutions=[64, 128, 256]), store)
    # new: 4 encoders at 256; projectors (2 widths x 2 hiddens) at 64 tokens; prefills 2 llms x (64, 72)
    assert F.CALLS == {"encoder": 4, "projector": 4, "prefill": 4}
    assert report.skipped == 24


def test_environments_are_not_mixed(tmp_path):
    store = Store(tmp_path / "r")
    sweep(space(), store)
    F.CALLS.clear()
    sweep(space(), store, environment=F.FakeEnv(key="other-env"))
    assert sum(F.CALLS.values()) == 24  # a new environment measures everything again
    with pytest.warns(UserWarning, match="2 environments"):
        latest = results.load(tmp_path / "r")
    assert len(latest) == 32 and set(latest.env_key) == {"other-env"}
    both = results.load(tmp_path / "r", env="all")
    assert len(both) == 64 and both.groupby("point_key").env_key.nunique().eq(2).all()
    assert set(results.load(tmp_path / "r", env="fake-env").env_key) == {"fake-env"}


def test_timeout_with_alarm_and_oom_are_recorded(tmp_path):
    sp = space(encoders={"toy": {"knobs": {"width": [1]}}}, resolutions=[64], llms=["llm-a"], text_tokens=[0])
    store = Store(tmp_path / "r")
    returned = []

    def hang(*args, **kwargs):
        F.hang(*args, **kwargs)
        returned.append(True)  # reached only if the alarm did not cut the 60 s hang

    report = sweep(sp, store, isolation="alarm", timeout_s=0.3, measure_encoder=hang, measure_prefill=F.raise_oom)
    assert returned == []
    status = {f["kind"]: f["status"] for f in report.failures}
    assert status == {"encoder": "timeout", "prefill": "oom"}
    df = results.load(tmp_path / "r")
    assert df.status.iloc[0] == "oom"  # the worst part names the row's status
    assert "encoder: MeasurementTimeout" in df.error.iloc[0] and "prefill: MemoryError" in df.error.iloc[0]


def test_process_isolation_kills_a_hung_measurement(tmp_path):
    # jobs in order: encoder, projector (hangs: the worker is killed), prefill x2 (a new worker)
    sp = space(encoders={"toy": {"knobs": {"width": [1]}}}, resolutions=[64], llms=["llm-a"], text_tokens=[0, 8])
    store = Store(tmp_path / "r")
    report = sweep(sp, store, isolation="process", timeout_s=1.5, measure_projector=F.hang)
    assert [(f["kind"], f["status"]) for f in report.failures] == [("projector", "timeout")]
    assert "worker process killed" in report.failures[0]["error"]
    assert report.measured == {"encoder": 1, "projector": 1, "prefill": 2}
    df = results.load(tmp_path / "r")
    assert set(df.status) == {"timeout"} and df.encoder_latency_ms.notna().all()
    assert df.prefill_latency_ms.notna().all()


def _interrupting_encoder(name, knobs, resolution, settings, time=True):
    """Sends Ctrl-C to this process while measuring the second encoder."""
    if F.CALLS["encoder"] == 1:
        os.kill(os.getpid(), signal.SIGINT)
    return F.measure_encoder(name, knobs, resolution, settings)


def test_ctrl_c_stops_after_the_group_in_flight(tmp_path):
    # interleaved groups: the eight encoders are one group, built and timed together; Ctrl-C
    # during the second lets the group finish, stores all eight, and stops before the projectors
    sp = space()
    store = Store(tmp_path / "r")
    report = sweep(sp, store, measure_encoder=_interrupting_encoder, isolation="inline")
    assert report.interrupted and F.CALLS["encoder"] == 8
    assert {m.kind for m in store.measurements()} == {"encoder"} and len(store.measurements()) == 8
    assert report.remaining == 24 - 8


def test_ctrl_c_stops_after_the_measurement_in_flight(tmp_path):
    sp = space()
    store = Store(tmp_path / "r")
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a background job
    report = sweep(sp, store, measure_encoder=_interrupting_encoder, interleave=1)
    assert report.interrupted and report.remaining > 0
    assert F.CALLS["encoder"] == 2  # the one in flight finished ...
    stored = store.measurements()
    assert sum(m.kind == "encoder" for m in stored) == 2  # ... and was stored
    assert sum(report.measured.values()) == len(stored)
    assert signal.getsignal(signal.SIGINT) is before  # the handler the sweep found, restored
    report = sweep(sp, store)
    assert not report.interrupted and len(store.measurements()) == 24
    assert report.skipped == len(stored)


def test_max_measurements_and_pending_rows(tmp_path):
    store = Store(tmp_path / "r")
    report = sweep(space(), store, max_measurements=3)
    assert sum(report.measured.values()) == 3 and report.remaining == 21
    df = results.load(tmp_path / "r")
    assert len(df) == 32  # every point is listed from the start
    # in point order: the first point's encoder, projector and prefill -> one complete point
    assert (df.status == "ok").sum() == 1 and (df.status == "pending").sum() == 31
    assert df[df.status == "pending"].ttft_ms.isna().all()


def test_plan_counts_and_estimate(tmp_path):
    store = Store(tmp_path / "r")
    plan = plan_sweep(space(), SETTINGS, store, SweepOptions(), F.BACKEND)
    assert plan.counts() == {k: {"unique": 8, "stored": 0, "to_measure": 8} for k in ("encoder", "projector", "prefill")}
    text = plan.describe()
    assert "32 design points" in text and "unique measurements: 24" in text and "estimated time: about" in text
    assert plan.estimated_seconds() > 0 and set(plan.estimate_basis.values()) == {"model"}
    sweep(space(), store, max_measurements=5)
    plan = plan_sweep(space(), SETTINGS, store, SweepOptions(), F.BACKEND)
    assert sum(v["stored"] for v in plan.counts().values()) == 5 and len(plan.todo) == 19


def test_accuracy_joins_by_point_and_by_fields(tmp_path):
    store = Store(tmp_path / "r")
    sp = space(encoders={"toy": {"knobs": {"width": [1]}}, "toy2": {}}, llms=["llm-a"], text_tokens=[0])
    sweep(sp, store)
    df = results.load(tmp_path / "r")
    p_toy = df[(df.encoder == "toy") & (df.resolution == 64)].iloc[0]
    store.add_accuracy(55.0, "trained", point_key=p_toy.point_key)
    store.add_accuracy(40.0, "paper", encoder="toy2", resolution=128)  # default knobs, any llm
    df = results.load(tmp_path / "r").set_index(["encoder", "resolution"])
    assert df.loc[("toy", 64), "accuracy"] == 55.0 and df.loc[("toy", 64), "accuracy_source"] == "trained"
    assert df.loc[("toy2", 128), "accuracy"] == 40.0
    # the rest is predicted, and says so (an unknown family: extrapolated)
    for key in (("toy", 128), ("toy2", 64)):
        assert df.loc[key, "accuracy_source"].startswith("predicted:") and df.loc[key, "accuracy_extrapolated"]
        assert df.loc[key, "accuracy_low"] < df.loc[key, "accuracy"] < df.loc[key, "accuracy_high"]
    bare = results.load(tmp_path / "r", predict_accuracy=False).set_index(["encoder", "resolution"])
    assert pd.isna(bare.loc[("toy", 128), "accuracy"]) and pd.isna(bare.loc[("toy2", 64), "accuracy"])


def test_report_text(tmp_path):
    store = Store(tmp_path / "r")
    report = sweep(space(encoders={"toy": {"knobs": {"width": [1], "fail": [False, True]}}}), store)
    text = report.format(store)
    assert "fastest point at each resolution, per LLM" in text and "failed: encoder toy" in text
    assert f"results: {store.url}" in text


def test_end_to_end_with_the_real_measurements(tmp_path):
    """run_sweep as a notebook calls it: real FastViTHD (tiny knobs) and a 2-layer Qwen2 config."""
    from explorer.measure.costs import EncoderCost, PrefillCost, ProjectorCost

    llm = tmp_path / "llm.json"
    llm.write_text('{"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, '
                   '"num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, '
                   '"tie_word_embeddings": true}')
    sp = load_space({"name": "tiny", "encoders": {"fastvithd": {"knobs": {"width_mult": 0.25, "depth_mult": 0.25}}},
                     "resolutions": [64], "llms": [str(llm)], "text_tokens": [3]})
    settings = MeasureSettings(device="cpu", threads=1, warmup_s=0.0, warmup_iters=1, min_iters=2, max_iters=3,
                               max_time_s=0.2)
    store = Store(tmp_path / "r")
    report = run_sweep(sp, settings, store, SweepOptions(isolation="inline", progress=False))
    assert not report.failures and report.measured == {"encoder": 1, "projector": 1, "prefill": 1}
    by_kind = {m.kind: m for m in store.measurements()}
    enc = EncoderCost.from_dict(by_kind["encoder"].payload)
    assert enc.visual_tokens == 1 and enc.knobs == {"depth_mult": 0.25, "width_mult": 0.25} and enc.latency.n >= 1
    proj = ProjectorCost.from_dict(by_kind["projector"].payload)
    assert (proj.in_channels, proj.hidden, proj.tokens) == (enc.out_channels, 64, 1)
    assert PrefillCost.from_dict(by_kind["prefill"].payload).tokens == 4
    env = by_kind["encoder"].environment
    assert env["threads"] == 1 and env["device_type"] == "cpu" and by_kind["encoder"].env_key == report.env_key
    row = results.load(tmp_path / "r").iloc[0]
    assert row.status == "ok" and row.ttft_ms == pytest.approx(
        row.preprocess_ms + enc.latency.median_ms + proj.latency.median_ms + row.prefill_latency_ms)
    assert row.preprocess_ms == pytest.approx(enc.preprocess_latency.median_ms)
    assert row.encoder_params_m == pytest.approx(enc.params_m) and row.prefill_method == "whole-model"


def test_a_killed_worker_is_stored_as_killed_and_resume_retries_it(tmp_path):
    from explorer.engine.sweep.isolation import oom_kill_count

    sp = space(encoders={"toy": {"knobs": {"width": [1]}}}, resolutions=[64], llms=["llm-a"], text_tokens=[0])
    store = Store(tmp_path / "r")
    before = oom_kill_count()
    report = sweep(sp, store, isolation="process", timeout_s=60, measure_encoder=F.kill_self)
    (fail,) = report.failures
    if before is not None and (oom_kill_count() or 0) > before:  # pragma: no cover - the machine ran out of memory
        pytest.skip("the OOM killer acted during the test")
    assert fail["status"] == "killed" and "SIGKILL" in fail["error"]
    assert {m.kind: m.status for m in store.measurements()}["encoder"] == "killed"
    again = sweep(sp, store)  # no retry_failed: killed is not a verdict on the point, so it is measured again
    assert again.measured["encoder"] == 1 and not again.failures
    assert {m.kind: m.status for m in store.measurements()}["encoder"] == "ok"
