"""ConvNeXt encoders with ConvLLaVA's fifth stage: the hierarchical conv baselines of FastVLM.

ConvNeXt (Liu et al., "A ConvNet for the 2020s", arXiv 2201.03545): a 4x4 stride-4 stem conv +
LayerNorm, then stages of blocks (7x7 depthwise conv, LayerNorm, Linear C->4C, GELU, Linear
4C->C, layer scale initialised at 1e-6, residual), with LayerNorm + 2x2 stride-2 conv between
stages. Four stages downsample by 32.

ConvLLaVA (Ge et al., arXiv 2405.15738: the "successive stage" of its method) appends a fifth stage to
compress the visual tokens further, so the encoder downsamples by 64 like FastViTHD. Facts used
here (sources in ``docs/baselines.md``):

* ``convnext_l``: ConvNeXt-L, depths [3, 3, 27, 3], widths [192, 384, 768, 1536] (the
  LAION CLIP ``convnext_large_d_320`` tower ConvLLaVA starts from), plus ConvLLaVA's fifth
  stage of **6 blocks, width 3072**: ``alibaba/conv-llava`` ``scripts/stage_1.sh``
  (``--vision_add_five_stage 6 --vision_five_stage_width 3072``) and the released
  ``ConvLLaVA/ConvLLaVA-ConvNeXt-1024`` / ``-1536`` ``config.json`` (``depths [3,3,27,3,6]``,
  ``hidden_sizes [192,384,768,1536,3072]``). 669,161,664 parameters (196,227,264 without the
  fifth stage; + the 1000-class head that is timm's 197.8M "198M" ConvNeXt-L).
* ``convnext_xxl``: ConvNeXt-XXL, depths [3, 4, 30, 3], widths [384, 768, 1536, 3072] (LAION
  CLIP ``convnext_xxlarge``; 843,391,872 parameters without head, timm's 846.47M with it).
  No five-stage XXL has been published (ConvLLaVA only released -L). The default fifth stage
  applies ConvLLaVA's rule to it, **6 blocks at twice the last width (6144)**, giving
  2,732,979,072 parameters. That is a choice, not a published fact; set ``depths``/``widths``
  to change it, or ``extra_stage=False`` for the published 32x tower.

What the VLM reads is the last stage's raw map (ConvLLaVA takes HF ``hidden_states[-1]``), so no
final norm or head is built. Every downsampling zero-pads odd maps on the right/bottom (and
the stem pads to a multiple of 4) so the output is exactly ``ceil(R / downsample)`` per side;
HF's ConvNeXt floors instead, which only differs for resolutions that are not multiples of the
downsampling factor.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from explorer.checks import is_int

from .base import VisionEncoder, check_knob
from .registry import register_encoder

__all__ = ["ConvNeXtEncoder", "ConvNeXtBlock", "convnext_l", "convnext_xxl"]

LAYER_SCALE_INIT = 1e-6
EPS = 1e-6
# ConvLLaVA's fifth stage: 6 blocks (scripts/stage_1.sh, released config.json).
EXTRA_STAGE_DEPTH = 6


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad H and W on the bottom/right up to a multiple, so strided convs take the ceiling."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ConvNeXt's ``channels_first`` norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv -> LN -> Linear 4x -> GELU -> Linear -> layer scale, plus residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC for the per-position MLP
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """LayerNorm then 2x2 stride-2 conv; odd maps are padded so the output is ceil(H/2)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(in_dim, eps=EPS)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_pad_to_multiple(self.norm(x), 2))


class Stem(nn.Module):
    """4x4 stride-4 patchify conv then LayerNorm; the image is padded to a multiple of 4."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_dim, kernel_size=4, stride=4)
        self.norm = LayerNorm2d(out_dim, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(_pad_to_multiple(x, 4)))


class ConvNeXtEncoder(VisionEncoder):
    """ConvNeXt tower returning the last stage's map as ``[B, ceil(R/ds)^2, widths[-1]]`` tokens."""

    def __init__(self, *, name: str, depths: Sequence[int], widths: Sequence[int], extra_stage: bool) -> None:
        super().__init__()
        check_knob("extra_stage", extra_stage, isinstance(extra_stage, bool), "True or False")
        stages = 5 if extra_stage else 4
        what = "5 stages (extra_stage=True)" if extra_stage else "4 stages (extra_stage=False)"
        check_knob(
            "depths", depths,
            isinstance(depths, (list, tuple)) and len(depths) == stages
            and all(is_int(d) and d >= 1 for d in depths),
            f"a list of {stages} positive integers, one per stage for {what}",
        )
        check_knob(
            "widths", widths,
            isinstance(widths, (list, tuple)) and len(widths) == stages
            and all(is_int(w) and w >= 1 for w in widths),
            f"a list of {stages} positive integers, one per stage for {what}",
        )
        self.name = name
        self.depths = [int(d) for d in depths]
        self.widths = [int(w) for w in widths]
        self.extra_stage = extra_stage
        self.out_channels = self.widths[-1]
        self.downsample = 4 * 2 ** (stages - 1)

        self.stem = Stem(self.widths[0])
        self.downsamples = nn.ModuleList(
            [nn.Identity()] + [Downsample(self.widths[i - 1], self.widths[i]) for i in range(1, stages)]
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(w) for _ in range(d))) for d, w in zip(self.depths, self.widths)
        )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, R, R], got {tuple(images.shape)}")
        x = self.stem(images)
        for down, stage in zip(self.downsamples, self.stages):
            x = stage(down(x))
        return x  # [B, C, ceil(R/ds), ceil(R/ds)]; the base class flattens it to tokens

    def reparameterize(self) -> "ConvNeXtEncoder":
        """Nothing folds in ConvNeXt (LayerNorm, no BatchNorm branches); kept for the interface."""
        return self

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": "convnext",
            "knobs": {
                "depths": list(self.depths),
                "widths": list(self.widths),
                "extra_stage": self.extra_stage,
            },
            "arch": {
                "stages": len(self.depths),
                "kernel": 7,
                "mlp_ratio": 4,
                "layer_scale_init": LAYER_SCALE_INIT,
                "layer_norm_eps": EPS,
                "odd_maps": "zero-padded (ceil)",
            },
            "out_channels": self.out_channels,
            "downsample": self.downsample,
        }


def _resolve(
    base_depths: list[int], base_widths: list[int], depths: Optional[Sequence[int]],
    widths: Optional[Sequence[int]], extra_stage: bool,
) -> tuple[Sequence[int], Sequence[int]]:
    """Fill unset depths/widths with the family's defaults for the chosen number of stages."""
    if extra_stage is True:
        default_depths = base_depths + [EXTRA_STAGE_DEPTH]
        default_widths = base_widths + [2 * base_widths[-1]]
    else:
        default_depths, default_widths = list(base_depths), list(base_widths)
    return (default_depths if depths is None else depths, default_widths if widths is None else widths)


@register_encoder("convnext_l")
def convnext_l(
    depths: Optional[Sequence[int]] = None,
    widths: Optional[Sequence[int]] = None,
    extra_stage: bool = True,
) -> ConvNeXtEncoder:
    """ConvNeXt-L with ConvLLaVA's fifth stage (6 blocks, width 3072): 64x, 3072 channels."""
    d, w = _resolve([3, 3, 27, 3], [192, 384, 768, 1536], depths, widths, extra_stage)
    return ConvNeXtEncoder(name="convnext_l", depths=d, widths=w, extra_stage=extra_stage)


@register_encoder("convnext_xxl")
def convnext_xxl(
    depths: Optional[Sequence[int]] = None,
    widths: Optional[Sequence[int]] = None,
    extra_stage: bool = True,
) -> ConvNeXtEncoder:
    """ConvNeXt-XXL plus a fifth stage by ConvLLaVA's rule (6 blocks, width 6144; not published)."""
    d, w = _resolve([3, 4, 30, 3], [384, 768, 1536, 3072], depths, widths, extra_stage)
    return ConvNeXtEncoder(name="convnext_xxl", depths=d, widths=w, extra_stage=extra_stage)
