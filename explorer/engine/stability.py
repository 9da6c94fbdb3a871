"""The stability benchmark: one space with a known latency order, measured quiet, beside busy
neighbours, and quiet again, by the sweep engine itself (machine check, thread policy, rounds).

Reported (docs/benchmarks.md, "Stability"): order violations in each arm (pairs that the space's
order says are faster-slower but were measured the other way), the loaded/quiet ratio of every
setting and their spread around the median ratio, and how far two quiet arms agree. Only the
encoders are timed (projector and prefill are counted, not timed): the benchmark is about the timer.
"""
from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from explorer.engine.backend import MeasureBackend
from explorer.engine.options import SweepOptions

__all__ = ["StabilityArm", "StabilityReport", "run_stability", "order_violations", "ratio_spread", "busy_neighbours"]

BUSY_LOOP = "while True:\n    pass\n"


def _untimed_projector(in_channels: int, hidden: int, tokens: int, settings: Any) -> Any:
    from explorer.measure.projector import measure_projector

    return measure_projector(in_channels, hidden, tokens, settings, time=False)


def _untimed_prefill(llm: str, tokens: int, settings: Any) -> Any:
    from explorer.measure.prefill import measure_prefill

    return measure_prefill(llm, tokens, settings, time=False, cross_check=False)


#: The real backend with only the encoders timed.
ENCODERS_ONLY = MeasureBackend(measure_projector=_untimed_projector, measure_prefill=_untimed_prefill)


def order_violations(latency: Mapping[tuple[float, int], float]) -> list[tuple[tuple[float, int], tuple[float, int]]]:
    """Pairs ``(a, b)`` of ``(width, resolution)`` settings with ``a`` no wider and no larger than
    ``b`` (and not equal) but ``latency[a] >= latency[b]``."""
    bad = []
    for a, b in itertools.permutations(latency, 2):
        if a[0] <= b[0] and a[1] <= b[1] and a != b and latency[a] >= latency[b]:
            bad.append((a, b))
    return bad


def ratio_spread(numerator: Mapping[Any, float], denominator: Mapping[Any, float]) -> tuple[float, dict[Any, float]]:
    """``(largest |ratio / median ratio - 1|, ratios)`` over the keys both have."""
    ratios = {k: numerator[k] / denominator[k] for k in numerator if k in denominator and denominator[k] > 0}
    if not ratios:
        return float("nan"), {}
    med = statistics.median(ratios.values())
    return max(abs(r / med - 1) for r in ratios.values()), ratios


class busy_neighbours:
    """Context manager: ``n`` busy-loop Python processes, started and killed around the block."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> "busy_neighbours":
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(self.n)]
        time.sleep(0.5)  # running before the sweep looks at the machine
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait(10)


@dataclass
class StabilityArm:
    name: str  # quiet-1, loaded, quiet-2
    neighbours: int
    threads: int
    latency_ms: dict[tuple[float, int], float]
    noisy: int
    contended: int
    other_cores: float  # median over the settings
    machine: str
    load_average: str
    elapsed_s: float
    violations: list[Any] = field(default_factory=list)


@dataclass
class StabilityReport:
    arms: list[StabilityArm]
    command: str
    threads_setting: Optional[int]

    def arm(self, name: str) -> StabilityArm:
        return next(a for a in self.arms if a.name == name)

    def figures(self) -> dict[str, Any]:
        q1, loaded = self.arm("quiet-1"), self.arm("loaded")
        spread, ratios = ratio_spread(loaded.latency_ms, q1.latency_ms)
        out: dict[str, Any] = {"order_violations": {a.name: len(a.violations) for a in self.arms},
                               "loaded_over_quiet": {f"{w:g}@{r}": round(v, 3) for (w, r), v in sorted(ratios.items())},
                               "ratio_spread": spread,
                               "threads": {a.name: a.threads for a in self.arms}}
        if any(a.name == "quiet-2" for a in self.arms):
            agree, _ = ratio_spread(self.arm("quiet-2").latency_ms, q1.latency_ms)
            diffs = [abs(self.arm("quiet-2").latency_ms[k] / q1.latency_ms[k] - 1) for k in q1.latency_ms
                     if k in self.arm("quiet-2").latency_ms]
            out["quiet_agreement_max"] = max(diffs) if diffs else float("nan")
        return out

    def markdown(self) -> str:
        fig = self.figures()
        keys = sorted(self.arms[0].latency_ms)
        lines = [f"Command: `{self.command}`", "",
                 "| arm | busy neighbours | threads | machine check | load average (after) | noisy | contended | "
                 "other cores (median) | order violations | elapsed |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for a in self.arms:
            lines.append(f"| {a.name} | {a.neighbours} | {a.threads} | {a.machine[:60]} | {a.load_average} | "
                         f"{a.noisy} | {a.contended} | {a.other_cores:.2f} | {len(a.violations)} | {a.elapsed_s:.0f} s |")
        lines += ["", "| width@resolution | " + " | ".join(f"{a.name} ms" for a in self.arms) + " | loaded/quiet-1 |",
                  "| --- | " + " | ".join("---" for _ in self.arms) + " | --- |"]
        for k in keys:
            ratio = fig["loaded_over_quiet"].get(f"{k[0]:g}@{k[1]}", float("nan"))
            lines.append(f"| {k[0]:g}@{k[1]} | " + " | ".join(f"{a.latency_ms.get(k, float('nan')):.1f}" for a in self.arms)
                         + f" | {ratio:.3f} |")
        lines += ["", f"Loaded/quiet ratios: spread around their median {100 * fig['ratio_spread']:.1f}% "
                      f"(largest |ratio/median - 1|)."]
        if "quiet_agreement_max" in fig:
            lines.append(f"Two quiet arms: largest |quiet-2/quiet-1 - 1| = {100 * fig['quiet_agreement_max']:.1f}%.")
        return "\n".join(lines) + "\n"


def _arm(name: str, neighbours: int, space: Any, settings: Any, folder: Path, backend: MeasureBackend) -> StabilityArm:
    from explorer.data import results
    from explorer.data.store import Store
    from explorer.engine.sweep import run_sweep

    store = Store(folder / name)
    opts = SweepOptions(progress=False, resume=False)
    t0 = time.monotonic()
    if neighbours:
        with busy_neighbours(neighbours):
            report = run_sweep(space, settings, store, opts, backend)
            load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    else:
        report = run_sweep(space, settings, store, opts, backend)
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    elapsed = time.monotonic() - t0
    latency: dict[tuple[float, int], float] = {}
    noisy = contended = 0
    others = []
    for rec in store.measurements(kind="encoder", env_key=report.env_key):
        if rec.status != "ok":
            continue
        t = rec.payload["latency"]
        width = float(rec.inputs["knobs"].get("width_mult", 1.0))
        latency[(width, int(rec.inputs["resolution"]))] = float(t["median_ms"])
        noisy += bool(t.get("noisy"))
        contended += bool(t.get("contended"))
        if t.get("other_cores") is not None:
            others.append(float(t["other_cores"]))
    threads = int(report.environment.get("threads") or 0)
    arm = StabilityArm(name=name, neighbours=neighbours, threads=threads, latency_ms=latency, noisy=noisy,
                       contended=contended, other_cores=statistics.median(others) if others else float("nan"),
                       machine=report.machine, load_average=load, elapsed_s=elapsed)
    arm.violations = order_violations(latency)
    return arm


def run_stability(space: Any = "stability", settings: Any = None, neighbours: int = 1, quiet_again: bool = True,
                  folder: Optional[Path] = None, command: str = "",
                  on_arm: Optional[Callable[[StabilityArm], None]] = None) -> StabilityReport:
    """Quiet, beside ``neighbours`` busy loops, and (``quiet_again``) quiet once more, in one run."""
    from explorer.engine.sweep.plan import default_settings, resolve_space

    space = resolve_space(space, ENCODERS_ONLY)
    if settings is None:
        settings = default_settings(space)
    arms = []
    with tempfile.TemporaryDirectory(prefix="explorer-stability-") as tmp:
        base = Path(folder or tmp)
        plan = [("quiet-1", 0), ("loaded", neighbours)] + ([("quiet-2", 0)] if quiet_again else [])
        for name, n in plan:
            arm = _arm(name, n, space, settings, base, ENCODERS_ONLY)
            arms.append(arm)
            if on_arm is not None:
                on_arm(arm)
    return StabilityReport(arms=arms, command=command, threads_setting=getattr(settings, "threads", None))


def figures_json(report: StabilityReport) -> str:
    return json.dumps(report.figures(), indent=2, sort_keys=True)
