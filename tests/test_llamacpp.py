"""measure.llm_runtime=llamacpp: the GGUF written from the transformers model, llama.cpp's prefill
checked against transformers (the independent reference), and the settings that guard it."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from explorer.measure.prefill import _prompt, measure_prefill
from explorer.measure.settings import MeasureSettings, current_environment, settings_digest
from explorer.models.llm import build_llm, get_llm_spec

HAS_GGUF = importlib.util.find_spec("gguf") is not None
HAS_LLAMA = HAS_GGUF and importlib.util.find_spec("llama_cpp") is not None
needs_gguf = pytest.mark.skipif(not HAS_GGUF, reason="gguf not installed (pip install '.[llamacpp]')")
needs_llama = pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python not installed (pip install '.[llamacpp]')")

# Widths that are multiples of 32 (ggml's q8_0 / q4_0 block); Qwen2 (q/k/v biases, rotate-half
# RoPE) and Llama (no biases; llama.cpp's interleaved RoPE needs q/k rows permuted) both covered.
CONFIGS = {
    "qwen2": {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 512, "tie_word_embeddings": True,
              "max_position_embeddings": 4096, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6},
    "llama": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4, "intermediate_size": 160, "vocab_size": 384, "tie_word_embeddings": False,
              "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-5},
}
QUICK = MeasureSettings(device="cpu", threads=1, warmup_s=0.0, warmup_iters=1, min_iters=2, max_iters=3,
                        preprocess="none", llm_runtime="llamacpp") if HAS_LLAMA else None


def _spec(tmp_path, arch):
    path = tmp_path / f"{arch}.json"
    path.write_text(json.dumps(CONFIGS[arch]))
    return get_llm_spec(path)


def _embeddings(model, spec, tokens):
    with torch.inference_mode():
        return model.get_input_embeddings()(_prompt(spec, tokens, 1, torch.device("cpu")))[0].float().numpy()


@needs_gguf
def test_the_gguf_holds_the_models_weights_under_llama_cpp_names(tmp_path):
    import gguf

    from explorer.measure.llamacpp import write_gguf

    spec = _spec(tmp_path, "qwen2")
    model = build_llm(spec)
    path = write_gguf(model, spec, tmp_path / "m.gguf", "f16")
    reader = gguf.GGUFReader(str(path))
    fields = {f.name: f for f in reader.fields.values()}
    value = lambda name: fields[name].contents()  # noqa: E731
    assert value("general.architecture") == "qwen2" and value("tokenizer.ggml.model") == "none"
    assert value("qwen2.vocab_size") == 512 and value("qwen2.block_count") == 2
    assert value("qwen2.attention.head_count_kv") == 2 and value("qwen2.rope.freq_base") == pytest.approx(1e6)
    tensors = {t.name: t for t in reader.tensors}
    # 2 global tensors (tied embeddings: no output.weight) + 12 per layer (9 weights, 3 q/k/v biases)
    assert len(tensors) == 2 + 2 * 12 and "output.weight" not in tensors
    q = tensors["blk.1.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.F16
    ref = model.model.layers[1].self_attn.q_proj.weight.detach().numpy().astype(np.float16)
    assert np.array_equal(np.asarray(q.data).reshape(ref.shape), ref)
    bias = tensors["blk.0.attn_k.bias"]
    assert bias.tensor_type == gguf.GGMLQuantizationType.F32
    assert np.array_equal(np.asarray(bias.data), model.model.layers[0].self_attn.k_proj.bias.detach().numpy())
    for quant, qtype in (("q8_0", gguf.GGMLQuantizationType.Q8_0), ("q4_0", gguf.GGMLQuantizationType.Q4_0)):
        t = {t.name: t for t in gguf.GGUFReader(str(write_gguf(model, spec, tmp_path / f"{quant}.gguf", quant))).tensors}
        assert t["blk.0.ffn_down.weight"].tensor_type == qtype
        assert t["blk.0.ffn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # norms stay f32
    with pytest.raises(ValueError, match="invalid llm_quant='q3'"):
        write_gguf(model, spec, tmp_path / "x.gguf", "q3")


def _sharp(spec):
    from explorer.measure.llamacpp import sharpen_attention

    model = build_llm(spec)
    sharpen_attention(model, spec)
    return model


@needs_gguf
def test_sharpened_attention_is_far_from_uniform(tmp_path):
    from explorer.measure.llamacpp import ATTENTION_LOGIT_STD

    spec = _spec(tmp_path, "qwen2")
    model = _sharp(spec)
    x = torch.randn(1, 32, spec.hidden)  # unit-RMS inputs, as the RMSNorm hands them on
    attn = model.model.layers[0].self_attn
    with torch.inference_mode():
        q = attn.q_proj(x).view(1, 32, spec.heads, spec.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(1, 32, spec.kv_heads, spec.head_dim).transpose(1, 2)
        k = k.repeat_interleave(spec.heads // spec.kv_heads, dim=1)
        logits = q @ k.transpose(-1, -2) / spec.head_dim ** 0.5
    assert 0.5 * ATTENTION_LOGIT_STD < float(logits.std()) < 2 * ATTENTION_LOGIT_STD
    # the largest attention weight of a row is far above uniform (1/32)
    assert float(logits.softmax(-1).amax(-1).median()) > 0.2


@needs_llama
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("lm_head", ["last", "all"])
def test_llama_cpp_reproduces_transformers_logits(tmp_path, arch, lm_head):
    from explorer.measure.llamacpp import LOGIT_TOLERANCE, LlamaCppPrefill, write_gguf

    spec = _spec(tmp_path, arch)
    model = _sharp(spec)
    emb = _embeddings(model, spec, 9)
    with torch.inference_mode():  # the reference, computed here independently of the module's check
        ref = model(inputs_embeds=torch.from_numpy(emb)[None], use_cache=False,
                    logits_to_keep=1 if lm_head == "last" else 0).logits[0].numpy()
    path = write_gguf(model, spec, tmp_path / "m.gguf", "f16")
    with LlamaCppPrefill(path, 9, spec.hidden, spec.vocab, threads=1, lm_head=lm_head, embeddings=emb) as run:
        run()
        got = run.logits()
        run()  # a second call starts from an empty KV cache: the same logits
        again = run.logits()
    assert got.shape == ref.shape == ((1, spec.vocab) if lm_head == "last" else (9, spec.vocab))
    assert np.abs(got - ref).max() <= LOGIT_TOLERANCE * np.abs(ref).max()
    assert np.array_equal(got, again)


@needs_llama
def test_the_check_passes_quantised_models_and_fails_a_wrong_one(tmp_path):
    from explorer.measure import llamacpp as L

    spec = _spec(tmp_path, "llama")
    model = _sharp(spec)
    emb = _embeddings(model, spec, 12)
    for quant in ("q8_0", "q4_0"):
        with L.LlamaCppPrefill(L.write_gguf(model, spec, tmp_path / f"{quant}.gguf", quant), 12, spec.hidden,
                               spec.vocab, threads=1) as run:
            check = L.check_against_transformers(model, run, emb, quant)
        assert check.ok and check.cosine >= L.MIN_COSINE[quant], check.describe()
    # Without the q/k permutation llama.cpp rotates the wrong pairs: the check must catch it.
    original = L._permute_rotary
    try:
        L._permute_rotary = lambda w, heads: w
        bad = L.write_gguf(model, spec, tmp_path / "bad.gguf", "f16")
    finally:
        L._permute_rotary = original
    with L.LlamaCppPrefill(bad, 12, spec.hidden, spec.vocab, threads=1) as run:
        check = L.check_against_transformers(model, run, emb, "f16")
    assert not check.ok and check.rel_error > L.LOGIT_TOLERANCE
    assert "relative max-abs error" in check.describe()


@needs_llama
def test_measure_prefill_through_llama_cpp(tmp_path):
    spec = _spec(tmp_path, "qwen2")
    cost = measure_prefill(spec, 16, QUICK, cross_check=False)
    assert cost.latency is not None and cost.latency.median_ms > 0 and cost.latency.n >= 2
    assert cost.attention == "llama.cpp" and cost.method.startswith("whole-model (llama.cpp f16; llama.cpp f16 logits")
    env = current_environment(QUICK.replace(llm_quant="q8_0"))
    assert env.llm_runtime == "llamacpp/q8_0" and env.llm_runtime_version.startswith("llama_cpp_python ")
    keys = {current_environment(QUICK.replace(llm_quant=q)).key for q in ("f16", "q8_0", "q4_0")}
    assert len(keys) == 3 and current_environment(QUICK.replace(llm_runtime="transformers")).key not in keys
    with pytest.raises(ValueError, match="times whole models only"):
        measure_prefill(spec, 16, QUICK, method="sampled", cross_check=False)
    with pytest.raises(ValueError, match="through llama.cpp needs about"):
        measure_prefill("qwen2-7b", 16, QUICK, memory_budget_gb=1.0, cross_check=False)


def test_llm_runtime_settings_are_checked_before_work(monkeypatch):
    from explorer.measure.llamacpp import QUANTS
    from explorer.measure.settings import LLM_QUANTS

    assert set(QUANTS) == set(LLM_QUANTS)  # every format the settings accept can be written
    base = MeasureSettings(device="cpu", preprocess="none")
    with pytest.raises(ValueError, match=r"invalid measure.llm_quant='q8_0'.*unless measure.llm_runtime=llamacpp"):
        base.replace(llm_quant="q8_0")  # value checks: refused when made
    with pytest.raises(ValueError, match=r"invalid measure.llm_runtime='vllm'"):
        base.replace(llm_runtime="vllm")
    with pytest.raises(ValueError, match=r"invalid measure.llm_quant='q2_k'"):
        base.replace(llm_runtime="llamacpp", llm_quant="q2_k")
    with pytest.raises(ValueError, match=r"invalid measure.llm_attention='eager'"):
        base.replace(llm_runtime="llamacpp", llm_attention="eager")
    with pytest.raises(ValueError, match=r"invalid measure.batch_size=2"):
        base.replace(llm_runtime="llamacpp", batch_size=2)
    # the transformers default leaves old environment keys as they were
    assert settings_digest(base) == settings_digest(base.replace(llm_runtime="transformers", llm_quant="f16"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(ValueError, match=r"llama_cpp(, gguf)? is not; install it with `pip install 'explorer\[llamacpp\]'`"):
        base.replace(llm_runtime="llamacpp").check_on_machine()  # what is installed: checked on the machine
    monkeypatch.setattr(importlib.util, "find_spec", real)
