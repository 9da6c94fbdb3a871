"""What else uses the machine while we measure: other processes' CPU, hypervisor steal, clock, GPU.

Two uses (see docs/measurement.md, "Contention"):

- :func:`check_machine` looks for a fraction of a second before a sweep starts and says who is
  busy (:class:`MachineLoad`): the cores other processes keep busy, the busiest of them by name,
  the load average, steal time, the clock against its maximum where the OS tells it, and on a
  GPU its utilisation and the other processes holding it. :func:`free_cores` turns that into a
  thread count that does not fight the neighbours.
- :class:`ContentionMeter` accumulates, over the span from a callable's first sample to its last,
  the CPU time other processes used and the time the hypervisor stole; the result goes into that
  callable's :class:`~explorer.measure.costs.Timing` (``other_cores``, ``steal``, ``contended``).
  Spans shorter than :data:`MIN_SPAN_S` record nothing.

"Other processes" is the machine's busy CPU time (``/proc/stat``: user, nice, system, irq,
softirq) minus the CPU time of this process (all its threads). Both counters tick at 100 Hz on
Linux, so a span of 50 ms is uncertain by about 0.4 cores; spans of seconds are good to a few
hundredths of a core.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

#: A timing is *contended* when other processes kept at least this many logical cores busy on
#: average while its samples were taken, or the hypervisor stole at least STEAL_FRACTION of the time.
CONTENDED_CORES = 0.25
STEAL_FRACTION = 0.05
#: A machine is called *busy* at a sweep's start from this many cores of other processes.
BUSY_CORES = 0.5
#: The counters tick at 100 Hz: a timing whose samples span less than this carries no record
#: (one stray tick of another process would read as a quarter of a core).
MIN_SPAN_S = 0.4


@dataclass(frozen=True)
class CpuCounters:
    """One reading of the cumulative CPU counters (seconds) and the monotonic clock."""

    wall_s: float
    busy_s: float  # all CPUs: user + nice + system + irq + softirq
    steal_s: float  # all CPUs: time the hypervisor ran something else
    total_s: float  # all CPUs, every state
    own_s: float  # this process, all threads: user + system


def read_cpu_counters() -> CpuCounters:
    """The counters now (psutil: ``/proc/stat`` and ``/proc/self/stat`` on Linux)."""
    import psutil

    t = psutil.cpu_times()
    own = psutil.Process().cpu_times()
    busy = t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    steal = getattr(t, "steal", 0.0)
    total = sum(t)
    if hasattr(t, "guest"):  # Linux counts guest time inside user already
        total -= t.guest + getattr(t, "guest_nice", 0.0)
    return CpuCounters(wall_s=time.monotonic(), busy_s=busy, steal_s=steal, total_s=total,
                       own_s=own.user + own.system)


def other_cores_between(before: CpuCounters, after: CpuCounters) -> tuple[float, float]:
    """``(other processes' cores, steal fraction)`` between two readings (both clipped at 0)."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return 0.0, 0.0
    other = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    total = after.total_s - before.total_s
    steal = (after.steal_s - before.steal_s) / total if total > 0 else 0.0
    return max(0.0, other / wall), max(0.0, steal)


def is_contended(other_cores: Optional[float], steal: Optional[float]) -> bool:
    """The documented thresholds (:data:`CONTENDED_CORES`, :data:`STEAL_FRACTION`)."""
    return bool((other_cores or 0.0) >= CONTENDED_CORES or (steal or 0.0) >= STEAL_FRACTION)


class ContentionMeter:
    """Sums other processes' CPU time and steal over the windows passed to :meth:`window`.

    ``read`` is injectable (tests give fixed counters); a failed read (no ``/proc``, no psutil)
    turns the meter off and the timing records ``None``.
    """

    def __init__(self, read: Callable[[], CpuCounters] = read_cpu_counters, min_span_s: float = MIN_SPAN_S) -> None:
        self._read = read
        self.min_span_s = min_span_s
        self.wall_s = 0.0
        self.other_s = 0.0
        self.steal_s = 0.0
        self.total_s = 0.0
        self.ok = True
        self._start: Optional[CpuCounters] = None

    def start(self) -> None:
        if not self.ok:
            return
        try:
            self._start = self._read()
        except Exception:  # noqa: BLE001 - the counters are optional
            self.ok = False

    def stop(self) -> None:
        if not self.ok or self._start is None:
            return
        try:
            end = self._read()
        except Exception:  # noqa: BLE001
            self.ok = False
            return
        b = self._start
        self._start = None
        self.wall_s += end.wall_s - b.wall_s
        self.other_s += (end.busy_s - b.busy_s) - (end.own_s - b.own_s)
        self.steal_s += end.steal_s - b.steal_s
        self.total_s += end.total_s - b.total_s

    @property
    def other_cores(self) -> Optional[float]:
        if not self.ok or self.wall_s < self.min_span_s or self.wall_s <= 0:
            return None
        return max(0.0, self.other_s / self.wall_s)

    @property
    def steal(self) -> Optional[float]:
        if not self.ok or self.wall_s < self.min_span_s or self.total_s <= 0:
            return None
        return max(0.0, self.steal_s / self.total_s)

    @property
    def contended(self) -> bool:
        return is_contended(self.other_cores, self.steal)


@dataclass(frozen=True)
class BusyProcess:
    pid: int
    name: str
    cores: float  # logical cores it used during the check


@dataclass(frozen=True)
class MachineLoad:
    """What :func:`check_machine` saw."""

    cores: int  # logical cores this process may use
    other_cores: float  # cores other processes kept busy meanwhile
    steal: float
    load_average: Optional[tuple[float, float, float]]
    busiest: tuple[BusyProcess, ...] = ()
    clock_ratio: Optional[float] = None  # current / maximum CPU clock, where readable
    gpu_utilisation: Optional[float] = None  # percent, CUDA only, where NVML is readable
    gpu_other_processes: tuple[int, ...] = ()  # pids of other processes on the GPU
    gpu_note: str = ""
    window_s: float = 0.0

    @property
    def busy(self) -> bool:
        """Other processes use at least :data:`BUSY_CORES`, steal or a busy GPU is seen."""
        return (self.other_cores >= BUSY_CORES or self.steal >= STEAL_FRACTION
                or bool(self.gpu_other_processes) or (self.gpu_utilisation or 0.0) >= 10.0)

    def free_cores(self) -> int:
        """Cores left once other processes' use is rounded to whole cores (at least 1)."""
        return free_cores(self.cores, self.other_cores)

    def describe(self) -> str:
        """One paragraph: what was seen."""
        parts = [f"other processes kept {self.other_cores:.2f} of {self.cores} cores busy over "
                 f"{self.window_s:.1f} s"]
        if self.busiest:
            parts.append("busiest: " + ", ".join(f"{p.name} (pid {p.pid}, {p.cores:.2f} cores)"
                                                 for p in self.busiest))
        if self.load_average is not None:
            parts.append("load average " + " ".join(f"{v:.2f}" for v in self.load_average))
        if self.steal >= 0.005:
            parts.append(f"hypervisor steal {100 * self.steal:.0f}%")
        if self.clock_ratio is not None and self.clock_ratio < 0.9:
            parts.append(f"CPU clock at {100 * self.clock_ratio:.0f}% of its maximum")
        if self.gpu_utilisation is not None:
            parts.append(f"GPU utilisation {self.gpu_utilisation:.0f}%")
        if self.gpu_other_processes:
            parts.append("other processes on the GPU: " + ", ".join(map(str, self.gpu_other_processes)))
        if self.gpu_note:
            parts.append(self.gpu_note)
        return "; ".join(parts)


def load_average_text() -> str:
    """The 1, 5 and 15 minute load averages as text ("0.52 0.61 0.70"), or "unknown" where the OS has none."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        return "unknown"


def free_cores(cores: int, other_cores: float) -> int:
    """``cores`` minus other processes' use rounded to the nearest whole core, at least 1."""
    return max(1, int(cores) - int(math.floor(max(0.0, other_cores) + 0.5)))


def _process_times() -> dict[int, tuple[str, float]]:
    import psutil

    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["pid", "name", "cpu_times"]):
        info = proc.info
        times = info.get("cpu_times")
        if times is None:
            continue
        out[int(info["pid"])] = (str(info.get("name") or "?"), float(times.user + times.system))
    return out


def _own_family() -> set[int]:
    import psutil

    me = psutil.Process()
    pids = {me.pid}  # our children are named: a busy child is a neighbour like any other
    try:
        parent = me.parent()
        if parent is not None:  # the shell or pytest that started us is not a neighbour to report
            pids.add(parent.pid)
    except psutil.Error:
        pass
    return pids


def _clock_ratio() -> Optional[float]:
    import psutil

    try:
        freq = psutil.cpu_freq()
    except Exception:  # noqa: BLE001 - not readable in many VMs
        return None
    if freq is None or not freq.max or freq.max <= 0:
        return None
    return float(freq.current) / float(freq.max)


def _gpu_state(device_index: int) -> tuple[Optional[float], tuple[int, ...], str]:
    """(utilisation %, other pids, note) of one CUDA device through NVML (``nvidia-ml-py``)."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None, (), "GPU use by others not readable (pip install 'explorer[gpu]' for NVML)"
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            util = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            procs = list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
            procs += list(pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle))
            me = os.getpid()
            others = tuple(sorted({int(p.pid) for p in procs if int(p.pid) != me}))
            return util, others, ""
        finally:
            pynvml.nvmlShutdown()
    except Exception as err:  # noqa: BLE001 - NVML missing on the host, permissions
        return None, (), f"GPU use by others not readable ({type(err).__name__}: {err})"


def check_machine(window_s: float = 0.5, cores: Optional[int] = None, cuda_device: Optional[int] = None,
                  sleep: Callable[[float], None] = time.sleep) -> MachineLoad:
    """Watch the machine for ``window_s`` seconds (this process idle) and say who is busy.

    ``cuda_device``: also read that GPU's utilisation and processes (NVML). Takes ``window_s``
    plus a few milliseconds per hundred processes.
    """
    from .settings import usable_cores

    n = int(cores) if cores is not None else usable_cores()
    before = read_cpu_counters()
    procs_before = _process_times()
    sleep(window_s)
    after = read_cpu_counters()
    procs_after = _process_times()
    other, steal = other_cores_between(before, after)
    wall = max(after.wall_s - before.wall_s, 1e-9)
    family = _own_family()
    busiest = []
    for pid, (name, t1) in procs_after.items():
        if pid in family or pid not in procs_before:
            continue
        used = (t1 - procs_before[pid][1]) / wall
        if used >= 0.05:
            busiest.append(BusyProcess(pid=pid, name=name, cores=used))
    busiest.sort(key=lambda p: -p.cores)
    try:
        load: Optional[tuple[float, float, float]] = os.getloadavg()
    except (AttributeError, OSError):
        load = None
    util, gpu_others, note = (None, (), "")
    if cuda_device is not None:
        util, gpu_others, note = _gpu_state(cuda_device)
    return MachineLoad(cores=n, other_cores=other, steal=steal, load_average=load, busiest=tuple(busiest[:3]),
                       clock_ratio=_clock_ratio(), gpu_utilisation=util, gpu_other_processes=gpu_others,
                       gpu_note=note, window_s=wall)


def busy_warning(load: MachineLoad, threads_chosen: Optional[int], threads_set: Optional[int]) -> str:
    """The warning a sweep prints when :attr:`MachineLoad.busy`: what was seen and what to do."""
    lines = [f"warning: this machine is busy: {load.describe()}."]
    if threads_set is None and threads_chosen is not None and threads_chosen < load.cores:
        lines.append(f"  Measuring with {threads_chosen} thread(s), the cores left free (the environment records "
                     f"threads={threads_chosen}; its values are not comparable with {load.cores}-thread ones).")
    elif threads_set is not None and threads_set > load.free_cores():
        lines.append(f"  measure.threads={threads_set} is more than the {load.free_cores()} core(s) left free: "
                     "expect inflated, uneven latencies (OpenMP waits are set passive to limit the damage).")
    lines.append("  Values taken under contention are flagged (`!` in the summary, `contended` in the results); "
                 "stop the other work and re-measure them with `sweep.remeasure=contended`.")
    return "\n".join(lines)
