"""The cost model (explorer.predict): traces against hand counts, the roofline arithmetic by hand,
device profiles (shipped, unknown, malformed), calibration, and predicted rows kept apart."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from explorer.predict import (ProfileError, check_single_source, list_profiles, load_profile,
                              mark_measured, predict_trace, profile_from_dict, side_by_side, trace_module)
from explorer.predict.calibrate import FitOptions, fit_profile
from explorer.predict.model import op_seconds
from explorer.predict.observations import Observation
from explorer.predict.profile import profile_to_dict, write_profile
from explorer.predict.trace import OpRecord, trace_callable, trace_encoder, trace_prefill
from explorer.predict.validate import error_summary, spearman


@pytest.fixture(autouse=True)
def _no_trace_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPLORER_TRACE_CACHE", "off")


def _meta(module: nn.Module) -> nn.Module:
    return module.to("meta").eval()


def _x(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def _hand_profile(**over) -> dict:
    data = {
        "name": "hand", "description": "a device with round numbers", "kind": "cpu",
        "cores": {"value": 1, "source": "test"}, "threads": 1,
        "peak_flops": {"float32": {"value": 1e12, "source": "test"}},
        "memory_bandwidth": {"value": 1e11, "source": "test"},
        "overhead_s": {"value": 1e-6, "source": "test"},
        "efficiency": {"source": "test",
                       "compute": {"conv_dense": 0.5, "conv_grouped": 0.25, "matmul": 0.5, "attention": 0.5},
                       "memory": {c: 1.0 for c in ("conv_dense", "conv_grouped", "matmul", "attention", "norm",
                                                   "elementwise", "copy")}},
        "interval": {"low": 0.8, "high": 1.25, "source": "test"}, "calibration": None}
    data.update(over)
    return data


# ---------------------------------------------------------------------------- traces by hand

def test_linear_trace_matches_hand_count():
    # y = x W^T + b, x [1, 10, 64], W [32, 64]: 10*64*32 MACs; bytes = x + W + b + y (fp32)
    trace = trace_module(_meta(nn.Linear(64, 32)), _x(1, 10, 64))
    assert trace.ops == (OpRecord("matmul", "linear", 2.0 * 10 * 64 * 32, 4.0 * (10 * 64 + 32 * 64 + 32 + 10 * 32), 1),)


def test_conv_traces_match_hand_counts_and_classes():
    dense = trace_module(_meta(nn.Conv2d(3, 8, 3, padding=1, bias=False)), _x(1, 3, 16, 16))
    (rec,) = dense.ops
    assert (rec.op_class, rec.op) == ("conv_dense", "convolution")
    assert rec.flops == 2 * (8 * 16 * 16) * (3 * 3 * 3)              # every output: Cin * k * k MACs
    assert rec.bytes == 4 * (3 * 16 * 16 + 8 * 3 * 3 * 3 + 8 * 16 * 16)  # input + weight + output
    dw = trace_module(_meta(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)), _x(1, 8, 16, 16))
    (rec,) = dw.ops
    assert rec.op_class == "conv_grouped" and rec.flops == 2 * (8 * 16 * 16) * 9


def test_views_are_free_and_elementwise_counts_bytes():
    def f(x):
        return torch.nn.functional.gelu(x.view(4, 16).transpose(0, 1))
    trace = trace_callable(f, _x(64))
    assert [(r.op_class, r.op, r.flops, r.bytes) for r in trace.ops] == [("elementwise", "gelu", 0.0, 2 * 64 * 4.0)]


def test_block_replay_equals_full_trace():
    torch.manual_seed(0)
    blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GELU()) for _ in range(5)])
    model = _meta(blocks)
    replayed = trace_module(model, _x(1, 8, 12, 12))
    full = trace_callable(model, _x(1, 8, 12, 12))  # no block replay
    assert replayed == full
    assert sum(r.count for r in replayed.ops if r.op == "convolution") == 5


def test_encoder_trace_flops_equal_torch_counter():
    from explorer.measure.flops import count_flops_torch
    from explorer.models import build_encoder

    knobs = {"depths": [1, 1, 2, 1, 1], "widths": [16, 32, 64, 128, 128]}
    trace = trace_encoder("fastvithd", knobs, 128)
    with torch.device("meta"):
        model = build_encoder("fastvithd", **knobs)
    model.eval().reparameterize()
    assert trace.flops == pytest.approx(count_flops_torch(model, _x(1, 3, 128, 128)).gflops * 1e9, rel=1e-12)
    assert {r.op_class for r in trace.ops} >= {"conv_dense", "conv_grouped", "attention"}


def test_prefill_trace_flops_equal_analytic_formula():
    from explorer.measure.prefill import prefill_flops
    from explorer.models.llm import LLMSpec

    spec = LLMSpec(name="tiny", arch="qwen2", hidden=64, layers=3, heads=4, kv_heads=2, intermediate=128,
                   vocab=500, tied_embeddings=True, rope_theta=1e6, rms_eps=1e-6, qkv_bias=True, max_position=256)
    trace = trace_prefill(spec, 20)
    assert trace.flops == pytest.approx(prefill_flops(spec, 20) * 1e9, rel=1e-12)
    assert sum(r.count for r in trace.ops if r.op_class == "attention") == 3  # one fused kernel per layer


# ---------------------------------------------------------------------------- the roofline by hand

def test_roofline_memory_bound_small_linear():
    prof = profile_from_dict(_hand_profile())
    trace = trace_module(_meta(nn.Linear(64, 32)), _x(1, 10, 64))
    flops, nbytes = 2.0 * 10 * 64 * 32, 4.0 * (10 * 64 + 32 * 64 + 32 + 10 * 32)
    compute, memory = flops / (1e12 * 0.5), nbytes / 1e11      # 8.2e-8 s < 1.2e-7 s: memory-bound
    pred = predict_trace(trace, prof)
    assert memory > compute
    assert pred.seconds == pytest.approx(memory + 1e-6, rel=1e-12)
    assert pred.compute_bound_share == 0.0
    assert (pred.low_s, pred.high_s) == pytest.approx((0.8 * pred.seconds, 1.25 * pred.seconds))
    assert op_seconds("matmul", flops, nbytes, prof) == pytest.approx(pred.seconds)


def test_roofline_compute_bound_big_gemm():
    prof = profile_from_dict(_hand_profile())
    n = 1024
    trace = trace_callable(torch.mm, _x(n, n), _x(n, n))
    flops, nbytes = 2.0 * n ** 3, 3 * 4.0 * n * n
    pred = predict_trace(trace, prof)
    assert flops / (1e12 * 0.5) > nbytes / 1e11
    assert pred.seconds == pytest.approx(flops / 0.5e12 + 1e-6, rel=1e-12)
    assert pred.compute_bound_share == 1.0


# ---------------------------------------------------------------------------- profiles

def test_every_shipped_profile_loads_with_sources():
    names = list_profiles()
    for must in ("nvidia-h100-sxm", "nvidia-h200-sxm", "nvidia-a100-sxm-80gb", "nvidia-rtx-4090", "raspberry-pi-5",
                 "nvidia-jetson-agx-orin-64gb", "apple-m1-cpu", "apple-m1-gpu", "apple-m1-max-gpu", "apple-m2-gpu",
                 "apple-m3-cpu", "apple-a17-pro-ane", "xeon-avx512-1t"):
        assert must in names
    for name in names:
        prof = load_profile(name)
        assert prof.name == name
        assert all(s.source for s in [prof.cores, prof.memory_bandwidth, prof.overhead_s, *prof.peak_flops.values()])


def test_published_numbers_in_profiles():
    # vendor datasheets: H100 SXM 3.35 TB/s, H200 4.8 TB/s, A100 80GB SXM 2,039 GB/s; Apple: M1 GPU 2.6 TFLOPS
    assert load_profile("nvidia-h100-sxm").memory_bandwidth.value == 3.35e12
    assert load_profile("nvidia-h200-sxm").memory_bandwidth.value == 4.8e12
    assert load_profile("nvidia-a100-sxm-80gb").memory_bandwidth.value == 2039e9
    assert load_profile("apple-m1-gpu").peak("float32") == 2.6e12


def test_unknown_device_lists_known_ones():
    with pytest.raises(ProfileError) as err:
        load_profile("nvidia-h900")
    assert "nvidia-h900" in str(err.value) and "nvidia-h100-sxm" in str(err.value) and "raspberry-pi-5" in str(err.value)


@pytest.mark.parametrize("change, field", [
    (lambda d: d["memory_bandwidth"].pop("source"), "memory_bandwidth"),
    (lambda d: d["efficiency"]["compute"].__setitem__("matmul", 1.5), "efficiency.compute.matmul"),
    (lambda d: d["peak_flops"].__setitem__("float64", {"value": 1, "source": "x"}), "peak_flops.float64"),
    (lambda d: d.__setitem__("kind", "tpu"), "kind"),
    (lambda d: d["efficiency"]["memory"].pop("norm"), "efficiency.memory.norm"),
    (lambda d: d["cores"].__setitem__("value", -2), "cores.value"),
])
def test_malformed_profile_refused_naming_the_field(tmp_path: Path, change, field):
    data = _hand_profile()
    change(data)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    assert field in str(err.value) and "mine.yaml" in str(err.value)


def test_users_own_profile_file_round_trips(tmp_path: Path):
    prof = profile_from_dict(_hand_profile())
    path = write_profile(prof, tmp_path / "own.yaml")
    again = load_profile(str(path))
    assert profile_to_dict(again) == profile_to_dict(prof)


def test_dtype_without_a_peak_is_refused():
    with pytest.raises(ProfileError, match="peak_flops.bfloat16"):
        load_profile("apple-m1-cpu").peak("bfloat16")


# ---------------------------------------------------------------------------- calibration

def _true_device(conv_dense: float, matmul: float, elementwise: float, overhead_s: float):
    """The hand profile with known efficiencies and overhead: what a fit is asked to recover."""
    return profile_from_dict(_hand_profile(efficiency={
        "source": "truth",
        "compute": {"conv_dense": conv_dense, "conv_grouped": 0.1, "matmul": matmul, "attention": 0.5},
        "memory": {"conv_dense": 1.0, "conv_grouped": 1.0, "matmul": 1.0, "attention": 1.0, "norm": 1.0,
                   "elementwise": elementwise, "copy": 1.0}}, overhead_s={"value": overhead_s, "source": "truth"}))


def test_fit_recovers_the_times_of_a_known_device():
    true = _true_device(conv_dense=0.3, matmul=0.8, elementwise=0.4, overhead_s=5e-6)
    prior = profile_from_dict(_hand_profile())
    traces = []
    for c in (8, 16, 32):
        traces.append(trace_module(_meta(nn.Sequential(nn.Conv2d(c, 2 * c, 3), nn.GELU())), _x(1, c, 64, 64)))
        traces.append(trace_callable(torch.mm, _x(128 * c, 256), _x(256, 256)))
    obs = [Observation("encoder", str(i), str(i), "f", t, predict_trace(t, true).seconds, 0.0, 0.0)
           for i, t in enumerate(traces)]
    compute, memory, overhead = fit_profile(obs, prior, "float32", FitOptions(noise_sigma=0.01, iterations=200))
    fitted = prior.replace(compute_efficiency=compute, memory_efficiency=memory,
                           overhead_s=prior.overhead_s.__class__(overhead, "fit"))
    for o in obs:
        assert predict_trace(o.trace, fitted).seconds == pytest.approx(o.seconds, rel=0.02)
    assert compute["matmul"] == pytest.approx(0.8, rel=0.05) and compute["conv_dense"] == pytest.approx(0.3, rel=0.05)


def test_split_validate_recovers_a_known_device_and_scores_ttft_from_the_factors():
    from explorer.predict.validate import split_validate

    true = _true_device(conv_dense=0.4, matmul=0.7, elementwise=0.5, overhead_s=4e-6)
    prior = profile_from_dict(_hand_profile())
    obs, rows, factors = [], [], {}
    proj = trace_callable(torch.mm, _x(64, 256), _x(256, 256))
    pre = trace_callable(torch.mm, _x(512, 512), _x(512, 512))
    for name, t in (("projector", proj), ("prefill", pre)):
        obs.append(Observation(name, name, name, name, t, predict_trace(t, true).seconds, 0.0, 0.0))
    for i, c in enumerate((4, 8, 12, 16, 24, 32)):
        t = trace_module(_meta(nn.Sequential(nn.Conv2d(c, 2 * c, 3), nn.GELU())), _x(1, c, 48, 48))
        obs.append(Observation("encoder", f"e{i}", f"conv{c}@48", "conv", t, predict_trace(t, true).seconds, 0.0, 0.0))
        total_ms = sum(o.seconds for o in (obs[-1], obs[0], obs[1])) * 1e3
        # ttft_ms as a results table may hold it: with 1000 ms of preprocessing the model never predicts
        rows.append({"point_key": f"p{i}", "encoder": "conv", "knobs": "{}", "resolution": 48, "llm": "l",
                     "ttft_ms": total_ms + 1000.0})
        factors[f"p{i}"] = [f"e{i}", "projector", "prefill"]
    res = split_validate(obs, pd.DataFrame(rows), factors, prior, "float32", fraction=0.5, seed=0,
                         options=FitOptions(noise_sigma=0.01, iterations=200))
    s = res.summary()
    assert s["calibration_points"] == 3 and s["held_out_points"] == 3
    assert s["ttft"]["median_abs"] < 0.02 and s["encoder"]["max_abs"] < 0.05
    by_key = {o.key: o.seconds * 1e3 for o in obs}
    for _, r in res.points.iterrows():  # measured TTFT = the three observations, never the table's ttft_ms
        assert r.measured_ms == pytest.approx(sum(by_key[k] for k in factors[r.point_key]))


def test_probe_speed_rescales_each_median_to_the_runs_median_machine_speed(tmp_path: Path):
    from explorer.data.store import MeasurementRecord, Store
    from explorer.measure.settings import MeasureSettings, settings_digest
    from explorer.predict.observations import observations_from_store

    env = {"device": "cpu-x", "device_type": "cpu", "dtype": "float32", "threads": 1, "torch_version": "t",
           "settings_digest": settings_digest(MeasureSettings(device="cpu"))}
    store = Store(tmp_path / "s.db")
    # the same projector timed three times (keys differ by token count) while the machine ran at
    # probe times 2, 4 and 8 ms; probe_units = median / probe
    for tokens, median, probe in ((16, 10.0, 2.0), (32, 30.0, 4.0), (64, 40.0, 8.0)):
        store.save_measurement(MeasurementRecord(
            kind="projector", key=f"proj{tokens}", env_key="env", environment=env,
            inputs={"in_channels": 64, "hidden": 32, "tokens": tokens}, status="ok",
            payload={"latency": {"median_ms": median, "p10_ms": median * 0.9, "p90_ms": median * 1.1,
                                 "probe_ms": probe, "probe_units": median / probe}}))
    measured, _, _ = observations_from_store(store)
    scaled, _, _ = observations_from_store(store, speed="probe")
    store.close()
    assert [o.seconds * 1e3 for o in measured] == pytest.approx([10.0, 30.0, 40.0])
    # the median probe is 4 ms: 10/2*4, 30/4*4, 40/8*4
    assert [o.seconds * 1e3 for o in scaled] == pytest.approx([20.0, 30.0, 20.0])
    assert scaled[0].p90_s * 1e3 == pytest.approx(22.0)
    with pytest.raises(ValueError, match="invalid speed='fast'"):
        observations_from_store(tmp_path / "s.db", speed="fast")


def test_spearman_and_error_summary_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    s = error_summary([0.1, -0.3, 0.05, 0.2])
    assert s["median_abs"] == pytest.approx(0.15) and s["within_25"] == pytest.approx(0.75)


def test_pair_order_by_hand():
    from explorer.predict.validate import pair_order

    rows = pd.DataFrame({"measured_ms": [10.0, 11.0, 20.0, 40.0], "p10_ms": [9.0, 10.5, 19.0, 35.0],
                         "p90_ms": [12.0, 13.0, 22.0, 45.0], "predicted_ms": [12.0, 11.5, 25.0, 30.0]})
    # pairs: (10,11) ranges overlap and the prediction swaps them; (10,20) (10,40) (11,20) (11,40)
    # (20,40) are apart and all ordered right
    assert pair_order(rows) == {"separated": (5, 5), "overlapping": (0, 1)}
    rows.loc[3, "predicted_ms"] = 20.0  # now 40 ms is predicted below 20 ms's 25: one separated pair wrong
    assert pair_order(rows) == {"separated": (4, 5), "overlapping": (0, 1)}


# ---------------------------------------------------------------------------- never mixed

def _rows(source: str, ttft: float) -> pd.DataFrame:
    return pd.DataFrame([{"point_key": "k1", "encoder": "fastvithd", "knobs": "{}", "resolution": 256, "llm": "q",
                          "text_tokens": 32, "encoder_latency_ms": ttft / 2, "projector_latency_ms": 0.0,
                          "prefill_latency_ms": ttft / 2, "ttft_ms": ttft, "latency_source": source}])


def test_predicted_and_measured_rows_are_never_mixed():
    measured, predicted = _rows("measured", 100.0), _rows("predicted:hand", 80.0)
    with pytest.raises(ValueError, match="mixes latency sources"):
        check_single_source(pd.concat([measured, predicted]))
    with pytest.raises(ValueError):
        mark_measured(predicted)
    both = side_by_side(measured, predicted)
    assert list(both.ttft_ms_measured) == [100.0] and list(both.ttft_ms_predicted) == [80.0]
    assert both.ttft_ratio.iloc[0] == pytest.approx(0.8) and "ttft_ms" not in both.columns
    with pytest.raises(ValueError, match="must be measured"):
        side_by_side(predicted, predicted)


# ---------------------------------------------------------------------------- commands

def test_predict_command_unknown_device_and_tiny_space(tmp_path: Path, capsys: pytest.CaptureFixture):
    from explorer.cli import main

    assert main(["predict", "+space=fastvithd_proxy", "device=nvidia-h900", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nvidia-h100-sxm" in err and "Traceback" not in err
    assert main(["predict", "+space=fastvithd_proxy", "device=nvidia-h100-sxm", f"out={tmp_path}",
                 "report=false", "space.resolutions=[64]"]) == 0
    df = pd.read_csv(tmp_path / "predicted.csv")
    assert set(df.latency_source) == {"predicted:nvidia-h100-sxm"}
    assert (df.ttft_low_ms < df.ttft_ms).all() and (df.ttft_ms < df.ttft_high_ms).all()
    assert (df.ttft_ms == df.encoder_latency_ms + df.projector_latency_ms + df.prefill_latency_ms).all()


def test_calibrate_command_refuses_a_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture):
    from explorer.cli import main

    assert main(["calibrate", f"store={tmp_path / 'nowhere'}"]) == 2
    assert "no results database" in capsys.readouterr().err
