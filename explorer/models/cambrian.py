"""Cambrian-1's vision side from the zoo's parts: four towers and a spatial vision aggregator.

transformers has no Cambrian class, so ``build_encoder("cambrian1")`` assembles it (facts:
``/work/shared/reference/vlms.md``; Cambrian-1, Tong et al. 2024, arXiv 2406.16860, section 3 and
its repository ``cambrian-mllm/cambrian``): every image goes to

- OpenAI CLIP ViT-L/14 at 336 px (``vit_l14_clip``: 576 tokens x 1024),
- SigLIP-SO400M/14 at 384 px (``siglip_so400m``: 729 x 1152),
- OpenCLIP ConvNeXt-XXL at 1024 px, the published four-stage tower (``convnext_xxl``,
  ``extra_stage=False``: 32x32 = 1024 x 3072),
- DINOv2 ViT-L/14 at 518 px (a plain ViT: 24 layers, width 1024, 16 heads, MLP 4096, GELU, class
  token, last layer; 37x37 = 1369 x 1024; DINOv2's LayerScale multiplies are left out),

each at its own resolution (the design point's ``resolution`` is the source image, resized for
each tower), and the spatial vision aggregator (SVA) fuses them into a 24 x 24 grid of learnable
queries (576 tokens of width ``width``=1024): each encoder's map is projected to ``width``
(a Linear per encoder), resized to ``24k x 24k`` (k = ceil(side / 24): the query's local window of
k x k features), and each query attends (one head group, dense) to the k x k window of every
encoder at once, followed by an output projection and an MLP. ``layers`` aggregator layers
(Cambrian-1 uses one before the LLM; the copies it inserts inside the LLM are not modelled).

What is approximated, and why it barely matters: the SVA here is one cross-attention layer of the
shape above, not the repository's exact module (its FLOPs are under 1% of the four towers';
``tests/test_headline.py`` checks that share); the towers are exact architectures with random
weights.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from explorer.checks import is_int, is_number

from .base import VisionEncoder, check_knob
from .convnext import convnext_xxl
from .registry import register_encoder
from .vit import ViTEncoder, siglip_so400m, vit_l14_clip

__all__ = ["Cambrian1", "dinov2_l14"]

GRID = 24  # 24 x 24 = 576 query tokens (Cambrian-1)
TOWER_RESOLUTIONS = (336, 384, 1024, 518)  # CLIP ViT-L/14, SigLIP-SO400M/14, ConvNeXt-XXL, DINOv2 ViT-L/14


def _vit_shape(depth: int, heads: int, head_dim: int, mlp: int, scale: float) -> dict[str, int]:
    """A ViT's depth, width, heads and MLP scaled by ``scale`` (1: unchanged)."""
    h = max(1, round(heads * scale))
    return {"depth": max(1, round(depth * scale)), "width": h * max(4, round(head_dim * scale)), "heads": h,
            "mlp_dim": max(4, round(mlp * scale))}


def dinov2_l14(scale: float = 1.0) -> ViTEncoder:
    """DINOv2 ViT-L/14 at 518 px as Cambrian-1 runs it (last layer, class token dropped)."""
    return ViTEncoder(name="dinov2_l14", **_vit_shape(24, 16, 64, 4096, scale), patch=14, select_layer=-1,
                      native_resolution=518, act="gelu", prune_unused=True, class_token=True, pre_norm=False,
                      patch_bias=True, eps=1e-6)


def _towers(scale: float) -> list[VisionEncoder]:
    """CLIP ViT-L/14, SigLIP-SO400M, ConvNeXt-XXL (four stages), DINOv2 ViT-L/14; ``scale`` < 1 shrinks
    every depth and width alike (small copies for tests; 1 is Cambrian-1's)."""
    if scale == 1:
        return [vit_l14_clip(), siglip_so400m(), convnext_xxl(extra_stage=False), dinov2_l14()]
    conv_depths = [max(1, round(d * scale)) for d in (3, 4, 30, 3)]
    conv_widths = [max(8, round(w * scale / 8) * 8) for w in (384, 768, 1536, 3072)]
    return [vit_l14_clip(**_vit_shape(24, 16, 64, 4096, scale)), siglip_so400m(**_vit_shape(27, 16, 72, 4304, scale)),
            convnext_xxl(depths=conv_depths, widths=conv_widths, extra_stage=False), dinov2_l14(scale)]


class _SVALayer(nn.Module):
    """Queries attend to their local window of every encoder's (projected, resized) map."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, queries: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        # queries [B*576, 1, D]; windows [B*576, K, D] (every encoder's k x k window, concatenated)
        n, _, d = queries.shape
        h = self.heads
        q = self.q(self.norm(queries)).reshape(n, 1, h, d // h).transpose(1, 2)
        k, v = self.kv(windows).reshape(n, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, 1, d)
        x = queries + self.out(att)
        return x + self.mlp(x)


class Cambrian1(VisionEncoder):
    """Four towers at their own resolutions, fused by the SVA into 576 tokens."""

    def __init__(self, width: int = 1024, heads: int = 16, layers: int = 1, scale: float = 1.0,
                 tower_resolutions: Sequence[int] = TOWER_RESOLUTIONS) -> None:
        super().__init__()
        check_knob("width", width, is_int(width) and width >= 8, "a positive integer >= 8")
        check_knob("heads", heads, is_int(heads) and heads >= 1 and width % heads == 0, f"a divisor of width={width}")
        check_knob("layers", layers, is_int(layers) and 1 <= layers <= 8, "an integer 1..8")
        check_knob("scale", scale, is_number(scale) and 0 < scale <= 1, "a number in (0, 1]: the towers' size (1: Cambrian-1's)")
        self.name = "cambrian1"
        self.width, self.heads, self.layers, self.scale = width, heads, layers, float(scale)
        check_knob("tower_resolutions", tower_resolutions,
                   isinstance(tower_resolutions, (list, tuple)) and len(tower_resolutions) == 4
                   and all(is_int(r) and r >= 28 for r in tower_resolutions),
                   "four input sizes >= 28 px: CLIP, SigLIP, ConvNeXt, DINOv2 (Cambrian-1: [336, 384, 1024, 518])")
        self.towers = nn.ModuleList(_towers(self.scale))
        self.tower_res = tuple(int(r) for r in tower_resolutions)
        self.proj = nn.ModuleList(nn.Linear(int(t.out_channels), width) for t in self.towers)
        self.queries = nn.Parameter(torch.zeros(GRID * GRID, width))
        nn.init.normal_(self.queries, std=0.02)
        self.sva = nn.ModuleList(_SVALayer(width, heads) for _ in range(layers))
        self.out_channels = width
        self.downsample = 1

    def num_tokens(self, resolution: int) -> int:
        check_knob("resolution", resolution, is_int(resolution) and resolution > 0, "a positive integer number of pixels")
        return GRID * GRID

    def windows(self) -> list[int]:
        """k per encoder: the side of each query's window (ceil(feature side / 24))."""
        sides = [math.isqrt(t.num_tokens(r)) for t, r in zip(self.towers, self.tower_res)]
        return [math.ceil(s / GRID) for s in sides]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, R, R], got {tuple(images.shape)}")
        b = images.shape[0]
        parts = []
        for tower, res, proj, k in zip(self.towers, self.tower_res, self.proj, self.windows()):
            x = images if images.shape[-1] == res else F.interpolate(images, size=(res, res), mode="bilinear", align_corners=False)
            tokens = proj(tower(x))  # [B, s*s, D]
            s = math.isqrt(tokens.shape[1])
            grid = tokens.transpose(1, 2).reshape(b, self.width, s, s)
            if s != GRID * k:
                grid = F.interpolate(grid, size=(GRID * k, GRID * k), mode="bilinear", align_corners=False)
            # [B, D, 24, k, 24, k] -> [B*576, k*k, D]: each query's window
            win = grid.reshape(b, self.width, GRID, k, GRID, k).permute(0, 2, 4, 3, 5, 1).reshape(b * GRID * GRID, k * k, self.width)
            parts.append(win)
        windows = torch.cat(parts, dim=1)
        x = self.queries.to(images.dtype).repeat(b, 1).unsqueeze(1)  # [B*576, 1, D] (a copy, not a view)
        for layer in self.sva:
            x = layer(x, windows)
        return x.reshape(b, GRID * GRID, self.width)

    def reparameterize(self) -> "Cambrian1":
        for tower in self.towers:
            tower.reparameterize()
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": "cambrian1", "knobs": {"width": self.width, "heads": self.heads,
                                                                   "layers": self.layers, "scale": self.scale,
                                                                   "tower_resolutions": list(self.tower_res)},
                "towers": [t.name for t in self.towers], "tower_resolutions": list(self.tower_res),
                "out_channels": self.out_channels, "downsample": self.downsample}


@register_encoder("cambrian1")
def cambrian1(width: int = 1024, heads: int = 16, layers: int = 1, scale: float = 1.0,
              tower_resolutions: Sequence[int] = TOWER_RESOLUTIONS) -> Cambrian1:
    """Cambrian-1's four encoders and its spatial vision aggregator (576 tokens)."""
    return Cambrian1(width=width, heads=heads, layers=layers, scale=scale, tower_resolutions=tower_resolutions)
