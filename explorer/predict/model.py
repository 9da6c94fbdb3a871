"""The cost model: a roofline per operator, with a per-class efficiency and a per-call overhead.

For one operator call of class ``c`` with ``F`` FLOPs that moves ``B`` bytes::

    t = max(F / (peak[dtype] * compute_eff[c]),  B / (bandwidth * memory_eff[c]))  +  overhead

and a forward pass is the sum over its calls. An operator is *compute-bound* when the first
term wins. Classes without FLOPs (norms, elementwise, copies) are costed by their bytes alone.

The same function serves prediction (plain floats) and calibration (torch tensors that carry
gradients), so the fitted model is exactly the one that predicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

import torch

from explorer.predict.opclass import OP_CLASSES
from explorer.predict.profile import DeviceProfile
from explorer.predict.trace import OpTrace

__all__ = ["TraceArrays", "Prediction", "roofline_seconds", "predict_trace", "op_seconds", "efficiencies"]

_CLASS_INDEX = {c: i for i, c in enumerate(OP_CLASSES)}
Number = Union[float, torch.Tensor]


@dataclass(frozen=True)
class TraceArrays:
    """A trace as columns (float64): class index, FLOPs, bytes and count per merged record."""

    cls: torch.Tensor
    flops: torch.Tensor
    bytes: torch.Tensor
    count: torch.Tensor

    @staticmethod
    def of(trace: OpTrace) -> "TraceArrays":
        ops = trace.ops
        return TraceArrays(
            cls=torch.tensor([_CLASS_INDEX[r.op_class] for r in ops], dtype=torch.long),
            flops=torch.tensor([r.flops for r in ops], dtype=torch.float64),
            bytes=torch.tensor([r.bytes for r in ops], dtype=torch.float64),
            count=torch.tensor([r.count for r in ops], dtype=torch.float64))


def _per_class(values: Mapping[str, Number], fill: float) -> torch.Tensor:
    """A value per class in ``OP_CLASSES`` order (``fill`` for classes ``values`` lacks)."""
    items = [values.get(c, fill) for c in OP_CLASSES]
    return torch.stack([v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)
                        for v in items])


def roofline_seconds(arrays: TraceArrays, *, peak: Number, bandwidth: Number, compute_eff: torch.Tensor,
                     memory_eff: torch.Tensor, overhead: Number) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seconds of every record (count included), and per record whether it is compute-bound.

    ``compute_eff`` / ``memory_eff`` are per class, indexed like ``OP_CLASSES``.
    Returns ``(seconds per record, compute-bound mask, overhead seconds per record)``.
    """
    compute = arrays.flops / (peak * compute_eff[arrays.cls])
    memory = arrays.bytes / (bandwidth * memory_eff[arrays.cls])
    bound = torch.maximum(compute, memory)
    per_call = bound + overhead
    return per_call * arrays.count, compute > memory, arrays.count * overhead


def efficiencies(profile: DeviceProfile) -> tuple[torch.Tensor, torch.Tensor]:
    """A profile's compute and memory efficiencies, one entry per operator class (the prior the
    calibration fits from)."""
    # classes without FLOPs have no compute term whatever their compute efficiency: fill with 1
    compute = _per_class(profile.compute_efficiency, 1.0)
    memory = _per_class(profile.memory_efficiency, 1.0)
    return compute, memory


@dataclass(frozen=True)
class Prediction:
    """Predicted seconds of one forward, its interval and a per-class breakdown."""

    seconds: float
    low_s: float
    high_s: float
    by_class_s: Mapping[str, float]
    compute_bound_share: float  # fraction of the time spent in compute-bound calls
    overhead_s: float

    @property
    def ms(self) -> float:
        return self.seconds * 1e3

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "low_s": self.low_s, "high_s": self.high_s,
                "by_class_s": dict(self.by_class_s), "compute_bound_share": self.compute_bound_share,
                "overhead_s": self.overhead_s}


def predict_trace(trace: OpTrace, profile: DeviceProfile, dtype: str = "float32") -> Prediction:
    """Predicted latency of ``trace`` on ``profile`` (the roofline of the module docstring)."""
    arrays = TraceArrays.of(trace)
    compute_eff, memory_eff = efficiencies(profile)
    with torch.no_grad():
        secs, compute_bound, overhead = roofline_seconds(
            arrays, peak=profile.peak(dtype), bandwidth=profile.memory_bandwidth.value, compute_eff=compute_eff,
            memory_eff=memory_eff, overhead=profile.overhead_s.value)
    total = float(secs.sum())
    by_class = {c: 0.0 for c in OP_CLASSES}
    for idx, s in zip(arrays.cls.tolist(), secs.tolist()):
        by_class[OP_CLASSES[idx]] += s
    share = float(secs[compute_bound].sum()) / total if total > 0 else 0.0
    return Prediction(seconds=total, low_s=total * profile.interval_low, high_s=total * profile.interval_high,
                      by_class_s=by_class, compute_bound_share=share, overhead_s=float(overhead.sum()))


def op_seconds(op_class: str, flops: float, nbytes: float, profile: DeviceProfile, dtype: str = "float32") -> float:
    """Seconds of one call (a convenience for reading the model by hand)."""
    peak = profile.peak(dtype)
    ce = profile.compute_efficiency.get(op_class, 1.0)
    me = profile.memory_efficiency[op_class]
    compute = flops / (peak * ce) if flops > 0 else 0.0
    return max(compute, nbytes / (profile.memory_bandwidth.value * me)) + profile.overhead_s.value
