"""The redesigned engine leaves exactly the store rows the engine before it left.

tests/data/default_space_rows.json was written by the pre-redesign sweep engine (see
tests/engine_golden.py) on the default space with a deterministic backend; this sweep must store
the same measurements (kind, key, environment, inputs, status, payload) and points.
"""
import json

import engine_golden as G
import sweep_fakes as F
from explorer.data.space import load_space
from explorer.data.store import Store
from explorer.engine.backend import FixedEnvironment, MeasureBackend
from explorer.engine.options import SweepOptions
from explorer.engine.sweep import run_sweep
from explorer.measure.settings import MeasureSettings


def test_default_space_rows_equal_the_pre_redesign_engine():
    backend = MeasureBackend(measure_encoder=G.measure_encoder, measure_projector=G.measure_projector,
                             measure_prefill=G.measure_prefill, environment=FixedEnvironment(F.FakeEnv()))
    store = Store("sqlite://")
    report = run_sweep(load_space("fastvithd"), MeasureSettings(device="cpu"), store,
                       SweepOptions(isolation="inline", progress=False), backend)
    assert not report.failures
    expected = json.loads(G.GOLDEN.read_text())
    got = json.loads(json.dumps(G.store_rows(store)))
    assert len(got["measurements"]) == len(expected["measurements"]) == 27
    assert len(got["points"]) == len(expected["points"]) == 18
    assert got["points"] == expected["points"]
    # Payloads are the cost dataclasses' to_dict(); fields added to those classes since (runtime,
    # preprocessing, LM-head convention) appear as new keys, every key of then keeps its value.
    # Timings gained the contention seen while they were taken; these fakes report none, so the
    # new timing fields hold their "not observed" defaults.
    added, timing_added = set(), set()
    for new, old in zip(got["measurements"], expected["measurements"]):
        assert new[:5] == old[:5] and new[6:] == old[6:]
        new_payload, old_payload = json.loads(new[5]), json.loads(old[5])
        new_latency, old_latency = new_payload.get("latency"), old_payload.get("latency")
        assert (new_latency is None) == (old_latency is None)
        if old_latency is not None:
            assert {k: new_latency[k] for k in old_latency} == old_latency
            extra = {k: v for k, v in new_latency.items() if k not in old_latency}
            # fields added since: contention and probe records (unobserved here) and the
            # re-measurement interval (issue 25), which must bracket the unchanged median
            interval = {k: extra.pop(k) for k in ("remeasure_low_ms", "remeasure_high_ms", "remeasure_level")}
            assert extra == {"other_cores": None, "steal": None, "contended": False, "probe_ms": None,
                             "probe_units": None, "probe_p10_ms": None, "probe_p90_ms": None}
            if interval["remeasure_level"] is not None:  # stored by time_callable; None from summarize alone
                assert interval["remeasure_low_ms"] <= old_latency["median_ms"] <= interval["remeasure_high_ms"]
                assert 0 < interval["remeasure_level"] < 1
            extra.update(interval)
            timing_added |= set(extra)
        assert {k: new_payload[k] for k in old_payload if k != "latency"} == \
            {k: v for k, v in old_payload.items() if k != "latency"}
        added |= set(new_payload) - set(old_payload)
    assert added <= {"runtime", "runtime_error", "preprocess", "preprocess_latency", "lm_head", "attention"}
    assert timing_added == {"other_cores", "steal", "contended", "probe_ms", "probe_units", "probe_p10_ms",
                            "probe_p90_ms", "remeasure_low_ms", "remeasure_high_ms", "remeasure_level"}
