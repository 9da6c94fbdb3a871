"""End-to-end check of the factorised TTFT: the real VLM, assembled and timed as one call.

:func:`assemble_vlm` puts a registry encoder, the ``mlp2x_gelu`` projector and a transformers
causal LM (random weights, built from its config) together as LLaVA does: visual tokens are
projected to the LLM's width and prepended to the text prompt's embeddings, and
``generate(inputs_embeds=..., max_new_tokens=1)`` produces the first token. With
preprocessing on, the timed call starts from the decoded source image.

:func:`validate_point` measures, in one run, the factorised sum (each part timed on its own,
what sweeps store) and that end-to-end call, and reports their ratio.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..models.llm import LLMSpec, build_llm, get_llm_spec
from ..models.projector import MLP2xGelu
from .costs import Timing
from .preprocess import normalisation, preprocess_pil, preprocess_torch, source_image
from .prefill import logits_to_keep, set_attention
from .settings import MeasureSettings
from .timing import time_callable
from .ttft import TTFTBreakdown, measure_point

__all__ = ["AssembledVLM", "assemble_vlm", "E2ECheck", "validate_point"]


class AssembledVLM(nn.Module):
    """encoder -> projector -> LLM, LLaVA-style (image tokens first, then the text prompt)."""

    def __init__(self, encoder: nn.Module, projector: MLP2xGelu, llm: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.llm = llm

    def prompt_embeds(self, images: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        visual = self.projector(self.encoder(images))  # [B, N, H]
        text = self.llm.get_input_embeddings()(text_ids)  # [B, T, H]
        return torch.cat([visual, text.to(visual.dtype)], dim=1)

    def first_token(self, images: torch.Tensor, text_ids: torch.Tensor, lm_head: str = "last") -> torch.Tensor:
        """The first generated token id ``[B, 1]``, through ``generate`` (``lm_head="last"``) or one
        forward with logits at every position and the last one's argmax (``"all"``, as
        ml-fastvlm's app computes them)."""
        embeds = self.prompt_embeds(images, text_ids)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        if lm_head == "all":
            logits = self.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False,
                              logits_to_keep=logits_to_keep("all")).logits
            return logits[:, -1:].argmax(-1)
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=1, min_new_tokens=1,
                                do_sample=False, pad_token_id=0, eos_token_id=None)
        return out[:, -1:]


def assemble_vlm(encoder: str, knobs: Optional[Mapping[str, Any]], llm: Union[str, LLMSpec],
                 settings: MeasureSettings) -> AssembledVLM:
    """Build the VLM on the settings' device and dtype (encoder reparameterized per settings)."""
    from ..models import build_encoder

    spec = get_llm_spec(llm)
    enc = build_encoder(encoder, **dict(knobs or {}))
    if settings.reparameterize:
        enc.reparameterize()
    device = settings.resolve_device()
    lm = set_attention(build_llm(spec, device=str(device), dtype=settings.dtype), settings.llm_attention)
    lm.generation_config.use_cache = True  # generate's own default (the config built for timing says False)
    vlm = AssembledVLM(enc, MLP2xGelu(int(enc.out_channels), spec.hidden), lm)
    return vlm.to(device=device, dtype=settings.torch_dtype).eval()


@dataclass(frozen=True)
class E2ECheck:
    """Factorised TTFT (sum of parts timed apart) against the end-to-end call, one design point."""

    encoder: str
    resolution: int
    llm: str
    text_tokens: int
    visual_tokens: int
    factorised: TTFTBreakdown
    end_to_end: Timing
    tolerance: float

    @property
    def ratio(self) -> float:
        """factorised / end-to-end (1.0 = the parts add up exactly)."""
        return float(self.factorised.ttft_ms) / self.end_to_end.median_ms  # type: ignore[arg-type]

    @property
    def ok(self) -> bool:
        return abs(self.ratio - 1.0) <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(ratio=self.ratio, ok=self.ok)
        return d


def validate_point(encoder: str, knobs: Optional[Mapping[str, Any]], resolution: int, llm: Union[str, LLMSpec],
                   text_tokens: int, settings: MeasureSettings, tolerance: float = 0.10,
                   vlm: Optional[AssembledVLM] = None) -> E2ECheck:
    """Factorised TTFT and end-to-end TTFT of one point, measured back to back in this process.

    Both use the same settings (threads, dtype, LM-head convention, attention, preprocessing);
    only the eager runtime is supported (the assembled VLM is a torch module). ``vlm`` reuses an
    assembled model across resolutions.
    """
    settings.validate()
    if settings.effective_runtime != "eager":
        raise ValueError(f"invalid runtime={settings.effective_runtime!r}: validate assembles a torch VLM, "
                         "so only 'eager' is compared end to end")
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not 0 < tolerance < 1:
        raise ValueError(f"invalid tolerance={tolerance!r}: a fraction in (0, 1), e.g. 0.1 for +-10%")
    spec = get_llm_spec(llm)
    if not isinstance(text_tokens, int) or isinstance(text_tokens, bool) or text_tokens < 0:
        raise ValueError(f"invalid text_tokens={text_tokens!r}: an integer >= 0")
    factorised = measure_point(encoder, knobs, resolution, spec, text_tokens, settings)
    model = vlm if vlm is not None else assemble_vlm(encoder, knobs, spec, settings)
    device = settings.resolve_device()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab, (settings.batch_size, text_tokens), generator=gen).to(device)
    images = _image_source(encoder, resolution, settings)

    def first_token() -> torch.Tensor:
        return model.first_token(images(), ids, settings.lm_head)

    with torch.inference_mode():
        tok = first_token()
    if tuple(tok.shape) != (settings.batch_size, 1):
        raise RuntimeError(f"the assembled VLM returned {tuple(tok.shape)} for the first token")
    e2e = time_callable(first_token, settings, module=model)
    return E2ECheck(encoder=encoder, resolution=resolution, llm=spec.name, text_tokens=text_tokens,
                    visual_tokens=factorised.visual_tokens, factorised=factorised, end_to_end=e2e,
                    tolerance=float(tolerance))


def _image_source(encoder: str, resolution: int, settings: MeasureSettings) -> Any:
    """A callable giving the encoder's input batch: preprocessed from a source image inside the
    timed call, or a ready tensor when ``preprocess="none"``."""
    device = settings.resolve_device()
    b = settings.batch_size
    if settings.preprocess == "none":
        x = torch.randn(b, 3, resolution, resolution).to(device=device, dtype=settings.torch_dtype)
        return lambda: x
    mean, std = normalisation(encoder)
    array = source_image(*settings.source_size)
    fit = settings.preprocess_fit
    if settings.preprocess == "pil":
        from PIL import Image

        pil = Image.fromarray(array)
        return lambda: torch.cat([preprocess_pil(pil, resolution, fit, mean, std) for _ in range(b)]).to(
            device=device, dtype=settings.torch_dtype)
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return lambda: torch.cat([preprocess_torch(tensor, resolution, fit, mean, std) for _ in range(b)]).to(
        device=device, dtype=settings.torch_dtype)
