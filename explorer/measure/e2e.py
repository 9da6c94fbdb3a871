"""End-to-end check of the factorised TTFT: the real VLM, assembled and timed as one call.

:func:`assemble_vlm` puts a registry encoder, the ``mlp2x_gelu`` projector and a transformers
causal LM (random weights, built from its config) together as LLaVA does: visual tokens are
projected to the LLM's width and prepended to the text prompt's embeddings, and
``generate(inputs_embeds=..., max_new_tokens=1)`` produces the first token. With
preprocessing on, the timed call starts from the decoded source image.

:func:`validate_point` measures, in one run, the factorised sum (each part timed on its own,
what sweeps store) and that end-to-end call in paired rounds, and reports their ratio.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

from explorer.intervals import compare
from ..checks import check_int, is_number, require
from ..models.llm import LLMSpec, build_llm, get_llm_spec
from ..models.projector import MLP2xGelu
from .costs import Timing
from .preprocess import normalisation, preprocess_pil, preprocess_torch, source_image
from .prefill import logits_to_keep, set_attention
from .settings import MeasureSettings, thread_scope
from .timing import converged, eval_mode, gc_paused, median_ci, percentile, summarize, synchronize

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
    """Factorised TTFT (the sum of parts timed apart) against the end-to-end call, one design point.

    Measured in paired rounds: each round times every part once, then the end-to-end call once,
    back to back, so slow drifts of a shared machine's load hit both sides alike. ``ratio`` is the
    median over rounds of (sum of the round's parts) / (the round's end-to-end time);
    ``parts`` holds each part's timing statistics.
    """

    encoder: str
    resolution: int
    llm: str
    text_tokens: int
    visual_tokens: int
    parts: dict[str, Timing]  # preprocess (when measured), encoder, projector, prefill
    factorised: Timing  # per-round sums of the parts
    end_to_end: Timing
    ratio: float
    ratio_p10: float
    ratio_p90: float
    rounds: int
    tolerance: float
    # the order-statistic 95% CI of the median ratio over the paired rounds (NaN: not computed)
    ratio_ci_low: float = float("nan")
    ratio_ci_high: float = float("nan")

    @property
    def ok(self) -> bool:
        return abs(self.ratio - 1.0) <= self.tolerance

    @property
    def difference(self) -> str:
        """``explorer.intervals.compare`` of the ratio's CI with 1: ``"faster"`` (the factorised sum is
        surely below the end-to-end time), ``"slower"``, or ``"tied"`` (not significant)."""
        return compare((self.ratio_ci_low, self.ratio_ci_high), (1.0, 1.0))

    @property
    def verdict(self) -> str:
        """``"within"`` when the ratio's whole CI lies within ``1 +- tolerance``, ``"outside"`` when
        none of it does, else ``"not settled"`` (the CI straddles a tolerance bound)."""
        lo, hi = self.ratio_ci_low, self.ratio_ci_high
        if not (lo == lo and hi == hi):
            return "not settled"
        if 1.0 - self.tolerance <= lo and hi <= 1.0 + self.tolerance:
            return "within"
        if hi < 1.0 - self.tolerance or lo > 1.0 + self.tolerance:
            return "outside"
        return "not settled"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        d["difference"], d["verdict"] = self.difference, self.verdict
        return d


def validate_point(encoder: str, knobs: Optional[Mapping[str, Any]], resolution: int, llm: Union[str, LLMSpec],
                   text_tokens: int, settings: MeasureSettings, tolerance: float = 0.10,
                   vlm: Optional[AssembledVLM] = None) -> E2ECheck:
    """Factorised TTFT and end-to-end TTFT of one point, measured in paired rounds in this process.

    The parts are what the factorised measurement times (the preprocessing callable, the
    encoder and projector of the assembled model on their own inputs, transformers' prefill of
    ``visual + text`` random token ids with the settings' LM head); the end-to-end call is
    ``first_token`` (preprocess -> encoder -> projector -> embeddings -> ``generate``). Rounds:
    at least ``settings.min_iters``, then until the median ratio's 95% CI is within
    ``settings.target_rel_ci`` or ``max_iters`` / ``max_time_s`` is reached. Only the eager
    runtime is compared (the assembled VLM is a torch module). ``vlm`` reuses an assembled model.
    """
    settings.check_on_machine()
    if settings.effective_runtime != "eager":
        raise ValueError(f"invalid runtime={settings.effective_runtime!r}: validate assembles a torch VLM, "
                         "so only 'eager' is compared end to end")
    require(is_number(tolerance) and 0 < tolerance < 1, "tolerance", tolerance,
            "a fraction in (0, 1), e.g. 0.1 for +-10%")
    spec = get_llm_spec(llm)
    check_int("text_tokens", text_tokens, low=0)
    model = vlm if vlm is not None else assemble_vlm(encoder, knobs, spec, settings)
    device = settings.resolve_device()
    b = settings.batch_size
    visual_tokens = int(model.encoder.num_tokens(resolution))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec.vocab, (b, text_tokens), generator=gen).to(device)
    images = _image_source(encoder, resolution, settings)
    image_batch = torch.randn(b, 3, resolution, resolution, generator=gen).to(device=device, dtype=settings.torch_dtype)
    tokens = torch.randn(b, visual_tokens, int(model.encoder.out_channels), generator=gen).to(
        device=device, dtype=settings.torch_dtype)
    prompt = torch.randint(0, spec.vocab, (b, visual_tokens + text_tokens), generator=gen).to(device)
    keep = logits_to_keep(settings.lm_head)
    fns: dict[str, Callable[[], Any]] = {}
    if settings.preprocess != "none":
        fns["preprocess"] = images
    fns["encoder"] = lambda: model.encoder(image_batch)
    fns["projector"] = lambda: model.projector(tokens)
    fns["prefill"] = lambda: model.llm(input_ids=prompt, logits_to_keep=keep, use_cache=False).logits
    fns["end_to_end"] = lambda: model.first_token(images(), ids, settings.lm_head)

    with torch.inference_mode():
        tok = fns["end_to_end"]()
    if tuple(tok.shape) != (b, 1):
        raise RuntimeError(f"the assembled VLM returned {tuple(tok.shape)} for the first token")
    samples = _paired_rounds(fns, settings, model)
    e2e = samples.pop("end_to_end")
    sums = [sum(col) for col in zip(*samples.values())]
    ratios = sorted(f / e for f, e in zip(sums, e2e))
    ci_low, ci_high, _ = median_ci(ratios)
    return E2ECheck(encoder=encoder, resolution=resolution, llm=spec.name, text_tokens=text_tokens,
                    visual_tokens=visual_tokens, parts={k: summarize(v, False) for k, v in samples.items()},
                    factorised=summarize(sums, False), end_to_end=summarize(e2e, False),
                    ratio=statistics.median(ratios), ratio_p10=percentile(ratios, 10),
                    ratio_p90=percentile(ratios, 90), rounds=len(ratios), tolerance=float(tolerance),
                    ratio_ci_low=ci_low, ratio_ci_high=ci_high)


def _paired_rounds(fns: dict[str, Callable[[], Any]], settings: MeasureSettings,
                   module: nn.Module) -> dict[str, list[float]]:
    """Milliseconds of each callable, one call each per round, rounds as the settings allow."""
    device = settings.resolve_device()
    out: dict[str, list[float]] = {k: [] for k in fns}
    with thread_scope(settings), eval_mode(module), torch.inference_mode(), gc_paused():
        for _ in range(max(1, settings.warmup_iters)):
            for fn in fns.values():
                fn()
        start = time.perf_counter()
        while True:
            for key, fn in fns.items():
                synchronize(device)
                t0 = time.perf_counter_ns()
                fn()
                synchronize(device)
                out[key].append((time.perf_counter_ns() - t0) / 1e6)
            n = len(out["end_to_end"])
            sums = [sum(col) for col in zip(*(v for k, v in out.items() if k != "end_to_end"))]
            ratios = [f / e for f, e in zip(sums, out["end_to_end"])]
            if n >= settings.min_iters and converged(ratios, settings.target_rel_ci):
                break
            if n >= settings.max_iters or (n >= settings.min_iters and time.perf_counter() - start >= settings.max_time_s):
                break
    return out


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
