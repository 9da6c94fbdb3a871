"""Time to first token = [image preprocessing +] vision encoder + projector + LLM prefill.

Two definitions: the deployed one (``include_preprocess=True``, default) starts from a decoded
source image, as ml-fastvlm's app does; the FastVLM paper's figure starts from the encoder's
input tensor (``include_preprocess=False``). See docs/measurement.md, "What TTFT includes".

Each part is measured on its own (the factorised measurement the sweep engine caches); this
module adds them up for one design point and is what a notebook calls for a single point.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from ..checks import check_int
from ..models.llm import LLMSpec, get_llm_spec
from .costs import EncoderCost, PrefillCost, ProjectorCost
from .encoder import measure_encoder
from .prefill import measure_prefill
from .projector import measure_projector
from .settings import MeasureSettings


@dataclass(frozen=True)
class TTFTBreakdown:
    """Latency (median ms; None when not timed) and GFLOPs of each part of TTFT for one image."""

    preprocess_ms: Optional[float]  # None when not measured (settings.preprocess == "none")
    encoder_ms: Optional[float]
    projector_ms: Optional[float]
    prefill_ms: Optional[float]
    ttft_ms: Optional[float]
    encoder_gflops: float
    projector_gflops: float
    prefill_gflops: float
    ttft_gflops: float
    visual_tokens: int
    prefill_tokens: int
    prefill_method: str
    noisy: bool  # any part's timing hit a cap before its CI target
    includes_preprocess: bool = False  # whether ttft_ms counts preprocess_ms

    @classmethod
    def from_costs(cls, encoder: EncoderCost, projector: ProjectorCost, prefill: PrefillCost,
                   include_preprocess: bool = True) -> "TTFTBreakdown":
        """Sum independently measured parts; latency is None if any part was not timed.

        Preprocessing joins the sum when ``include_preprocess`` and it was measured;
        ``includes_preprocess`` says whether it did.
        """
        parts = (encoder.latency, projector.latency, prefill.latency)
        enc_ms, proj_ms, pre_ms = (t.median_ms if t is not None else None for t in parts)
        timed = all(t is not None for t in parts)
        prep = encoder.preprocess_latency
        prep_ms = prep.median_ms if prep is not None else None
        with_prep = bool(include_preprocess and prep_ms is not None)
        ttft = (enc_ms + proj_ms + pre_ms) if timed else None  # type: ignore[operator]
        if ttft is not None and with_prep:
            ttft += prep_ms  # type: ignore[operator]
        return cls(
            preprocess_ms=prep_ms,
            encoder_ms=enc_ms,
            projector_ms=proj_ms,
            prefill_ms=pre_ms,
            ttft_ms=ttft,
            encoder_gflops=encoder.gflops,
            projector_gflops=projector.gflops,
            prefill_gflops=prefill.gflops,
            ttft_gflops=encoder.gflops + projector.gflops + prefill.gflops,
            visual_tokens=encoder.visual_tokens,
            prefill_tokens=prefill.tokens,
            prefill_method=prefill.method,
            noisy=any(t is not None and t.noisy for t in parts + ((prep,) if with_prep else ())),
            includes_preprocess=with_prep,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure_point(encoder: str, knobs: Optional[Mapping[str, Any]], resolution: int,
                  llm: Union[str, LLMSpec], text_tokens: int, settings: MeasureSettings,
                  time: bool = True, memory_budget_gb: Optional[float] = None,
                  sample_layers: int = 2, include_preprocess: bool = True) -> TTFTBreakdown:
    """Measure the three parts of TTFT for one design point and add them up.

    1. the encoder at ``resolution`` (reparameterized per settings) gives N visual tokens of C
       channels; 2. the projector ``C -> LLM hidden`` over N tokens; 3. the LLM prefill of
       ``N + text_tokens`` tokens, head per ``settings.lm_head`` (whole model or layer-sampled, see
       :func:`measure_prefill`). Every part runs at ``settings.batch_size``; FLOPs are per image.
       Preprocessing (``settings.preprocess``) is timed with the encoder and counted in
       ``ttft_ms`` unless ``include_preprocess=False`` (the paper's definition).
       Settings, the LLM name and ``text_tokens`` are validated before the encoder is built.
    """
    settings.check_on_machine()
    spec = get_llm_spec(llm)
    check_int("text_tokens", text_tokens, low=0)
    enc = measure_encoder(encoder, knobs, resolution, settings, time=time)
    proj = measure_projector(enc.out_channels, spec.hidden, enc.visual_tokens, settings, time=time)
    pre = measure_prefill(spec, enc.visual_tokens + text_tokens, settings, time=time,
                          memory_budget_gb=memory_budget_gb, sample_layers=sample_layers)
    return TTFTBreakdown.from_costs(enc, proj, pre, include_preprocess=include_preprocess)
