"""LLM prefill: analytic FLOPs and measured latency (whole model, or layer-sampled when too big).

Prefill convention (docs/measurement.md): a prompt of P tokens (visual + text) goes through the
token embeddings (a lookup: 0 FLOPs), every decoder layer over all P tokens, the final norm, and
the LM head (on the last position by default; on every position with ``lm_head="all"``), ending
with the first output token's logits. Per layer,
in MACs (FLOPs = 2 x MACs), with h = hidden, d = head_dim, Hq / Hkv = query / key-value heads,
I = MLP width:

- q, k, v, o projections: ``P*h*Hq*d + 2*P*h*Hkv*d + P*Hq*d*h`` (GQA: k/v are narrower);
- attention: ``Hq*P*P*d`` for the scores plus ``Hq*P*P*d`` for the weighted sum of values. We
  count the DENSE P x P matrix, not the causal half: that is what torch's flop counter reports
  for an SDPA call (``is_causal`` or not), what the math / CPU path computes, and what fvcore's
  and our handlers count. A causal flash kernel skips about half of these MACs, so on such
  kernels the attention term overstates the work by up to 2x (small next to the projections
  and MLP for P below a few thousand);
- SwiGLU MLP: ``3*P*h*I`` (gate, up, down); RMSNorms, RoPE, SiLU, residuals, biases: 0.

The LM head adds ``h*V`` with ``lm_head="last"`` (HF ``generate``: ``logits_to_keep=1``) or
``P*h*V`` with ``lm_head="all"`` (ml-fastvlm's app and mlx-vlm compute logits for every prompt
position). The total equals what ``FlopCounterMode`` reports for transformers' Qwen2/Llama
forward with ``logits_to_keep=1`` / ``0`` (checked in tests, on the meta device).
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from ..checks import is_int, is_number, require
from ..models.llm import LLMSpec, build_llm, get_llm_spec
from .costs import PrefillCost, Timing
from .flops import FlopCount, count_flops_torch
from .settings import LLM_ATTENTION, LM_HEADS, MeasureSettings
from .timing import time_callable

SpecLike = Union[LLMSpec, str]
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def _check_tokens(tokens: Any, spec: LLMSpec) -> int:
    require(is_int(tokens) and tokens > 0, "tokens", tokens, "a positive integer prompt length")
    if tokens > spec.max_position:
        raise ValueError(f"invalid tokens={tokens!r}: at most {spec.name}'s max_position={spec.max_position}")
    return tokens


def _check_lm_head(lm_head: Any) -> str:
    if lm_head not in LM_HEADS:
        raise ValueError(f"invalid lm_head={lm_head!r}: one of {', '.join(map(repr, LM_HEADS))}")
    return lm_head


def logits_to_keep(lm_head: str) -> int:
    """transformers' ``logits_to_keep`` for a head convention: 1 (last position) or 0 (all)."""
    return 1 if _check_lm_head(lm_head) == "last" else 0


def prefill_macs(spec: SpecLike, tokens: int, lm_head: str = "last") -> int:
    """Multiply-accumulates of one prefill of ``tokens`` tokens (see the module docstring)."""
    spec = get_llm_spec(spec)
    p = _check_tokens(tokens, spec)
    _check_lm_head(lm_head)
    h, d, hq, hkv = spec.hidden, spec.head_dim, spec.heads, spec.kv_heads
    projections = p * h * hq * d + 2 * p * h * hkv * d + p * hq * d * h
    attention = 2 * hq * p * p * d
    mlp = 3 * p * h * spec.intermediate
    head = h * spec.vocab * (1 if lm_head == "last" else p)
    return spec.layers * (projections + attention + mlp) + head


def prefill_flops(spec: SpecLike, tokens: int, lm_head: str = "last") -> float:
    """GFLOPs (2 x MACs / 1e9) of one prefill of ``tokens`` tokens, exact for the convention."""
    return 2 * prefill_macs(spec, tokens, lm_head) / 1e9


def causal_mask(tokens: int, device: Union[str, torch.device], batch: int = 1) -> torch.Tensor:
    """A 4-D boolean causal mask ``[B, 1, P, P]`` (True = attend).

    transformers accepts a prepared 4-D mask as is; on the meta device this is required,
    because its own mask code inspects values and fails on meta tensors.
    """
    mask = torch.ones(tokens, tokens, dtype=torch.bool, device=device).tril()
    return mask[None, None].expand(batch, 1, tokens, tokens)


def count_prefill_flops(spec: SpecLike, tokens: int, lm_head: str = "last") -> FlopCount:
    """Independent count: torch's FlopCounterMode over transformers' real forward on ``meta``.

    Allocates no weights (a 7B model is counted in well under a second); used to cross-check
    :func:`prefill_flops`.
    """
    spec = get_llm_spec(spec)
    p = _check_tokens(tokens, spec)
    keep = logits_to_keep(lm_head)
    model = build_llm(spec, device="meta")
    ids = torch.zeros(1, p, dtype=torch.long, device="meta")
    with torch.inference_mode():
        return count_flops_torch(model, kwargs=dict(input_ids=ids, attention_mask=causal_mask(p, "meta"),
                                                    logits_to_keep=keep, use_cache=False))


# --------------------------------------------------------------------------------------------
# Memory budget
# --------------------------------------------------------------------------------------------

def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory())
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def default_memory_budget_gb(device: torch.device) -> float:
    """Half of the memory available now (80% of free memory on CUDA), in GiB."""
    share = 0.8 if device.type == "cuda" else 0.5
    return share * _available_bytes(device) / 2**30


def prefill_memory_bytes(spec: LLMSpec, tokens: int, dtype: str, batch: int = 1,
                         layers: Optional[int] = None, lm_head: str = "last") -> int:
    """Estimated bytes to run a prefill: weights plus the largest live activations.

    Activations: a few ``P x h`` hidden states, the ``P x I`` gate/up products and, if the
    math attention path is taken, one ``Hq x P x P`` score matrix.
    """
    elt = _BYTES[dtype]
    layers = spec.layers if layers is None else layers
    weights = spec.num_params(layers)
    acts = batch * tokens * (6 * spec.hidden + 3 * spec.intermediate) + batch * spec.heads * tokens * tokens
    acts += batch * spec.vocab * (tokens if lm_head == "all" else 1)  # the logits
    return (weights + acts) * elt


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def _prompt(spec: LLMSpec, tokens: int, batch: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, spec.vocab, (batch, tokens), generator=gen).to(device)


def _forward_fn(model: nn.Module, ids: torch.Tensor, compile_model: bool, keep: int = 1) -> Callable[[], Any]:
    """One real prefill: transformers' own mask/rotary code, LM head on the last (``keep=1``) or
    every (``keep=0``) position."""
    target: Callable[..., Any] = torch.compile(model) if compile_model else model

    def run() -> Any:
        return target(input_ids=ids, logits_to_keep=keep, use_cache=False).logits

    return run


def _capture_layer_inputs(model: nn.Module, ids: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The exact arguments transformers passes to the first decoder layer (real RoPE and mask)."""
    captured: dict[str, Any] = {}
    layer0 = model.model.layers[0]

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["args"], captured["kwargs"] = args, dict(kwargs)

    handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            model(input_ids=ids, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    return captured["args"], captured["kwargs"]


def _layers_fn(model: nn.Module, ids: torch.Tensor, compile_model: bool) -> Callable[[], Any]:
    """Run the model's decoder layers back to back on captured real inputs (no embed/norm/head)."""
    args, kwargs = _capture_layer_inputs(model, ids)
    hidden, rest = args[0], args[1:]
    layers = list(model.model.layers)

    def run_layers(h: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            out = layer(h, *rest, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        return h

    target = torch.compile(run_layers) if compile_model else run_layers
    return lambda: target(hidden)


def combine_scaled(base: Timing, part: Timing, scale: float) -> Timing:
    """Timing of ``base + scale * part`` from two independent measurements.

    Medians, means, percentiles and CI bounds add (the bounds of a sum of independent
    variables are at most this wide, so the CI is conservative); the standard deviations add
    in quadrature for the CV; n is the smaller sample; noisy if either part was.
    """
    def lin(a: float, b: float) -> float:
        return a + scale * b

    mean = lin(base.mean_ms, part.mean_ms)
    std = math.hypot(base.cv * base.mean_ms, scale * part.cv * part.mean_ms)
    same = base.remeasure_level is not None and base.remeasure_level == part.remeasure_level
    return Timing(
        median_ms=lin(base.median_ms, part.median_ms),
        p10_ms=lin(base.p10_ms, part.p10_ms),
        p90_ms=lin(base.p90_ms, part.p90_ms),
        mean_ms=mean,
        cv=std / mean if mean > 0 else 0.0,
        n=min(base.n, part.n),
        ci_low_ms=lin(base.ci_low_ms, part.ci_low_ms),
        ci_high_ms=lin(base.ci_high_ms, part.ci_high_ms),
        noisy=base.noisy or part.noisy,
        other_cores=_worst(base.other_cores, part.other_cores),
        steal=_worst(base.steal, part.steal),
        contended=base.contended or part.contended,
        # the re-measurement intervals add like the medians (the host's drift moves both parts alike)
        remeasure_low_ms=_lin_optional(base.remeasure_low_ms, part.remeasure_low_ms, scale, same),
        remeasure_high_ms=_lin_optional(base.remeasure_high_ms, part.remeasure_high_ms, scale, same),
        remeasure_level=base.remeasure_level if same else None,
    )


def _lin_optional(a: Optional[float], b: Optional[float], scale: float, ok: bool) -> Optional[float]:
    return None if a is None or b is None or not ok else a + scale * b


def _worst(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """The larger of two contention readings (None when neither was observed)."""
    seen = [v for v in (a, b) if v is not None]
    return max(seen) if seen else None


@functools.lru_cache(maxsize=1)
def _timing_model(spec: LLMSpec, device: str, dtype: str, num_layers: Optional[int],
                  attention: str = "sdpa") -> nn.Module:
    """The last LLM built for timing, kept: a sweep times one LLM at several prompt lengths in a row.

    One entry only, so at most one timing model stays resident (weights are random and never
    change, so reuse cannot alter a result). ``attention`` is transformers' attention
    implementation (``sdpa`` or ``eager``), switched on the built model.
    """
    model = build_llm(spec, device=device, dtype=dtype, num_layers=num_layers)
    set_attention(model, attention)
    return model


def set_attention(model: nn.Module, attention: str) -> nn.Module:
    """Switch a transformers model to the ``attention`` implementation (checked afterwards)."""
    if attention not in LLM_ATTENTION:
        raise ValueError(f"invalid llm_attention={attention!r}: one of {', '.join(map(repr, LLM_ATTENTION))}")
    if getattr(model.config, "_attn_implementation", None) != attention:
        model.set_attn_implementation(attention)
    if model.config._attn_implementation != attention:
        raise RuntimeError(f"transformers kept attention {model.config._attn_implementation!r}, not {attention!r}")
    return model


def _compile_prefill(settings: MeasureSettings) -> bool:
    return settings.effective_runtime == "compile"


@functools.lru_cache(maxsize=1)
def _gguf_of(spec: LLMSpec, quant: str) -> tuple[Any, str, nn.Module]:
    """The reference model of ``spec`` (random weights, seeded, attention sharpened so that the
    check can catch a wrong conversion) and its GGUF in ``quant``, written once and kept (one
    entry: a sweep times one LLM at several prompt lengths in a row); (temporary folder, path, model)."""
    from . import llamacpp

    _timing_model.cache_clear()  # at most one copy of an LLM's weights resident
    model = build_llm(spec, device="cpu", dtype="float32").eval()
    llamacpp.sharpen_attention(model, spec)
    folder = llamacpp.temporary_gguf_dir()
    path = str(Path(folder.name) / f"{spec.name}-{quant}.gguf")
    llamacpp.write_gguf(model, spec, path, quant)
    return folder, path, model


def time_llamacpp_prefill(spec: LLMSpec, tokens: int, settings: MeasureSettings) -> tuple[Timing, str]:
    """Latency of the whole model's prefill through llama.cpp, checked against transformers first.

    The prompt's embeddings are the reference model's own embeddings of the sweep's seeded
    prompt, handed to llama.cpp as an embedding batch. Returns the timing and the check's
    description; a check that fails raises :class:`explorer.measure.llamacpp.LlamaCppError`.
    """
    from . import llamacpp

    _, path, model = _gguf_of(spec, settings.llm_quant)
    ids = _prompt(spec, tokens, 1, torch.device("cpu"))
    with torch.inference_mode():
        embeddings = model.get_input_embeddings()(ids)[0].float().numpy()
    with llamacpp.LlamaCppPrefill(path, tokens, spec.hidden, spec.vocab, settings.effective_threads(),
                                  settings.lm_head, embeddings) as runner:
        check = llamacpp.check_against_transformers(model, runner, embeddings, settings.llm_quant, settings.lm_head)
        if not check.ok:
            raise llamacpp.LlamaCppError(f"{spec.name} at {tokens} tokens: {check.describe()}; not timed")
        return time_callable(runner, settings), check.describe()


def time_whole_prefill(spec: LLMSpec, tokens: int, settings: MeasureSettings) -> Timing:
    """Latency of the whole model's prefill (batch = settings.batch_size)."""
    device = settings.resolve_device()
    model = _timing_model(spec, str(device), settings.dtype, None, settings.llm_attention)
    ids = _prompt(spec, tokens, settings.batch_size, device)
    keep = logits_to_keep(settings.lm_head)
    return time_callable(_forward_fn(model, ids, _compile_prefill(settings), keep), settings, module=model)


def time_sampled_prefill(spec: LLMSpec, tokens: int, settings: MeasureSettings, k: int) -> Timing:
    """Latency from a ``k``-layer copy at real width: T(k-layer model) + (L-k)/k * T(k layers).

    The first term is a real forward (embeddings, transformers' mask and RoPE, k layers, final
    norm, last-position head); the second times the same k layers alone on the exact inputs
    the model passed to them, scaled to the remaining depth.
    """
    device = settings.resolve_device()
    model = _timing_model(spec, str(device), settings.dtype, k, settings.llm_attention)
    ids = _prompt(spec, tokens, settings.batch_size, device)
    keep = logits_to_keep(settings.lm_head)
    compile_model = _compile_prefill(settings)
    whole_k = time_callable(_forward_fn(model, ids, compile_model, keep), settings, module=model)
    layers_k = time_callable(_layers_fn(model, ids, compile_model), settings, module=model)
    return combine_scaled(whole_k, layers_k, (spec.layers - k) / k)


def time_decoder_layers(spec: LLMSpec, tokens: int, settings: MeasureSettings, k: int) -> Timing:
    """Latency of ``k`` decoder layers alone over ``tokens`` tokens, on the exact inputs a ``k``-layer
    copy passes them (no embeddings, final norm or head): a segment of a prefill."""
    device = settings.resolve_device()
    model = _timing_model(spec, str(device), settings.dtype, k, settings.llm_attention)
    ids = _prompt(spec, tokens, settings.batch_size, device)
    return time_callable(_layers_fn(model, ids, _compile_prefill(settings)), settings, module=model)


def measure_prefill(spec_or_name: SpecLike, tokens: int, settings: MeasureSettings, time: bool = True,
                    memory_budget_gb: Optional[float] = None, sample_layers: int = 2,
                    method: str = "auto", cross_check: bool = True) -> PrefillCost:
    """FLOPs (analytic) and latency of one prefill of ``tokens`` tokens.

    ``method``: ``auto`` times the whole model when its estimated memory fits
    ``memory_budget_gb`` (default: half the available memory, 80% of free GPU memory), else
    layer-sampled with ``sample_layers`` layers; ``whole`` / ``sampled`` force one.
    ``cross_check`` recounts the FLOPs with torch's counter on the meta device (no weights) and
    warns if it disagrees with the analytic count by more than 0.5%; the counter's zero-cost
    operators are returned as ``skipped_ops``.
    """
    settings.check_on_machine()
    spec = get_llm_spec(spec_or_name)
    _check_tokens(tokens, spec)
    if method not in ("auto", "whole", "sampled"):
        raise ValueError(f"invalid method={method!r}: one of 'auto', 'whole', 'sampled'")
    require(is_int(sample_layers) and sample_layers > 0, "sample_layers", sample_layers, "a positive integer")
    if memory_budget_gb is not None and not (is_number(memory_budget_gb) and memory_budget_gb > 0):
        raise ValueError(f"invalid memory_budget_gb={memory_budget_gb!r}: a positive number of GiB or None")

    gflops = prefill_flops(spec, tokens, settings.lm_head)
    skipped: dict[str, int] = {}
    if cross_check:
        counted = count_prefill_flops(spec, tokens, settings.lm_head)
        skipped = dict(counted.skipped_ops)
        if abs(counted.gflops - gflops) > 0.005 * gflops:
            warnings.warn(f"prefill FLOPs of {spec.name} at {tokens} tokens: analytic {gflops:.3f} vs "
                          f"counted {counted.gflops:.3f} GFLOPs; the transformers implementation changed?",
                          RuntimeWarning, stacklevel=2)
    params_m = spec.num_params() / 1e6
    if not time:
        return PrefillCost(llm=spec.name, tokens=tokens, params_m=params_m, gflops=gflops, latency=None,
                           method="not-timed", skipped_ops=skipped, lm_head=settings.lm_head,
                           attention=settings.llm_attention)

    device = settings.resolve_device()
    budget = memory_budget_gb if memory_budget_gb is not None else default_memory_budget_gb(device)
    budget_bytes = budget * 2**30
    if settings.llm_runtime == "llamacpp":
        return _llamacpp_cost(spec, tokens, settings, budget, method, gflops, params_m, skipped)
    k = min(sample_layers, spec.layers)
    whole_bytes = prefill_memory_bytes(spec, tokens, settings.dtype, settings.batch_size, lm_head=settings.lm_head)
    chosen = method
    if method == "auto":
        chosen = "whole" if whole_bytes <= budget_bytes or k >= spec.layers else "sampled"
    if chosen == "sampled" and k >= spec.layers:
        chosen = "whole"  # sampling every layer is the whole model
    need = whole_bytes if chosen == "whole" else prefill_memory_bytes(spec, tokens, settings.dtype,
                                                                       settings.batch_size, layers=k,
                                                                       lm_head=settings.lm_head)
    if need > budget_bytes and (memory_budget_gb is not None or chosen == "sampled"):
        raise ValueError(f"invalid memory_budget_gb={memory_budget_gb!r}: {spec.name} at {tokens} tokens "
                         f"needs about {need / 2**30:.1f} GiB for a {chosen} prefill "
                         f"(budget {budget:.1f} GiB); raise the budget or lower sample_layers")
    if chosen == "whole":
        latency = time_whole_prefill(spec, tokens, settings)
        label = "whole-model"
    else:
        latency = time_sampled_prefill(spec, tokens, settings, k)
        label = f"layer-sampled(k={k})"
    return PrefillCost(llm=spec.name, tokens=tokens, params_m=params_m, gflops=gflops, latency=latency,
                       method=label, skipped_ops=skipped, lm_head=settings.lm_head, attention=settings.llm_attention)


def _llamacpp_cost(spec: LLMSpec, tokens: int, settings: MeasureSettings, budget_gib: float, method: str,
                   gflops: float, params_m: float, skipped: dict[str, int]) -> PrefillCost:
    """The prefill through llama.cpp: whole model only (llama.cpp runs a GGUF, not a layer range)."""
    from .llamacpp import gguf_bytes

    if method == "sampled":
        raise ValueError("invalid method='sampled' with llm_runtime='llamacpp': llama.cpp times whole models only")
    # the fp32 reference model (written to the GGUF and checked against) plus the GGUF llama.cpp maps
    need = prefill_memory_bytes(spec, tokens, "float32", 1) + gguf_bytes(spec, settings.llm_quant)
    if need > budget_gib * 2**30:
        raise ValueError(f"{spec.name} at {tokens} tokens through llama.cpp needs about {need / 2**30:.1f} GiB "
                         f"(the fp32 reference model and the {settings.llm_quant} GGUF; budget {budget_gib:.1f} GiB): "
                         "llm_runtime='llamacpp' times whole models only; use a smaller LLM or raise the memory budget")
    latency, check = time_llamacpp_prefill(spec, tokens, settings)
    return PrefillCost(llm=spec.name, tokens=tokens, params_m=params_m, gflops=gflops, latency=latency,
                       method=f"whole-model (llama.cpp {settings.llm_quant}; {check})", skipped_ops=skipped,
                       lm_head=settings.lm_head, attention="llama.cpp")
