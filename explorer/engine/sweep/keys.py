"""What a sweep measures: the unique jobs, each keyed by a digest of its factor's own inputs.

TTFT = encoder + projector + prefill, and each factor depends on only part of a design point:
the encoder on (family, knobs, resolution), the projector on (encoder channels, LLM width,
visual tokens), the prefill on (LLM architecture, visual + text tokens). Equal inputs give equal
keys, so a factor shared by many points is measured once. A point that prunes visual tokens inside
the LLM (``DesignPoint.pruning``) has a prefill of its own, keyed by the visual / text split and
the pruning as well (:func:`pruned_prefill_key`); unpruned prefills keep :func:`prefill_key`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from explorer.data.space import digest

__all__ = ["KINDS", "Job", "encoder_key", "projector_key", "prefill_key", "pruned_prefill_key"]

#: The three factors, in the order a point needs them.
KINDS: tuple[str, ...] = ("encoder", "projector", "prefill")


def encoder_key(encoder: str, knobs: Mapping[str, Any], resolution: int) -> str:
    return digest({"kind": "encoder", "encoder": encoder, "knobs": dict(knobs), "resolution": int(resolution)})


def projector_key(in_channels: int, hidden: int, tokens: int) -> str:
    return digest({"kind": "projector", "in_channels": int(in_channels), "hidden": int(hidden),
                   "tokens": int(tokens)})


def prefill_key(llm_spec: Mapping[str, Any], tokens: int) -> str:
    """Keyed on the LLM's architecture spec, so a catalog name and an equal config.json share it."""
    return digest({"kind": "prefill", "llm": dict(llm_spec), "tokens": int(tokens)})


def pruned_prefill_key(llm_spec: Mapping[str, Any], visual: int, text: int, pruning: Mapping[str, Any]) -> str:
    """A prefill that drops visual tokens after a decoder layer: the split matters, not only the sum."""
    return digest({"kind": "prefill", "llm": dict(llm_spec), "tokens": int(visual) + int(text), "visual": int(visual),
                   "text": int(text), "pruning": dict(pruning)})


@dataclass(frozen=True)
class Job:
    """One unique measurement of the sweep."""

    kind: str  # encoder | projector | prefill
    key: str
    inputs: dict[str, Any]  # what the measure function is called with (JSON-able)
    gflops_est: float  # for the time model
    label: str

    def call_args(self) -> tuple[Any, ...]:
        i = self.inputs
        if self.kind == "encoder":
            return (i["encoder"], dict(i["knobs"]), i["resolution"])
        if self.kind == "projector":
            return (i["in_channels"], i["hidden"], i["tokens"])
        if i.get("pruning") is not None:  # the prompt as its two parts and the pruning
            from explorer.measure.pruned_prefill import Pruning, PrunedPrompt

            return (i["llm"], PrunedPrompt(i["visual"], i["text"], Pruning.from_dict(i["pruning"])))
        return (i["llm"], i["tokens"])
