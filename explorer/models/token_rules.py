"""How many visual tokens a deployed VLM hands its LLM for a source image of a given size.

Each rule is written out here from the model's own processor code in transformers 5.x (named per
function) so it runs without transformers, a tokenizer or an image; ``tests/test_hf_vision.py``
checks every rule against that processor code on synthetic images (the processor is the oracle,
never this module). Sizes are ``(height, width)`` in pixels throughout.

- LLaVA-OneVision "anyres_max_N" (``LlavaOnevisionProcessor._get_number_of_features`` and
  ``_get_unpadded_features``; ``image_processing_utils.select_best_resolution``).
- Qwen2-VL dynamic resolution (``qwen2_vl/image_processing_qwen2_vl.py: smart_resize``; the
  processor's ``grid_t * grid_h * grid_w // merge_size**2``).
- Idefics3 / SmolVLM image splitting (``smolvlm/image_processing_smolvlm.py``:
  ``_resize_output_size_rescale_to_max_len``, ``resize_for_vision_encoder``, ``split_images``;
  ``processing_smolvlm.get_image_prompt_string``).
- InternVL dynamic tiling (``got_ocr2/image_processing_pil_got_ocr2.py``:
  ``get_all_supported_aspect_ratios``, ``get_optimal_tiled_canvas``,
  ``get_number_of_image_patches``; ``InternVLProcessor.replace_image_token``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from explorer.checks import is_int, require

__all__ = [
    "AnyResLayout", "anyres_layout", "select_best_resolution", "llava_onevision_pinpoints",
    "qwen2vl_resize", "qwen2vl_tokens", "idefics3_grid", "idefics3_tokens",
    "internvl_grid", "internvl_tokens", "check_image_size",
]


def check_image_size(image_size: Sequence[int], field: str = "image_size") -> tuple[int, int]:
    """``(height, width)`` of a source image, both positive integers."""
    ok = isinstance(image_size, (list, tuple)) and len(image_size) == 2 and all(is_int(v) and v > 0 for v in image_size)
    require(ok, field, image_size, "[height, width]: two positive integers (pixels)")
    return int(image_size[0]), int(image_size[1])


# ---------------------------------------------------------------------------------------------
# LLaVA-OneVision: AnyRes-Max-N


def llava_onevision_pinpoints(tile: int = 384, max_grid: int = 6) -> list[tuple[int, int]]:
    """The grid resolutions LLaVA-OneVision may pick: every (rows x tile, cols x tile) with
    1 <= rows, cols <= 6 (``image_grid_pinpoints`` of the released llava-onevision-qwen2-*
    configs: 36 pairs from [384, 384] to [2304, 2304], listed rows-major)."""
    return [(r * tile, c * tile) for r in range(1, max_grid + 1) for c in range(1, max_grid + 1)]


def select_best_resolution(original: tuple[int, int], possible: Sequence[Sequence[int]]) -> tuple[int, int]:
    """LLaVA-NeXT's choice: the pinpoint keeping the most of the image's pixels, then wasting least."""
    oh, ow = original
    best: tuple[int, int] = (int(possible[0][0]), int(possible[0][1]))
    max_eff, min_waste = 0, float("inf")
    for h, w in possible:
        scale = min(w / ow, h / oh)
        dw, dh = int(ow * scale), int(oh * scale)
        eff = min(dw * dh, ow * oh)
        waste = w * h - eff
        if eff > max_eff or (eff == max_eff and waste < min_waste):
            max_eff, min_waste, best = eff, waste, (int(h), int(w))
    return best


@dataclass(frozen=True)
class AnyResLayout:
    """The LLaVA-OneVision token layout of one image.

    ``rows x cols`` tiles of ``side x side`` features each (plus one base view of ``side x
    side``); the tile map ``[rows*side, cols*side]`` is unpadded to ``unpadded`` (the image's own
    aspect ratio) and, when it exceeds ``max_tiles`` tiles' worth by more than 10%, bilinearly
    shrunk to ``pooled``; one newline token per remaining row.
    """

    rows: int
    cols: int
    side: int  # features per tile side (27 for SigLIP/14 at 384)
    unpadded: tuple[int, int]
    pooled: tuple[int, int]

    @property
    def views(self) -> int:
        return 1 + self.rows * self.cols

    @property
    def tokens(self) -> int:
        h, w = self.pooled
        return self.side * self.side + h * w + h


def anyres_layout(image_size: Sequence[int], tile: int = 384, side: int = 27, max_tiles: int = 9,
                  pinpoints: Sequence[Sequence[int]] | None = None) -> AnyResLayout:
    """LLaVA-OneVision's AnyRes-Max-``max_tiles`` layout for a ``(height, width)`` source image."""
    oh, ow = check_image_size(image_size)
    require(is_int(max_tiles) and max_tiles >= 1, "max_tiles", max_tiles, "a positive integer")
    pins = list(pinpoints) if pinpoints is not None else llava_onevision_pinpoints(tile)
    bh, bw = select_best_resolution((oh, ow), pins)
    rows, cols = bh // tile, bw // tile
    cur_h, cur_w = side * rows, side * cols
    if ow / oh > cur_w / cur_h:
        new_h = int(round(oh * (cur_w / ow), 7))
        cur_h -= ((cur_h - new_h) // 2) * 2
    else:
        new_w = int(round(ow * (cur_h / oh), 7))
        cur_w -= ((cur_w - new_w) // 2) * 2
    unpadded = (cur_h, cur_w)
    ratio = math.sqrt(cur_h * cur_w / (max_tiles * side * side))
    pooled = (int(cur_h // ratio), int(cur_w // ratio)) if ratio > 1.1 else unpadded
    return AnyResLayout(rows=rows, cols=cols, side=side, unpadded=unpadded, pooled=pooled)


# ---------------------------------------------------------------------------------------------
# Qwen2-VL: dynamic resolution, 2x2 merge


def qwen2vl_resize(image_size: Sequence[int], factor: int = 28, min_pixels: int = 56 * 56,
                   max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """``smart_resize``: both sides multiples of ``factor`` (patch x merge), pixels within bounds."""
    h, w = check_image_size(image_size)
    require(max(h, w) / min(h, w) <= 200, "image_size", image_size, "an aspect ratio of at most 200")
    hb, wb = round(h / factor) * factor, round(w / factor) * factor
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb = max(factor, math.floor(h / beta / factor) * factor)
        wb = max(factor, math.floor(w / beta / factor) * factor)
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb = math.ceil(h * beta / factor) * factor
        wb = math.ceil(w * beta / factor) * factor
    return hb, wb


def qwen2vl_tokens(image_size: Sequence[int], patch: int = 14, merge: int = 2, min_pixels: int = 56 * 56,
                   max_pixels: int = 14 * 14 * 4 * 1280) -> int:
    """(H/28) x (W/28) after :func:`qwen2vl_resize` (one frame: the temporal patch repeats it)."""
    hb, wb = qwen2vl_resize(image_size, patch * merge, min_pixels, max_pixels)
    return (hb // patch) * (wb // patch) // (merge * merge)


# ---------------------------------------------------------------------------------------------
# Idefics3 / SmolVLM: resize the longest edge, split into tiles plus a global view


def idefics3_grid(image_size: Sequence[int], longest_edge: int, tile: int, split: bool = True) -> tuple[int, int]:
    """``(rows, cols)`` of tiles; ``(0, 0)`` when the image is one view (no split)."""
    h, w = check_image_size(image_size)
    if not split:
        return 0, 0
    ar = w / h  # _resize_output_size_rescale_to_max_len: longest edge -> longest_edge, even sides
    if w >= h:
        w = longest_edge
        h = int(w / ar)
        h += h % 2
    else:
        h = longest_edge
        w = int(h * ar)
        w += w % 2
    h, w = max(h, 1), max(w, 1)
    ar = w / h  # _resize_output_size_scale_below_upper_bound (4096)
    if w >= h and w > 4096:
        w, h = 4096, max(int(4096 / ar), 1)
    elif h > w and h > 4096:
        h, w = 4096, max(int(4096 * ar), 1)
    ar = w / h  # resize_for_vision_encoder: multiples of the tile
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / ar) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * ar) / tile) * tile
    if h > tile or w > tile:
        return math.ceil(h / tile), math.ceil(w / tile)
    return 0, 0


def idefics3_tokens(image_size: Sequence[int], longest_edge: int, tile: int, seq_len: int, split: bool = True) -> int:
    rows, cols = idefics3_grid(image_size, longest_edge, tile, split)
    return (rows * cols + 1) * seq_len if rows or cols else seq_len


# ---------------------------------------------------------------------------------------------
# InternVL: closest-aspect tile grid within [min, max] tiles, plus a thumbnail


def internvl_grid(image_size: Sequence[int], tile: int = 448, min_tiles: int = 1, max_tiles: int = 12) -> tuple[int, int]:
    """``(cols, rows)`` of the tile grid (``get_optimal_tiled_canvas``'s order)."""
    h, w = check_image_size(image_size)
    require(is_int(max_tiles) and max_tiles >= 1, "max_tiles", max_tiles, "a positive integer")
    grids = sorted(((c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
                    if min_tiles <= c * r <= max_tiles), key=lambda g: g[0] * g[1])
    ar, area = w / h, w * h
    best, best_diff = (1, 1), float("inf")
    for g in grids:
        diff = abs(ar - g[0] / g[1])
        if diff < best_diff:
            best, best_diff = g, diff
        elif diff == best_diff and area > 0.5 * tile * tile * g[0] * g[1]:
            best = g
    return best


def internvl_tokens(image_size: Sequence[int], tile: int = 448, seq_len: int = 256, max_tiles: int = 12,
                    min_tiles: int = 1) -> int:
    """``seq_len`` per tile; a thumbnail joins whenever the grid has more than one tile."""
    cols, rows = internvl_grid(image_size, tile, min_tiles, max_tiles) if max_tiles > 1 else (1, 1)
    views = 1 + cols * rows if cols * rows > 1 else 1
    return views * seq_len
