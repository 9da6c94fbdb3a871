"""One timer for every device, with a stopping rule based on the median's confidence interval.

Protocol (see docs/measurement.md, "Measurement conventions"):

1. Threads set (CPU), eval mode, ``torch.inference_mode``, garbage collector disabled
   (collected once before, re-enabled afterwards even on error).
2. Warm-up until BOTH ``warmup_iters`` calls and ``warmup_s`` seconds are done (first calls pay
   for allocator growth, oneDNN/cuDNN kernel selection, lazy init, compilation).
3. Timed samples until the 95% confidence interval of the median lies within
   ``+-target_rel_ci`` of the median (and at least ``min_iters`` samples), or until
   ``max_iters`` samples / ``max_time_s`` seconds, in which case ``noisy=True``.

The CI of the median is distribution-free (order statistics): with ``n`` sorted samples
``x(1) <= ... <= x(n)``, the number of samples below the true median is Binomial(n, 1/2), so
``[x(l), x(n-l+1)]`` covers the median with probability ``1 - 2 P(B <= l-1)``. We take the
largest ``l`` for which that is >= 95%. Below 6 samples no such ``l`` exists; the interval
is then ``[min, max]`` and cannot satisfy the stopping rule.

Devices: CPU uses ``time.perf_counter_ns`` around each call; CUDA records events around each
call and synchronises on the end event (the sample is GPU time of the call's stream work);
MPS synchronises before and after each call and uses ``perf_counter_ns``. Calls shorter than
1 ms are repeated inside one sample so the timer's resolution and overhead stay negligible.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import statistics
import threading
import time
from fractions import Fraction
from functools import lru_cache
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from explorer.intervals import LEVEL, remeasure_interval

from .contention import ContentionMeter, CpuCounters
from .costs import Timing
from .interleave import current_round
from .probe import PROBE_EVERY_MS, reference_probe
from .settings import MeasureSettings, thread_scope

CONFIDENCE = 0.95
#: Sample counts up to which the median's CI ranks are exact binomial arithmetic (beyond: normal approximation).
_EXACT_RANKS_UP_TO = 2000
_MIN_SAMPLE_S = 1e-3  # calls shorter than this are repeated inside one sample
_MAX_INNER_REPS = 1000


@lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> Optional[tuple[int, int]]:
    """1-based ranks ``(l, n-l+1)`` of the order-statistic CI of the median, or None if n is too small.

    Exact binomial arithmetic on integers: ``P(B <= k) = sum_{i<=k} C(n, i) / 2**n``.
    """
    if n < 1:
        raise ValueError(f"invalid n={n!r}: at least one sample")
    if n > _EXACT_RANKS_UP_TO:
        # the binomial (n, 1/2) by its normal approximation with continuity correction: the largest
        # l with P(B <= l - 1) <= alpha / 2 is floor((n + 1 - z sqrt(n)) / 2) (within one rank of the
        # exact answer at these n, checked in tests)
        z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)
        best_l = max(1, math.floor((n + 1 - z * math.sqrt(n)) / 2))
        return best_l, n - best_l + 1
    alpha_half = Fraction(1.0 - confidence) / 2  # exact rational: 2**n overflows a float from n = 1024
    total = 1 << n
    best: Optional[int] = None
    cdf = 0  # sum_{i <= l-1} C(n, i), for l = 1, 2, ...
    term = 1  # C(n, l - 1), updated exactly
    for l in range(1, n // 2 + 1):
        cdf += term
        term = term * (n - l + 1) // l
        if cdf <= alpha_half * total:
            best = l
        else:
            break
    if best is None:
        return None
    return best, n - best + 1


def median_ci(sorted_samples: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, bool]:
    """``(low, high, exact)``: the order-statistic CI of the median; ``exact`` False when n < 6."""
    ranks = median_ci_ranks(len(sorted_samples), confidence)
    if ranks is None:
        return sorted_samples[0], sorted_samples[-1], False
    lo, hi = ranks
    return sorted_samples[lo - 1], sorted_samples[hi - 1], True


def percentile(sorted_samples: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), ``q`` in [0, 100]."""
    if not sorted_samples:
        raise ValueError("percentile of no samples")
    pos = (len(sorted_samples) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    frac = pos - lo
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * frac


def summarize(samples_ms: list[float], noisy: bool, meter: Optional[ContentionMeter] = None,
              probes_ms: Optional[list[float]] = None) -> Timing:
    """Timing statistics of raw samples (milliseconds), with the contention ``meter`` saw and, when
    given, the probe time beside each sample (``probes_ms[i]`` for ``samples_ms[i]``)."""
    xs = sorted(samples_ms)
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    lo, hi, _ = median_ci(xs)
    other = meter.other_cores if meter is not None else None
    steal = meter.steal if meter is not None else None
    probes = sorted(probes_ms) if probes_ms else None
    timing = Timing(
        median_ms=statistics.median(xs),
        p10_ms=percentile(xs, 10),
        p90_ms=percentile(xs, 90),
        mean_ms=mean,
        cv=std / mean if mean > 0 else 0.0,
        n=len(xs),
        ci_low_ms=lo,
        ci_high_ms=hi,
        noisy=noisy,
        other_cores=None if other is None else round(other, 4),
        steal=None if steal is None else round(steal, 4),
        contended=bool(meter is not None and meter.contended),
        probe_ms=statistics.median(probes_ms) if probes_ms else None,
        probe_units=statistics.median(v / p for v, p in zip(samples_ms, probes_ms)) if probes_ms else None,
        probe_p10_ms=percentile(probes, 10) if probes else None,
        probe_p90_ms=percentile(probes, 90) if probes else None,
    )
    return with_remeasure_interval(timing)


def with_remeasure_interval(timing: Timing, level: float = LEVEL) -> Timing:
    """``timing`` with the re-measurement interval at ``level`` (default drift) stored in it."""
    interval = remeasure_interval(timing, level, stored=False)
    if interval is None:
        return timing
    return dataclasses.replace(timing, remeasure_low_ms=interval.low, remeasure_high_ms=interval.high,
                               remeasure_level=level)


def converged(samples_ms: list[float], target_rel_ci: float) -> bool:
    """True when the median's 95% CI lies within +-target_rel_ci of the median."""
    xs = sorted(samples_ms)
    lo, hi, exact = median_ci(xs)
    if not exact:
        return False
    med = statistics.median(xs)
    return med - lo <= target_rel_ci * med and hi - med <= target_rel_ci * med


_GC_LOCK = threading.Lock()
_GC_DEPTH = [0, False]  # [timings in progress, was the collector enabled before the first]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Collect once, then keep the collector off; always restore its previous state.

    Nested and overlapping uses (interleaved timings, each open across its turns) share one
    pause: the first collects and disables, the last restores.
    """
    with _GC_LOCK:
        if _GC_DEPTH[0] == 0:
            _GC_DEPTH[1] = gc.isenabled()
            gc.collect()
            gc.disable()
        _GC_DEPTH[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_DEPTH[0] -= 1
            if _GC_DEPTH[0] == 0 and _GC_DEPTH[1]:
                gc.enable()


@contextlib.contextmanager
def eval_mode(module: Optional[nn.Module]) -> Iterator[None]:
    """Put ``module`` in eval mode for the measurement and restore its training flags after."""
    if module is None:
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class _Sampler:
    """Times ``reps`` back-to-back calls of ``fn`` on one device; returns ms per call."""

    def __init__(self, fn: Callable[[], Any], device: torch.device,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.fn = fn
        self.device = device
        self.clock = clock
        if device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def __call__(self, reps: int = 1) -> float:
        fn = self.fn
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            self._start.record(stream)
            for _ in range(reps):
                fn()
            self._end.record(stream)
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / reps
        if self.device.type == "mps":
            torch.mps.synchronize()
            t0 = self.clock()
            for _ in range(reps):
                fn()
            torch.mps.synchronize()
            return (self.clock() - t0) / 1e6 / reps
        t0 = self.clock()
        for _ in range(reps):
            fn()
        return (self.clock() - t0) / 1e6 / reps


def time_callable(fn: Callable[[], Any], settings: MeasureSettings,
                  module: Optional[nn.Module] = None,
                  counters: Optional[Callable[[], CpuCounters]] = None,
                  clock: Optional[Callable[[], int]] = None,
                  probe: Optional[Callable[[], Any]] = None) -> Timing:
    """Latency statistics of ``fn()`` under ``settings``' protocol (see the module docstring).

    ``fn`` takes no arguments and does all the work of one measured call (inputs prepared
    outside it). ``module``, when given (or when ``fn`` is itself a module), is put in eval
    mode for the measurement. Under :func:`~explorer.measure.interleave.run_interleaved` control
    goes back to the round after each turn; the time cap counts this callable's own samples only. ``counters`` reads the CPU counters
    for the contention record (default: :func:`~explorer.measure.contention.read_cpu_counters`);
    ``clock`` (nanoseconds, default ``time.perf_counter_ns``) times CPU calls and the caps (tests
    inject a fake clock that the fake call advances); ``probe`` replaces the reference probe
    (:mod:`.probe`) timed beside the samples when ``settings.probe`` is on.
    """
    settings.check_on_machine()
    device = settings.resolve_device()
    if module is None and isinstance(fn, nn.Module):
        module = fn
    tick = clock or time.perf_counter_ns
    sampler = _Sampler(fn, device, tick)

    def now() -> float:
        return tick() / 1e9

    rnd = current_round()
    meter = ContentionMeter(counters) if counters is not None else ContentionMeter()
    threads = int(settings.threads) if settings.threads is not None and device.type == "cpu" else None
    if rnd is None:
        def call(reps: int) -> float:
            return sampler(reps)
    else:
        def call(reps: int) -> float:
            return _in_round(rnd, threads, lambda: sampler(reps))
    with contextlib.ExitStack() as stack:
        if rnd is None:
            stack.enter_context(thread_scope(settings))
            stack.enter_context(torch.inference_mode())
        stack.enter_context(eval_mode(module))
        stack.enter_context(gc_paused())
        synchronize(device)
        # Warm-up: by count AND by time.
        start = now()
        done = 0
        last_ms: Optional[float] = None
        while done < settings.warmup_iters or now() - start < settings.warmup_s:
            last_ms = call(1)
            done += 1
        if last_ms is None:  # no warm-up requested: one untimed calibration call is still needed
            last_ms = call(1)
        reps = 1
        if last_ms < _MIN_SAMPLE_S * 1e3:
            reps = min(_MAX_INNER_REPS, max(1, math.ceil(_MIN_SAMPLE_S * 1e3 / max(last_ms, 1e-6))))
        probe_call = _probe_caller(settings, device, rnd, threads, probe, tick)
        probe_every = max(1, math.ceil(PROBE_EVERY_MS / max(last_ms * reps, 1e-6)))
        probes: list[float] = []
        probe_ms = 0.0
        # Timed samples.
        samples: list[float] = []
        sampling_s = 0.0  # this callable's own sampling time (the cap), whatever else ran between turns
        turn_s = 0.0
        ok = False
        ride_along = rnd is not None and settings.window == "group"
        meter.start()  # one span from the first sample to the last (other tasks' turns are ours)
        while True:
            if probe_call is not None and len(samples) % probe_every == 0:
                probe_ms = probe_call()
            t0 = now()
            samples.append(call(reps))
            if probe_call is not None:
                probes.append(probe_ms)
            spent = now() - t0
            sampling_s += spent
            turn_s += spent
            n = len(samples)
            if n >= settings.min_iters and converged(samples, settings.target_rel_ci):
                ok = True
                if not (ride_along and rnd.others_unsettled()):
                    break
                rnd.settle()  # measure.window=group: keep sampling while the group is timing
            # The time cap (this callable's own sampling time) ends the protocol only once
            # min_iters samples exist; max_iters always does.
            if n >= settings.max_iters or (n >= settings.min_iters and sampling_s >= settings.max_time_s):
                break
            if rnd is not None and turn_s >= rnd.turn_s:
                rnd.end_turn()
                turn_s = 0.0
    meter.stop()
    if ride_along and ok:  # judged on every sample, the ones taken riding along included
        ok = converged(samples, settings.target_rel_ci)
    return summarize(samples, noisy=not ok, meter=meter, probes_ms=probes or None)


def _in_round(rnd: Any, threads: Optional[int], fn: Callable[[], float]) -> float:
    """One timed call under a round. Other tasks ran since the last turn: set this one's thread
    count again, and enter inference mode around the call itself (``Round.call``; a context left
    open across turns would be closed by whichever task ends first)."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return float(rnd.call(fn))


def _probe_caller(settings: MeasureSettings, device: torch.device, rnd: Any, threads: Optional[int],
                  fn: Optional[Callable[[], Any]], clock: Callable[[], int]) -> Optional[Callable[[], float]]:
    """One timed call of the reference probe (ms), with the measurement's threads; None when off."""
    if not getattr(settings, "probe", False) or device.type not in ("cpu", "cuda"):
        return None
    probe = _Sampler(fn if fn is not None else reference_probe(device), device, clock)

    def run() -> float:
        return probe(1) if rnd is None else _in_round(rnd, threads, lambda: probe(1))

    run()  # built and warm before the first sample, the way the samples will call it
    return run
