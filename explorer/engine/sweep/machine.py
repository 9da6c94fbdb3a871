"""The sweep's look at the machine before it measures, and the thread policy that follows from it.

:func:`machine_policy` watches the machine for half a second (:func:`explorer.measure.contention.check_machine`)
and decides:

- **threads**: with ``measure.threads`` unset on a CPU, the sweep measures with the cores other
  processes leave free (at least one) when that is fewer than torch's default; the environment
  records the thread count, so these values never mix with full-machine ones. A thread that
  shares its core with a busy neighbour stalls every other thread at each OpenMP barrier (2.3-3.6x
  the quiet 1-thread time, unevenly, on 2 cores beside one busy loop, against 0.94-1.09x for one
  thread on the free core).
- **OpenMP wait policy**: when the user's ``measure.threads`` exceeds the free cores, the
  measuring process gets ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep instead of spinning
  on a core the neighbour needs). It is not the default: on a quiet machine passive waits cost
  6-60% on these encoders (docs/benchmarks.md, "Thread policy").
- **the warning**: a busy machine is named, with what was seen and what to do.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TextIO

from explorer.engine.backend import MeasureBackend
from explorer.engine.options import SweepOptions

__all__ = ["MachinePolicy", "machine_policy"]

CHECK_WINDOW_S = 1.0


@dataclass(frozen=True)
class MachinePolicy:
    """What the check saw and decided: settings to measure with and the worker's environment."""

    settings: Any
    load: Any = None  # explorer.measure.contention.MachineLoad, None when not checked
    environ: dict[str, str] = field(default_factory=dict)
    warning: str = ""

    def summary(self) -> str:
        if self.load is None:
            return "not checked"
        return ("busy: " if self.load.busy else "quiet: ") + self.load.describe()


def machine_policy(settings: Any, options: SweepOptions, backend: MeasureBackend,
                   check: Optional[Callable[..., Any]] = None, out: Optional[TextIO] = None) -> MachinePolicy:
    """Check the machine and choose threads and wait policy (see the module docstring).

    Nothing is checked with ``options.machine_check=False`` or a backend that measures nothing
    real (fakes in tests). ``check`` replaces :func:`check_machine` (tests inject a load).
    """
    if not options.machine_check or not backend.real_models or not hasattr(settings, "resolve_device"):
        return MachinePolicy(settings)
    import torch

    from explorer.measure.contention import busy_warning, check_machine

    device = settings.resolve_device()
    cuda = (device.index or 0) if device.type == "cuda" else None
    load = (check or check_machine)(window_s=CHECK_WINDOW_S, cuda_device=cuda)
    chosen = settings
    environ: dict[str, str] = {}
    if device.type == "cpu":
        free = load.free_cores()
        if settings.threads is None and free < torch.get_num_threads():
            chosen = settings.replace(threads=free)
        if settings.threads is not None and settings.threads > free:
            environ["OMP_WAIT_POLICY"] = "PASSIVE"
    warning = ""
    if load.busy:
        warning = busy_warning(load, chosen.threads if chosen is not settings else None, settings.threads)
        print(warning, file=out or sys.stderr, flush=True)
    return MachinePolicy(chosen, load, environ, warning)
