"""FLOP counting: FLOPs = 2 x multiply-accumulates (MACs) of every matmul-like op.

Two independent counters, meant to agree:

- :func:`count_flops` (fvcore ``FlopCountAnalysis``, TorchScript trace, real tensors). fvcore
  counts one MAC as one flop and has no handler for ``aten::scaled_dot_product_attention``
  (attention silently vanishes) nor for ``baddbmm`` / native multi-head attention; its
  ``matmul`` handler rejects broadcasting and 1-D operands. We replace its handlers with our
  own for every matmul-like op (linear, addmm, mm, bmm, baddbmm, addbmm, matmul, einsum,
  convolutions, SDPA and its fused variants, native MHA) and multiply by 2.
- :func:`count_flops_torch` (``torch.utils.flop_counter.FlopCounterMode``, dispatcher level,
  works on the ``meta`` device so 7B models are counted without allocating weights). It counts
  2 x MACs but has no formula for the CPU SDPA kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``) nor for ``aten._native_multi_head_attention``
  (``nn.MultiheadAttention``'s eval fast path): both count 0 until we register the formulas below.

Convention shared by both: only MACs of matmul-like ops count. Normalisations, activations,
softmax, elementwise arithmetic, pooling, resampling and embedding lookups count 0; they are
not dropped silently but listed in ``FlopCount.skipped_ops`` with their number of calls (for
fvcore: its ``unsupported_ops``; pure data-movement ops it ignores by design are not listed).
Attention counts the dense score matrix ``L x S`` whether or not it is causal or masked (what
torch's counter and the math/CPU kernels do; a causal flash kernel skips about half of it).
Biases of linear/conv layers are not counted (they are additions, not MACs).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from torch import nn

Shape = Sequence[int]


@dataclass(frozen=True)
class FlopCount:
    """Result of a count: ``gflops`` = 2 x MACs / 1e9 (per call of the counted forward)."""

    gflops: float
    by_op: dict[str, float]  # GFLOPs per operator
    skipped_ops: dict[str, int] = field(default_factory=dict)  # operator -> calls that counted 0
    counter: str = "fvcore"

    def to_dict(self) -> dict[str, Any]:
        return {"gflops": self.gflops, "by_op": dict(self.by_op), "skipped_ops": dict(self.skipped_ops),
                "counter": self.counter}


# --------------------------------------------------------------------------------------------
# MAC formulas on plain shapes (shared by both counters and by the analytic formulas' tests)
# --------------------------------------------------------------------------------------------

def _prod(xs: Iterable[int]) -> int:
    return math.prod(int(x) for x in xs)


def matmul_macs(a: Shape, b: Shape) -> int:
    """MACs of ``torch.matmul(a, b)`` with numpy broadcasting and 1-D operands."""
    a, b = list(a), list(b)
    if len(a) == 1:
        a = [1] + a
    if len(b) == 1:
        b = b + [1]
    m, k = a[-2], a[-1]
    k2, n = b[-2], b[-1]
    if k != k2:
        raise ValueError(f"matmul shapes {a} x {b}: inner dimensions differ")
    batch_a, batch_b = a[:-2], b[:-2]
    width = max(len(batch_a), len(batch_b))
    batch_a = [1] * (width - len(batch_a)) + batch_a
    batch_b = [1] * (width - len(batch_b)) + batch_b
    batch = _prod(max(x, y) for x, y in zip(batch_a, batch_b))
    return batch * m * k * n


def conv_macs(x: Shape, w: Shape, out: Shape, transposed: bool = False) -> int:
    """MACs of a (grouped, strided, dilated, transposed) convolution; ``w`` is the weight shape.

    Each output element of a normal conv takes ``Cin/groups * prod(kernel)`` MACs, i.e.
    ``B * prod(out spatial) * prod(w)``; a transposed conv scatters each input element,
    i.e. ``B * prod(in spatial) * prod(w)``.
    """
    spatial = (x if transposed else out)[2:]
    return int(x[0]) * _prod(w) * _prod(spatial)


def sdpa_macs(q: Shape, k: Shape, v: Shape) -> int:
    """MACs of ``scaled_dot_product_attention``: ``Q K^T`` plus ``softmax(.) V``, dense ``L x S``.

    Batch/head dims come from the query (GQA keys/values are broadcast to the query heads).
    """
    length, e = q[-2], q[-1]
    s, ev = k[-2], v[-1]
    return _prod(q[:-2]) * length * s * (e + ev)


def mha_macs(q: Shape, k: Shape, embed_dim: int, batch_first: bool = True) -> int:
    """MACs of native multi-head attention: in-projections, dense attention, out-projection."""
    if len(q) == 2:
        q, k = [1, *q], [1, *k]
    elif not batch_first:
        q, k = [q[1], q[0], q[2]], [k[1], k[0], k[2]]
    b, length, s, e = q[0], q[1], k[1], embed_dim
    proj = b * (length + 2 * s) * e * e + b * length * e * e
    attention = b * length * s * 2 * e  # heads x head_dim = embed_dim
    return proj + attention


def einsum_macs(equation: str, shapes: Sequence[Shape]) -> int:
    """MACs of ``torch.einsum`` contracted pairwise left to right (how torch evaluates it).

    Each pairwise contraction costs the product of the sizes of every index in either operand.
    A single-operand einsum (a reduction or transpose) costs 0 MACs.
    """
    eq = equation.replace(" ", "")
    if "..." in eq:
        raise ValueError(f"einsum {equation!r}: ellipsis is not supported by the counter")
    lhs, _, out = eq.partition("->")
    terms = lhs.split(",")
    if not out and "->" not in eq:
        counts: dict[str, int] = {}
        for ch in lhs.replace(",", ""):
            counts[ch] = counts.get(ch, 0) + 1
        out = "".join(sorted(ch for ch, c in counts.items() if c == 1))
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        if len(term) != len(shape):
            raise ValueError(f"einsum {equation!r}: term {term!r} does not match shape {list(shape)}")
        for ch, n in zip(term, shape):
            sizes[ch] = max(sizes.get(ch, 1), int(n))
    if len(terms) < 2:
        return 0
    total = 0
    current = terms[0]
    for i in range(1, len(terms)):
        nxt = terms[i]
        union = set(current) | set(nxt)
        total += _prod(sizes[ch] for ch in union)
        keep = set(out).union(*[set(t) for t in terms[i + 1:]]) if i + 1 < len(terms) else set(out)
        current = "".join(ch for ch in sorted(union) if ch in keep)
    return total


# --------------------------------------------------------------------------------------------
# fvcore (TorchScript trace) handlers: each returns MACs; the total is doubled at the end
# --------------------------------------------------------------------------------------------

def _jit_shape(value: Any) -> Optional[list[int]]:
    if value.isCompleteTensor():
        return list(value.type().sizes())
    return None


def _jit_const(value: Any) -> Any:
    return value.toIValue()


def _h_linear(inputs: list[Any], outputs: list[Any]) -> int:
    x, w = _jit_shape(inputs[0]), _jit_shape(inputs[1])
    return _prod(x[:-1]) * w[0] * w[1]


def _h_addmm(inputs: list[Any], outputs: list[Any]) -> int:  # addmm(self, a, b, beta, alpha)
    return matmul_macs(_jit_shape(inputs[1]), _jit_shape(inputs[2]))


def _h_mm(inputs: list[Any], outputs: list[Any]) -> int:  # mm / bmm / matmul (a, b)
    return matmul_macs(_jit_shape(inputs[0]), _jit_shape(inputs[1]))


def _h_baddbmm(inputs: list[Any], outputs: list[Any]) -> int:  # baddbmm / addbmm(self, b1, b2, ...)
    return matmul_macs(_jit_shape(inputs[1]), _jit_shape(inputs[2]))


def _h_conv(transposed_arg: Optional[int], always_transposed: bool = False) -> Callable[[list[Any], list[Any]], int]:
    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        transposed = always_transposed
        if transposed_arg is not None:
            transposed = bool(_jit_const(inputs[transposed_arg]))
        return conv_macs(_jit_shape(inputs[0]), _jit_shape(inputs[1]), _jit_shape(outputs[0]), transposed)
    return handle


def _h_einsum(inputs: list[Any], outputs: list[Any]) -> int:
    equation = _jit_const(inputs[0])
    operands = inputs[1].node().inputs()
    return einsum_macs(equation, [_jit_shape(v) for v in operands])


def _h_sdpa(inputs: list[Any], outputs: list[Any]) -> int:
    return sdpa_macs(_jit_shape(inputs[0]), _jit_shape(inputs[1]), _jit_shape(inputs[2]))


def _h_native_mha(inputs: list[Any], outputs: list[Any]) -> int:
    # _native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, ...)
    return mha_macs(_jit_shape(inputs[0]), _jit_shape(inputs[1]), int(_jit_const(inputs[3])))


_SDPA_OPS = (
    "scaled_dot_product_attention",
    "_scaled_dot_product_attention_math",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
)

FVCORE_HANDLERS: dict[str, Callable[[list[Any], list[Any]], int]] = {
    "aten::linear": _h_linear,
    "aten::addmm": _h_addmm,
    "aten::mm": _h_mm,
    "aten::bmm": _h_mm,
    "aten::matmul": _h_mm,
    "aten::baddbmm": _h_baddbmm,
    "aten::addbmm": _h_baddbmm,
    "aten::einsum": _h_einsum,
    "aten::_convolution": _h_conv(6),
    "aten::convolution": _h_conv(6),
    "aten::conv1d": _h_conv(None),
    "aten::conv2d": _h_conv(None),
    "aten::conv3d": _h_conv(None),
    "aten::_convolution_mode": _h_conv(None),  # conv with padding="valid"/"same" (transformers' SigLIP)
    "aten::conv_transpose1d": _h_conv(None, True),
    "aten::conv_transpose2d": _h_conv(None, True),
    "aten::conv_transpose3d": _h_conv(None, True),
    "aten::_native_multi_head_attention": _h_native_mha,
    **{f"aten::{name}": _h_sdpa for name in _SDPA_OPS},
}

Inputs = Union[torch.Tensor, tuple[Any, ...]]


def _tensors_in(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors_in(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors_in(item)]
    return []


class _KeepEveryOutput(nn.Module):
    """Returns one element of every submodule's output next to the model's output.

    TorchScript tracing eliminates dead code: a block whose output is computed but not used
    (LLaVA runs all 24 CLIP layers and keeps the penultimate one) would vanish from fvcore's
    count although eager execution pays for it. A one-element copy (``cat`` of a slice, ops
    fvcore ignores) makes every module's work reach the graph's outputs without keeping the
    activations alive.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._kept: list[torch.Tensor] = []
        self._hooks = [m.register_forward_hook(self._keep) for m in model.modules() if m is not model]

    def _keep(self, module: nn.Module, args: Any, output: Any) -> None:
        self._kept.extend(torch.cat([t.reshape(-1)[:1]]) for t in _tensors_in(output) if t.numel())

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        self._kept = []
        out = _tensors_in(self.model(*args))
        kept, self._kept = self._kept, []
        return tuple(out + kept)

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()


def count_flops(model: nn.Module, inputs: Inputs) -> FlopCount:
    """FLOPs of ``model(*inputs)`` with fvcore and our handlers (see the module docstring).

    The model is traced with TorchScript on real tensors (eval mode, no grad); it must accept
    positional tensor inputs. Skipped (zero-counted) operators are returned, not dropped.
    """
    with warnings.catch_warnings():  # fvcore scripts helpers at import time (deprecated API)
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis

    args = inputs if isinstance(inputs, tuple) else (inputs,)
    was_training = model.training
    model.eval()
    wrapper = _KeepEveryOutput(model)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(wrapper, args)
            analysis.clear_op_handles()
            analysis.set_op_handle(**FVCORE_HANDLERS)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            by_op = {k: 2 * v / 1e9 for k, v in analysis.by_operator().items()}
            skipped = {k.replace("aten::", ""): int(v) for k, v in analysis.unsupported_ops().items()}
    finally:
        wrapper.remove_hooks()
        model.train(was_training)
    return FlopCount(gflops=sum(by_op.values()), by_op=by_op, skipped_ops=skipped, counter="fvcore")


# --------------------------------------------------------------------------------------------
# torch.utils.flop_counter.FlopCounterMode with the missing formulas
# --------------------------------------------------------------------------------------------

def _f_sdpa(query_shape: Shape, key_shape: Shape, value_shape: Shape, *args: Any,
            out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * sdpa_macs(query_shape, key_shape, value_shape)


def _f_native_mha(query_shape: Shape, key_shape: Shape, value_shape: Shape, embed_dim: int,
                  *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * mha_macs(query_shape, key_shape, int(embed_dim))


def _extra_torch_formulas() -> dict[Any, Callable[..., int]]:
    aten = torch.ops.aten
    extra: dict[Any, Callable[..., int]] = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(aten, name, None)
        if op is not None:
            extra[op] = _f_sdpa
    op = getattr(aten, "_native_multi_head_attention", None)
    if op is not None:
        extra[op] = _f_native_mha
    return extra


# Ops that move, view, create or index data: no arithmetic, so not worth listing as skipped.
_FREE_OPS = {
    "view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "unsqueeze", "squeeze",
    "clone", "copy_", "_to_copy", "contiguous", "detach", "alias", "lift_fresh", "empty", "empty_like",
    "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "arange",
    "scalar_tensor", "slice", "select", "index", "index_select", "cat", "stack", "split",
    "split_with_sizes", "unbind", "chunk", "narrow", "flatten", "unflatten", "as_strided", "_reshape_alias",
    "new_empty", "new_zeros", "new_ones", "fill_", "zero_", "constant_pad_nd", "pad", "repeat",
    "repeat_interleave", "gather", "eq", "ne", "lt", "le", "gt", "ge", "bitwise_and", "bitwise_or",
    "bitwise_not", "logical_not", "where", "masked_fill", "masked_fill_", "tril", "triu", "_local_scalar_dense",
    "clamp", "expand_as", "view_as", "sym_size", "sym_numel", "sym_stride", "dim", "is_same_size",
}


def _packet_name(packet: Any) -> str:
    name = str(packet)
    return name[5:] if name.startswith("aten.") else name


class _RecordingFlopCounter:
    """FlopCounterMode that also records the operators that had no formula (counted 0)."""

    def __init__(self) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        extra = _extra_torch_formulas()
        skipped: dict[str, int] = {}

        class Mode(FlopCounterMode):
            def _count_flops(self, func_packet: Any, out: Any, args: Any, kwargs: Any) -> Any:  # type: ignore[override]
                if func_packet not in self.flop_registry:
                    name = _packet_name(func_packet)
                    if name.rstrip("_") not in _FREE_OPS and name not in _FREE_OPS:
                        skipped[name] = skipped.get(name, 0) + 1
                return super()._count_flops(func_packet, out, args, kwargs)

        self.mode = Mode(display=False, custom_mapping=extra)
        self.skipped = skipped


def count_flops_torch(fn: Union[nn.Module, Callable[..., Any]], inputs: Inputs = (),
                      kwargs: Optional[dict[str, Any]] = None) -> FlopCount:
    """FLOPs of ``fn(*inputs, **kwargs)`` with torch's dispatcher-level counter (meta-friendly).

    Works for any callable (e.g. a transformers model with keyword arguments) and on the
    ``meta`` device, where nothing is allocated. See the module docstring for what is counted.
    """
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    module = fn if isinstance(fn, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    recorder = _RecordingFlopCounter()
    try:
        with torch.no_grad(), recorder.mode:
            fn(*args, **(kwargs or {}))
    finally:
        if module is not None:
            module.train(was_training)
    counts = recorder.mode.get_flop_counts().get("Global", {})
    by_op = {_packet_name(k): v / 1e9 for k, v in counts.items()}
    return FlopCount(gflops=sum(by_op.values()), by_op=by_op, skipped_ops=dict(recorder.skipped),
                     counter="torch.flop_counter")
