"""How far a stored latency can be trusted: the ``noisy`` and ``contended`` flags of its timings.

Every timed value in a stored payload (``latency``, ``preprocess_latency``: an
:class:`explorer.measure.costs.Timing` as a dict) says whether a cap ended its protocol before
the median's 95% CI reached its target (``noisy``) and whether other processes or the hypervisor
took the machine while its samples were taken (``contended``, with ``other_cores`` and
``steal``). This module reads those flags from payloads (older stores lack the contention
fields: ``None`` / ``False``), decides which stored measurements ``sweep.remeasure`` takes again
and writes the marks and the legend the summary table and the report show.

Plain Python: the results table, the sweep planner and the report all use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

__all__ = ["TIMING_FIELDS", "REMEASURE_MODES", "NOISY_MARK", "CONTENDED_MARK", "TimingFlags", "timing_flags",
           "payload_flags", "selected_for_remeasure", "marks", "legend", "remeasure_command", "any_true"]

#: The payload fields that hold a Timing.
TIMING_FIELDS: tuple[str, ...] = ("latency", "preprocess_latency")
#: ``sweep.remeasure``: which stored ok measurements a sweep takes again (``none``: none of them;
#: ``noisy`` / ``contended``: those with a timing so flagged; ``flagged``: either; ``all``: every one).
REMEASURE_MODES: tuple[str, ...] = ("none", "noisy", "contended", "flagged", "all")
#: Mark after a value whose CI missed its target, and after one taken under contention.
NOISY_MARK = "~"
CONTENDED_MARK = "!"


@dataclass(frozen=True)
class TimingFlags:
    """The confidence fields of one stored timing (``None`` fields: not observed)."""

    noisy: bool
    contended: bool
    other_cores: Optional[float] = None
    steal: Optional[float] = None


def _optional_float(value: Any) -> Optional[float]:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def timing_flags(timing: Any) -> Optional[TimingFlags]:
    """The flags of a stored timing dict; ``None`` when it is no timing (not timed)."""
    if not isinstance(timing, Mapping):
        return None
    return TimingFlags(noisy=bool(timing.get("noisy", False)), contended=bool(timing.get("contended", False)),
                       other_cores=_optional_float(timing.get("other_cores")),
                       steal=_optional_float(timing.get("steal")))


def payload_flags(payload: Optional[Mapping[str, Any]]) -> tuple[bool, bool]:
    """``(noisy, contended)``: whether any timing of a stored payload is noisy, any contended."""
    flags = [timing_flags((payload or {}).get(name)) for name in TIMING_FIELDS]
    found = [f for f in flags if f is not None]
    return any(f.noisy for f in found), any(f.contended for f in found)


def selected_for_remeasure(mode: str, status: Optional[str], payload: Optional[Mapping[str, Any]]) -> bool:
    """Whether ``sweep.remeasure=mode`` takes a stored measurement again: only ok ones (failures
    follow ``sweep.retry_failed``), and of those the flagged ones the mode names."""
    if mode not in REMEASURE_MODES:
        raise ValueError(f"invalid remeasure={mode!r}: one of {', '.join(REMEASURE_MODES)}")
    if mode == "none" or status != "ok":
        return False
    if mode == "all":
        return True
    noisy, contended = payload_flags(payload)
    return {"noisy": noisy, "contended": contended, "flagged": noisy or contended}[mode]


def marks(noisy: Any, contended: Any) -> str:
    """The marks after a value: ``~`` (noisy), ``!`` (contended), both, or ''. Missing = False."""
    return (NOISY_MARK if _true(noisy) else "") + (CONTENDED_MARK if _true(contended) else "")


def _true(value: Any) -> bool:
    """True for True (numpy's too); False for False, None, NaN, pandas' NA and text."""
    if value is None or isinstance(value, str):
        return False
    try:
        return bool(value == value and value)
    except TypeError:  # pandas.NA has no truth value
        return False


def remeasure_command(space: Optional[str], noisy: bool, contended: bool) -> str:
    """The command that re-measures what is flagged (``flagged`` when both kinds are present)."""
    mode = "flagged" if noisy and contended else ("noisy" if noisy else "contended")
    return f"python -m explorer sweep +space={space or '<space>'} sweep.remeasure={mode}"


def legend(noisy: bool, contended: bool, space: Optional[str] = None) -> Optional[str]:
    """One line naming the marks present and how to re-measure; ``None`` when nothing is flagged."""
    if not (noisy or contended):
        return None
    parts = []
    if noisy:
        parts.append(f"{NOISY_MARK} = its 95% CI missed the target (a cap ended the timing first)")
    if contended:
        parts.append(f"{CONTENDED_MARK} = measured while other processes or the hypervisor used the machine")
    return "; ".join(parts) + f". Re-measure: {remeasure_command(space, noisy, contended)}"


def any_true(values: Iterable[Any]) -> bool:
    """Whether any of ``values`` is true (NA and None count as false)."""
    return any(_true(v) for v in values)
