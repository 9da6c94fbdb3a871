"""A fixed reference workload, timed beside a measurement's samples, that says how fast the machine
was while each sample was taken.

On a shared host the same forward pass can run 1.7x faster from one second to the next with
nothing else running in the guest (docs/benchmarks.md, "Stability": FastViTHD 135 -> 81 ms and a
1024^2 GEMM 13 -> 7 ms in the same step). No counter in ``/proc`` sees it. The probe does: a
dense 3x3 convolution, a depthwise one, GELU and a linear layer (the op classes of the encoders
and of a prefill), about 2 ms on 2 cores, with fixed random weights. Each timing stores the
median probe time over its samples (``probe_ms``) and the median of sample / probe
(``probe_units``): the latency in units of the machine's momentary speed, which two runs can
compare even when the host ran at different speeds (``probe_units x probe_ms`` of a reference
run gives milliseconds at that run's speed).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch
from torch import nn

__all__ = ["reference_probe", "PROBE_EVERY_MS"]

#: A sample gets its own probe when it lasts at least this long; shorter samples share one probe
#: per this many milliseconds of samples, so the probe costs at most ~10% of the sampling time.
PROBE_EVERY_MS = 20.0


@lru_cache(maxsize=4)
def _probe_modules(device: str) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    convs = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 32, 3, padding=1, groups=32))
    linear = nn.Linear(384, 384)
    with torch.no_grad():
        for p in list(convs.parameters()) + list(linear.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    x = torch.randn(1, 32, 80, 80, generator=gen)
    y = torch.randn(192, 384, generator=gen)
    # No gradients anywhere: the probe may run under inference mode or not (its first call may
    # build it inside an inference-mode timing, and later calls run outside one), and autograd
    # must never record it.
    convs.requires_grad_(False)
    linear.requires_grad_(False)
    return convs.to(device).eval(), linear.to(device).eval(), x.to(device), y.to(device)


def reference_probe(device: torch.device) -> Callable[[], object]:
    """The probe call for ``device`` (built once per process; CPU and CUDA)."""
    convs, linear, x, y = _probe_modules(str(device))

    def run() -> object:
        with torch.no_grad():
            return convs(x).sum() + linear(y).sum()

    return run
