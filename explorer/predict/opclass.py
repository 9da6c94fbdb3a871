"""Operator classes of the cost model: which kind of kernel an aten operator runs.

Each class gets its own efficiencies in a device profile (how close that kind of kernel gets to
the device's compute peak and memory bandwidth), because a dense convolution, a depthwise
convolution and a LayerNorm reach very different fractions of the same roof.
"""
from __future__ import annotations

from typing import Any, Sequence

#: The classes, in the order profiles and reports list them.
OP_CLASSES: tuple[str, ...] = (
    "conv_dense",     # convolution with groups == 1
    "conv_grouped",   # depthwise and other grouped convolutions
    "matmul",         # linear / mm / addmm / bmm / baddbmm / matmul / einsum
    "attention",      # fused scaled-dot-product attention (scores never written to memory)
    "norm",           # layer / batch / group / RMS norm kernels
    "elementwise",    # activations, arithmetic, softmax, reductions, pooling
    "copy",           # data movement that writes memory: copies, concatenation, embedding lookups, resampling
)

#: Classes whose operators carry FLOPs (the others are costed by the bytes they move).
COMPUTE_CLASSES: tuple[str, ...] = ("conv_dense", "conv_grouped", "matmul", "attention")

_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "einsum", "_addmm_activation"}
_NORM = {"native_layer_norm", "layer_norm", "native_batch_norm", "_native_batch_norm_legit_no_training",
         "_native_batch_norm_legit", "batch_norm", "native_group_norm", "group_norm", "rms_norm", "_fused_rms_norm"}
_COPY = {"clone", "copy_", "_to_copy", "to", "cat", "stack", "contiguous", "embedding", "index_select", "index",
         "gather", "constant_pad_nd", "upsample_nearest2d", "upsample_bilinear2d", "_upsample_bilinear2d_aa",
         "repeat", "index_put_", "index_put", "masked_fill", "masked_fill_", "where", "tril", "triu", "zeros",
         "ones", "full", "arange", "zeros_like", "ones_like", "full_like", "fill_", "zero_", "flip", "roll",
         "scatter", "scatter_", "im2col", "col2im", "pixel_shuffle", "pixel_unshuffle"}


def op_name(func: Any) -> str:
    """``aten.convolution.default`` -> ``convolution`` (the overload packet's short name)."""
    packet = getattr(func, "_overloadpacket", func)
    name = str(packet)
    return name.split(".", 1)[1] if name.startswith("aten.") else name


def is_attention(name: str) -> bool:
    return "scaled_dot_product" in name or name == "_native_multi_head_attention"


def classify(name: str, weight_shape: Sequence[int] | None = None, groups: int = 1) -> str:
    """The class of operator ``name`` (an aten short name).

    Convolutions are split by ``groups``: 1 is ``conv_dense``, anything else (depthwise included)
    ``conv_grouped``.
    """
    base = name.rstrip("_") if name.endswith("_") and name.rstrip("_") not in ("",) else name
    if name in ("convolution", "_convolution", "conv2d", "conv1d", "conv3d", "mkldnn_convolution",
                "convolution_overrideable"):
        return "conv_dense" if int(groups) == 1 else "conv_grouped"
    if is_attention(name):
        return "attention"
    if name in _MATMUL or base in _MATMUL:
        return "matmul"
    if name in _NORM or base in _NORM:
        return "norm"
    if name in _COPY or base in _COPY:
        return "copy"
    return "elementwise"
