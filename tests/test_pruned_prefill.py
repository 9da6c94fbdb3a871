"""In-LLM pruning of visual tokens: two segments, counted exactly, timed and predicted as such."""
import math

import pytest
import torch

from explorer.measure.prefill import count_prefill_flops, prefill_flops
from explorer.measure.pruned_prefill import Pruning, measure_pruned_prefill, pruned_prefill_flops
from explorer.measure.settings import MeasureSettings
from explorer.models.llm import LLMSpec

TINY = LLMSpec("tiny", "qwen2", hidden=64, layers=4, heads=4, kv_heads=2, intermediate=128, vocab=512,
               tied_embeddings=True, rope_theta=1e6, rms_eps=1e-6, qkv_bias=True, max_position=4096)


def test_flops_equal_torch_counter_on_the_two_segments():
    """Independent count: FlopCounterMode on meta over transformers' model, K layers at V+T tokens
    plus (L-K) layers at T + kept tokens (a model of L-K layers less its embeddings/head)."""
    pr = Pruning(after_layer=2, ratio=0.75)
    v, t = 729, 32
    kept = v - math.floor(0.75 * v)
    first = count_prefill_flops(TINY.with_layers(2), v + t).gflops
    rest = count_prefill_flops(TINY.with_layers(2), t + kept).gflops - count_prefill_flops(TINY.with_layers(1), t + kept).gflops
    counted = first + 2 * rest
    assert pruned_prefill_flops(TINY, v, t, pr) == pytest.approx(counted, rel=1e-3)
    assert pruned_prefill_flops(TINY, v, t, Pruning(2, 0.0)) == pytest.approx(prefill_flops(TINY, v + t), rel=1e-9)
    assert pruned_prefill_flops(TINY, v, t, pr) < prefill_flops(TINY, v + t)


def test_timed_as_two_segments():
    settings = MeasureSettings(device="cpu", threads=1, min_iters=2, max_iters=3, warmup_iters=1, max_time_s=2.0)
    cost = measure_pruned_prefill(TINY, 96, 8, Pruning(1, 0.5), settings, sample_layers=1)
    assert cost.latency is not None and cost.latency.median_ms > 0
    assert cost.tokens == 104 and "1 layers over 104 tokens" in cost.method and "3 over 56" in cost.method


def test_bad_pruning_names_the_field():
    with pytest.raises(ValueError, match="after_layer"):
        pruned_prefill_flops(TINY, 100, 8, Pruning(4, 0.5))
    with pytest.raises(ValueError, match="ratio"):
        pruned_prefill_flops(TINY, 100, 8, Pruning(1, 1.0))


def test_predicted_pruned_prefill_is_the_segments_sum():
    from explorer.predict import load_profile
    from explorer.predict.model import predict_trace
    from explorer.predict.pruned import trace_pruned_prefill
    from explorer.predict.trace import trace_prefill

    tr = trace_pruned_prefill(TINY, 200, 16, Pruning(2, 0.5))
    assert tr.flops / 1e9 == pytest.approx(pruned_prefill_flops(TINY, 200, 16, Pruning(2, 0.5)), rel=1e-6)
    prof = load_profile("apple-m1-gpu")
    full = predict_trace(trace_prefill(TINY, 216), prof).seconds
    pruned = predict_trace(tr, prof).seconds
    assert 0 < pruned < full
