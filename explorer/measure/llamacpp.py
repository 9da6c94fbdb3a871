"""LLM prefill through llama.cpp, what CPU and edge users deploy (``measure.llm_runtime=llamacpp``).

The transformers model the sweep would time (random weights, seeded, so the same every time) is
written to a GGUF file with the ``gguf`` package under llama.cpp's architecture keys (``qwen2``
or ``llama``), its matrices in ``f16``, ``q8_0`` or ``q4_0`` (``measure.llm_quant``; norms and
biases stay f32, as llama.cpp's own converter leaves them). llama.cpp (``llama-cpp-python``)
loads the file and runs one prefill of P positions handed over as embeddings
(``llama_batch.embd``): visual tokens reach a VLM's LLM as embeddings, never as ids. Logits are
computed on the last position (``lm_head=last``, llama.cpp's default for generation) or on
every position (``lm_head=all``), by flagging positions in the batch.

The GGUF carries no tokenizer: ``tokenizer.ggml.model = "none"`` with ``<arch>.vocab_size``,
which llama.cpp accepts (a prefill from embeddings never tokenizes). Weights are taken from the
transformers model as they are: Qwen2's rotary embedding is the rotate-half ("NEOX") form in
both libraries; for ``llama`` llama.cpp rotates interleaved pairs, so q and k rows are permuted
the way llama.cpp's converter does.

Before anything is timed, :func:`check_against_transformers` runs both on the same embeddings
and compares the logits: within :data:`LOGIT_TOLERANCE` (relative max-abs error) for ``f16``;
the quantised formats change outputs by design, so for them the check is the cosine similarity
of the logits (:data:`MIN_COSINE`). A model that fails is refused with the figures. The reference
model's attention is sharpened first (:func:`sharpen_attention`): with transformers' random
init the softmax is nearly uniform and a wrong rotary convention would pass unnoticed.
"""
from __future__ import annotations

import collections
import ctypes
import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..models.llm import LLMSpec

__all__ = ["QUANTS", "LOGIT_TOLERANCE", "MIN_COSINE", "LlamaCppError", "sharpen_attention", "write_gguf",
           "LlamaCppPrefill", "check_against_transformers", "gguf_bytes"]

#: GGUF formats of the matrices (the names of ``measure.llm_quant``): name -> (gguf quantisation
#: type name, llama.cpp file type name, bytes per weight: ggml blocks of a scale + 32 values).
QUANTS: dict[str, tuple[str, str, float]] = {"f16": ("F16", "MOSTLY_F16", 2.0),
                                             "q8_0": ("Q8_0", "MOSTLY_Q8_0", 34 / 32),
                                             "q4_0": ("Q4_0", "MOSTLY_Q4_0", 18 / 32)}
#: f16: logits within this relative max-abs error of transformers' fp32 logits. f16 weights carry
#: a relative rounding error of 2^-11 ~ 5e-4 each; measured: 5e-4 on the tests' 2-layer models,
#: 1.3e-3-2.6e-3 on Qwen2-0.5B (24 layers, attention sharpened). A Llama written without the q/k
#: permutation gives 5.5e-2 on the 2-layer test model.
LOGIT_TOLERANCE = 1e-2
#: q8_0 / q4_0: the cosine similarity of the logit vectors must reach at least this. Measured on
#: Qwen2-0.5B: q8_0 0.9993-0.9995, q4_0 0.909-0.912 (4-bit weights, 24 sharpened layers); on the
#: tests' 2-layer model 0.9999 and 0.988. A structurally wrong model (wrong tensor layout, wrong
#: architecture) has logits unrelated to the reference: cosine near 0. Subtle conversion errors are
#: below q4_0's own noise; the f16 check (same conversion code, tested) is the one that sees them.
MIN_COSINE = {"q8_0": 0.99, "q4_0": 0.8}


class LlamaCppError(RuntimeError):
    """llama.cpp refused a model or a call; the message carries llama.cpp's last log lines."""


def gguf_bytes(spec: LLMSpec, quant: str) -> int:
    """About how many bytes the GGUF of ``spec`` in ``quant`` takes (and llama.cpp maps)."""
    return int(spec.num_params() * QUANTS[quant][2])


# --------------------------------------------------------------------------------------------
# Writing the GGUF
# --------------------------------------------------------------------------------------------

def _permute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q/k projection from rotate-half order to llama.cpp's interleaved pairs (``llama``)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model: nn.Module, spec: LLMSpec) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of every tensor llama.cpp's ``qwen2`` / ``llama`` graph reads."""
    sd = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    out = [("token_embd.weight", sd["model.embed_tokens.weight"]), ("output_norm.weight", sd["model.norm.weight"])]
    if not spec.tied_embeddings:
        out.append(("output.weight", sd["lm_head.weight"]))
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if spec.arch == "llama":
            q, k = _permute_rotary(q, spec.heads), _permute_rotary(k, spec.kv_heads)
        out += [(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"]),
                (f"blk.{i}.attn_q.weight", q), (f"blk.{i}.attn_k.weight", k),
                (f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"]),
                (f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"]),
                (f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"]),
                (f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"]),
                (f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"]),
                (f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])]
        if spec.qkv_bias:
            out += [(f"blk.{i}.attn_{n}.bias", sd[p + f"self_attn.{n}_proj.bias"]) for n in ("q", "k", "v")]
    return out


#: Standard deviation of the attention logits (q.k / sqrt(d)) that :func:`sharpen_attention` aims at.
ATTENTION_LOGIT_STD = 3.0


def sharpen_attention(model: nn.Module, spec: LLMSpec, target: float = ATTENTION_LOGIT_STD) -> float:
    """Scale every layer's q and k projections so that attention logits have about ``target`` std.

    Random weights at transformers' init (std 0.02) give attention logits of std ~0.1-0.4: the
    softmax is nearly uniform, so a wrong rotary convention or a wrong head layout barely
    changes the output and no comparison of logits could catch it. With sharp attention every
    position's rotation matters. Speed does not depend on the values. Returns the factor used.
    """
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        sq, sk = float(attn.q_proj.weight.std()), float(attn.k_proj.weight.std())
        # inputs of unit RMS: q and k entries have std ~ s * sqrt(hidden); q.k / sqrt(d) ~ sq * sk * hidden
        factor = float(np.sqrt(target / max(sq * sk * spec.hidden, 1e-30)))
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.mul_(factor)
                if proj.bias is not None:
                    proj.bias.mul_(factor)
    return factor


def write_gguf(model: nn.Module, spec: LLMSpec, path: os.PathLike[str] | str, quant: str = "f16") -> Path:
    """Write transformers' ``model`` (of architecture ``spec``) as a vocabulary-free GGUF at ``path``."""
    import gguf
    from gguf import quants

    if quant not in QUANTS:
        raise ValueError(f"invalid llm_quant={quant!r}: one of {', '.join(map(repr, QUANTS))}")
    qname, ftype, _ = QUANTS[quant]
    qtype = getattr(gguf.GGMLQuantizationType, qname)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), spec.arch)
    writer.add_name(f"{spec.name} (random weights, explorer)")
    writer.add_context_length(spec.max_position)
    writer.add_embedding_length(spec.hidden)
    writer.add_block_count(spec.layers)
    writer.add_feed_forward_length(spec.intermediate)
    writer.add_head_count(spec.heads)
    writer.add_head_count_kv(spec.kv_heads)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(float(spec.rope_theta))
    writer.add_layer_norm_rms_eps(float(spec.rms_eps))
    writer.add_vocab_size(spec.vocab)
    writer.add_tokenizer_model("none")
    writer.add_file_type(int(getattr(gguf.LlamaFileType, ftype)))
    for name, array in _tensors(model, spec):
        if array.ndim < 2:
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        elif quant == "f16":
            writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float16))
        else:
            writer.add_tensor(name, quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype),
                              raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------

_LOG: collections.deque[str] = collections.deque(maxlen=30)


@functools.lru_cache(maxsize=1)
def _backend() -> Any:
    """llama_cpp, initialised once, its log sent to a short buffer (quoted in errors) instead of stderr."""
    import llama_cpp

    @llama_cpp.llama_log_callback
    def keep(level: int, text: bytes, user_data: Any) -> None:
        line = text.decode("utf-8", errors="replace").rstrip()
        if line:
            _LOG.append(line)

    _backend.callback = keep  # type: ignore[attr-defined]  # keep the ctypes callback alive
    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    return llama_cpp


def _failure(what: str) -> LlamaCppError:
    tail = "; ".join(list(_LOG)[-6:])
    return LlamaCppError(f"llama.cpp: {what}" + (f" (llama.cpp said: {tail})" if tail else ""))


class LlamaCppPrefill:
    """One llama.cpp model and context, ready to prefill ``tokens`` positions from embeddings.

    Calling it runs one prefill: the KV cache is cleared, the whole batch decoded, and the
    call returns once llama.cpp has finished (``llama_synchronize``). :meth:`logits` reads the
    logits of the last call (rows: the positions whose logits were computed).
    """

    def __init__(self, gguf_path: os.PathLike[str] | str, tokens: int, hidden: int, vocab: int, threads: int,
                 lm_head: str = "last", embeddings: Optional[np.ndarray] = None):
        lib = _backend()
        self._lib, self.tokens, self.hidden, self.vocab = lib, int(tokens), int(hidden), int(vocab)
        self.outputs = self.tokens if lm_head == "all" else 1
        mparams = lib.llama_model_default_params()
        self._model = lib.llama_model_load_from_file(str(gguf_path).encode(), mparams)
        if not self._model:
            raise _failure(f"could not load {gguf_path}")
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = self.tokens
        cparams.n_batch = self.tokens
        cparams.n_ubatch = self.tokens
        cparams.n_seq_max = 1
        cparams.n_threads = int(threads)
        cparams.n_threads_batch = int(threads)
        cparams.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise _failure(f"could not create a context of {tokens} positions")
        self._batch = lib.llama_batch_init(self.tokens, self.hidden, 1)
        b = self._batch
        b.n_tokens = self.tokens
        for i in range(self.tokens):
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if (lm_head == "all" or i == self.tokens - 1) else 0
        if embeddings is None:
            embeddings = np.random.default_rng(0).standard_normal((self.tokens, self.hidden), dtype=np.float32) * 0.02
        self.set_embeddings(embeddings)

    def set_embeddings(self, embeddings: np.ndarray) -> None:
        e = np.ascontiguousarray(embeddings, dtype=np.float32)
        if e.shape != (self.tokens, self.hidden):
            raise ValueError(f"embeddings of shape {e.shape}: expected ({self.tokens}, {self.hidden})")
        ctypes.memmove(self._batch.embd, e.ctypes.data, e.nbytes)

    def __call__(self) -> None:
        lib = self._lib
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        rc = lib.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise _failure(f"llama_decode returned {rc}")
        lib.llama_synchronize(self._ctx)

    def logits(self) -> np.ndarray:
        """``[outputs, vocab]`` float32 logits of the last call."""
        ptr = self._lib.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(self.outputs * self.vocab,)).reshape(self.outputs, self.vocab).copy()

    def close(self) -> None:
        lib = self._lib
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "LlamaCppPrefill":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the contract
        try:
            self.close()
        except Exception:
            pass


@dataclass(frozen=True)
class CheckResult:
    """How llama.cpp's logits compare with transformers' on the same embeddings."""

    quant: str
    rel_error: float   # max |a - b| / max |b|
    cosine: float      # of the flattened logit arrays
    ok: bool

    def describe(self) -> str:
        bound = (f"<= {LOGIT_TOLERANCE:g} relative max-abs error" if self.quant == "f16"
                 else f"cosine >= {MIN_COSINE[self.quant]}")
        return (f"llama.cpp {self.quant} logits vs transformers fp32: relative max-abs error {self.rel_error:.2e}, "
                f"cosine {self.cosine:.5f} (needs {bound})")


def check_against_transformers(model: nn.Module, runner: LlamaCppPrefill, embeddings: np.ndarray,
                               quant: str, lm_head: str = "last") -> CheckResult:
    """Run transformers ``model`` (fp32) and ``runner`` on the same embeddings and compare logits."""
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))[None]
        ref = model(inputs_embeds=x.to(next(model.parameters()).dtype), use_cache=False,
                    logits_to_keep=1 if lm_head == "last" else 0).logits[0].float().numpy()
    runner.set_embeddings(embeddings)
    runner()
    got = runner.logits()
    if got.shape != ref.shape:
        raise LlamaCppError(f"llama.cpp returned logits of shape {got.shape}, transformers {ref.shape}")
    rel = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-30))
    a, b = got.ravel().astype(np.float64), ref.ravel().astype(np.float64)
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    ok = rel <= LOGIT_TOLERANCE if quant == "f16" else cos >= MIN_COSINE[quant]
    return CheckResult(quant=quant, rel_error=rel, cosine=cos, ok=bool(ok and np.isfinite(got).all()))


def temporary_gguf_dir() -> tempfile.TemporaryDirectory[str]:
    """Where GGUF files are written for one measurement (``$EXPLORER_GGUF_DIR`` or the system temp)."""
    return tempfile.TemporaryDirectory(prefix="explorer-gguf-", dir=os.environ.get("EXPLORER_GGUF_DIR") or None)
