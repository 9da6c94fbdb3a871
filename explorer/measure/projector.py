"""Cost of the ``mlp2x_gelu`` projector for one (encoder channels, LLM width, token count)."""
from __future__ import annotations

from typing import Any

import torch

from ..checks import is_int, require
from ..models.projector import MLP2xGelu
from .costs import ProjectorCost
from .encoder import prepare_exported
from .settings import MeasureSettings
from .timing import time_callable


def _positive(field: str, value: Any) -> int:
    require(is_int(value) and value > 0, field, value, "a positive integer")
    return value


def projector_flops(in_channels: int, hidden: int, tokens: int) -> float:
    """GFLOPs (2 x MACs) of the projector over ``tokens`` tokens of one image (biases, GELU: 0)."""
    return 2 * MLP2xGelu.macs_for(in_channels, hidden, tokens) / 1e9


def measure_projector(in_channels: int, hidden: int, tokens: int, settings: MeasureSettings,
                      time: bool = True) -> ProjectorCost:
    """FLOPs and params (analytic, exact) and latency of ``tokens x in_channels -> tokens x hidden``.

    Latency is one forward of ``[batch_size, tokens, in_channels]`` with the settings' dtype
    and runtime (checked against eager first).
    """
    settings.check_on_machine()
    _positive("in_channels", in_channels)
    _positive("hidden", hidden)
    _positive("tokens", tokens)
    latency = None
    runtime_error = 0.0
    if time:
        gen = torch.Generator().manual_seed(0)
        module = MLP2xGelu(in_channels, hidden)
        x = torch.randn(settings.batch_size, tokens, in_channels, generator=gen)
        fn, module, _, runtime_error = prepare_exported(module, x, settings, image_like=False)
        latency = time_callable(fn, settings, module=module)
    return ProjectorCost(
        in_channels=in_channels,
        hidden=hidden,
        tokens=tokens,
        params_m=MLP2xGelu.params_for(in_channels, hidden) / 1e6,
        gflops=projector_flops(in_channels, hidden, tokens),
        latency=latency,
        runtime=settings.effective_runtime,
        runtime_error=runtime_error,
    )
