"""The interface every vision encoder in the zoo shares.

Measurement, sweeps and training only ever talk to this interface, so a new encoder family
plugs in by subclassing :class:`VisionEncoder` and registering a builder.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from explorer.checks import is_int, require


def check_knob(name: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise a ValueError that names the knob, the value and what is allowed (explorer.checks.require)."""
    require(ok, name, value, allowed)


class VisionEncoder(nn.Module):
    """Images ``[B, 3, R, R]`` in, visual tokens ``[B, N, C]`` out.

    Subclasses set ``out_channels`` and ``downsample`` (pixels per token side) and implement
    ``forward_features`` returning a ``[B, C, H, W]`` map or ``[B, N, C]`` tokens.
    """

    name: str = "encoder"
    out_channels: int
    downsample: int

    def num_tokens(self, resolution: int) -> int:
        """Visual tokens for a square ``resolution`` input."""
        check_knob("resolution", resolution, is_int(resolution) and resolution > 0,
                   "a positive integer number of pixels")
        side = math.ceil(resolution / self.downsample)
        return side * side

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(images)
        if feats.dim() == 4:
            return feats.flatten(2).transpose(1, 2)
        return feats

    def reparameterize(self) -> "VisionEncoder":
        """Fold every multi-branch block into its inference form (in place); returns self."""
        for module in list(self.modules()):
            if module is not self and hasattr(module, "reparameterize") and not isinstance(module, VisionEncoder):
                module.reparameterize()
        return self

    def describe(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
