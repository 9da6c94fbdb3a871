"""transformers' own VLM vision towers as design points (random weights, nothing downloaded).

``build_encoder("hf_vlm", model=NAME_OR_CONFIG_JSON, ...)`` builds the vision tower of a deployed
VLM from its configuration with transformers' architecture class (SigLIP for LLaVA-OneVision,
Qwen2-VL's ViT, InternViT, SigLIP for SmolVLM/Idefics3) and wraps it as a :class:`VisionEncoder`.
``model`` is a name of :data:`CATALOG` (configs written from the released models' published
``config.json`` / ``preprocessor_config.json``, each number with its source) or the path of a
user's ``config.json`` (a whole VLM config with ``vision_config``, or a vision-tower config).

What the design point's ``resolution`` means: the side of the square source image (``aspect``
makes it ``R x R/aspect`` or ``R*aspect x R``, the longest side staying ``R``). The encoder takes
that image and does what the model's processor does with it (:mod:`explorer.models.token_rules`):
AnyRes tiles plus a base view (LLaVA-OneVision), a dynamic-resolution patch sequence (Qwen2-VL),
tiles plus a global view (SmolVLM) or tiles plus a thumbnail (InternVL), runs the tower over all
views as one batch, and returns the tokens the model hands its connector, packed as the model packs
them (LLaVA-OneVision's unpadding, bilinear shrink above the cap and one newline token per row).
``tiling="none"`` runs the tower once on the image as it comes (position embeddings interpolated):
plain downsampling, the equal-token baseline.

Where the encoder ends: where the model's own connector begins. The tokens are the features the
connector takes (after the model's pixel shuffle / 2x2 merge grouping), and the sweep's projector
(``mlp2x_gelu`` at that width) stands in for the connector. That is the model's own projector for
LLaVA-OneVision and, up to one LayerNorm, InternVL; Qwen2-VL's merger MLP is 4C -> 4C -> H and
SmolVLM's connector one bias-free linear, so their projector figures are approximations
(``describe()['connector']`` says which).

Token strategies (knobs, for every tower): ``pool`` (a stride k: average or bilinear pooling of each
view's feature grid to ceil(s/k) per side), ``pixel_shuffle`` (a factor f: f x f neighbours
concatenated, tokens / f^2, channels x f^2; ``None`` keeps the model's own), ``max_tiles`` (the
tile cap of the model's rule). Pruning inside the LLM is a prefill matter, not the encoder's.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from explorer.checks import is_int, is_number

from . import token_rules as tr
from .base import VisionEncoder, check_knob
from .hf_catalog import CATALOG, HFVisionSpec, load_spec
from .hf_towers import build_tower, pixel_shuffle
from .registry import register_encoder

__all__ = ["CATALOG", "HFVisionSpec", "HFVisionEncoder", "load_spec", "hf_vlm"]


# ---------------------------------------------------------------------------------------------
# The encoder


class HFVisionEncoder(VisionEncoder):
    """A deployed VLM's vision side: the model's tiling, its tower, its token reduction."""

    def __init__(self, spec: HFVisionSpec, *, tiling: str, aspect: float, pixel_shuffle: Optional[int],
                 pool: int, pool_mode: str, max_tiles: Optional[int], knobs: dict[str, Any]) -> None:
        super().__init__()
        check_knob("tiling", tiling, tiling in ("model", "none"), "'model' (the model's own tiling rule) or 'none' (one view)")
        check_knob("aspect", aspect, is_number(aspect) and 1 / 20 <= float(aspect) <= 20,
                   "a number in [0.05, 20]: the source image's width / height")
        check_knob("pixel_shuffle", pixel_shuffle, pixel_shuffle is None or (is_int(pixel_shuffle) and 1 <= pixel_shuffle <= 8),
                   "null (the model's own factor) or an integer 1..8")
        check_knob("pool", pool, is_int(pool) and 1 <= pool <= 16, "an integer stride 1..16 (1: no pooling)")
        check_knob("pool_mode", pool_mode, pool_mode in ("avg", "bilinear"), "'avg' or 'bilinear'")
        check_knob("max_tiles", max_tiles, max_tiles is None or (is_int(max_tiles) and 1 <= max_tiles <= 64),
                   "null (the model's own cap) or an integer 1..64")
        self.spec = spec
        self.name = "hf_vlm"
        self.knobs = knobs
        self.tiling = tiling if not spec.vision_only else "none"
        self.aspect = float(aspect)
        self.shuffle = spec.shuffle if pixel_shuffle is None else int(pixel_shuffle)
        if spec.kind == "qwen2_vl":
            check_knob("pixel_shuffle", pixel_shuffle, pixel_shuffle in (None, spec.shuffle),
                       f"null or {spec.shuffle} for Qwen2-VL (its merger fixes the factor)")
        self.pool = int(pool)
        self.pool_mode = pool_mode
        self.max_tiles = max_tiles
        self.tower = build_tower(spec)
        width = int(spec.vision.get("embed_dim", spec.vision.get("hidden_size", 0)))
        self.tower_width = width
        self.out_channels = width * self.shuffle * self.shuffle
        self.downsample = spec.patch * self.shuffle * self.pool
        if spec.kind == "llava_onevision" and self.tiling == "model":
            self.image_newline = nn.Parameter(torch.zeros(self.out_channels))

    # -- geometry ------------------------------------------------------------------------------

    def image_hw(self, resolution: int) -> tuple[int, int]:
        """``(height, width)`` of the source image: the longest side is ``resolution``."""
        if self.aspect >= 1:
            return max(1, round(resolution / self.aspect)), resolution
        return resolution, max(1, round(resolution * self.aspect))

    def _reduced(self, side_h: int, side_w: int) -> tuple[int, int]:
        """Token grid of one view's ``side_h x side_w`` patch grid after pooling and the shuffle
        (Qwen2-VL: its 2x2 merge first, then pooling; others: pooling, then the shuffle)."""
        if self.spec.kind == "qwen2_vl":
            return math.ceil(side_h // self.shuffle / self.pool), math.ceil(side_w // self.shuffle / self.pool)
        h, w = math.ceil(side_h / self.pool), math.ceil(side_w / self.pool)
        check_knob("pixel_shuffle", self.shuffle, h % self.shuffle == 0 and w % self.shuffle == 0,
                   f"a divisor of the pooled feature grid {h}x{w}")
        return h // self.shuffle, w // self.shuffle

    def layout(self, resolution: int) -> dict[str, Any]:
        """Views the tower runs (count and pixel size) and the token count, per the model's rule."""
        check_knob("resolution", resolution, is_int(resolution) and resolution >= self.spec.patch * 2,
                   f"an integer number of pixels >= {self.spec.patch * 2}")
        h, w = self.image_hw(resolution)
        kind, proc = self.spec.kind, self.spec.processor
        if kind == "qwen2_vl":
            hb, wb = tr.qwen2vl_resize((h, w), self.spec.tile, proc.get("min_pixels", 56 * 56),
                                       proc.get("max_pixels", 14 * 14 * 4 * 1280))
            if self.tiling == "none":  # no smart_resize: sides floored to whole merge windows
                hb, wb = (max(self.spec.tile, h // self.spec.tile * self.spec.tile),
                          max(self.spec.tile, w // self.spec.tile * self.spec.tile))
            gh, gw = self._reduced(hb // self.spec.patch, wb // self.spec.patch)
            return {"views": 1, "view_hw": (hb, wb), "grid": None, "tokens": gh * gw, "image_hw": (h, w)}
        if self.tiling == "none":  # one view, sides floored to whole tokens
            unit = self.spec.patch * self.shuffle * self.pool
            vh, vw = max(unit, h // unit * unit), max(unit, w // unit * unit)
            sh, sw = self._reduced(vh // self.spec.patch, vw // self.spec.patch)
            return {"views": 1, "view_hw": (vh, vw), "grid": None, "tokens": sh * sw, "image_hw": (h, w)}
        t = self.spec.tile
        s, _ = self._reduced(t // self.spec.patch, t // self.spec.patch)
        if kind == "fast_vlm":  # the processor makes one square view of the image (crop or pad)
            return {"views": 1, "view_hw": (t, t), "grid": None, "tokens": s * s, "image_hw": (h, w)}
        if kind == "llava_onevision":
            lay = tr.anyres_layout((h, w), tile=t, side=s, max_tiles=self.max_tiles or proc.get("max_tiles", 9),
                                   pinpoints=proc.get("pinpoints") or tr.llava_onevision_pinpoints(t, proc.get("grid", 6)))
            return {"views": lay.views, "view_hw": (t, t), "grid": (lay.rows, lay.cols), "tokens": lay.tokens,
                    "anyres": lay, "image_hw": (h, w)}
        if kind == "internvl":
            cap = self.max_tiles or proc.get("max_tiles", 12)
            cols, rows = tr.internvl_grid((h, w), t, proc.get("min_tiles", 1), cap) if cap > 1 else (1, 1)
            views = 1 + rows * cols if rows * cols > 1 else 1
            grid = (rows, cols) if views > 1 else None
            return {"views": views, "view_hw": (t, t), "grid": grid, "tokens": views * s * s, "image_hw": (h, w)}
        # smolvlm / idefics3
        longest = proc.get("longest_edge", 4 * t)
        rows, cols = tr.idefics3_grid((h, w), longest, t)
        if self.max_tiles is not None and rows * cols > self.max_tiles:
            scale = math.sqrt(self.max_tiles / (rows * cols))
            rows, cols = max(1, int(rows * scale)), max(1, int(cols * scale))
        views = rows * cols + 1 if rows or cols else 1
        return {"views": views, "view_hw": (t, t), "grid": (rows, cols) if views > 1 else None,
                "tokens": views * s * s, "image_hw": (h, w)}

    def num_tokens(self, resolution: int) -> int:
        return int(self.layout(resolution)["tokens"])

    # -- forward -------------------------------------------------------------------------------

    def _views(self, images: torch.Tensor, lay: dict[str, Any]) -> torch.Tensor:
        """``[B*V, 3, th, tw]``: base/global view and tiles in the model's order."""
        b = images.shape[0]
        h, w = lay["image_hw"]
        img = images if images.shape[-2:] == (h, w) else F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
        vh, vw = lay["view_hw"]
        whole = img if (h, w) == (vh, vw) else F.interpolate(img, size=(vh, vw), mode="bilinear", align_corners=False)
        if lay["grid"] is None:
            return whole
        rows, cols = lay["grid"]
        big = F.interpolate(img, size=(rows * vh, cols * vw), mode="bilinear", align_corners=False)
        tiles = big.reshape(b, 3, rows, vh, cols, vw).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, 3, vh, vw)
        if self.spec.kind == "llava_onevision":  # base view first
            views = torch.cat([whole.unsqueeze(1), tiles], dim=1)
        else:  # SmolVLM's global image and InternVL's thumbnail come last
            views = torch.cat([tiles, whole.unsqueeze(1)], dim=1)
        return views.reshape(b * lay["views"], 3, vh, vw)

    def _tower_grid(self, views: torch.Tensor) -> torch.Tensor:
        """Tower features of each view as a grid ``[N, s_h, s_w, C]``."""
        p = self.spec.patch
        sh, sw = views.shape[-2] // p, views.shape[-1] // p
        mt = self.spec.vision["model_type"] if self.spec.vision_only else self.spec.kind
        if mt == "fast_vlm":  # the timm tower's feature map [N, C, h, w], as FastVLM reads it
            return self.tower(pixel_values=views).last_hidden_state.permute(0, 2, 3, 1)
        if mt in ("siglip_vision_model", "llava_onevision"):
            out = self.tower(pixel_values=views, interpolate_pos_encoding=True).last_hidden_state
        elif mt in ("internvl_vision", "internvl"):
            out = self.tower(pixel_values=views).last_hidden_state[:, 1:]
        else:  # Idefics3 / SmolVLM: every patch is real, so no attention mask (the tower's own
            # forward builds one from a mask it first has to read back, which meta cannot do)
            emb = self.tower.embeddings
            if sh == sw == emb.num_patches_per_side:  # a native-size view: positions are 0..n-1, as
                # the embeddings' bucketised coordinates give for a full mask (and exportable to ONNX)
                out = emb.patch_embedding(views).flatten(2).transpose(1, 2)
                out = out + emb.position_embedding(torch.arange(sh * sw, device=views.device))
            else:
                mask = torch.ones(views.shape[0], sh, sw, dtype=torch.bool, device=views.device)
                out = emb(pixel_values=views, patch_attention_mask=mask)
            out = self.tower.post_layernorm(self.tower.encoder(inputs_embeds=out).last_hidden_state)
        return out.reshape(views.shape[0], sh, sw, -1)

    def _reduce(self, grid: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            x = grid.permute(0, 3, 1, 2)
            if self.pool_mode == "avg":
                x = F.avg_pool2d(x, self.pool, self.pool, ceil_mode=True)
            else:
                size = (math.ceil(x.shape[-2] / self.pool), math.ceil(x.shape[-1] / self.pool))
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            grid = x.permute(0, 2, 3, 1)
        if self.shuffle > 1 and self.spec.kind != "qwen2_vl":
            grid = pixel_shuffle(grid, self.shuffle)
        return grid

    def _qwen(self, images: torch.Tensor, lay: dict[str, Any]) -> torch.Tensor:
        b = images.shape[0]
        hb, wb = lay["view_hw"]
        img = F.interpolate(images, size=(hb, wb), mode="bilinear", align_corners=False)
        p, m = self.spec.patch, self.spec.shuffle
        tp = int(self.spec.vision.get("temporal_patch_size", 2))
        gh, gw = hb // p, wb // p
        # The processor's layout: the frame repeated over the temporal patch, patches grouped by
        # merge window (qwen2_vl image processor, _preprocess).
        x = img.unsqueeze(1).expand(b, tp, 3, hb, wb)
        x = x.reshape(b, tp, 3, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        patches = x.reshape(b * gh * gw, 3 * tp * p * p)
        from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids

        # Positions and sequence bounds from the grid on the CPU (what the tower would compute
        # itself), so that the same forward also runs on the meta device.
        grid_thw = torch.tensor([[1, gh, gw]] * b, dtype=torch.long)
        position_ids = get_vision_position_ids(grid_thw, m).to(images.device)
        cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, self.tower.config)
        merged = self.tower(hidden_states=patches, grid_thw=grid_thw, position_ids=position_ids,
                            cu_seqlens=cu_seqlens, max_seqlen=max_seqlen).pooler_output  # [b*gh*gw/m^2, C m^2]
        grid = merged.reshape(b, gh // m, gw // m, -1)
        return self._reduce(grid).reshape(b, -1, grid.shape[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"expected square images [B, 3, R, R], got {tuple(images.shape)}")
        lay = self.layout(int(images.shape[-1]))
        if self.spec.kind == "qwen2_vl" and not self.spec.vision_only or self.spec.vision.get("model_type") == "qwen2_vl_vision":
            return self._qwen(images, lay)
        b = images.shape[0]
        grid = self._reduce(self._tower_grid(self._views(images, lay)))  # [B*V, s, s, C']
        c = grid.shape[-1]
        if "anyres" not in lay:
            return grid.reshape(b, -1, c)
        a: tr.AnyResLayout = lay["anyres"]
        s = a.side
        grid = grid.reshape(b, a.views, s, s, c)
        base = grid[:, 0].reshape(b, s * s, c)
        tiles = grid[:, 1:].reshape(b, a.rows, a.cols, s, s, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, a.rows * s, a.cols * s)
        uh, uw = a.unpadded  # unpad: the centred crop of the image's own aspect ratio
        top, left = (a.rows * s - uh) // 2, (a.cols * s - uw) // 2
        tiles = tiles[:, :, top:top + uh, left:left + uw]
        if a.pooled != a.unpadded:
            tiles = F.interpolate(tiles, size=a.pooled, mode="bilinear", align_corners=False)
        ph, pw = a.pooled
        newline = self.image_newline.to(tiles.dtype).view(1, c, 1, 1).expand(b, c, ph, 1)
        tiles = torch.cat([tiles, newline], dim=-1).flatten(2).transpose(1, 2)  # [B, ph*(pw+1), C]
        return torch.cat([base, tiles], dim=1)

    def reparameterize(self) -> "HFVisionEncoder":
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": "hf_vlm", "knobs": dict(self.knobs), "model": self.spec.name,
                "kind": self.spec.kind, "source": self.spec.source, "tower": type(self.tower).__name__,
                "tile": self.spec.tile, "patch": self.spec.patch, "pixel_shuffle": self.shuffle,
                "llm": self.spec.llm, "connector": self.spec.connector,
                "out_channels": self.out_channels, "downsample": self.downsample}


@register_encoder("hf_vlm")
def hf_vlm(model: str = "llava-onevision-0.5b", tiling: str = "model", aspect: float = 1.0,
           pixel_shuffle: Optional[int] = None, pool: int = 1, pool_mode: str = "avg",
           max_tiles: Optional[int] = None) -> HFVisionEncoder:
    """A transformers VLM's vision side from a catalog name or a config.json (random weights)."""
    spec = load_spec(model)
    knobs = {"model": model, "tiling": tiling, "aspect": aspect, "pixel_shuffle": pixel_shuffle, "pool": pool,
             "pool_mode": pool_mode, "max_tiles": max_tiles}
    return HFVisionEncoder(spec, tiling=tiling, aspect=aspect, pixel_shuffle=pixel_shuffle, pool=pool,
                           pool_mode=pool_mode, max_tiles=max_tiles, knobs=knobs)
