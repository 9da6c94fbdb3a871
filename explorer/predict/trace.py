"""Op-level traces on the ``meta`` device: every aten operator a forward runs, with its FLOPs and bytes.

A :class:`TorchDispatchMode` sees each operator after autograd, below ``nn.Module``. For every
operator that does work it records

- ``flops``: 2 x multiply-accumulates, from :mod:`torch.utils.flop_counter`'s formulas plus the
  project's own (the fused attention kernels, ``linear``, native multi-head attention; the
  convention of ``docs/measurement.md``: matmul-like operators only, attention dense);
- ``bytes``: what the operator reads and writes if nothing stays in cache between operators:
  every distinct input tensor (weights included) plus every output, each counted by the memory
  its strides span (a broadcast/expanded tensor counts once);
- its class (:mod:`explorer.predict.opclass`).

Views (no data moved) and allocations without writes are not recorded. Composite operators are
decomposed into the kernels they run, except ``linear`` and ``scaled_dot_product_attention``,
which run as one kernel (a GEMM and a fused attention kernel that never writes the score matrix).

Everything runs on ``meta`` tensors, so a 2.7B-parameter encoder costs no memory. Repeated
blocks are traced once: a module called with the same configuration and input shapes as one
traced before replays its records instead of running again (the trace is shapes only, so this
is exact). Identical operator calls are merged into one :class:`OpRecord` with a ``count``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from explorer.checks import is_int, require
from explorer.data.atomic import atomic_path
from explorer.data.space import canonical_json
from explorer.measure.flops import matmul_macs, mha_macs, sdpa_macs
from explorer.predict.opclass import OP_CLASSES, classify, is_attention, op_name

__all__ = ["OpRecord", "OpTrace", "trace_callable", "trace_module", "trace_encoder", "trace_projector",
           "trace_prefill", "DTYPE_BYTES"]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Composite operators kept whole: they run as one kernel.
_KEEP_WHOLE = {"linear", "scaled_dot_product_attention"}
# Operators that allocate or inspect without writing data.
_NO_WORK = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted",
            "_local_scalar_dense", "lift_fresh", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
            "is_same_size", "resize_", "set_", "_assert_async", "_assert_tensor_metadata", "item"}


@dataclass(frozen=True, order=True)
class OpRecord:
    """``count`` identical calls of operator ``op`` (class ``op_class``), each ``flops`` and ``bytes``."""

    op_class: str
    op: str
    flops: float
    bytes: float
    count: int = 1

    @property
    def total_flops(self) -> float:
        return self.flops * self.count

    @property
    def total_bytes(self) -> float:
        return self.bytes * self.count


@dataclass(frozen=True)
class OpTrace:
    """The operators of one forward pass, merged by (class, op, flops, bytes)."""

    ops: tuple[OpRecord, ...]

    @staticmethod
    def from_counts(counts: Mapping[tuple[str, str, float, float], int]) -> "OpTrace":
        return OpTrace(tuple(sorted(OpRecord(c, o, f, b, n) for (c, o, f, b), n in counts.items() if n > 0)))

    def counts(self) -> Counter:
        out: Counter = Counter()
        for r in self.ops:
            out[(r.op_class, r.op, r.flops, r.bytes)] += r.count
        return out

    @property
    def flops(self) -> float:
        return sum(r.total_flops for r in self.ops)

    @property
    def bytes(self) -> float:
        return sum(r.total_bytes for r in self.ops)

    @property
    def calls(self) -> int:
        return sum(r.count for r in self.ops)

    def by_class(self) -> dict[str, dict[str, float]]:
        """Per class: calls, GFLOPs and MB moved."""
        out = {c: {"calls": 0, "gflops": 0.0, "mbytes": 0.0} for c in OP_CLASSES}
        for r in self.ops:
            row = out[r.op_class]
            row["calls"] += r.count
            row["gflops"] += r.total_flops / 1e9
            row["mbytes"] += r.total_bytes / 1e6
        return out

    def __add__(self, other: "OpTrace") -> "OpTrace":
        return OpTrace.from_counts(self.counts() + other.counts())

    def times(self, k: int) -> "OpTrace":
        """Every call repeated ``k`` times (``k >= 0``)."""
        return OpTrace.from_counts({key: n * k for key, n in self.counts().items()})

    def minus(self, other: "OpTrace") -> "OpTrace":
        """The calls of ``self`` that are not in ``other``; raises if ``other`` is not contained in ``self``."""
        mine, theirs = self.counts(), other.counts()
        for key, n in theirs.items():
            if mine.get(key, 0) < n:
                raise ValueError(f"trace difference: {key} occurs {n}x in the subtracted trace, {mine.get(key, 0)}x here")
        return OpTrace.from_counts({key: n - theirs.get(key, 0) for key, n in mine.items()})


# --------------------------------------------------------------------------------------------
# FLOPs and bytes of one call
# --------------------------------------------------------------------------------------------

def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes the memory of ``t`` spans (an expanded/broadcast tensor counts its storage once)."""
    if t.numel() == 0:
        return 0
    span = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if size > 1)
    return min(t.numel(), span) * t.element_size()


def _tensors(obj: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(obj)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def moved_bytes(args: Any, kwargs: Mapping[str, Any], out: Any) -> int:
    """Distinct input tensors plus outputs, in bytes."""
    seen: set[int] = set()
    total = 0
    for t in _tensors((args, dict(kwargs))):
        if id(t) not in seen:
            seen.add(id(t))
            total += _tensor_bytes(t)
    for t in _tensors(out):
        total += _tensor_bytes(t)
    return total


@functools.lru_cache(maxsize=1)
def _torch_formulas() -> dict[Any, Callable[..., int]]:
    from torch.utils.flop_counter import flop_registry

    return dict(flop_registry)


def call_flops(func: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], out: Any) -> float:
    """FLOPs (2 x MACs) of one operator call; 0 for operators without a formula (non-matmul work)."""
    if name == "linear":
        x, w = args[0], args[1]
        return 2.0 * matmul_macs(list(x.shape), list(w.shape[::-1]))
    if name == "scaled_dot_product_attention" or (is_attention(name) and name != "_native_multi_head_attention"):
        q, k, v = args[0], args[1], args[2]
        return 2.0 * sdpa_macs(list(q.shape), list(k.shape), list(v.shape))
    if name == "_native_multi_head_attention":
        return 2.0 * mha_macs(list(args[0].shape), list(args[1].shape), int(args[3]))
    formula = _torch_formulas().get(getattr(func, "_overloadpacket", None))
    if formula is None:
        return 0.0
    return float(formula(*args, **kwargs, out_val=out))


def _conv_groups(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    if name in ("convolution", "_convolution", "convolution_overrideable"):
        return int(args[8]) if len(args) > 8 else int(kwargs.get("groups", 1))
    return 1


class _Recorder(TorchDispatchMode):
    """Records (class, op, flops, bytes) per operator call, in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, str, float, float]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        name = op_name(func)
        if name not in _KEEP_WHOLE and torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), "CompositeImplicitAutograd"):
            with self:  # the mode is popped while it handles a call: re-enter it for the parts
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        out = func(*args, **kwargs)
        if name in _NO_WORK or getattr(func, "is_view", False):
            return out
        groups = _conv_groups(name, args, kwargs)
        op_class = classify(name, groups=groups)
        flops = call_flops(func, name, args, kwargs, out)
        self.records.append((op_class, name, float(flops), float(moved_bytes(args, kwargs, out))))
        return out


# --------------------------------------------------------------------------------------------
# Replaying repeated blocks
# --------------------------------------------------------------------------------------------

def _signatures(root: nn.Module) -> dict[int, tuple[Any, ...]]:
    """Per submodule (by id): what decides its operators besides its inputs (class, repr, plain
    attributes, parameter and buffer shapes, its children's signatures). Computed once per model."""
    cached = _SIGNATURES.get(root)
    if cached is not None:
        return cached
    out: dict[int, tuple[Any, ...]] = {}

    def sig(module: nn.Module) -> tuple[Any, ...]:
        if id(module) in out:
            return out[id(module)]
        plain = tuple(sorted((k, repr(v)) for k, v in vars(module).items()
                             if not k.startswith("_") and isinstance(v, (int, float, bool, str, tuple, type(None)))))
        tensors = tuple((n, tuple(t.shape), str(t.dtype)) for n, t in
                        list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)))
        children = tuple((n, sig(c)) for n, c in module.named_children())
        out[id(module)] = (type(module).__module__, type(module).__qualname__, module.extra_repr(), plain,
                           tensors, children)
        return out[id(module)]

    sig(root)
    _SIGNATURES[root] = out
    return out


_SIGNATURES: "weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[Any, ...]]]" = weakref.WeakKeyDictionary()


def _call_key(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Optional[tuple[Any, ...]]:
    parts: list[Any] = []
    for value in list(args) + [kwargs[k] for k in sorted(kwargs)]:
        if isinstance(value, torch.Tensor):
            parts.append(("T", tuple(value.shape), tuple(value.stride()), str(value.dtype)))
        elif isinstance(value, (int, float, bool, str, type(None))):
            parts.append(("V", value))
        else:
            return None  # something we cannot key on: run it for real
    return tuple(sorted(kwargs)), tuple(parts)


class _BlockMemo:
    """Wraps every submodule's forward: a repeat (same signature, same input shapes) replays."""

    def __init__(self, root: nn.Module, recorder: _Recorder) -> None:
        self.recorder = recorder
        self.memo: dict[tuple[Any, ...], tuple[list[tuple[str, str, float, float]], tuple[Any, ...]]] = {}
        self.wrapped: list[nn.Module] = []
        self.signatures = _signatures(root)
        for module in root.modules():
            if module is root or not list(module.children()) and not list(module.parameters(recurse=False)):
                continue
            self._wrap(module)

    def _wrap(self, module: nn.Module) -> None:
        original = module.forward
        memo, recorder, sig = self.memo, self.recorder, self.signatures[id(module)]

        def forward(*args: Any, **kwargs: Any) -> Any:
            call = _call_key(args, kwargs)
            if call is None:
                return original(*args, **kwargs)
            key = (sig, call)
            if key in memo:
                records, (shape, stride, dtype) = memo[key]
                recorder.records.extend(records)
                return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
            start = len(recorder.records)
            out = original(*args, **kwargs)
            if isinstance(out, torch.Tensor) and out.device.type == "meta":
                memo[key] = (recorder.records[start:], (tuple(out.shape), tuple(out.stride()), out.dtype))
            return out

        module.forward = forward  # type: ignore[method-assign]
        self.wrapped.append(module)

    def remove(self) -> None:
        for module in self.wrapped:
            module.__dict__.pop("forward", None)


def trace_callable(fn: Callable[..., Any], *args: Any, modules: Optional[nn.Module] = None, **kwargs: Any) -> OpTrace:
    """Trace ``fn(*args, **kwargs)`` (meta tensors in, nothing computed); ``modules``: a module whose
    repeated blocks may be replayed."""
    recorder = _Recorder()
    memo = _BlockMemo(modules, recorder) if modules is not None else None
    try:
        with torch.inference_mode(), recorder:
            fn(*args, **kwargs)
    finally:
        if memo is not None:
            memo.remove()
    return OpTrace.from_counts(Counter(recorder.records))


def trace_module(module: nn.Module, *args: Any, **kwargs: Any) -> OpTrace:
    """Trace ``module(*args, **kwargs)`` in eval mode, replaying repeated blocks."""
    module.eval()
    return trace_callable(module, *args, modules=module, **kwargs)


# --------------------------------------------------------------------------------------------
# A cache of traces on disk (traces depend only on shapes, the model code and torch)
# --------------------------------------------------------------------------------------------

def cache_dir() -> Optional[Path]:
    """Where traces are cached: ``$EXPLORER_TRACE_CACHE`` (``off`` disables), else
    ``~/.cache/explorer/traces``."""
    value = os.environ.get("EXPLORER_TRACE_CACHE")
    if value is not None and value.strip().lower() in ("", "0", "off", "false", "none"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "explorer" / "traces"


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """Digest of everything a trace depends on besides its arguments: model code, this tracer, torch."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(torch.__version__.encode())
    for path in sorted((root / "models").glob("*.py")) + [Path(__file__).resolve(), root / "predict" / "opclass.py",
                                                           root / "measure" / "flops.py"]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    try:
        import transformers

        h.update(transformers.__version__.encode())
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    return h.hexdigest()[:16]


def _disk_cached(kind: str, key: tuple[Any, ...], make: Callable[[], OpTrace]) -> OpTrace:
    folder = cache_dir()
    if folder is None:
        return make()
    digest = hashlib.sha256(json.dumps([kind, _code_digest(), *key], sort_keys=True).encode()).hexdigest()[:24]
    path = folder / f"{kind}-{digest}.json"
    if path.is_file():
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            return OpTrace(tuple(OpRecord(c, o, float(f), float(b), int(n)) for c, o, f, b, n in rows))
        except (OSError, ValueError, TypeError):
            pass  # a damaged entry: trace again and overwrite it
    trace = make()
    try:
        with atomic_path(path) as tmp:  # concurrent sweeps never read a half-written entry
            tmp.write_text(json.dumps([[r.op_class, r.op, r.flops, r.bytes, r.count] for r in trace.ops]),
                           encoding="utf-8")
    except OSError:
        pass  # a read-only home: the cache is an optimisation only
    return trace


# --------------------------------------------------------------------------------------------
# The three factors of TTFT
# --------------------------------------------------------------------------------------------

def _check_dtype(dtype: str) -> torch.dtype:
    if dtype not in _DTYPES:
        raise ValueError(f"invalid dtype={dtype!r}: one of {', '.join(map(repr, _DTYPES))}")
    return _DTYPES[dtype]


@functools.lru_cache(maxsize=64)
def _meta_encoder(family: str, knobs_json: str, dtype: str, reparameterize: bool) -> nn.Module:
    from explorer.models.registry import build_encoder_meta

    model = build_encoder_meta(family, **json.loads(knobs_json))
    model = model.to(dtype=_check_dtype(dtype)).eval()  # meta: no values, nothing is copied
    if reparameterize:
        model.reparameterize()
    return model


@functools.lru_cache(maxsize=1024)
def _encoder_trace(family: str, knobs_json: str, resolution: int, dtype: str, batch: int,
                   reparameterize: bool) -> OpTrace:
    def make() -> OpTrace:
        model = _meta_encoder(family, knobs_json, dtype, reparameterize)
        x = torch.empty(batch, 3, resolution, resolution, device="meta", dtype=_check_dtype(dtype))
        return trace_module(model, x)

    return _disk_cached("encoder", (family, knobs_json, resolution, dtype, batch, reparameterize), make)


def trace_encoder(family: str, knobs: Optional[Mapping[str, Any]], resolution: int, *, dtype: str = "float32",
                  batch: int = 1, reparameterize: bool = True) -> OpTrace:
    """Operators of one encoder forward at ``resolution`` (cached per configuration)."""
    require(is_int(resolution) and resolution > 0, "resolution", resolution, "a positive integer (pixels)")
    return _encoder_trace(family, canonical_json(dict(knobs or {})), int(resolution), dtype, int(batch),
                          bool(reparameterize))


@functools.lru_cache(maxsize=1024)
def trace_projector(in_channels: int, hidden: int, tokens: int, *, dtype: str = "float32", batch: int = 1) -> OpTrace:
    """Operators of the ``mlp2x_gelu`` projector over ``tokens`` tokens."""
    from explorer.models.projector import MLP2xGelu

    with torch.device("meta"):
        proj = MLP2xGelu(int(in_channels), int(hidden)).to(dtype=_check_dtype(dtype))
    x = torch.empty(batch, int(tokens), int(in_channels), device="meta", dtype=_check_dtype(dtype))
    return trace_module(proj, x)


@functools.lru_cache(maxsize=32)
def _meta_llm(spec_json: str, dtype: str, layers: int) -> nn.Module:
    from explorer.models.llm import LLMSpec, build_llm

    spec = LLMSpec(**json.loads(spec_json))
    return build_llm(spec, device="meta", dtype=_check_dtype(dtype), num_layers=layers)


def _llm_forward_trace(spec_json: str, dtype: str, layers: int, tokens: int, batch: int) -> OpTrace:
    from explorer.measure.prefill import causal_mask

    model = _meta_llm(spec_json, dtype, layers)
    ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
    mask = causal_mask(tokens, "meta", batch=batch)
    return trace_callable(model, modules=model, input_ids=ids, attention_mask=mask, logits_to_keep=1,
                          use_cache=False)


@functools.lru_cache(maxsize=1024)
def _prefill_trace(spec_json: str, layers: int, tokens: int, dtype: str, batch: int) -> OpTrace:
    def make() -> OpTrace:
        one = _llm_forward_trace(spec_json, dtype, 1, tokens, batch)
        if layers == 1:
            return one
        two = _llm_forward_trace(spec_json, dtype, 2, tokens, batch)
        return one + two.minus(one).times(layers - 1)

    return _disk_cached("prefill", (spec_json, layers, tokens, dtype, batch), make)


def trace_prefill(spec: Any, tokens: int, *, dtype: str = "float32", batch: int = 1) -> OpTrace:
    """Operators of one prefill of ``tokens`` tokens (the convention of ``docs/measurement.md``).

    Transformers' model is traced with one and with two decoder layers on ``meta``; the second
    layer's operators (the difference) are repeated for the remaining layers.
    """
    import dataclasses

    from explorer.models.llm import get_llm_spec

    spec = get_llm_spec(spec)
    require(is_int(tokens) and tokens > 0, "tokens", tokens, "a positive integer")
    spec_json = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    return _prefill_trace(spec_json, int(spec.layers), int(tokens), dtype, int(batch))


def combine(traces: Iterable[OpTrace]) -> OpTrace:
    total: Counter = Counter()
    for t in traces:
        total += t.counts()
    return OpTrace.from_counts(total)
