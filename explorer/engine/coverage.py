"""The coverage benchmark (``explorer bench coverage=true``): do the re-measurement intervals hold?

One space is swept ``runs`` times, each run in a fresh store, quiet and (``neighbours`` > 0) beside
busy loops, the two conditions alternating so each condition's runs are minutes apart. For each
condition and level (:data:`explorer.intervals.LEVELS`), the share of the later runs' medians
that fall inside the first run's interval (:func:`explorer.intervals.remeasure_interval`, the
default drift: what a first sweep on a new machine prints), and the intervals' median relative
width. Reported in docs/benchmarks.md ("Coverage of the re-measurement intervals"). Like the
stability benchmark, only the encoders are timed by default.
"""
from __future__ import annotations

import datetime as _dt
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from explorer.checks import check_int, check_number
from explorer.engine.backend import MeasureBackend
from explorer.engine.stability import ENCODERS_ONLY, setting_label, sweep_beside
from explorer.intervals import LEVELS, Interval, remeasure_interval
from explorer.measure.contention import load_average_text

__all__ = ["CoverageOptions", "CoverageRun", "CoverageCell", "CoverageReport", "run_coverage", "sweep_run"]

#: Within this many points of the stated level counts as holding (the issue's target).
TOLERANCE_POINTS = 10.0


@dataclass(frozen=True)
class CoverageOptions:
    """``runs`` (>= 2) sweeps per condition; ``neighbours`` busy loops for the busy condition (0: quiet
    only); ``gap_s`` seconds of pause between runs; ``levels`` checked."""

    runs: int = 3
    neighbours: int = 1
    gap_s: float = 0.0
    levels: tuple[float, ...] = LEVELS

    def __post_init__(self) -> None:
        check_int("runs", self.runs, low=2, high=100)
        check_int("neighbours", self.neighbours, low=0, high=256)
        check_number("gap_s", self.gap_s, low=0.0, high=3600.0)
        levels = tuple(float(check_number("levels", v, low=0.0, high=1.0, low_open=True)) for v in self.levels)
        if not levels or any(v >= 1.0 for v in levels):
            raise ValueError(f"invalid levels={self.levels!r}: fractions in (0, 1)")
        object.__setattr__(self, "levels", levels)


@dataclass
class CoverageRun:
    """One sweep: its stored timings (dicts) by ``(kind, key)`` and what the machine was doing."""

    condition: str  # quiet | busy
    index: int  # 1-based within the condition
    timings: dict[tuple[str, str], Mapping[str, Any]]
    labels: dict[tuple[str, str], str] = field(default_factory=dict)
    threads: int = 0
    started: str = ""
    load_before: str = ""
    load_after: str = ""
    elapsed_s: float = 0.0
    machine: str = ""


@dataclass(frozen=True)
class CoverageCell:
    """Coverage at one level in one condition: ``covered`` of ``total`` later medians inside the first
    run's interval; ``median_width``: median of (high - low) / median over the first run's values."""

    condition: str
    level: float
    covered: int
    total: int
    median_width: float

    @property
    def share(self) -> float:
        return self.covered / self.total if self.total else float("nan")

    @property
    def holds(self) -> bool:
        """Within :data:`TOLERANCE_POINTS` of the stated level."""
        return self.total > 0 and abs(100 * (self.share - self.level)) <= TOLERANCE_POINTS


@dataclass
class CoverageReport:
    runs: list[CoverageRun]
    levels: tuple[float, ...] = LEVELS
    command: str = ""

    def conditions(self) -> list[str]:
        return list(dict.fromkeys(r.condition for r in self.runs))

    def runs_of(self, condition: str) -> list[CoverageRun]:
        return sorted((r for r in self.runs if r.condition == condition), key=lambda r: r.index)

    def intervals(self, condition: str, level: float) -> dict[tuple[str, str], Interval]:
        """The first run's interval of each value at ``level``."""
        first = self.runs_of(condition)[0]
        out = {}
        for k, t in first.timings.items():
            interval = remeasure_interval(t, level)
            if interval is not None:
                out[k] = interval
        return out

    def cell(self, condition: str, level: float) -> CoverageCell:
        runs = self.runs_of(condition)
        intervals = self.intervals(condition, level)
        covered = total = 0
        for later in runs[1:]:
            for k, interval in intervals.items():
                t = later.timings.get(k)
                if t is None or t.get("median_ms") is None:
                    continue
                total += 1
                covered += interval.contains(float(t["median_ms"]))
        first = runs[0].timings
        widths = [i.width / float(first[k]["median_ms"]) for k, i in intervals.items()]
        return CoverageCell(condition, level, covered, total, statistics.median(widths) if widths else float("nan"))

    def cells(self) -> list[CoverageCell]:
        return [self.cell(c, lv) for c in self.conditions() for lv in self.levels]

    def markdown(self) -> str:
        lines = [f"Command: `{self.command}`" if self.command else "", "",
                 "| run | condition | started (UTC) | threads | load average before -> after | elapsed | "
                 "machine check |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for n, r in enumerate(self.runs, 1):
            lines.append(f"| {n} | {r.condition}-{r.index} | {r.started} | {r.threads} | {r.load_before} -> "
                         f"{r.load_after} | {r.elapsed_s:.0f} s | {r.machine[:60]} |")
        lines += ["", "| condition | stated level | later medians inside the first run's interval | share | "
                  "within 10 points | median width (of the median) |", "| --- | --- | --- | --- | --- | --- |"]
        for c in self.cells():
            lines.append(f"| {c.condition} | {100 * c.level:g}% | {c.covered} / {c.total} | {100 * c.share:.1f}% | "
                         f"{'yes' if c.holds else 'NO'} | {100 * c.median_width:.1f}% |")
        for condition in self.conditions():
            runs = self.runs_of(condition)
            intervals = self.intervals(condition, 0.9)
            lines += ["", f"{condition}: the first run's 90% intervals and the later medians (ms; * = outside)", "",
                      "| value | first run median [90% interval] | " + " | ".join(f"run {r.index}" for r in runs[1:])
                      + " |", "| --- | --- | " + " | ".join("---" for _ in runs[1:]) + " |"]
            for k, interval in intervals.items():
                first = float(runs[0].timings[k]["median_ms"])
                cells = []
                for later in runs[1:]:
                    t = later.timings.get(k)
                    if t is None:
                        cells.append("-")
                        continue
                    m = float(t["median_ms"])
                    cells.append(f"{m:.1f}" + ("" if interval.contains(m) else " *"))
                label = runs[0].labels.get(k, f"{k[0]} {k[1][:8]}")
                lines.append(f"| {label} | {first:.1f} [{interval.low:.1f}-{interval.high:.1f}] | "
                             + " | ".join(cells) + " |")
        return "\n".join(lines).lstrip("\n") + "\n"


def sweep_run(space: Any, settings: Any, folder: Path,
              backend: MeasureBackend = ENCODERS_ONLY) -> Callable[..., CoverageRun]:
    """The default way to take one run: a real sweep (``run_sweep``: machine check, thread policy,
    interleaved rounds) of ``space`` into a fresh store under ``folder``, beside ``neighbours``
    busy loops; every ok timed measurement is kept."""
    from explorer.data.store import Store

    def run(condition: str, index: int, neighbours: int) -> CoverageRun:
        store = Store(folder / f"{condition}-{index}")
        started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        before = load_average_text()
        report, after, elapsed = sweep_beside(space, settings, store, neighbours, backend)
        timings: dict[tuple[str, str], Mapping[str, Any]] = {}
        labels: dict[tuple[str, str], str] = {}
        for rec in store.measurements(env_key=report.env_key):
            t = (rec.payload or {}).get("latency")
            if rec.status != "ok" or not isinstance(t, Mapping):
                continue
            timings[(rec.kind, rec.key)] = t
            inputs = rec.inputs or {}
            if rec.kind == "encoder" and {"encoder", "knobs", "resolution"} <= set(inputs):
                labels[(rec.kind, rec.key)] = setting_label((str(inputs["encoder"]), tuple(sorted(dict(
                    inputs["knobs"]).items())), int(inputs["resolution"])))
        store.close()
        return CoverageRun(condition=condition, index=index, timings=timings, labels=labels,
                           threads=int(report.environment.get("threads") or 0), started=started, load_before=before,
                           load_after=after, elapsed_s=elapsed, machine=report.machine)

    return run


def run_coverage(space: Any = "stability", settings: Any = None, options: CoverageOptions = CoverageOptions(),
                 command: str = "", measure_run: Optional[Callable[[str, int, int], CoverageRun]] = None,
                 folder: Optional[Path] = None, on_run: Optional[Callable[[CoverageRun], None]] = None,
                 sleep: Callable[[float], None] = time.sleep) -> CoverageReport:
    """Quiet and (``options.neighbours`` > 0) busy runs, alternating, ``options.runs`` of each.
    ``measure_run(condition, index, neighbours)`` takes one run (default: :func:`sweep_run`, real
    sweeps; tests pass fakes). Returns the report; writes nothing but the temporary stores."""
    conditions = [("quiet", 0)] + ([("busy", options.neighbours)] if options.neighbours else [])
    runs: list[CoverageRun] = []
    with tempfile.TemporaryDirectory(prefix="explorer-coverage-") as tmp:
        if measure_run is None:
            from explorer.engine.sweep.plan import default_settings, resolve_space

            space = resolve_space(space, ENCODERS_ONLY)
            if settings is None:
                settings = default_settings(space)
            measure_run = sweep_run(space, settings, Path(folder or tmp))
        for i in range(1, options.runs + 1):
            for condition, neighbours in conditions:
                if runs and options.gap_s:
                    sleep(options.gap_s)
                run = measure_run(condition, i, neighbours)
                runs.append(run)
                if on_run is not None:
                    on_run(run)
    return CoverageReport(runs=runs, levels=options.levels, command=command)
