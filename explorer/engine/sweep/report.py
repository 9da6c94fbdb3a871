"""What a sweep did: counts, failures and the closing summary table."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from explorer.data.store import Store
from explorer.engine.sweep.estimate import format_duration

__all__ = ["SweepReport"]


@dataclass
class SweepReport:
    """What a sweep did (the CLI prints it; notebooks can inspect it)."""

    space: str
    store_url: str
    env_key: str
    environment: dict[str, Any]
    n_points: int
    unique: dict[str, int]  # unique measurements per factor
    measured: dict[str, int]  # measured in this run, per factor
    skipped: int  # already stored for this environment
    failures: list[dict[str, Any]] = field(default_factory=list)  # kind, key, label, status, error
    interrupted: bool = False
    elapsed_s: float = 0.0
    remaining: int = 0  # measurements still missing when the run stopped
    store_error: Optional[str] = None  # why the store stopped taking measurements (disk full, database gone)
    machine: str = "not checked"  # what the machine check saw before measuring (explorer.engine.sweep.machine)
    machine_warning: str = ""  # the warning printed when the machine was busy
    shared_as: Optional[str] = None  # the store's queue sweep this sweep shared its work through
    by_others: int = 0  # of this sweep's list, measured meanwhile by other sweeps or workers of the store

    def frame(self, store: Optional[Store] = None) -> Any:
        """The results table of this space and environment (see explorer.data.results.load)."""
        from explorer.data import results

        return results.load(store or self.store_url, space=self.space, env=self.env_key)

    def summary(self, store: Optional[Store] = None) -> Any:
        """Fastest point at each resolution, per LLM."""
        from explorer.data import results

        return results.fastest_per_resolution(self.frame(store))

    def format(self, store: Optional[Store] = None) -> str:
        """The closing text: counts, the summary table (latencies marked ``~`` noisy / ``!``
        contended, with a legend when any is), how many points are flagged, failures, the store."""
        from explorer.data import results

        n = sum(self.measured.values())
        others = f", {self.by_others} measured meanwhile by other sweeps or workers" if self.by_others else ""
        lines = [f"sweep {self.space!r}: {self.n_points} points, {n} measured now, {self.skipped} already stored"
                 f"{others}, {len(self.failures)} failed, {format_duration(self.elapsed_s)}"]
        try:
            frame = self.frame(store)
            table, legend = results.summary_table(frame, self.space)
            tied = results.tie_lines(frame)
            flagged = results.flag_line(frame, self.space, command=legend is None)
        except Exception as exc:  # a summary must never hide where the results are
            table, legend, flagged, tied = None, None, None, None
            lines.append(f"(no summary table: {exc})")
        if table:
            lines.append("fastest point at each resolution, per LLM (TTFT = preprocess + encoder + projector + prefill; "
                         "results.load(..., ttft_includes_preprocess=False) gives the paper's definition; fastest: "
                         "yes when its TTFT interval lies below every other point's, tied (k) when k points' "
                         "intervals overlap):")
            lines.append(table)
            if tied:
                lines.append(tied)
            if legend:
                lines.append(legend)
        elif table is not None:
            lines.append("no complete points yet")
        if flagged:
            lines.append(flagged)
        for f in self.failures[:10]:
            first = (f.get("error") or "").splitlines()[0] if f.get("error") else ""
            lines.append(f"  {f['status']}: {f['kind']} {f['label']}: {first}")
        if len(self.failures) > 10:
            lines.append(f"  ... and {len(self.failures) - 10} more failures (status column of the results)")
        if self.shared_as is not None:
            lines.append(f"work shared through the store's queue as sweep {self.shared_as!r}: more hands are the same "
                         f"`explorer sweep` command, or `explorer worker store={self.store_url} "
                         f"worker.sweep={self.shared_as}`")
        lines.append(f"results: {self.store_url}")
        return "\n".join(lines)
