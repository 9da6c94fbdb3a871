"""Peak memory of one measured forward pass.

Methods (the string is stored next to the number, so values from different methods are
never compared unknowingly):

- ``cuda:max_memory_allocated``: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``; covers every tensor torch's caching allocator holds on the device
  during the call (weights, inputs, activations, workspaces). Misses memory outside torch's
  allocator (CUDA context, cuBLAS/cuDNN handles) and allocator fragmentation (reserved, not
  allocated).
- ``cpu:profiler-alloc-peak+resident``: ``resident`` (bytes of weights, buffers and inputs,
  given by the caller) plus the peak of live bytes allocated through torch's CPU allocator
  during one extra untimed call, reconstructed from the allocation/free events that
  ``torch.profiler`` records with ``profile_memory=True`` (signed byte counts ordered by
  time). Exact for tensors, but it misses memory that libraries allocate outside c10's
  allocator (some oneDNN/MKL scratch buffers, thread stacks) and says nothing about the
  process's RSS (the allocator may keep freed pages). Cheaper RSS high-water marks
  (``getrusage``) were rejected: they only move when the whole process sets a new record.
- ``unavailable(<reason>)``: no method on this device (MPS has no peak counter); value None.
"""
from __future__ import annotations

import contextlib
import os
import sys

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from .settings import MeasureSettings, thread_scope
from .timing import gc_paused

CUDA_METHOD = "cuda:max_memory_allocated"
CPU_METHOD = "cpu:profiler-alloc-peak+resident"


@dataclass(frozen=True)
class MemoryPeak:
    peak_mb: Optional[float]
    method: str


def tensor_bytes(*objs: Any) -> int:
    """Bytes of the (distinct) storages behind tensors, modules' parameters/buffers, or sequences of them."""
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        if t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in seen:
            return
        seen.add(key)
        total += storage.nbytes()

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            add(obj)
        elif isinstance(obj, nn.Module):
            for t in obj.parameters():
                add(t)
            for t in obj.buffers():
                add(t)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    for obj in objs:
        walk(obj)
    return total


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence the profiler's native start/stop banners (they land on fd 2 over progress bars)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        sys.stderr.flush()
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_alloc_peak(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                         record_shapes=False) as prof:
        fn()
    events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
    # "[memory]" events carry signed byte counts (+alloc, -free); CPU-only profiling sees host memory only.
    deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure_peak_memory(fn: Callable[[], Any], settings: MeasureSettings, resident: Any = ()) -> MemoryPeak:
    """Peak memory (MiB) of one call of ``fn`` on the settings' device; see the module docstring.

    ``resident``: the tensors/modules already in memory that the call uses (model, inputs);
    counted on CPU, where the profiler only sees allocations made during the call.
    """
    settings.check_on_machine()
    device = settings.resolve_device()
    with thread_scope(settings), torch.inference_mode(), gc_paused():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            torch.cuda.synchronize(device)
            return MemoryPeak(torch.cuda.max_memory_allocated(device) / 2**20, CUDA_METHOD)
        if device.type == "cpu":
            try:
                peak = _cpu_alloc_peak(fn)
            except Exception as err:  # profiler missing from a build: say so, never guess
                return MemoryPeak(None, f"unavailable(cpu profiler: {type(err).__name__})")
            return MemoryPeak((tensor_bytes(resident) + peak) / 2**20, CPU_METHOD)
    return MemoryPeak(None, f"unavailable({device.type}: no peak-memory counter)")
