"""The sweep engine: measure every design point of a space, factorised, resumable, into a Store.

TTFT = encoder + projector + prefill, and each factor depends on only part of a design point, so
each is measured once and shared (:mod:`.keys`). A sweep of E encoder settings x L LLMs costs
about E + L*T measurements instead of E*L.

- :mod:`.plan`: enumerate, factorise, compare with the store (what a dry run prints);
- :mod:`.estimate`: the time model of dry runs and the progress bar;
- :mod:`.isolation`: how one measurement runs (inline, alarm, worker process) and its timeout;
- :mod:`.loop`: :func:`run_sweep`, committing each measurement as it finishes;
- :mod:`.report`: :class:`SweepReport`, what the command prints.
"""
from explorer.engine.sweep.estimate import estimate_seconds, format_duration
from explorer.engine.sweep.isolation import MeasurementTimeout
from explorer.engine.sweep.keys import Job, encoder_key, prefill_key, projector_key
from explorer.engine.sweep.loop import run_sweep
from explorer.engine.sweep.plan import MAX_SWEEP_POINTS, SweepPlan, default_settings, plan_sweep
from explorer.engine.sweep.report import SweepReport

__all__ = ["run_sweep", "plan_sweep", "default_settings", "SweepPlan", "SweepReport", "Job", "MeasurementTimeout",
           "MAX_SWEEP_POINTS", "encoder_key", "projector_key", "prefill_key", "estimate_seconds", "format_duration"]
