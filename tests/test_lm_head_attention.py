"""prefill.lm_head=last|all (FLOPs by hand, by torch's counter, and the timed call) and llm_attention."""
from __future__ import annotations

import json

import pytest
import torch

from explorer.measure.prefill import (_forward_fn, count_prefill_flops, measure_prefill, prefill_macs,
                                      set_attention)
from explorer.measure.settings import MeasureSettings
from explorer.models.llm import build_llm, get_llm_spec

TINY_LLM = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "tie_word_embeddings": True,
            "max_position_embeddings": 4096}
QUICK = MeasureSettings(device="cpu", threads=1, warmup_s=0.0, warmup_iters=1, min_iters=2, max_iters=2,
                        preprocess="none")


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_LLM))
    return get_llm_spec(path)


def test_hand_count_of_both_head_conventions(tiny):
    # h=64, d=16, Hq=4, Hkv=2, I=128, V=1000, L=2, P=5, in MACs:
    # projections 5*64*64 + 2*5*64*32 + 5*64*64 = 61440; attention 2*4*5*5*16 = 3200;
    # SwiGLU 3*5*64*128 = 122880 -> 187520 a layer, 375040 for two.
    layers = 375040
    assert prefill_macs(tiny, 5, "last") == layers + 64 * 1000
    assert prefill_macs(tiny, 5, "all") == layers + 5 * 64 * 1000
    for head in ("last", "all"):
        assert count_prefill_flops(tiny, 5, head).gflops == pytest.approx(2 * prefill_macs(tiny, 5, head) / 1e9,
                                                                            rel=1e-12)


def test_qwen2_head_share_matches_the_outside_figure():
    # Issue 12 (verified outside the explorer): for Qwen2-0.5B, 1024 px (256 visual tokens) and
    # 32 text tokens, the all-positions head adds 36.6% to the last-position prefill FLOPs.
    last, every = prefill_macs("qwen2-0.5b", 288, "last"), prefill_macs("qwen2-0.5b", 288, "all")
    assert (every - last) / last == pytest.approx(0.366, abs=5e-4)


def test_the_timed_call_computes_the_head_it_claims(tiny):
    model = build_llm(tiny)
    ids = torch.randint(0, 1000, (1, 7))
    with torch.inference_mode():
        assert _forward_fn(model, ids, False, keep=1)().shape == (1, 1, 1000)
        assert _forward_fn(model, ids, False, keep=0)().shape == (1, 7, 1000)


def test_measure_prefill_reports_the_convention(tiny):
    cost = measure_prefill(tiny, 6, QUICK.replace(lm_head="all"))
    assert cost.lm_head == "all" and cost.attention == "sdpa"
    assert cost.gflops == pytest.approx(2 * prefill_macs(tiny, 6, "all") / 1e9)
    assert cost.latency is not None and cost.latency.median_ms > 0
    assert measure_prefill(tiny, 6, QUICK, time=False).lm_head == "last"
    with pytest.raises(ValueError, match="lm_head='both'"):
        measure_prefill(tiny, 6, QUICK.replace(lm_head="both"))


def test_eager_and_sdpa_attention_agree_and_are_switched(tiny):
    sdpa = build_llm(tiny)
    eager = set_attention(build_llm(tiny), "eager")
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    ids = torch.randint(0, 1000, (1, 9))
    with torch.inference_mode():
        a = sdpa(input_ids=ids, use_cache=False).logits
        b = eager(input_ids=ids, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max()))
    cost = measure_prefill(tiny, 6, QUICK.replace(llm_attention="eager"))
    assert cost.attention == "eager" and cost.latency.median_ms > 0
