"""Predicted latency of a prefill that prunes visual tokens after layer K (two segments).

The operator trace of the pruned prefill is built exactly from prefill traces: a ``K``-layer
model over ``V + T`` tokens (embeddings, K layers, norm, head), plus ``L - K`` decoder layers over
``T + kept(V)`` tokens (the trace of a ``(L - K + 1)``-layer model less that of a one-layer model,
both over the shorter sequence: exactly ``L - K`` layers' operators). The roofline model is a
sum over operators, so the prediction is the pruned prefill's. Segments: ``explorer.measure.pruned_prefill``.
"""
from __future__ import annotations

from typing import Any

from explorer.measure.pruned_prefill import Pruning

from .model import Prediction, predict_trace
from .profile import DeviceProfile
from .trace import OpTrace, trace_prefill

__all__ = ["trace_pruned_prefill", "predict_pruned_prefill"]


def trace_pruned_prefill(spec: Any, visual: int, text: int, pruning: Pruning, *, dtype: str = "float32",
                         batch: int = 1) -> OpTrace:
    from explorer.models.llm import get_llm_spec

    spec = get_llm_spec(spec)
    (k, p1), (rest, p2) = pruning.segments(spec, visual, text)
    first = trace_prefill(spec.with_layers(k), p1, dtype=dtype, batch=batch).counts()
    longer = trace_prefill(spec.with_layers(rest + 1), p2, dtype=dtype, batch=batch).counts()
    one = trace_prefill(spec.with_layers(1), p2, dtype=dtype, batch=batch).counts()
    layers = longer - one
    if any(n > 0 for n in (one - longer).values()):  # pragma: no cover - a trace that is not layer-additive
        raise RuntimeError(f"{spec.name}: the prefill trace is not additive in layers; cannot split segments")
    return OpTrace.from_counts(first + layers)


def predict_pruned_prefill(spec: Any, visual: int, text: int, pruning: Pruning, profile: DeviceProfile,
                           dtype: str = "float32", batch: int = 1) -> Prediction:
    return predict_trace(trace_pruned_prefill(spec, visual, text, pruning, dtype=dtype, batch=batch), profile, dtype)
