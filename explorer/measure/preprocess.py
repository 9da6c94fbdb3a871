"""Image preprocessing as deployed VLMs run it: a decoded source image -> the encoder's input tensor.

Steps (LLaVA / ml-fastvlm image processors): resize the shortest side to the encoder's
resolution ``R`` (bicubic, antialiased), centre-crop ``R x R`` (``fit="crop"``) -- or first pad
the image to a square with the mean colour and resize that to ``R x R`` (``fit="pad"``, LLaVA's
``expand2square``) --, scale to [0, 1] and normalise with the encoder's mean and std. Two
implementations: ``pil`` (what the HF image processors run) and ``torch`` (tensor ops, as a
GPU or torchvision pipeline would). JPEG decoding is not part of it: the source is already
decoded (a PIL image / a uint8 tensor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["NORMALISATION", "normalisation", "source_image", "preprocess_pil", "preprocess_torch",
           "preprocess_fn", "describe"]

_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_SIGLIP = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

#: encoder -> (mean, std) of its image processor. FastViTHD / MCi2 (MobileCLIP): scale to [0, 1]
#: only; CLIP ViT-L/14 and the LAION CLIP ConvNeXts: OpenAI CLIP's; SigLIP: 0.5 / 0.5.
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fastvithd": _UNIT, "fastvit_mci2": _UNIT, "vit_l14_clip": _CLIP, "convnext_l": _CLIP,
    "convnext_xxl": _CLIP, "siglip_so400m": _SIGLIP,
}


def normalisation(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The encoder's (mean, std); families not listed use CLIP's (the cost does not depend on it)."""
    return NORMALISATION.get(encoder, _CLIP)


def source_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A decoded ``height x width`` RGB photo stand-in (uint8 noise; resampling cost ignores content)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Shortest side -> resolution, the other side scaled and rounded (HF's ``get_resize_output_image_size``)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(round(long * resolution / short))
    return (resolution, new_long) if width <= height else (new_long, resolution)


def _mean_colour(mean: tuple[float, ...]) -> tuple[int, int, int]:
    return tuple(int(round(m * 255)) for m in mean)  # type: ignore[return-value]


@dataclass(frozen=True)
class _Plan:
    resolution: int
    fit: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def preprocess_pil(image: "object", resolution: int, fit: str = "crop",
                   mean: tuple[float, ...] = _UNIT[0], std: tuple[float, ...] = _UNIT[1]) -> torch.Tensor:
    """PIL image (or HxWx3 uint8 array) -> ``[1, 3, R, R]`` float tensor, normalised."""
    from PIL import Image

    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    img = img.convert("RGB") if img.mode != "RGB" else img  # type: ignore[attr-defined]
    w, h = img.size  # type: ignore[attr-defined]
    if fit == "pad":
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), _mean_colour(mean))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas.resize((resolution, resolution), Image.Resampling.BICUBIC)
    else:
        nw, nh = _resized_size(w, h, resolution)
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)  # type: ignore[attr-defined]
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


def preprocess_torch(image: torch.Tensor, resolution: int, fit: str = "crop",
                     mean: tuple[float, ...] = _UNIT[0], std: tuple[float, ...] = _UNIT[1]) -> torch.Tensor:
    """uint8 ``[3, H, W]`` tensor -> ``[1, 3, R, R]`` float tensor, normalised (bicubic, antialiased)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] image tensor, got {tuple(image.shape)}")
    x = image[None].float()
    _, _, h, w = x.shape
    if fit == "pad":
        side = max(w, h)
        fill = torch.tensor(_mean_colour(mean), dtype=x.dtype).view(1, 3, 1, 1)
        canvas = fill.expand(1, 3, side, side).clone()
        top, left = (side - h) // 2, (side - w) // 2
        canvas[:, :, top:top + h, left:left + w] = x
        x = F.interpolate(canvas, size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)
    else:
        nw, nh = _resized_size(w, h, resolution)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - resolution) // 2, (nw - resolution) // 2
        x = x[:, :, top:top + resolution, left:left + resolution]
    x = x.clamp(0, 255).round() / 255.0  # PIL's output is 8-bit; match it
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def preprocess_fn(backend: str, encoder: str, resolution: int, source: tuple[int, int], fit: str,
                  images: int = 1) -> Callable[[], torch.Tensor]:
    """A zero-argument callable that preprocesses ``images`` decoded source images (the timed call)."""
    mean, std = normalisation(encoder)
    array = source_image(*source)
    if backend == "pil":
        from PIL import Image

        pil = Image.fromarray(array)

        def run_pil() -> torch.Tensor:
            return torch.cat([preprocess_pil(pil, resolution, fit, mean, std) for _ in range(images)])

        return run_pil
    if backend == "torch":
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()

        def run_torch() -> torch.Tensor:
            return torch.cat([preprocess_torch(tensor, resolution, fit, mean, std) for _ in range(images)])

        return run_torch
    raise ValueError(f"invalid preprocess={backend!r}: 'pil', 'torch' or 'none'")


def describe(backend: str, source: tuple[int, int], fit: str, resolution: int) -> str:
    """What was measured, e.g. ``pil:1920x1080->crop->256``."""
    return f"{backend}:{source[0]}x{source[1]}->{fit}->{resolution}"
