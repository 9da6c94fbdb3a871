"""How long a measurement takes, roughly: the time model behind dry runs and the progress bar.

Past durations in the store win over the model (see :func:`explorer.engine.sweep.plan.plan_sweep`).
"""
from __future__ import annotations

from typing import Any

__all__ = ["ASSUMED_GFLOPS_PER_S", "SETUP_S", "BUILD_S_PER_MPARAM", "ASSUMED_TIMED_ITERS", "estimate_seconds",
           "format_duration"]

#: Assumed sustained GFLOP/s by device type, per CPU thread for "cpu". A FastViTHD forward pass
#: reaches about 140 GFLOP/s on 2 threads of the developers' avx512 machines; the GPU figures are
#: deliberately conservative fp32 numbers. Order-of-magnitude only: a dry run says "about".
ASSUMED_GFLOPS_PER_S: dict[str, float] = {"cpu": 70.0, "cuda": 10_000.0, "mps": 1_500.0}
#: Fixed seconds per measurement (building the model, counting FLOPs, bookkeeping).
SETUP_S: dict[str, float] = {"encoder": 3.0, "projector": 0.3, "prefill": 3.0}
#: Extra build seconds per million parameters (random initialisation of big models).
BUILD_S_PER_MPARAM: float = 0.01
#: Repetitions assumed for the protocol to reach its CI target when the caps allow it.
ASSUMED_TIMED_ITERS: int = 15


def estimate_seconds(kind: str, gflops: float, params_m: float, settings: Any, device_type: str,
                     threads: int) -> float:
    """Rough seconds one measurement takes on an otherwise idle machine.

    setup (``SETUP_S`` + ``BUILD_S_PER_MPARAM`` x params) + 4 passes (FLOP counting by tracing,
    the first call, the peak-memory pass) + warm-up + timing, where latency = gflops x batch /
    throughput (``ASSUMED_GFLOPS_PER_S``), warm-up = max(warmup_s, warmup_iters x latency) and
    timing = min(max_time_s, clamp(ASSUMED_TIMED_ITERS, min_iters, max_iters) x latency), at least
    min_iters x latency.
    """
    per_s = ASSUMED_GFLOPS_PER_S.get(device_type, ASSUMED_GFLOPS_PER_S["cpu"])
    if device_type == "cpu":
        per_s *= max(1, threads)
    batch = int(getattr(settings, "batch_size", 1) or 1)
    lat = gflops * batch / per_s + 0.001
    warm = max(float(getattr(settings, "warmup_s", 0.5)), int(getattr(settings, "warmup_iters", 2)) * lat)
    iters = min(max(ASSUMED_TIMED_ITERS, int(getattr(settings, "min_iters", 5))),
                int(getattr(settings, "max_iters", 200)))
    timed = min(float(getattr(settings, "max_time_s", 30.0)), iters * lat)
    timed = max(timed, int(getattr(settings, "min_iters", 5)) * lat)
    return SETUP_S.get(kind, 1.0) + BUILD_S_PER_MPARAM * params_m + 4 * lat + warm + timed


def format_duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
