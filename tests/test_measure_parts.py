"""measure_encoder / measure_projector / measure_point on small models, and the TTFT sum."""
import pytest
import torch

from explorer.measure.costs import EncoderCost, PrefillCost, ProjectorCost, Timing
from explorer.measure.encoder import measure_encoder
from explorer.measure.flops import count_flops
from explorer.measure.prefill import prefill_flops
from explorer.measure.projector import measure_projector, projector_flops
from explorer.measure.settings import MeasureSettings
from explorer.measure.ttft import TTFTBreakdown, measure_point
from explorer.models.llm import LLMSpec
from explorer.models.projector import MLP2xGelu

FAST = MeasureSettings(device="cpu", threads=1, warmup_s=0.0, warmup_iters=1, min_iters=3, max_iters=6,
                       max_time_s=1.0, target_rel_ci=0.2)
SMALL_ENCODER = {"width_mult": 0.25, "depth_mult": 0.25}
SMALL_LLM = LLMSpec("small", "qwen2", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=256,
                    tied_embeddings=True, rope_theta=1e6, rms_eps=1e-6, qkv_bias=True, max_position=512)


def test_projector_module_and_counts():
    proj = MLP2xGelu(48, 32)
    assert [type(m).__name__ for m in proj.children()] == ["Linear", "GELU", "Linear"]
    assert proj.fc1.bias is not None and proj.fc2.bias is not None
    assert proj.num_params() == MLP2xGelu.params_for(48, 32) == 48 * 32 + 32 + 32 * 32 + 32
    x = torch.randn(1, 10, 48)
    assert proj(x).shape == (1, 10, 32)
    assert count_flops(proj, x).gflops == pytest.approx(projector_flops(48, 32, 10), rel=1e-12)
    assert projector_flops(48, 32, 10) * 1e9 == pytest.approx(2 * 10 * (48 * 32 + 32 * 32))
    with pytest.raises(ValueError, match="hidden=0"):
        MLP2xGelu(48, 0)


def test_measure_projector():
    cost = measure_projector(3072, 896, 16, FAST)
    assert isinstance(cost, ProjectorCost)
    assert cost.params_m == pytest.approx((3072 * 896 + 896 + 896 * 896 + 896) / 1e6)
    assert cost.gflops == pytest.approx(2 * 16 * (3072 * 896 + 896 * 896) / 1e9)
    assert isinstance(cost.latency, Timing) and cost.latency.median_ms > 0
    assert ProjectorCost.from_dict(cost.to_dict()) == cost
    assert measure_projector(3072, 896, 16, FAST, time=False).latency is None
    with pytest.raises(ValueError, match="tokens=0"):
        measure_projector(3072, 896, 0, FAST)


def test_measure_encoder_small_fastvithd():
    cost = measure_encoder("fastvithd", SMALL_ENCODER, 128, FAST)
    assert isinstance(cost, EncoderCost)
    assert cost.visual_tokens == 4  # ceil(128 / 64) ** 2
    assert cost.out_channels == 768
    assert cost.knobs == SMALL_ENCODER and cost.resolution == 128
    assert cost.gflops > 0 and cost.params_m > 0
    assert isinstance(cost.latency, Timing) and cost.latency.n >= 1
    assert cost.peak_mem_method.startswith("cpu:")
    assert cost.peak_mem_mb * 2**20 > cost.params_m * 1e6 * 4  # at least the fp32 weights
    assert "gelu" in cost.skipped_ops
    # the meta-device counter gives the same FLOPs without a forward pass
    fast = measure_encoder("fastvithd", SMALL_ENCODER, 128, FAST, time=False, counter="torch")
    assert fast.gflops == pytest.approx(cost.gflops, rel=1e-9)
    assert fast.latency is None and fast.peak_mem_mb is None
    assert EncoderCost.from_dict(cost.to_dict()) == cost
    with pytest.raises(ValueError, match="width_mult"):
        measure_encoder("fastvithd", {"width_mult": -1}, 128, FAST)


def test_reparameterize_setting_changes_params():
    folded = measure_encoder("fastvithd", SMALL_ENCODER, 64, FAST, time=False, counter="torch")
    train_form = measure_encoder("fastvithd", SMALL_ENCODER, 64, FAST.replace(reparameterize=False),
                                 time=False, counter="torch")
    assert train_form.params_m > folded.params_m  # multi-branch blocks fold away


def _timing(ms):
    return Timing(median_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, cv=0.0, n=5, ci_low_ms=ms, ci_high_ms=ms,
                  noisy=False)


def test_ttft_breakdown_sums_parts():
    enc = EncoderCost("e", {}, 256, 16, 3072, 100.0, 30.0, _timing(200.0), None, "not-measured")
    proj = ProjectorCost(3072, 896, 16, 3.5, 0.1, _timing(1.5))
    pre = PrefillCost("qwen2-0.5b", 48, 494.0, 35.0, _timing(50.0), "whole-model")
    b = TTFTBreakdown.from_costs(enc, proj, pre)
    assert b.ttft_ms == 251.5 and b.ttft_gflops == pytest.approx(65.1)
    assert (b.visual_tokens, b.prefill_tokens, b.prefill_method, b.noisy) == (16, 48, "whole-model", False)
    untimed = TTFTBreakdown.from_costs(enc, ProjectorCost(3072, 896, 16, 3.5, 0.1, None), pre)
    assert untimed.ttft_ms is None and untimed.projector_ms is None


def test_measure_point_small():
    b = measure_point("fastvithd", SMALL_ENCODER, 128, SMALL_LLM, 12, FAST)
    assert b.visual_tokens == 4 and b.prefill_tokens == 16
    assert b.prefill_gflops == pytest.approx(prefill_flops(SMALL_LLM, 16))
    assert b.projector_gflops == pytest.approx(projector_flops(768, 64, 4))
    # Preprocessing (default: PIL from a 1920x1080 source) is measured and counted (docs/measurement.md).
    assert b.includes_preprocess and b.preprocess_ms > 0
    assert b.ttft_ms == pytest.approx(b.preprocess_ms + b.encoder_ms + b.projector_ms + b.prefill_ms)
    assert b.ttft_gflops == pytest.approx(b.encoder_gflops + b.projector_gflops + b.prefill_gflops)
    with pytest.raises(ValueError, match="text_tokens=-1"):
        measure_point("fastvithd", SMALL_ENCODER, 128, SMALL_LLM, -1, FAST)
