"""A prefill that prunes visual tokens inside the LLM (FastV and successors): two segments.

After decoder layer ``K`` a fraction ``r`` of the visual tokens is dropped (ranked by attention in
FastV; the ranking reuses layer K's attention and is not costed here), so the prefill is

    embeddings + K layers over V + T tokens  +  (L - K) layers over T + kept(V) tokens  + norm + head

with ``kept(V) = V - floor(r * V)``. Both segments are counted exactly (the analytic convention
of :mod:`explorer.measure.prefill`, checked against torch's counter on meta in
``tests/test_pruned_prefill.py``) and timed as the two segments they are: a real forward of a
``K``-layer copy over ``V + T`` tokens, plus ``L - K`` layers over the shorter sequence (a
``k``-layer sample of them, scaled). Prediction: ``explorer.predict.pruned``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from explorer.checks import is_int, is_number, require

from ..models.llm import LLMSpec, get_llm_spec
from .costs import PrefillCost
from .prefill import SpecLike, combine_scaled, measure_prefill, prefill_macs, time_decoder_layers
from .settings import MeasureSettings

__all__ = ["Pruning", "PrunedPrompt", "pruned_prefill_macs", "pruned_prefill_flops", "measure_pruned_prefill"]


@dataclass(frozen=True)
class Pruning:
    """Drop the fraction ``ratio`` of the visual tokens after decoder layer ``after_layer`` (K).

    Checked on construction (K >= 1, ratio in [0, 1)); :meth:`check` adds the LLM's own bound
    (K below its layer count)."""

    after_layer: int
    ratio: float

    def __post_init__(self) -> None:
        require(is_int(self.after_layer) and self.after_layer >= 1, "after_layer", self.after_layer,
                "an integer >= 1 (the decoder layer after which visual tokens are dropped)")
        require(is_number(self.ratio) and 0 <= self.ratio < 1, "ratio", self.ratio,
                "a fraction in [0, 1) of the visual tokens to drop")

    def to_dict(self) -> dict[str, Any]:
        """``{"after_layer": K, "ratio": r}`` (the spelling of spaces, keys and the results' ``pruning`` column)."""
        return {"after_layer": self.after_layer, "ratio": self.ratio}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Pruning":
        """From ``{"after_layer": K, "ratio": r}``; another key, or one missing, is an error naming it."""
        require(isinstance(data, Mapping), "pruning", data, "a mapping {after_layer: K, ratio: r}")
        for key in data:
            require(key in ("after_layer", "ratio"), f"pruning.{key}", data[key], "unknown key; allowed: after_layer, ratio")
        for key in ("after_layer", "ratio"):
            require(key in data, f"pruning.{key}", None, "missing; give after_layer and ratio")
        return cls(after_layer=data["after_layer"], ratio=data["ratio"])

    def check(self, spec: LLMSpec) -> "Pruning":
        require(is_int(self.after_layer) and 1 <= self.after_layer < spec.layers, "after_layer", self.after_layer,
                f"an integer 1..{spec.layers - 1} (a layer of {spec.name} before its last)")
        require(is_number(self.ratio) and 0 <= self.ratio < 1, "ratio", self.ratio,
                "a fraction in [0, 1) of the visual tokens to drop")
        return self

    def kept(self, visual: int) -> int:
        require(is_int(visual) and visual >= 0, "visual", visual, "an integer >= 0")
        return visual - math.floor(self.ratio * visual)

    def segments(self, spec: LLMSpec, visual: int, text: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((K, V + T), (L - K, T + kept(V)))``: layers and tokens of each segment."""
        self.check(spec)
        require(is_int(text) and text >= 0, "text", text, "an integer >= 0")
        return (self.after_layer, visual + text), (spec.layers - self.after_layer, text + self.kept(visual))


@dataclass(frozen=True)
class PrunedPrompt:
    """The prompt of a pruned prefill: ``visual`` image tokens, then ``text`` tokens, ``pruning``
    applied inside the LLM. What the sweep hands the prefill measurement in place of a token count
    (``explorer.engine.backend``'s prefill function dispatches on it)."""

    visual: int
    text: int
    pruning: Pruning

    def __post_init__(self) -> None:
        require(is_int(self.visual) and self.visual >= 0, "visual", self.visual, "an integer >= 0")
        require(is_int(self.text) and self.text >= 0, "text", self.text, "an integer >= 0")
        require(isinstance(self.pruning, Pruning), "pruning", self.pruning, "a Pruning(after_layer, ratio)")

    @property
    def tokens(self) -> int:
        """Prompt length before pruning (V + T)."""
        return self.visual + self.text


def pruned_prefill_macs(spec: SpecLike, visual: int, text: int, pruning: Pruning, lm_head: str = "last") -> int:
    """Multiply-accumulates of the pruned prefill (``lm_head="last"``: the head on the last position)."""
    spec = get_llm_spec(spec)
    (k, p1), (rest, p2) = pruning.segments(spec, visual, text)
    require(lm_head == "last", "lm_head", lm_head, "'last' (a pruned prefill has no logits for dropped positions)")
    first = prefill_macs(spec.with_layers(k), p1, lm_head)  # K layers + head
    one = prefill_macs(spec.with_layers(1), p2, lm_head)
    two = prefill_macs(spec.with_layers(2), p2, lm_head)
    return first + rest * (two - one)


def pruned_prefill_flops(spec: SpecLike, visual: int, text: int, pruning: Pruning, lm_head: str = "last") -> float:
    """GFLOPs (2 x MACs / 1e9) of the pruned prefill."""
    return 2 * pruned_prefill_macs(spec, visual, text, pruning, lm_head) / 1e9


def measure_pruned_prefill(spec_or_name: SpecLike, visual: int, text: int, pruning: Pruning,
                           settings: MeasureSettings, time: bool = True, sample_layers: int = 2,
                           memory_budget_gb: Optional[float] = None) -> PrefillCost:
    """FLOPs and latency of the two-segment prefill; ``tokens`` is the prompt (V + T) and
    ``method`` names both segments."""
    settings.check_on_machine()
    require(settings.llm_runtime == "transformers", "measure.llm_runtime", settings.llm_runtime,
            "'transformers' for a pruned prefill (its segments are timed on transformers' layers)")
    spec = get_llm_spec(spec_or_name)
    (k, p1), (rest, p2) = pruning.segments(spec, visual, text)
    require(is_int(sample_layers) and sample_layers >= 1, "sample_layers", sample_layers, "a positive integer")
    gflops = pruned_prefill_flops(spec, visual, text, pruning, settings.lm_head)
    first = measure_prefill(spec.with_layers(k), p1, settings, time=time, memory_budget_gb=memory_budget_gb,
                            sample_layers=sample_layers, cross_check=False)
    latency = None
    method = "not-timed"
    if time:
        s = min(sample_layers, rest)
        second = time_decoder_layers(spec, p2, settings, s)
        latency = combine_scaled(first.latency, second, rest / s)
        method = f"pruned: {k} layers over {p1} tokens ({first.method}) + {rest} over {p2} (sampled k={s})"
    return PrefillCost(llm=spec.name, tokens=p1, params_m=spec.num_params() / 1e6, gflops=gflops, latency=latency,
                       method=method, skipped_ops=dict(first.skipped_ops), lm_head=settings.lm_head,
                       attention=settings.llm_attention)
