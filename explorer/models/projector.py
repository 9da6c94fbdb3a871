"""The vision-to-language projector (LLaVA's ``mlp2x_gelu``).

Kept as its own tiny module so the projector can be measured once per (encoder channels, LLM
width, token count), independently of which encoder or LLM surrounds it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..checks import is_int
from .base import check_knob


class MLP2xGelu(nn.Module):
    """``Linear(C -> H) -> GELU -> Linear(H -> H)``, both with bias: tokens ``[B, N, C]`` -> ``[B, N, H]``."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        check_knob("in_channels", in_channels, is_int(in_channels) and in_channels > 0,
                   "a positive integer (the encoder's output channels)")
        check_knob("hidden", hidden, is_int(hidden) and hidden > 0,
                   "a positive integer (the LLM's hidden size)")
        self.in_channels = in_channels
        self.hidden = hidden
        self.fc1 = nn.Linear(in_channels, hidden, bias=True)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden, bias=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(tokens)))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @staticmethod
    def params_for(in_channels: int, hidden: int) -> int:
        """Parameter count without building the module: weights plus biases of both layers."""
        return in_channels * hidden + hidden + hidden * hidden + hidden

    @staticmethod
    def macs_for(in_channels: int, hidden: int, tokens: int) -> int:
        """Multiply-accumulates of one forward over ``tokens`` tokens (biases and GELU not counted)."""
        return tokens * (in_channels * hidden + hidden * hidden)
