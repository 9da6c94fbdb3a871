"""The stability benchmark: one space with a known latency order, measured quiet, beside busy
neighbours, and quiet again, by the sweep engine itself (machine check, thread policy, rounds).

Reported (docs/benchmarks.md, "Stability"): order violations in each arm (pairs that the known
order says are faster-slower but were measured the other way: same encoder, knobs and resolution
no larger, see :func:`no_costlier`; any space of size knobs works, not only the shipped one), the loaded/quiet ratio of every
setting and their spread around the median ratio, and how far two quiet arms agree. Only the
encoders are timed (projector and prefill are counted, not timed): the benchmark is about the timer.
"""
from __future__ import annotations

import contextlib
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from explorer.engine.backend import MeasureBackend
from explorer.engine.options import SweepOptions
from explorer.measure.contention import load_average_text

__all__ = ["Setting", "setting_label", "no_costlier", "StabilityArm", "StabilityReport", "run_stability", "order_violations", "ratio_spread", "busy_neighbours",
           "sweep_beside"]

BUSY_LOOP = "while True:\n    pass\n"


def _untimed_projector(in_channels: int, hidden: int, tokens: int, settings: Any) -> Any:
    from explorer.measure.projector import measure_projector

    return measure_projector(in_channels, hidden, tokens, settings, time=False)


def _untimed_prefill(llm: str, tokens: int, settings: Any) -> Any:
    from explorer.measure.prefill import measure_prefill

    return measure_prefill(llm, tokens, settings, time=False, cross_check=False)


#: The real backend with only the encoders timed.
ENCODERS_ONLY = MeasureBackend(measure_projector=_untimed_projector, measure_prefill=_untimed_prefill)


#: One setting of the space: ``(encoder, ((knob, value), ...) sorted, resolution)``.
Setting = tuple[str, tuple[tuple[str, Any], ...], int]


def setting_label(key: Setting) -> str:
    """``fastvithd width_mult=0.5@256`` (knobs left out when the space has none)."""
    enc, knobs, res = key
    text = " ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in knobs)
    return f"{enc} {text}@{res}" if text else f"{enc}@{res}"


def no_costlier(a: Setting, b: Setting) -> bool:
    """The known order: same encoder and knob names, every numeric knob of ``a`` at most ``b``'s
    (others equal), resolution at most ``b``'s. Knobs that make a model bigger as they grow
    (width, depth, MLP ratio) and resolution all do; a space whose knob works the other way (a
    patch size) has no known order by this rule."""
    if a[0] != b[0] or [k for k, _ in a[1]] != [k for k, _ in b[1]] or a[2] > b[2]:
        return False
    for (_, va), (_, vb) in zip(a[1], b[1]):
        numeric = isinstance(va, (int, float)) and isinstance(vb, (int, float))
        if (numeric and va > vb) or (not numeric and va != vb):
            return False
    return True


def order_violations(latency: Mapping[Setting, float]) -> list[tuple[Setting, Setting]]:
    """Pairs ``(a, b)`` with ``a`` :func:`no_costlier` than ``b`` (and not equal) but
    ``latency[a] >= latency[b]``."""
    return [(a, b) for a, b in itertools.permutations(latency, 2)
            if a != b and no_costlier(a, b) and latency[a] >= latency[b]]


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
    latency_ms: dict[Setting, float]
    probe_units: dict[Setting, float]  # latency / reference probe, per setting
    probe_ms: float  # median probe time over the settings: how fast the machine was
    noisy: int
    contended: int
    other_cores: float  # median over the settings
    machine: str
    load_average: str
    elapsed_s: float
    violations: list[Any] = field(default_factory=list)
    p10_ms: dict[Setting, float] = field(default_factory=dict)  # lower decile of each setting's samples


@dataclass
class StabilityReport:
    arms: list[StabilityArm]
    command: str

    def arm(self, name: str) -> StabilityArm:
        return next(a for a in self.arms if a.name == name)

    def figures(self) -> dict[str, Any]:
        """Order violations, loaded/quiet ratio spread and quiet agreement, from the medians
        (``raw``), from the probe-normalised latencies (``probe``: sample / probe) and from the
        lower deciles of the samples (``p10``)."""
        out: dict[str, Any] = {"threads": {a.name: a.threads for a in self.arms},
                               "probe_ms": {a.name: a.probe_ms for a in self.arms}}
        for kind in ("raw", "probe", "p10"):
            values = {a.name: {"raw": a.latency_ms, "probe": a.probe_units, "p10": a.p10_ms}[kind] for a in self.arms}
            if not all(values.values()):
                continue
            q1 = values["quiet-1"]
            spread, ratios = ratio_spread(values["loaded"], q1)
            fig: dict[str, Any] = {"order_violations": {n: len(order_violations(v)) for n, v in values.items()},
                                   "loaded_over_quiet": {setting_label(k): round(x, 3) for k, x in sorted(ratios.items())},
                                   "ratio_spread": spread}
            if "quiet-2" in values:
                q2 = values["quiet-2"]
                fig["quiet_agreement_max"] = max(abs(q2[k] / q1[k] - 1) for k in q1 if k in q2)
            out[kind] = fig
        return out

    def markdown(self) -> str:
        fig = self.figures()
        keys = sorted(self.arms[0].latency_ms)
        lines = [f"Command: `{self.command}`", "",
                 "| arm | busy neighbours | threads | machine check | load average (after) | noisy | contended | "
                 "other cores (median) | probe ms (median) | elapsed |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for a in self.arms:
            lines.append(f"| {a.name} | {a.neighbours} | {a.threads} | {a.machine[:60]} | {a.load_average} | "
                         f"{a.noisy} | {a.contended} | {a.other_cores:.2f} | {a.probe_ms:.3f} | {a.elapsed_s:.0f} s |")
        names = [a.name for a in self.arms]
        lines += ["", "| setting | " + " | ".join(f"{n} ms" for n in names) + " | loaded/quiet-1 | "
                  + " | ".join(f"{n} probe units" for n in names) + " | loaded/quiet-1 (probe) |",
                  "| --- | " + " | ".join("---" for _ in names) + " | --- | " + " | ".join("---" for _ in names) + " | --- |"]
        for k in keys:
            label = setting_label(k)
            raw = fig.get("raw", {}).get("loaded_over_quiet", {}).get(label, float("nan"))
            pr = fig.get("probe", {}).get("loaded_over_quiet", {}).get(label, float("nan"))
            lines.append(f"| {label} | " + " | ".join(f"{a.latency_ms.get(k, float('nan')):.1f}" for a in self.arms)
                         + f" | {raw:.3f} | "
                         + " | ".join(f"{a.probe_units.get(k, float('nan')):.2f}" for a in self.arms) + f" | {pr:.3f} |")
        lines.append("")
        for kind, title in (("raw", "Medians"), ("probe", "Probe-normalised (sample / probe)"),
                            ("p10", "Lower deciles (p10)")):
            if kind not in fig:
                continue
            f = fig[kind]
            text = (f"{title}: order violations " + ", ".join(f"{n} {v}" for n, v in f["order_violations"].items())
                    + f"; loaded/quiet ratios within {100 * f['ratio_spread']:.1f}% of their median")
            if "quiet_agreement_max" in f:
                text += f"; two quiet arms agree within {100 * f['quiet_agreement_max']:.1f}%"
            lines.append(text + ".")
        return "\n".join(lines) + "\n"


def sweep_beside(space: Any, settings: Any, store: Any, neighbours: int,
                 backend: MeasureBackend) -> tuple[Any, str, float]:
    """One fresh sweep of ``space`` into ``store`` beside ``neighbours`` busy loops (0: quiet):
    its report, the load average as it ended (read before the loops stop) and its seconds."""
    from explorer.engine.sweep import run_sweep

    opts = SweepOptions(progress=False, resume=False)
    t0 = time.monotonic()
    with busy_neighbours(neighbours) if neighbours else contextlib.nullcontext():
        report = run_sweep(space, settings, store, opts, backend)
        load = load_average_text()
    return report, load, time.monotonic() - t0


def _arm(name: str, neighbours: int, space: Any, settings: Any, folder: Path, backend: MeasureBackend) -> StabilityArm:
    from explorer.data.store import Store

    store = Store(folder / name)
    report, load, elapsed = sweep_beside(space, settings, store, neighbours, backend)
    latency: dict[Setting, float] = {}
    units: dict[Setting, float] = {}
    p10: dict[Setting, float] = {}
    probes: list[float] = []
    noisy = contended = 0
    others = []
    for rec in store.measurements(kind="encoder", env_key=report.env_key):
        if rec.status != "ok":
            continue
        t = rec.payload["latency"]
        key: Setting = (str(rec.inputs["encoder"]), tuple(sorted(dict(rec.inputs["knobs"]).items())),
                        int(rec.inputs["resolution"]))
        latency[key] = float(t["median_ms"])
        p10[key] = float(t["p10_ms"])
        if t.get("probe_units") is not None:
            units[key] = float(t["probe_units"])
            probes.append(float(t["probe_ms"]))
        noisy += bool(t.get("noisy"))
        contended += bool(t.get("contended"))
        if t.get("other_cores") is not None:
            others.append(float(t["other_cores"]))
    threads = int(report.environment.get("threads") or 0)
    arm = StabilityArm(name=name, neighbours=neighbours, threads=threads, latency_ms=latency, probe_units=units,
                       probe_ms=statistics.median(probes) if probes else float("nan"), noisy=noisy,
                       contended=contended, other_cores=statistics.median(others) if others else float("nan"),
                       machine=report.machine, load_average=load, elapsed_s=elapsed, p10_ms=p10)
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
    return StabilityReport(arms=arms, command=command)
