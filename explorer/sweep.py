"""The sweep engine: measure every design point of a space, factorised, resumable, into a Store.

TTFT = encoder + projector + prefill, and each factor depends on only part of a design point, so
each is measured once and shared:

- encoder: once per (family, knobs, resolution), whatever LLM follows;
- projector: once per (encoder channels, LLM width, visual tokens);
- prefill: once per (LLM, visual + text tokens).

A sweep of E encoder settings x L LLMs costs about E + L*T measurements instead of E*L.

Every measurement is committed to the store in its own transaction as soon as it finishes;
running the same sweep again measures only what is missing for the same environment. Failures
(exceptions, out-of-memory, timeouts) are stored with their status and error and the sweep goes
on. Ctrl-C stops after the measurement in flight; a second Ctrl-C stops at once.

Isolation (``isolation=``), i.e. how a measurement is run and how its timeout is enforced:

- ``"process"``: in a persistent child process (spawned once, reused). A timeout kills the child
  (so a stuck CUDA kernel or a runaway allocation is really stopped) and a fresh one is started;
  a child killed by the kernel's OOM killer is recorded as ``oom`` and the sweep goes on.
- ``"alarm"``: in this process, with a ``SIGALRM`` timer (POSIX, main thread only). The timeout
  is raised between Python bytecodes, i.e. after the torch op in progress returns.
- ``"inline"``: in this process, no timeout (what unit tests with fake measurers use).
- ``"auto"`` (default): ``process`` when the measure functions can be pickled, else ``alarm``
  on the main thread of a POSIX system, else ``inline``.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from explorer.space import (DesignPoint, EncoderShape, ShapeFn, Space, SpaceError, digest, encoder_shape,
                            enumerate_points, load_space)
from explorer.store import MeasurementRecord, PointRecord, Store, utcnow

__all__ = ["Job", "SweepPlan", "SweepReport", "MeasurementTimeout", "plan_sweep", "run_sweep",
           "encoder_key", "projector_key", "prefill_key", "ASSUMED_GFLOPS_PER_S"]

# --------------------------------------------------------------------------------------------
# Keys: a digest of each factor's own inputs


def encoder_key(encoder: str, knobs: Mapping[str, Any], resolution: int) -> str:
    return digest({"kind": "encoder", "encoder": encoder, "knobs": dict(knobs), "resolution": int(resolution)})


def projector_key(in_channels: int, hidden: int, tokens: int) -> str:
    return digest({"kind": "projector", "in_channels": int(in_channels), "hidden": int(hidden),
                   "tokens": int(tokens)})


def prefill_key(llm_spec: Mapping[str, Any], tokens: int) -> str:
    """Keyed on the LLM's architecture spec, so a catalog name and an equal config.json share it."""
    return digest({"kind": "prefill", "llm": dict(llm_spec), "tokens": int(tokens)})


@dataclass(frozen=True)
class Job:
    """One unique measurement of the sweep."""

    kind: str  # encoder | projector | prefill
    key: str
    inputs: dict[str, Any]  # what the measure function is called with (JSON-able)
    gflops_est: float  # for the time model
    label: str

    def call_args(self) -> tuple[Any, ...]:
        i = self.inputs
        if self.kind == "encoder":
            return (i["encoder"], dict(i["knobs"]), i["resolution"])
        if self.kind == "projector":
            return (i["in_channels"], i["hidden"], i["tokens"])
        return (i["llm"], i["tokens"])


# --------------------------------------------------------------------------------------------
# Time model (dry runs and the progress bar's weights)

#: Assumed sustained GFLOP/s by device type, per CPU thread for "cpu". A FastViTHD forward pass
#: reaches about 140 GFLOP/s on 2 threads of the developers' machines; the GPU figures are
#: deliberately conservative fp32 numbers. Order-of-magnitude only: a dry run says "about".
ASSUMED_GFLOPS_PER_S: dict[str, float] = {"cpu": 70.0, "cuda": 10_000.0, "mps": 1_500.0}
#: Fixed seconds per measurement (building the model, counting FLOPs, bookkeeping).
SETUP_S: dict[str, float] = {"encoder": 3.0, "projector": 0.3, "prefill": 3.0}
#: Extra build seconds per million parameters (random initialisation of big models).
BUILD_S_PER_MPARAM: float = 0.01
#: Repetitions assumed for the protocol to reach its CI target when the caps allow it.
ASSUMED_TIMED_ITERS: int = 15


def estimate_seconds(kind: str, gflops: float, params_m: float, settings: Any, device_type: str,
                     threads: int) -> float:
    """Rough seconds one measurement takes on an otherwise idle machine.

    setup (``SETUP_S`` + ``BUILD_S_PER_MPARAM`` x params) + 4 passes (FLOP counting by tracing,
    the first call, the peak-memory pass) + warm-up + timing, where latency = gflops x batch /
    throughput (``ASSUMED_GFLOPS_PER_S``), warm-up = max(warmup_s, warmup_iters x latency) and
    timing = min(max_time_s, clamp(ASSUMED_TIMED_ITERS, min_iters, max_iters) x latency), at least
    min_iters x latency.
    """
    per_s = ASSUMED_GFLOPS_PER_S.get(device_type, ASSUMED_GFLOPS_PER_S["cpu"])
    if device_type == "cpu":
        per_s *= max(1, threads)
    batch = int(getattr(settings, "batch_size", 1) or 1)
    lat = gflops * batch / per_s + 0.001
    warm = max(float(getattr(settings, "warmup_s", 0.5)), int(getattr(settings, "warmup_iters", 2)) * lat)
    iters = min(max(ASSUMED_TIMED_ITERS, int(getattr(settings, "min_iters", 5))),
                int(getattr(settings, "max_iters", 200)))
    timed = min(float(getattr(settings, "max_time_s", 30.0)), iters * lat)
    timed = max(timed, int(getattr(settings, "min_iters", 5)) * lat)
    return SETUP_S.get(kind, 1.0) + BUILD_S_PER_MPARAM * params_m + 4 * lat + warm + timed


def _meta_encoder_gflops(family: str, knobs: Mapping[str, Any], resolution: int) -> float:
    """Encoder GFLOPs (2 x MACs) of one image, counted on the meta device (no memory, ~1 s)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from explorer.models import build_encoder

    with torch.device("meta"):
        enc = build_encoder(family, **dict(knobs))
    enc.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        enc(torch.empty(1, 3, resolution, resolution, device="meta"))
    return counter.get_total_flops() / 1e9


# --------------------------------------------------------------------------------------------
# Plan


@dataclass
class SweepPlan:
    """What a sweep will do: its points, unique measurements, and what is already stored."""

    space: Space
    points: list[DesignPoint]
    point_records: list[PointRecord]
    jobs: list[Job]  # unique measurements in execution order
    todo: list[Job]  # those still to measure in this environment
    env_key: str
    environment: dict[str, Any]
    estimates_s: dict[str, float]  # job key -> estimated seconds
    estimate_basis: dict[str, str]  # job key -> "model" | "past"

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for kind in ("encoder", "projector", "prefill"):
            total = sum(j.kind == kind for j in self.jobs)
            todo = sum(j.kind == kind for j in self.todo)
            out[kind] = {"unique": total, "stored": total - todo, "to_measure": todo}
        return out

    def estimated_seconds(self) -> float:
        return sum(self.estimates_s[j.key] for j in self.todo)

    def describe(self) -> str:
        """The dry-run text: points, unique measurements per factor and a time estimate."""
        c = self.counts()
        n_enc = c["encoder"]["unique"]
        lines = [f"space {self.space.name!r}: {len(self.points)} design points"
                 + (f" ({self.space.source})" if self.space.source else ""),
                 f"unique measurements: {sum(v['unique'] for v in c.values())} "
                 f"(encoder {n_enc}, projector {c['projector']['unique']}, prefill {c['prefill']['unique']})"]
        for kind, v in c.items():
            lines.append(f"  {kind:<9} {v['unique']:>4} unique, {v['stored']:>4} already stored, "
                         f"{v['to_measure']:>4} to measure")
        past = sum(1 for j in self.todo if self.estimate_basis.get(j.key) == "past")
        est = self.estimated_seconds()
        lines.append(f"estimated time: about {_fmt_duration(est)} for {len(self.todo)} measurements "
                     f"({past} from past durations in the store, {len(self.todo) - past} from the "
                     f"FLOP/throughput model; see explorer.sweep.estimate_seconds)")
        env = self.environment
        lines.append(f"environment {self.env_key}: {env.get('device')} ({env.get('device_type')}), "
                     f"{env.get('dtype')}, {env.get('threads')} threads, torch {env.get('torch_version')}")
        return "\n".join(lines)


def _fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _default_llm_info(llm: str) -> tuple[int, dict[str, Any], float]:
    """(hidden width, architecture spec dict, parameters in millions) of an LLM name or config."""
    from explorer.models.llm import get_llm_spec

    spec = get_llm_spec(llm)
    return spec.hidden, spec.to_dict(), spec.num_params() / 1e6


def _default_environment(settings: Any) -> Any:
    from explorer.measure.settings import current_environment

    return current_environment(settings)


def _env_dict(env: Any) -> dict[str, Any]:
    if hasattr(env, "to_dict"):
        return dict(env.to_dict())
    if dataclasses.is_dataclass(env):
        return dataclasses.asdict(env)
    return dict(env)


def default_settings(space: Optional[Space] = None, **overrides: Any) -> Any:
    """MeasureSettings from the space's ``measure:`` defaults, then ``overrides`` (None = unset)."""
    from explorer.measure.settings import MeasureSettings

    values = dict(space.measure_defaults()) if space is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    allowed = {f.name for f in dataclasses.fields(MeasureSettings)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"unknown measurement setting(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    return MeasureSettings(**values).validate()


def plan_sweep(
    space: Union[Space, str, Any],
    settings: Any = None,
    store: Optional[Store] = None,
    *,
    resume: bool = True,
    retry_failed: bool = False,
    shape_fn: Optional[ShapeFn] = None,
    llm_info: Optional[Callable[[str], tuple[int, dict[str, Any], float]]] = None,
    environment: Any = None,
    gflops_fn: Optional[Callable[[str, Mapping[str, Any], int], float]] = None,
    points: Optional[Sequence[DesignPoint]] = None,
) -> SweepPlan:
    """Enumerate, factorise and compare with the store; measures nothing (what dry runs print).

    ``points`` plans exactly these design points instead of enumerating the whole space (what
    :mod:`explorer.search` does for each trial); duplicates are dropped, order is kept.
    """
    if not isinstance(space, Space):
        space = load_space(space, shape_fn=shape_fn, check_models=shape_fn is None)
    if settings is None:
        settings = default_settings(space)
    shape = shape_fn or encoder_shape
    info = llm_info or _default_llm_info
    env = environment if environment is not None else _default_environment(settings)
    env_key = str(env.key)
    env_dict = _env_dict(env)
    if points is None:
        points = enumerate_points(space, shape_fn=shape)
    else:
        points = list(dict.fromkeys(points))
    # Points grouped by LLM (stable, in order of first appearance): each point still completes
    # as soon as its own three measurements are done, and one LLM's prefills run back to back,
    # so the measuring process reuses the LLM it built last instead of rebuilding it.
    llm_rank: dict[str, int] = {}
    for p in points:
        llm_rank.setdefault(p.llm, len(llm_rank))
    points = sorted(points, key=lambda p: llm_rank[p.llm])

    llm_cache: dict[str, tuple[int, dict[str, Any], float]] = {}
    shape_cache: dict[tuple[str, str, int], EncoderShape] = {}
    jobs: dict[str, Job] = {}
    order: list[str] = []
    records: list[PointRecord] = []
    params_m: dict[str, float] = {}
    gflops_ref: dict[str, tuple[float, int]] = {}  # encoder config -> (gflops, tokens) at one resolution
    gflops = gflops_fn or (_meta_encoder_gflops if shape_fn is None else None)

    def add(job: Job, params: float) -> None:
        if job.key not in jobs:
            jobs[job.key] = job
            order.append(job.key)
            params_m[job.key] = params

    for p in points:
        knobs = p.knob_dict()
        ck = (p.encoder, digest(knobs), p.resolution)
        if ck not in shape_cache:
            try:
                shape_cache[ck] = shape(p.encoder, knobs, p.resolution)
            except (ValueError, TypeError) as err:
                raise SpaceError(f"{space.source or space.name}: encoder {p.encoder} {knobs} at resolution "
                                 f"{p.resolution}: {err}") from None
        s = shape_cache[ck]
        if p.llm not in llm_cache:
            try:
                llm_cache[p.llm] = info(p.llm)
            except (ValueError, OSError) as err:
                raise SpaceError(f"{space.source or space.name}: llms: {err}") from None
        hidden, spec, llm_params = llm_cache[p.llm]

        cfg = (p.encoder, digest(knobs))
        est = float("nan")
        if gflops is not None:
            if cfg not in gflops_ref:
                try:
                    gflops_ref[cfg] = (gflops(p.encoder, knobs, p.resolution), s.visual_tokens)
                except Exception:  # the estimate is optional; the measurement will say the truth
                    gflops_ref[cfg] = (float("nan"), s.visual_tokens)
            g0, t0 = gflops_ref[cfg]
            est = g0 * s.visual_tokens / max(1, t0)
        if not math.isfinite(est):
            est = 2 * s.params_m * 1e6 * s.visual_tokens / 1e9
        ek = encoder_key(p.encoder, knobs, p.resolution)
        add(Job("encoder", ek, {"encoder": p.encoder, "knobs": knobs, "resolution": p.resolution}, est,
                f"{p.encoder}{_knob_text(knobs)}@{p.resolution}"), s.params_m)

        pk = projector_key(s.out_channels, hidden, s.visual_tokens)
        proj_gflops = 2 * s.visual_tokens * (s.out_channels * hidden + hidden * hidden) / 1e9
        add(Job("projector", pk, {"in_channels": s.out_channels, "hidden": hidden, "tokens": s.visual_tokens},
                proj_gflops, f"mlp {s.out_channels}->{hidden} x{s.visual_tokens}"),
            (s.out_channels * hidden + hidden * hidden) / 1e6)

        tokens = s.visual_tokens + p.text_tokens
        fk = prefill_key(spec, tokens)
        add(Job("prefill", fk, {"llm": p.llm, "tokens": tokens}, 2 * llm_params * 1e6 * tokens / 1e9,
                f"{p.llm} x{tokens}"), llm_params)
        records.append(PointRecord(space=space.name, point=p, encoder_key=ek, projector_key=pk, prefill_key=fk,
                                   visual_tokens=s.visual_tokens))

    ordered = [jobs[k] for k in order]
    stored: dict[tuple[str, str], str] = store.measurement_status(env_key) if store is not None else {}
    if resume:
        def done(j: Job) -> bool:
            st = stored.get((j.kind, j.key))
            return st is not None and (st == "ok" or not retry_failed)
        todo = [j for j in ordered if not done(j)]
    else:
        todo = list(ordered)

    past: dict[str, float] = {}
    if store is not None:
        for rec in store.measurements():
            if rec.status == "ok" and rec.duration_s:
                past[rec.key] = float(rec.duration_s)  # latest wins (ordered by id)
    device_type = str(env_dict.get("device_type", "cpu"))
    threads = int(env_dict.get("threads") or 1)
    estimates, basis = {}, {}
    for j in ordered:
        if j.key in past:
            estimates[j.key], basis[j.key] = past[j.key], "past"
        else:
            estimates[j.key] = estimate_seconds(j.kind, j.gflops_est, params_m[j.key], settings, device_type, threads)
            basis[j.key] = "model"
    return SweepPlan(space=space, points=points, point_records=records, jobs=ordered, todo=todo, env_key=env_key,
                     environment=env_dict, estimates_s=estimates, estimate_basis=basis)


def _knob_text(knobs: Mapping[str, Any]) -> str:
    if not knobs:
        return ""
    return "[" + ",".join(f"{k}={v}" for k, v in sorted(knobs.items())) + "]"


# --------------------------------------------------------------------------------------------
# Running one measurement: inline, with an alarm, or in a worker process


class MeasurementTimeout(BaseException):
    """Raised inside a measurement when its time is up (BaseException: not swallowed by
    ``except Exception`` in library code)."""


def _classify(exc: BaseException) -> str:
    if isinstance(exc, MeasurementTimeout):
        return "timeout"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom"
    text = str(exc).lower()
    if "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text:
        return "oom"
    return "failed"


def _error_text(exc: BaseException) -> str:
    """First line ``Type: message``, then the innermost frames of the traceback."""
    head = f"{type(exc).__name__}: {exc}".strip()
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
    return (head + "\n" + tb)[:8000]


def _payload(cost: Any) -> dict[str, Any]:
    if hasattr(cost, "to_dict"):
        return dict(cost.to_dict())
    if dataclasses.is_dataclass(cost):
        return dataclasses.asdict(cost)
    if isinstance(cost, Mapping):
        return dict(cost)
    raise TypeError(f"a measure function returned {type(cost).__name__}; expected a cost dataclass")


def _free_memory(collect: bool) -> None:
    """Release what a measurement left behind (a full collection only after a failure: the
    traceback keeps the model alive, and gc.collect costs ~0.5 s once torch is loaded)."""
    if collect:
        gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():  # pragma: no cover - GPU machines
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class _Outcome:
    status: str
    payload: Optional[dict[str, Any]]
    error: Optional[str]


class _InlineRunner:
    """Runs in this process; ``alarm=True`` enforces the timeout with SIGALRM."""

    def __init__(self, alarm: bool):
        self.alarm = alarm

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: Optional[float]) -> _Outcome:
        use_alarm = self.alarm and timeout is not None and timeout > 0
        previous = None
        failed = True
        if use_alarm:
            def _raise(_sig: int, _frame: Any) -> None:
                raise MeasurementTimeout(f"measurement exceeded its timeout of {timeout:g} s (SIGALRM)")

            previous = signal.signal(signal.SIGALRM, _raise)
            signal.setitimer(signal.ITIMER_REAL, float(timeout))  # type: ignore[arg-type]
        try:
            cost = fn(*args)
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
            failed = False
            return _Outcome("ok", _payload(cost), None)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure is data, the sweep goes on
            if isinstance(exc, (SystemExit, GeneratorExit)):
                raise
            return _Outcome(_classify(exc), None, _error_text(exc))
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
            _free_memory(collect=failed)

    def close(self) -> None:
        pass


def _set_parent_death_signal() -> None:
    """Linux: have the kernel kill this worker when the sweep process dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - exotic libc
        pass


def _worker_main(conn: Any, parent_pid: int) -> None:
    """Worker loop: receive (fn, args), send back (status, payload, error)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        return
    runner = _InlineRunner(alarm=False)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        if msg[0] == "ping":
            conn.send(("pong", None, None))
            continue
        _, fn, args = msg
        out = runner.run(fn, args, None)
        try:
            conn.send((out.status, out.payload, out.error))
        except Exception as exc:  # an unpicklable payload
            conn.send(("failed", None, f"cannot send the result back: {exc}"))


class _ProcessRunner:
    """A persistent spawned worker; timeouts and crashes kill and replace it."""

    def __init__(self, preload: Sequence[str] = ()):
        self.ctx = multiprocessing.get_context("spawn")
        self.proc: Any = None
        self.conn: Any = None
        self.preload = list(preload)

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main, args=(child, os.getpid()), daemon=True,
                                     name="explorer-measure")
        self.proc.start()
        child.close()
        self.conn = parent
        # Import torch & co. now, so that start-up does not count against a measurement's timeout.
        self.conn.send(("ping",))
        if not self.conn.poll(600):
            self._kill()
            raise RuntimeError("the measurement worker did not start within 600 s")
        self.conn.recv()
        for module in self.preload:
            self.conn.send(("call", _import_module, (module,)))
            if self.conn.poll(600):
                self.conn.recv()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        if self.conn is not None:
            self.conn.close()
        self.proc, self.conn = None, None

    def ensure_started(self) -> None:
        """(Re)start the worker; its start-up never counts towards a measurement's time."""
        if self.proc is None or not self.proc.is_alive():
            self._kill()
            self._start()

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: Optional[float]) -> _Outcome:
        self.ensure_started()
        self.conn.send(("call", fn, args))
        deadline = None if timeout is None or timeout <= 0 else time.monotonic() + timeout
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            if self.conn.poll(wait):
                try:
                    status, payload, error = self.conn.recv()
                except (EOFError, OSError):
                    return self._died()
                return _Outcome(status, payload, error)
            if not self.proc.is_alive():
                return self._died()
            if deadline is not None and time.monotonic() >= deadline:
                self._kill()
                return _Outcome("timeout", None, f"MeasurementTimeout: measurement exceeded its timeout of "
                                                 f"{timeout:g} s (worker process killed)")

    def _died(self) -> _Outcome:
        code = self.proc.exitcode if self.proc is not None else None
        if code is None and self.proc is not None:
            self.proc.join(5)
            code = self.proc.exitcode
        self._kill()
        if code == -signal.SIGKILL:
            return _Outcome("oom", None, "WorkerKilled: the measurement process was killed by SIGKILL "
                                         "(most likely the out-of-memory killer)")
        return _Outcome("failed", None, f"WorkerDied: the measurement process exited with code {code}")

    def close(self) -> None:
        if self.conn is not None and self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(5)
            except Exception:
                pass
        self._kill()


def _import_module(name: str) -> dict[str, Any]:
    import importlib

    importlib.import_module(name)
    return {}


def _picklable(*objs: Any) -> bool:
    try:
        for obj in objs:
            pickle.dumps(obj)
        return True
    except Exception:
        return False


def _can_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------------------------
# Report


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

    def frame(self, store: Optional[Store] = None) -> Any:
        """The results table of this space and environment (see explorer.results.load)."""
        from explorer import results

        return results.load(store or self.store_url, space=self.space, env=self.env_key)

    def summary(self, store: Optional[Store] = None) -> Any:
        """Fastest point at each resolution, per LLM."""
        from explorer import results

        return results.fastest_per_resolution(self.frame(store))

    def format(self, store: Optional[Store] = None) -> str:
        n = sum(self.measured.values())
        lines = [f"sweep {self.space!r}: {self.n_points} points, {n} measured now, {self.skipped} already stored, "
                 f"{len(self.failures)} failed, {_fmt_duration(self.elapsed_s)}"]
        try:
            table = self.summary(store)
        except Exception as exc:  # a summary must never hide where the results are
            table = None
            lines.append(f"(no summary table: {exc})")
        if table is not None and len(table):
            lines.append("fastest point at each resolution, per LLM (TTFT = encoder + projector + prefill):")
            lines.append(table.to_string(index=False))
        elif table is not None:
            lines.append("no complete points yet")
        for f in self.failures[:10]:
            first = (f.get("error") or "").splitlines()[0] if f.get("error") else ""
            lines.append(f"  {f['status']}: {f['kind']} {f['label']}: {first}")
        if len(self.failures) > 10:
            lines.append(f"  ... and {len(self.failures) - 10} more failures (status column of the results)")
        lines.append(f"results: {self.store_url}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The engine


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


def _resolve_callables(measure_encoder: Optional[Callable[..., Any]], measure_projector: Optional[Callable[..., Any]],
                       measure_prefill: Optional[Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    fns: dict[str, Optional[Callable[..., Any]]] = {"encoder": measure_encoder, "projector": measure_projector,
                                                     "prefill": measure_prefill}
    if fns["encoder"] is None:
        from explorer.measure.encoder import measure_encoder as fns_enc

        fns["encoder"] = fns_enc
    if fns["projector"] is None:
        from explorer.measure.projector import measure_projector as fns_proj

        fns["projector"] = fns_proj
    if fns["prefill"] is None:
        from explorer.measure.prefill import measure_prefill as fns_pre

        fns["prefill"] = fns_pre
    return fns  # type: ignore[return-value]


def run_sweep(
    space: Union[Space, str, Any],
    settings: Any = None,
    store: Union[Store, str, None] = None,
    *,
    resume: bool = True,
    retry_failed: bool = False,
    timeout_s: Optional[float] = None,
    isolation: str = "auto",
    progress: bool = True,
    max_measurements: Optional[int] = None,
    measure_encoder: Optional[Callable[..., Any]] = None,
    measure_projector: Optional[Callable[..., Any]] = None,
    measure_prefill: Optional[Callable[..., Any]] = None,
    shape_fn: Optional[ShapeFn] = None,
    llm_info: Optional[Callable[[str], tuple[int, dict[str, Any], float]]] = None,
    environment: Any = None,
    gflops_fn: Optional[Callable[[str, Mapping[str, Any], int], float]] = None,
    plan: Optional[SweepPlan] = None,
    log: Callable[[str], None] = print,
) -> SweepReport:
    """Measure every design point of ``space`` into ``store`` (see the module docstring).

    ``space``: a Space, a space name or a YAML path. ``settings``: MeasureSettings (default: the
    space's ``measure:`` section over the defaults). ``store``: a Store or URL (default
    ``results/<space>/store.db``). ``resume=False`` re-measures what is stored; ``retry_failed``
    re-measures stored failures. ``timeout_s`` caps one measurement. ``max_measurements`` stops
    after that many (handy to split work). The ``measure_*`` callables default to
    ``explorer.measure``'s; ``shape_fn``/``llm_info``/``environment``/``gflops_fn`` replace the
    model-zoo lookups in tests.
    """
    t0 = time.monotonic()
    if not isinstance(space, Space):
        space = load_space(space, shape_fn=shape_fn, check_models=shape_fn is None)
    if settings is None:
        settings = default_settings(space)
    elif hasattr(settings, "validate"):
        settings.validate()
    if isinstance(store, Store):
        st = store
    else:
        st = Store(store or f"results/{space.name}")
    if plan is None:
        plan = plan_sweep(space, settings, st, resume=resume, retry_failed=retry_failed, shape_fn=shape_fn,
                          llm_info=llm_info, environment=environment, gflops_fn=gflops_fn)
    fns = _resolve_callables(measure_encoder, measure_projector, measure_prefill)

    mode = isolation
    if mode == "auto":
        if _picklable(fns["encoder"], fns["projector"], fns["prefill"], settings):
            mode = "process"
        else:
            mode = "alarm" if _can_alarm() else "inline"
    if mode not in ("process", "alarm", "inline"):
        raise ValueError(f"invalid isolation={isolation!r}: one of auto, process, alarm, inline")
    if mode == "process" and not _picklable(fns["encoder"], fns["projector"], fns["prefill"], settings):
        raise ValueError("isolation='process' needs picklable (module-level) measure functions; "
                         "use isolation='alarm' or 'inline'")
    if mode == "alarm" and not _can_alarm():
        warnings.warn("isolation='alarm' needs the main thread of a POSIX process; running inline without a "
                      "timeout", stacklevel=2)
        mode = "inline"

    st.save_points(plan.point_records)
    todo = list(plan.todo)
    if max_measurements is not None:
        todo = todo[: max(0, int(max_measurements))]
    unique = {k: v["unique"] for k, v in plan.counts().items()}
    report = SweepReport(space=space.name, store_url=st.url, env_key=plan.env_key, environment=plan.environment,
                         n_points=len(plan.points), unique=unique, measured={k: 0 for k in unique},
                         skipped=len(plan.jobs) - len(plan.todo))
    if not todo:
        report.elapsed_s = time.monotonic() - t0
        return report

    preload = sorted({getattr(f, "__module__", "") for f in fns.values()} - {"", "__main__"})
    runner: Any = _ProcessRunner(preload) if mode == "process" else _InlineRunner(alarm=(mode == "alarm"))
    stop = _StopFlag()
    stop.install()
    bar = _progress_bar(todo, plan, enabled=progress)
    env_dict = plan.environment
    done = 0
    try:
        for job in todo:
            if stop.requested:
                break
            if bar is not None:
                bar.set_postfix_str(f"{done}/{len(todo)} {job.kind} {job.label}", refresh=True)
            if isinstance(runner, _ProcessRunner):
                runner.ensure_started()
            started = utcnow()
            t_start = time.monotonic()
            outcome = runner.run(fns[job.kind], job.call_args() + (settings,), timeout_s)
            duration = time.monotonic() - t_start
            finished = utcnow()
            st.save_measurement(MeasurementRecord(
                kind=job.kind, key=job.key, env_key=plan.env_key, environment=env_dict, inputs=job.inputs,
                status=outcome.status, payload=outcome.payload, error=outcome.error, started_at=started,
                finished_at=finished, duration_s=duration))
            done += 1
            report.measured[job.kind] += 1
            if outcome.status != "ok":
                report.failures.append({"kind": job.kind, "key": job.key, "label": job.label,
                                        "status": outcome.status, "error": outcome.error})
                first = (outcome.error or "").splitlines()[0] if outcome.error else ""
                _write(bar, log, f"{outcome.status}: {job.kind} {job.label}: {first}")
            if bar is not None:
                bar.update(plan.estimates_s[job.key])
    except KeyboardInterrupt:
        stop.requested = True
    finally:
        stop.restore()
        if bar is not None:
            bar.set_postfix_str(f"{done}/{len(todo)} done", refresh=True)
            bar.close()
        runner.close()
    report.interrupted = stop.requested and done < len(todo)
    report.remaining = len(plan.todo) - done
    report.elapsed_s = time.monotonic() - t0
    return report


def _write(bar: Any, log: Callable[[str], None], text: str) -> None:
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        log(text)


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
