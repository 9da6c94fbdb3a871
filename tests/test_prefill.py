"""Prefill FLOPs (analytic vs counters) and prefill timing (whole model vs layer-sampled)."""
import json
import resource

import pytest
import torch

from explorer.measure.costs import PrefillCost
from explorer.measure.flops import count_flops_torch
from explorer.measure.prefill import (count_prefill_flops, measure_prefill, prefill_flops, prefill_macs,
                                      prefill_memory_bytes)
from explorer.measure.settings import MeasureSettings
from explorer.models.llm import LLM_CATALOG, LLMSpec, build_llm, get_llm_spec

TINY = LLMSpec("tiny", "qwen2", hidden=8, layers=1, heads=2, kv_heads=1, intermediate=16, vocab=10,
               tied_embeddings=False, rope_theta=1e6, rms_eps=1e-6, qkv_bias=True, max_position=64)
SMALL = LLMSpec("small", "qwen2", hidden=128, layers=3, heads=4, kv_heads=2, intermediate=256, vocab=512,
                tied_embeddings=True, rope_theta=1e6, rms_eps=1e-6, qkv_bias=True, max_position=1024)


def test_prefill_macs_hand_count():
    # P=3, h=8, d=4, Hq=2, Hkv=1, I=16, V=10
    q = 3 * 8 * 8
    kv = 2 * 3 * 8 * 4
    o = 3 * 8 * 8
    attention = 2 * (2 * 3 * 3 * 4)  # scores + weighted sum, dense 3x3 per head
    mlp = 3 * 3 * 8 * 16
    head = 8 * 10  # last position only
    assert prefill_macs(TINY, 3) == q + kv + o + attention + mlp + head == 1952
    assert prefill_flops(TINY, 3) == pytest.approx(2 * 1952 / 1e9)


def test_qwen2_7b_meta_count_matches_analytic_without_allocating():
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    counted = count_prefill_flops("qwen2-7b", 320)
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**20
    analytic = prefill_flops("qwen2-7b", 320)
    assert counted.gflops == pytest.approx(analytic, rel=0.005)
    assert counted.gflops == pytest.approx(analytic, rel=1e-12)  # in fact exact
    assert grown_gib < 1.0  # 7.6B fp32 weights would be 28 GiB
    assert "embedding" in counted.skipped_ops  # the lookup counted 0 and said so
    model = build_llm("qwen2-7b", device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())


def test_vicuna_meta_count_matches_analytic():
    assert count_prefill_flops("vicuna-7b", 100).gflops == pytest.approx(prefill_flops("vicuna-7b", 100), rel=1e-12)


def test_real_cpu_path_count_matches_analytic():
    """On CPU transformers passes no mask and SDPA runs its flash-for-cpu kernel with is_causal."""
    model = build_llm(SMALL)
    ids = torch.randint(0, SMALL.vocab, (1, 50))
    with torch.inference_mode():
        got = count_flops_torch(model, kwargs=dict(input_ids=ids, logits_to_keep=1, use_cache=False))
    assert any("flash_attention_for_cpu" in k for k in got.by_op), got.by_op
    assert got.gflops == pytest.approx(prefill_flops(SMALL, 50), rel=1e-12)


def test_llm_params_match_built_models():
    for name, spec in LLM_CATALOG.items():
        model = build_llm(spec, device="meta")
        assert sum(p.numel() for p in model.parameters()) == spec.num_params(), name
    assert abs(LLM_CATALOG["qwen2-0.5b"].num_params() / 1e6 - 494.0) < 0.1
    assert type(build_llm("vicuna-7b", device="meta")).__name__ == "LlamaForCausalLM"


def test_truncated_build_and_real_weights():
    model = build_llm(SMALL, num_layers=1)
    assert len(model.model.layers) == 1
    assert model.model.embed_tokens.weight.device.type == "cpu"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    with torch.inference_mode():
        logits = model(input_ids=torch.randint(0, SMALL.vocab, (2, 7)), logits_to_keep=1).logits
    assert logits.shape == (2, 1, SMALL.vocab)
    assert torch.isfinite(logits).all()


def test_get_llm_spec_from_config_json(tmp_path):
    cfg = {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
           "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
           "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
           "max_position_embeddings": 32768}
    path = tmp_path / "my-qwen" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg))
    spec = get_llm_spec(str(path))
    assert spec.name == "my-qwen"
    assert spec.num_params() == LLM_CATALOG["qwen2-0.5b"].num_params()
    assert prefill_flops(spec, 100) == prefill_flops("qwen2-0.5b", 100)
    assert get_llm_spec(path.parent) == spec
    assert get_llm_spec("Qwen2-0.5B") is LLM_CATALOG["qwen2-0.5b"]
    with pytest.raises(ValueError, match="llm='gpt-5'"):
        get_llm_spec("gpt-5")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**cfg, "model_type": "mamba"}))
    with pytest.raises(ValueError, match="model_type"):
        get_llm_spec(bad)


def test_bad_spec_and_tokens_rejected():
    with pytest.raises(ValueError, match="kv_heads"):
        LLMSpec("x", "qwen2", hidden=64, layers=1, heads=4, kv_heads=3, intermediate=8, vocab=8,
                tied_embeddings=True, rope_theta=1e4, rms_eps=1e-6, qkv_bias=True, max_position=8)
    with pytest.raises(ValueError, match="tokens"):
        prefill_flops(SMALL, 0)
    with pytest.raises(ValueError, match="tokens"):
        prefill_flops(SMALL, 5000)


def test_measure_prefill_not_timed_and_method_choice():
    settings = MeasureSettings(device="cpu")
    cost = measure_prefill(SMALL, 40, settings, time=False)
    assert isinstance(cost, PrefillCost)
    assert cost.method == "not-timed" and cost.latency is None
    assert cost.gflops == prefill_flops(SMALL, 40)
    assert cost.params_m == SMALL.num_params() / 1e6
    assert PrefillCost.from_dict(cost.to_dict()) == cost
    fast = MeasureSettings(device="cpu", threads=1, warmup_s=0, warmup_iters=1, min_iters=1, max_iters=2,
                           max_time_s=0.5)
    whole_bytes = prefill_memory_bytes(SMALL, 40, "float32")
    sampled_bytes = prefill_memory_bytes(SMALL, 40, "float32", layers=1)
    assert sampled_bytes < whole_bytes
    budget_gb = (whole_bytes + sampled_bytes) / 2 / 2**30  # fits one layer, not three
    cost = measure_prefill(SMALL, 40, fast, memory_budget_gb=budget_gb, sample_layers=1, cross_check=False)
    assert cost.method == "layer-sampled(k=1)" and cost.latency is not None
    cost = measure_prefill(SMALL, 40, fast, memory_budget_gb=1.0, cross_check=False)
    assert cost.method == "whole-model"
    with pytest.raises(ValueError, match="memory_budget_gb"):
        measure_prefill(SMALL, 40, fast, memory_budget_gb=sampled_bytes / 2 / 2**30, sample_layers=1)
    with pytest.raises(ValueError, match="method"):
        measure_prefill(SMALL, 40, fast, method="guess")


def test_layer_sampled_agrees_with_whole_model():
    """A 6-layer Qwen2-shaped model: T(2-layer model) + 2 * T(2 layers) vs T(6-layer model), within 15%."""
    spec = LLMSpec("qwen2-shaped", "qwen2", hidden=384, layers=6, heads=6, kv_heads=2, intermediate=1024,
                   vocab=4096, tied_embeddings=True, rope_theta=1e6, rms_eps=1e-6, qkv_bias=True,
                   max_position=1024)
    settings = MeasureSettings(device="cpu", threads=1, warmup_s=0.3, warmup_iters=2, min_iters=7,
                               max_iters=40, max_time_s=4.0, target_rel_ci=0.03)
    # Interleaved pairs, compared on the fastest median of each method: on a shared machine, load
    # only ever slows a measurement down, so the minimum is the least disturbed estimate.
    wholes: list[float] = []
    sampleds: list[float] = []
    for _attempt in range(3):
        whole = measure_prefill(spec, 192, settings, method="whole", cross_check=False)
        sampled = measure_prefill(spec, 192, settings, method="sampled", sample_layers=2, cross_check=False)
        assert whole.method == "whole-model" and sampled.method == "layer-sampled(k=2)"
        wholes.append(whole.latency.median_ms)
        sampleds.append(sampled.latency.median_ms)
        if abs(min(sampleds) / min(wholes) - 1) <= 0.15:
            break
    assert abs(min(sampleds) / min(wholes) - 1) <= 0.15, (wholes, sampleds)
