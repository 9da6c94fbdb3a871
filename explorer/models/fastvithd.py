"""FastViTHD (FastVLM's encoder) and FastViT MCi2 (MobileCLIP) as one configurable family.

Both are FastViT hybrids: a MobileOne stem (4x), stages of RepMixer blocks, attention blocks in
the final stages with a conditional positional encoding in front, stride-2 patch embeddings
between stages and a ``conv_exp`` MobileOne block widening the last map. FastViTHD has five
stages (64x downsampling); MCi2 has four (32x). The knobs below are the design space.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from explorer.checks import is_int, is_number

from .base import VisionEncoder, check_knob
from .blocks import AttentionBlock, ConvStem, MobileOneBlock, PatchEmbed, RepCPE, RepMixerBlock
from .registry import register_encoder

FASTVITHD_DEPTHS = (2, 12, 24, 4, 2)
FASTVITHD_WIDTHS = (96, 192, 384, 768, 1536)
MCI2_DEPTHS = (4, 12, 24, 4)
MCI2_WIDTHS = (80, 160, 320, 640)
WIDTH_DIVISOR = 8  # conv-stage widths after width_mult are multiples of this


@dataclass(frozen=True)
class FastViTConfig:
    """Resolved architecture: what ``describe()`` reports and what rebuilds the same model."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    attention_stages: int
    mlp_ratio: float
    head_dim: int
    out_channels: int
    attention_norm: str  # "layernorm" (FastViTHD) or "batchnorm" (MCi2)
    stem_scale_branch: bool
    layer_scale_init: float = 1e-5
    cpe_kernel: int = 7
    down_kernel: int = 7
    clip_head_dim: Optional[int] = None  # global pool + projection, for CLIP pre-training only
    multiscale_stages: tuple[int, ...] = field(default_factory=tuple)
    se_down_stages: tuple[int, ...] = field(default_factory=tuple)  # stages whose patch embedding has SE

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def downsample(self) -> int:
        return 4 * 2 ** (self.num_stages - 1)


def _round_width(width: float, divisor: int) -> int:
    return max(divisor, int(width / divisor + 0.5) * divisor)


def resolve_config(
    *,
    base_depths: Sequence[int],
    base_widths: Sequence[int],
    default_attention_stages: int,
    default_mlp_ratio: float,
    attention_norm: str,
    stem_scale_branch: bool,
    default_se_down_stages: Sequence[int] = (),
    depths: Optional[Sequence[int]] = None,
    widths: Optional[Sequence[int]] = None,
    depth_mult: float = 1.0,
    width_mult: float = 1.0,
    num_stages: Optional[int] = None,
    attention_stages: Optional[int] = None,
    mlp_ratio: Optional[float] = None,
    head_dim: int = 32,
    out_channels: Optional[int] = None,
    clip_head: bool = False,
    clip_head_dim: int = 768,
    multiscale_stages: Sequence[int] = (),
    layer_scale_init: float = 1e-5,
) -> FastViTConfig:
    """Turn user knobs into a validated architecture; every bad knob is named in the error."""
    n_base = len(base_depths)
    check_knob("num_stages", num_stages, num_stages is None or (is_int(num_stages) and 2 <= num_stages <= n_base),
               f"an integer from 2 to {n_base} (each stage fewer halves the downsampling)")
    check_knob("head_dim", head_dim, is_int(head_dim) and head_dim > 0 and head_dim % 8 == 0,
               "a positive multiple of 8")
    check_knob("depth_mult", depth_mult, is_number(depth_mult) and 0 < depth_mult <= 8,
               "a number in (0, 8]")
    check_knob("width_mult", width_mult, is_number(width_mult) and 0 < width_mult <= 8,
               "a number in (0, 8]")
    if depths is not None:
        check_knob("depths", depths, isinstance(depths, (list, tuple)) and len(depths) >= 2
                   and all(is_int(d) and d >= 1 for d in depths),
                   "a list of at least 2 integers >= 1, one per stage")
        check_knob("depth_mult", depth_mult, depth_mult == 1.0, "1.0 when explicit depths are given")
    if widths is not None:
        check_knob("widths", widths, isinstance(widths, (list, tuple)) and len(widths) >= 2
                   and all(is_int(w) and w >= 8 for w in widths),
                   "a list of at least 2 integers >= 8, one per stage")
        check_knob("width_mult", width_mult, width_mult == 1.0, "1.0 when explicit widths are given")
    if depths is not None and widths is not None:
        check_knob("widths", widths, len(widths) == len(depths), f"as many entries as depths ({len(depths)})")
    n = num_stages or len(depths if depths is not None else widths if widths is not None else base_depths)
    if depths is None:
        depths = tuple(max(1, int(d * depth_mult + 0.5)) for d in base_depths[:n])
    if widths is None:
        widths = tuple(int(w) for w in base_widths[:n])
        if width_mult != 1.0:
            widths = tuple(_round_width(w * width_mult, WIDTH_DIVISOR) for w in widths)
    depths, widths = tuple(depths)[:n], tuple(widths)[:n]
    check_knob("depths", depths, len(depths) == n, f"{n} entries for num_stages={n}")
    check_knob("widths", widths, len(widths) == n, f"{n} entries for num_stages={n}")

    if attention_stages is None:
        # Attention stays with the stages that had it: dropping final stages drops their attention.
        attention_stages = max(0, default_attention_stages - max(0, n_base - n))
    check_knob("attention_stages", attention_stages,
               is_int(attention_stages) and 0 <= attention_stages <= n - 1,
               f"an integer from 0 to {n - 1} (the number of final stages using attention)")
    if width_mult != 1.0 and widths is not None:
        # Attention stages need whole heads: round those widths to a multiple of head_dim.
        widths = tuple(_round_width(w, head_dim) if i >= n - attention_stages else w for i, w in enumerate(widths))
    for i in range(n - attention_stages, n):
        check_knob("widths", list(widths), widths[i] % head_dim == 0,
                   f"attention stage {i + 1} width {widths[i]} must be a multiple of head_dim={head_dim}")
    mlp_ratio = default_mlp_ratio if mlp_ratio is None else mlp_ratio
    check_knob("mlp_ratio", mlp_ratio, is_number(mlp_ratio) and 0 < mlp_ratio <= 16,
               "a number in (0, 16]")
    out_channels = 2 * widths[-1] if out_channels is None else out_channels
    check_knob("out_channels", out_channels,
               is_int(out_channels) and out_channels > 0 and out_channels % widths[-1] == 0,
               f"a positive multiple of the last stage width ({widths[-1]}); conv_exp is grouped by it")
    multiscale_stages = tuple(multiscale_stages)
    check_knob("multiscale_stages", list(multiscale_stages),
               all(is_int(s) and 1 <= s < n for s in multiscale_stages) and len(set(multiscale_stages)) == len(multiscale_stages),
               f"distinct stage numbers from 1 to {n - 1} whose features are pooled into the output")
    check_knob("clip_head", clip_head, isinstance(clip_head, bool), "true or false")
    check_knob("clip_head_dim", clip_head_dim, is_int(clip_head_dim) and clip_head_dim > 0, "a positive integer")
    check_knob("layer_scale_init", layer_scale_init, is_number(layer_scale_init) and layer_scale_init > 0,
               "a positive number")
    return FastViTConfig(
        depths=depths, widths=widths, attention_stages=attention_stages, mlp_ratio=float(mlp_ratio),
        head_dim=head_dim, out_channels=out_channels, attention_norm=attention_norm,
        stem_scale_branch=stem_scale_branch, layer_scale_init=float(layer_scale_init),
        clip_head_dim=clip_head_dim if clip_head else None, multiscale_stages=multiscale_stages,
        se_down_stages=tuple(s for s in default_se_down_stages if s <= n),
    )


class ClipHead(nn.Module):
    """Global average pool and a bias-free projection (used only for CLIP pre-training)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(cin, cout) * cin ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) @ self.proj


class FastViT(VisionEncoder):
    """A FastViT hybrid encoder returning the ``conv_exp`` map as tokens ``[B, N, out_channels]``.

    With ``multiscale_stages``, the outputs of those earlier stages are pooled to the final grid
    by strided depthwise convs and concatenated on the channel axis (the paper's multi-scale
    variant; off by default, and absent from the released code).
    """

    def __init__(self, config: FastViTConfig, name: str = "fastvit", knobs: Optional[dict[str, Any]] = None):
        super().__init__()
        self.name, self.config, self.knobs = name, config, dict(knobs or {})
        c = config
        n = c.num_stages
        self.downsample = c.downsample
        self.stem = ConvStem(3, c.widths[0], scale_branch=c.stem_scale_branch)
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.cpes = nn.ModuleList()
        first_attention = n - c.attention_stages
        for i in range(n):
            if i > 0:
                self.downs.append(PatchEmbed(c.widths[i - 1], c.widths[i], c.down_kernel,
                                             use_se=(i + 1) in c.se_down_stages))
            if i >= first_attention:
                self.cpes.append(RepCPE(c.widths[i], c.cpe_kernel))
                blocks = [AttentionBlock(c.widths[i], c.mlp_ratio, c.head_dim, c.attention_norm, c.layer_scale_init)
                          for _ in range(c.depths[i])]
            else:
                self.cpes.append(nn.Identity())
                blocks = [RepMixerBlock(c.widths[i], c.mlp_ratio, 3, c.layer_scale_init) for _ in range(c.depths[i])]
            self.stages.append(nn.Sequential(*blocks))
        last = c.widths[-1]
        self.conv_exp = MobileOneBlock(last, c.out_channels, 3, padding=1, groups=last, use_se=True)
        self.pools = nn.ModuleDict()
        for s in c.multiscale_stages:
            factor = 2 ** (n - s)
            width = c.widths[s - 1]
            # ceil-mode pooling: pad so that the pooled grid equals the final grid ceil(R / downsample)
            self.pools[str(s)] = nn.Conv2d(width, width, factor, factor, groups=width)
        self.clip_head = ClipHead(c.out_channels, c.clip_head_dim) if c.clip_head_dim else None
        self.out_channels = c.out_channels + sum(c.widths[s - 1] for s in c.multiscale_stages)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        kept: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downs[i - 1](x)
            x = stage(self.cpes[i](x))
            if (i + 1) in self.config.multiscale_stages:
                kept[i + 1] = x
        x = self.conv_exp(x)
        if kept:
            feats = [x]
            for s, f in kept.items():
                factor = 2 ** (self.config.num_stages - s)
                pad_h = (-f.shape[2]) % factor
                pad_w = (-f.shape[3]) % factor
                if pad_h or pad_w:
                    f = nn.functional.pad(f, (0, pad_w, 0, pad_h))
                feats.append(self.pools[str(s)](f))
            x = torch.cat(feats, dim=1)
        return x

    def forward_clip(self, images: torch.Tensor) -> torch.Tensor:
        """Image embedding for CLIP training: pooled and projected ``conv_exp`` features."""
        if self.clip_head is None:
            raise ValueError("forward_clip needs clip_head=True when building the encoder")
        feats = self.forward_features(images)[:, : self.config.out_channels]
        return self.clip_head(feats)

    def describe(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["depths"], cfg["widths"] = list(self.config.depths), list(self.config.widths)
        cfg["multiscale_stages"] = list(self.config.multiscale_stages)
        cfg["se_down_stages"] = list(self.config.se_down_stages)
        return {
            "name": self.name,
            "family": "fastvit",
            "knobs": dict(self.knobs),
            "config": cfg,
            "downsample": self.downsample,
            "out_channels": self.out_channels,
            "params": self.num_params(),
        }


def _build(name: str, defaults: dict[str, Any], knobs: dict[str, Any]) -> FastViT:
    allowed = {"depths", "widths", "depth_mult", "width_mult", "num_stages", "attention_stages", "mlp_ratio",
               "head_dim", "out_channels", "clip_head", "clip_head_dim", "multiscale_stages", "layer_scale_init"}
    unknown = sorted(set(knobs) - allowed)
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown} for encoder {name!r}; allowed: {sorted(allowed)}")
    for key in ("depths", "widths", "multiscale_stages"):
        if key in knobs and knobs[key] is not None and not isinstance(knobs[key], (list, tuple)):
            raise ValueError(f"invalid {key}={knobs[key]!r}: a list of integers")
        if key in knobs and knobs[key] is not None:
            knobs = {**knobs, key: tuple(knobs[key])}
    config = resolve_config(**{**defaults, **knobs})
    clean = {k: (list(v) if isinstance(v, tuple) else v) for k, v in knobs.items()}
    return FastViT(config, name=name, knobs=clean)


@register_encoder("fastvithd")
def fastvithd(**knobs: Any) -> FastViT:
    """FastViTHD: depths [2,12,24,4,2], widths [96..1536], attention in the last 2 stages, 64x."""
    return _build("fastvithd", dict(
        base_depths=FASTVITHD_DEPTHS, base_widths=FASTVITHD_WIDTHS, default_attention_stages=2,
        default_mlp_ratio=4.0, attention_norm="layernorm", stem_scale_branch=False), knobs)


@register_encoder("fastvit_mci2")
def fastvit_mci2(**knobs: Any) -> FastViT:
    """MobileCLIP's MCi2: depths [4,12,24,4], widths [80..640], MLP ratio 3, attention in stage 4, 32x.

    The patch embeddings into stages 3 and 4 carry squeeze-excite (reduction 1/4), as in MobileCLIP.
    """
    return _build("fastvit_mci2", dict(
        base_depths=MCI2_DEPTHS, base_widths=MCI2_WIDTHS, default_attention_stages=1,
        default_mlp_ratio=3.0, attention_norm="batchnorm", stem_scale_branch=True,
        default_se_down_stages=(3, 4), clip_head_dim=512), knobs)

