"""The roofs of the machine at hand, measured: GEMM throughput and memory bandwidth.

A profile of the local machine takes its peak FLOP/s from a large square matmul (what the
fastest kernel on this machine reaches, not a datasheet number) and its bandwidth from a large
tensor copy (read + write). Measurement only: nothing is written to disk.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer.measure.settings import MeasureSettings
from explorer.measure.timing import time_callable

__all__ = ["Roof", "measure_roof"]


@dataclass(frozen=True)
class Roof:
    gemm_flops: float       # FLOP/s of an n x n x n matmul
    bandwidth: float        # bytes/s of a copy of ``copy_mb`` MB (bytes read + bytes written)
    gemm_n: int
    copy_mb: float
    gemm_cv: float
    copy_cv: float
    dtype: str
    threads: int


def measure_roof(settings: MeasureSettings, gemm_n: int = 2048, copy_mb: float = 256.0) -> Roof:
    """GEMM and copy roofs at ``settings``' device, dtype and threads."""
    settings.check_on_machine()
    device = settings.resolve_device()
    dtype = settings.torch_dtype
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(gemm_n, gemm_n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(gemm_n, gemm_n, generator=gen).to(device=device, dtype=dtype)
    gemm = time_callable(lambda: torch.mm(a, b), settings)
    n_elem = int(copy_mb * 1e6 / 4)
    src = torch.ones(n_elem, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy = time_callable(lambda: dst.copy_(src), settings)
    return Roof(gemm_flops=2.0 * gemm_n ** 3 / (gemm.median_ms * 1e-3),
                bandwidth=2.0 * src.numel() * 4 / (copy.median_ms * 1e-3), gemm_n=gemm_n, copy_mb=copy_mb,
                gemm_cv=gemm.cv, copy_cv=copy.cv, dtype=settings.dtype, threads=settings.effective_threads())
