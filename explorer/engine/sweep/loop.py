"""The sweep engine's loop: measure every pending job of a plan, committing each as it finishes.

Every measurement is committed to the store in its own transaction as soon as it finishes;
running the same sweep again measures only what is missing for the same environment. Failures
(exceptions, out-of-memory, timeouts) are stored with their status and error and the sweep goes
on. Measurements interleaved in a group (``sweep.interleave``) are each committed the moment their
own timing ends, while the rest of the group still samples: a kill costs the timings still in
flight (at most the group's unfinished ones), never one that finished. Ctrl-C stops after the
group in flight; a second Ctrl-C stops at once.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from typing import Any, Optional, Sequence, Union

from sqlalchemy.exc import SQLAlchemyError

from explorer.data.queue import Heartbeat, QueuedJob, WorkQueue
from explorer.data.space import Space
from explorer.data.store import MeasurementRecord, Store, utcnow
from explorer.engine.backend import MeasureBackend
from explorer.engine.options import SweepOptions
from explorer.engine.sweep.isolation import make_runner
from explorer.engine.sweep.keys import KINDS, Job
from explorer.engine.sweep.machine import MachinePolicy, machine_policy
from explorer.engine.sweep.plan import SweepPlan, default_settings, plan_sweep, resolve_space
from explorer.engine.sweep.report import SweepReport

__all__ = ["run_sweep"]


class _StopFlag:
    """First SIGINT: finish the measurement in flight, then stop. Second: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._handle)
        self._installed = True

    def _handle(self, _sig: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write("\nstopping after the measurement in flight (Ctrl-C again to stop now)\n")
        sys.stderr.flush()

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False


def _progress_bar(todo: Sequence[Job], plan: SweepPlan, enabled: bool) -> Any:
    """A tqdm bar weighted by each measurement's estimated seconds, so its ETA is meaningful
    (a projector takes milliseconds, an encoder at 1024 px seconds); the count is in the postfix."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    total = sum(plan.estimates_s[j.key] for j in todo)
    return tqdm(total=total, desc=f"sweep {plan.space.name}", unit="est-s", file=sys.stderr, dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
                mininterval=0.5)


#: A group of interleaved encoders or projectors holds at most this share of the available memory
#: in parameters (each counted three times: the model, its runtime's copy, working buffers).
GROUP_MEMORY_SHARE = 0.25


def measurement_groups(todo: Sequence[Job], plan: SweepPlan, size: int, settings: Any) -> list[list[Job]]:
    """Split ``todo`` into groups measured together in shuffled rounds.

    A group holds jobs of one kind (prefills: of one LLM, which they share), at most ``size`` of
    them, and for encoders and projectors parameters within :data:`GROUP_MEMORY_SHARE` of the
    available memory. Encoders come first, then projectors, then prefills, each in plan order.
    """
    from explorer.engine.sweep.footprint import DTYPE_BYTES, available_memory_bytes

    if size <= 1:
        return [[j] for j in todo]
    free = available_memory_bytes(settings) if hasattr(settings, "resolve_device") else None
    budget = GROUP_MEMORY_SHARE * free if free else float("inf")
    elt = DTYPE_BYTES.get(str(getattr(settings, "dtype", "float32")), 4)
    by_kind: dict[tuple[str, str], list[Job]] = {}
    for j in todo:
        by_kind.setdefault((j.kind, str(j.inputs.get("llm", "")) if j.kind == "prefill" else ""), []).append(j)
    groups: list[list[Job]] = []
    for kind in KINDS:
        for (k, _), jobs in by_kind.items():
            if k != kind:
                continue
            current: list[Job] = []
            used = 0.0
            for j in jobs:
                need = 0.0 if kind == "prefill" else 3 * plan.params_m.get(j.key, 0.0) * 1e6 * elt
                if current and (len(current) >= size or used + need > budget):
                    groups.append(current)
                    current, used = [], 0.0
                current.append(j)
                used += need
            if current:
                groups.append(current)
    return groups


def _store_error_text(err: BaseException, url: str) -> str:
    text = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
    hint = "free disk space" if "full" in text.lower() or "space" in text.lower() else "make the database reachable"
    return f"could not store a measurement in {url} ({text}); {hint} and run the same command to resume"


def _note(bar: Any, text: str) -> None:
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def run_sweep(space: Union[Space, str, Any], settings: Any = None, store: Union[Store, str, None] = None,
              options: SweepOptions = SweepOptions(), backend: MeasureBackend = MeasureBackend(),
              plan: Optional[SweepPlan] = None) -> SweepReport:
    """Measure every design point of ``space`` into ``store`` (see the module docstring).

    ``space``: a Space, a space name or a YAML path. ``settings``: MeasureSettings (default: the
    space's ``measure:`` section over the defaults). ``store``: a Store or URL (default
    ``results/<space>/store.db``). ``options``: :class:`~explorer.engine.options.SweepOptions`.
    ``backend``: what measures (:class:`~explorer.engine.backend.MeasureBackend`; fakes in tests).
    ``plan``: a plan made already with :func:`plan_sweep` (the search engine plans each trial).
    """
    t0 = time.monotonic()
    space = resolve_space(space, backend)
    if settings is None:
        settings = default_settings(space)
    elif hasattr(settings, "validate"):
        settings.check_on_machine()
    st = store if isinstance(store, Store) else Store(store or f"results/{space.name}")
    policy = MachinePolicy(settings)
    planned_here = plan is None
    if plan is None:
        policy = machine_policy(settings, options, backend)
        settings = policy.settings
        plan = plan_sweep(space, settings, st, options, backend)
    fns = {kind: backend.measure(kind) for kind in KINDS}
    runner = make_runner(options.isolation, list(fns.values()), settings, environ=policy.environ)

    todo = list(plan.todo)
    if options.max_measurements is not None:
        todo = todo[: options.max_measurements]
    unique = {k: v["unique"] for k, v in plan.counts().items()}
    report = SweepReport(space=space.name, store_url=st.url, env_key=plan.env_key, environment=plan.environment,
                         n_points=len(plan.points), unique=unique, measured={k: 0 for k in unique},
                         skipped=len(plan.jobs) - len(plan.todo), machine=policy.summary(),
                         machine_warning=policy.warning)
    queue: Optional[WorkQueue] = None
    try:
        st.save_points(plan.point_records)
        if todo and planned_here and options.share and options.resume and options.remeasure == "none":
            queue = WorkQueue(st)
            report.shared_as = _join_queue(queue, space.name, settings, plan, options)
    except (SQLAlchemyError, OSError) as err:  # the very first write: a full disk, a read-only database
        report.store_error = _store_error_text(err, st.url)
        report.remaining = len(plan.todo)
        runner.close()
        report.elapsed_s = time.monotonic() - t0
        return report
    if not todo:
        runner.close()
        report.elapsed_s = time.monotonic() - t0
        return report

    stop = _StopFlag()
    stop.install()
    bar = _progress_bar(todo, plan, enabled=options.progress)
    done = 0
    held: dict[tuple[str, str], QueuedJob] = {}  # leases this sweep holds and has not completed

    def commit(job: Job, outcome: Any, started: Any, duration_s: float) -> None:
        """Store one finished measurement at once (the others of its group may still time)."""
        nonlocal done
        if report.store_error:
            return
        rec = MeasurementRecord(kind=job.kind, key=job.key, env_key=plan.env_key, environment=plan.environment,
                                inputs=job.inputs, status=outcome.status, payload=outcome.payload,
                                error=outcome.error, started_at=started, finished_at=utcnow(), duration_s=duration_s)
        try:
            if queue is not None:
                lease = held.pop((job.kind, job.key))
                if not queue.complete(lease, rec):  # the lease ran out and another took the job: theirs counts
                    return
            else:
                st.save_measurement(rec)
        except (SQLAlchemyError, OSError) as err:  # disk full, database gone: stop, keep what is stored
            report.store_error = _store_error_text(err, st.url)
            return
        done += 1
        report.measured[job.kind] += 1
        if outcome.status != "ok":
            report.failures.append({"kind": job.kind, "key": job.key, "label": job.label,
                                    "status": outcome.status, "error": outcome.error})
            first = (outcome.error or "").splitlines()[0] if outcome.error else ""
            _note(bar, f"{outcome.status}: {job.kind} {job.label}: {first}")
        if bar is not None:
            bar.update(plan.estimates_s[job.key])

    def measure_group(group: list[Job], number: int) -> None:
        if queue is not None:  # only the jobs no other sweep or worker holds or has done
            try:
                claimed = queue.claim_jobs(report.shared_as, plan.env_key, [(j.kind, j.key) for j in group])
            except (SQLAlchemyError, OSError) as err:
                report.store_error = _store_error_text(err, st.url)
                return
            held.update({(q.kind, q.key): q for q in claimed})
            group = [j for j in group if (j.kind, j.key) in held]
            if not group:
                return
        if bar is not None:
            what = f"{group[0].kind} {group[0].label}" if len(group) == 1 else \
                f"{len(group)} {group[0].kind}s interleaved"
            bar.set_postfix_str(f"{done}/{len(todo)} {what}", refresh=True)
        runner.ensure_started()
        started = utcnow()
        t_start = time.monotonic()
        calls = [(fns[job.kind], job.call_args() + (settings,)) for job in group]
        timeout = None if options.timeout_s is None else options.timeout_s * len(group)
        weights = [max(plan.estimates_s.get(j.key, 0.0), 1e-9) for j in group]

        def finished(i: int, outcome: Any) -> None:
            commit(group[i], outcome, started, (time.monotonic() - t_start) * weights[i] / sum(weights))

        outcomes = runner.run_group(calls, timeout, seed=number, on_done=finished)
        missing = [i for i, o in enumerate(outcomes) if o is None]
        if missing and not report.store_error:  # timed out or died as a group: the unfinished one at a time
            _note(bar, f"a group of {len(group)} {group[0].kind} measurements failed together "
                       f"({len(group) - len(missing)} finished and stored); measuring the other "
                       f"{len(missing)} one at a time")
            for i in missing:
                if report.store_error or stop.requested:
                    break
                runner.ensure_started()
                t_one, started_one = time.monotonic(), utcnow()
                outcome = runner.run(calls[i][0], calls[i][1], options.timeout_s)
                commit(group[i], outcome, started_one, time.monotonic() - t_one)

    groups = measurement_groups(todo, plan, options.interleave, settings)
    number = 0
    try:
        with (Heartbeat(queue) if queue is not None else contextlib.nullcontext()):
            for group in groups:
                if stop.requested or report.store_error:
                    break
                measure_group(group, number)
                number += 1
            # Shared: jobs another sweep or worker holds may come back (it died); wait for them.
            while queue is not None and not stop.requested and not report.store_error:
                try:
                    states = queue.states(report.shared_as, plan.env_key)
                except (SQLAlchemyError, OSError) as err:
                    report.store_error = _store_error_text(err, st.url)
                    break
                open_jobs = [j for j in todo if states.get((j.kind, j.key), "done") != "done"]
                if not open_jobs:
                    break
                free = [j for j in open_jobs if states.get((j.kind, j.key)) == "pending"]
                if not free:
                    time.sleep(SHARED_POLL_S)
                    continue
                for group in measurement_groups(free, plan, options.interleave, settings):
                    if stop.requested or report.store_error:
                        break
                    measure_group(group, number)
                    number += 1
    except KeyboardInterrupt:
        stop.requested = True
    finally:
        stop.restore()
        if queue is not None and held:
            for lease in list(held.values()):  # claimed, not measured: back to the pool at once
                try:
                    queue.release(lease)
                except Exception:  # noqa: BLE001 - the lease runs out on its own
                    pass
        if bar is not None:
            bar.set_postfix_str(f"{done}/{len(todo)} done", refresh=True)
            bar.close()
        runner.close()
    if queue is not None and not report.store_error:
        try:
            states = queue.states(report.shared_as, plan.env_key)
            finished_all = sum(1 for j in todo if states.get((j.kind, j.key)) == "done")
            report.by_others = max(0, finished_all - done)
        except (SQLAlchemyError, OSError):
            pass
    report.remaining = len(plan.todo) - done - report.by_others
    report.interrupted = stop.requested and report.remaining > 0
    report.elapsed_s = time.monotonic() - t0
    return report


#: Seconds between looks at a shared queue while other processes hold this sweep's last jobs.
SHARED_POLL_S = 0.5


def _join_queue(queue: WorkQueue, name: str, settings: Any, plan: SweepPlan, options: SweepOptions) -> str:
    """Publish the plan to the store's queue and join it in this environment; returns the queue
    sweep's name: the space's, or ``<space>@<digest>`` when the space's is published with other
    measurement settings (one queue sweep measures one way)."""
    from explorer.data.space import digest
    from explorer.data.store import StoreError
    from explorer.engine.sweep.isolation import RETRIED_ON_RESUME
    from explorer.engine.sweep.worker import published_settings

    published = published_settings(settings)
    try:
        queue.publish(name, published, plan.jobs, plan.estimates_s)
    except StoreError:
        name = f"{name}@{digest(published, 8)}"
        queue.publish(name, published, plan.jobs, plan.estimates_s)
    # Done: what the store holds now (not when this sweep planned: another may have measured since).
    stored = queue.store.measurement_status(plan.env_key)
    done = {kk for kk, status in stored.items() if status not in RETRIED_ON_RESUME
            and (status == "ok" or not options.retry_failed)}
    queue.join(name, plan.env_key, done)
    return name
