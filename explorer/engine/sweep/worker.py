"""A worker of a sweep shared through the store: publish the plan, then claim and measure until done.

Any number of workers, on any number of machines, point at one store URL (PostgreSQL for a
fleet; SQLite for several processes of one machine). Each claims one job at a time with a lease
(:mod:`explorer.data.queue`), measures it with the sweep engine's runners
(:func:`~explorer.engine.sweep.isolation.make_runner`) and the :class:`MeasureBackend`, and
commits the value together with the job's completion. A worker measures in its own environment
(device, threads, dtype: the ``env_key``), so a heterogeneous fleet fills one sweep with one set of
values per device.

:func:`run_worker` stops when no job of its sweep is left for its environment: none pending and
none leased by a live worker (it waits while others hold the last leases, since one of them may
die and its job come back). :func:`launch_workers` starts several as Ray tasks.
"""
from __future__ import annotations

import dataclasses
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from explorer.data.queue import Heartbeat, WorkQueue
from explorer.data.space import Space
from explorer.data.store import MeasurementRecord, Store, StoreError, as_store, utcnow
from explorer.engine.backend import MeasureBackend
from explorer.engine.options import SweepOptions, WorkerOptions
from explorer.engine.sweep.isolation import RETRIED_ON_RESUME, make_runner
from explorer.engine.sweep.keys import KINDS, Job
from explorer.engine.sweep.plan import default_settings, plan_sweep, resolve_space

#: Settings that belong to each worker (its device and how much of it), not to the published sweep.
WORKER_OWN_SETTINGS: frozenset[str] = frozenset({"device", "threads"})

__all__ = ["WORKER_OWN_SETTINGS", "WorkerReport", "published_settings", "publish_sweep", "resolve_sweep", "run_worker", "launch_workers"]


@dataclass
class WorkerReport:
    """What one worker did."""

    sweep: str
    worker: str
    env_key: str
    measured: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    lost: int = 0  # results dropped because the lease had passed to another worker
    failures: list[dict[str, Any]] = field(default_factory=list)
    remaining: int = 0
    elapsed_s: float = 0.0

    def format(self) -> str:
        total = sum(self.measured.values())
        parts = ", ".join(f"{k} {v}" for k, v in self.measured.items())
        text = (f"worker {self.worker}: sweep {self.sweep!r} in environment {self.env_key}: measured {total} "
                f"({parts}) in {self.elapsed_s:.1f} s")
        if self.failures:
            text += f"; {len(self.failures)} failed"
        if self.lost:
            text += f"; {self.lost} results dropped (lease lost to another worker)"
        if self.remaining:
            text += f"; {self.remaining} left in the queue"
        return text


def _settings_dict(settings: Any) -> dict[str, Any]:
    return dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)


def published_settings(settings: Any) -> dict[str, Any]:
    """The measurement settings a shared sweep is published with: all but each worker's own
    (:data:`WORKER_OWN_SETTINGS`)."""
    return {k: v for k, v in _settings_dict(settings).items() if k not in WORKER_OWN_SETTINGS}


def _env_dict(env: Any) -> dict[str, Any]:
    if hasattr(env, "to_dict"):
        return dict(env.to_dict())
    return dataclasses.asdict(env) if dataclasses.is_dataclass(env) else dict(env)


def publish_sweep(space: Union[Space, str, Any], settings: Any, store: Union[Store, str],
                  options: SweepOptions = SweepOptions(), backend: MeasureBackend = MeasureBackend()) -> str:
    """Plan ``space`` and publish its points and jobs to ``store`` (idempotent); returns the sweep name.

    Planning needs no device claim: it may run on any machine, also one that never measures."""
    space = resolve_space(space, backend)
    settings = default_settings(space) if settings is None else settings
    st = as_store(store, create=True)
    plan = plan_sweep(space, settings, None, options, backend)
    published = published_settings(settings)
    WorkQueue(st).publish(space.name, published, plan.jobs, plan.estimates_s)
    st.save_points(plan.point_records)
    return space.name


def resolve_sweep(store: Union[Store, str], name: Optional[str]) -> str:
    """The published sweep a worker without a space joins: ``name``, or the only one in ``store``
    (StoreError naming the published ones otherwise)."""
    return _resolve_sweep(WorkQueue(as_store(store, create=True)), name)


def _resolve_sweep(queue: WorkQueue, name: Optional[str]) -> str:
    known = queue.sweeps()
    if name is not None:
        queue.settings(name)  # StoreError naming the published ones
        return name
    if len(known) == 1:
        return next(iter(known))
    raise StoreError(f"no sweep chosen and {len(known)} published in {queue.store.url} "
                     f"({', '.join(known) or 'none'}): give worker.sweep=NAME, or +space=NAME to publish one")


def run_worker(store: Union[Store, str], space: Union[Space, str, Any, None] = None, settings: Any = None,
               options: WorkerOptions = WorkerOptions(), sweep_options: SweepOptions = SweepOptions(),
               backend: MeasureBackend = MeasureBackend(), measure_overrides: Optional[dict[str, Any]] = None,
               ) -> WorkerReport:
    """One worker (see the module docstring).

    With ``space`` the sweep is published first (its name is the space's); without it the worker
    joins ``options.sweep`` (or the only published sweep) with the settings it was published with,
    ``measure_overrides`` on top (``{"device": "cuda:1"}``). ``sweep_options`` gives the isolation,
    the timeout of one measurement and ``retry_failed``. Errors before any work: StoreError for an
    unreachable database, a foreign schema or an unknown sweep; OptionError for a bad setting.
    """
    t0 = time.monotonic()
    st = as_store(store, create=True)
    queue = WorkQueue(st, lease_s=options.lease_s)
    if space is not None:
        name = publish_sweep(space, settings, st, sweep_options, backend)
        if options.sweep is not None and options.sweep != name:
            raise StoreError(f"invalid worker.sweep={options.sweep!r}: the chosen space publishes sweep {name!r}")
        if settings is None:
            settings = default_settings(resolve_space(space, backend))
        if measure_overrides:
            settings = dataclasses.replace(settings, **measure_overrides).check_on_machine()
    else:
        name = _resolve_sweep(queue, options.sweep)
        settings = default_settings(None, **{**queue.settings(name), **dict(measure_overrides or {})})
    env = backend.environment(settings)
    env_key, env_dict = str(env.key), _env_dict(env)

    stored = st.measurement_status(env_key)
    done = {kk for kk, status in stored.items() if status not in RETRIED_ON_RESUME
            and (status == "ok" or not sweep_options.retry_failed)}
    queue.join(name, env_key, done)
    report = WorkerReport(sweep=name, worker=queue.owner, env_key=env_key)
    if queue.counts(name, env_key).open == 0:
        report.elapsed_s = time.monotonic() - t0
        return report

    fns = {kind: backend.measure(kind) for kind in KINDS}
    runner = make_runner(sweep_options.isolation, list(fns.values()), settings)
    if options.exclusive_device:
        queue.claim_device(options.host or socket.gethostname(), str(env_dict.get("device", "unknown")))
    count = 0
    try:
        with Heartbeat(queue):
            while options.max_jobs is None or count < options.max_jobs:
                job = queue.claim(name, env_key)
                if job is None:
                    if queue.counts(name, env_key).leased == 0:
                        break
                    time.sleep(options.poll_s)  # others hold the last leases: one may die
                    continue
                spec = Job(job.kind, job.key, job.inputs, 0.0, job.label)
                runner.ensure_started()
                started, t_start = utcnow(), time.monotonic()
                try:
                    outcome = runner.run(fns[job.kind], spec.call_args() + (settings,), sweep_options.timeout_s)
                except BaseException:
                    queue.release(job)
                    raise
                rec = MeasurementRecord(kind=job.kind, key=job.key, env_key=env_key, environment=env_dict,
                                        inputs=job.inputs, status=outcome.status, payload=outcome.payload,
                                        error=outcome.error, started_at=started, finished_at=utcnow(),
                                        duration_s=time.monotonic() - t_start)
                count += 1
                if not queue.complete(job, rec):
                    report.lost += 1
                    continue
                report.measured[job.kind] += 1
                if outcome.status != "ok":
                    report.failures.append({"kind": job.kind, "key": job.key, "label": job.label,
                                            "status": outcome.status, "error": outcome.error})
    finally:
        runner.close()
        if options.exclusive_device:
            queue.release_device()
    report.remaining = queue.counts(name, env_key).open
    report.elapsed_s = time.monotonic() - t0
    return report


def _ray_task(store_url: str, options: WorkerOptions, sweep_options: SweepOptions, backend: MeasureBackend,
              measure_overrides: Optional[dict[str, Any]]) -> WorkerReport:
    return run_worker(store_url, None, None, options, sweep_options, backend, measure_overrides)


def launch_workers(store: Union[Store, str], space: Union[Space, str, Any, None] = None, settings: Any = None,
                   options: WorkerOptions = WorkerOptions(launcher="ray", workers=2),
                   sweep_options: SweepOptions = SweepOptions(), backend: MeasureBackend = MeasureBackend(),
                   measure_overrides: Optional[dict[str, Any]] = None) -> list[WorkerReport]:
    """Publish (with ``space``) here, then run ``options.workers`` workers as Ray tasks, each asking
    for ``options.num_cpus`` CPUs and ``options.num_gpus`` GPUs, on the cluster at
    ``options.ray_address`` (null: a local Ray started here). Returns every worker's report.

    The store must be reachable from every node (a PostgreSQL URL for a cluster; a SQLite file
    works for a local Ray only)."""
    if options.launcher != "ray":
        return [run_worker(store, space, settings, options, sweep_options, backend, measure_overrides)]
    try:
        import ray
    except ImportError:
        raise StoreError("worker.launcher=ray needs Ray: pip install 'explorer[ray]' (or pip install ray)") from None
    st = as_store(store, create=True)
    name = options.sweep
    if space is not None:
        name = publish_sweep(space, settings, st, sweep_options, backend)
        if settings is not None:
            measure_overrides = {**_settings_dict(settings), **dict(measure_overrides or {})}
    name = _resolve_sweep(WorkQueue(st), name)
    url = st.url
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False,
                 **({"num_cpus": max(1, int(options.num_cpus * options.workers + 0.999))}
                    if options.ray_address is None else {}))
    try:
        task = ray.remote(_ray_task).options(num_cpus=options.num_cpus, num_gpus=options.num_gpus, max_retries=0)
        per_worker = options.replace(sweep=name, launcher="local", workers=1)
        refs = [task.remote(url, per_worker, sweep_options, backend, measure_overrides)
                for _ in range(options.workers)]
        return list(ray.get(refs))
    finally:
        if started_here:
            ray.shutdown()
