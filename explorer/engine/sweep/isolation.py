"""Running one measurement: inline, with an alarm, or in a persistent worker process.

Isolation (``sweep.isolation``) decides how a measurement runs and how its timeout is enforced:

- ``process``: in a persistent spawned child (started once, reused). A timeout kills the child,
  so a stuck kernel or a runaway allocation is really stopped, and a fresh one is started. A child
  that dies is recorded as ``oom`` when the kernel's OOM killer counted a kill meanwhile (cgroup
  ``memory.events``), else as ``killed``; a resume measures ``killed`` jobs again.
- ``alarm``: in this process, with a ``SIGALRM`` timer (POSIX, main thread only). The timeout is
  raised between Python bytecodes, i.e. after the torch op in progress returns.
- ``inline``: in this process, no timeout (what unit tests with fake measurers use).
- ``auto``: ``process`` when the measure functions can be pickled, else ``alarm`` on the main
  thread of a POSIX system, else ``inline``.
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = ["MeasurementTimeout", "Outcome", "InlineRunner", "ProcessRunner", "make_runner", "RETRIED_ON_RESUME",
           "oom_kill_count"]

#: Stored statuses that a resume measures again (the measurement never finished by its own fault).
RETRIED_ON_RESUME: frozenset[str] = frozenset({"killed"})


def oom_kill_count() -> Optional[int]:
    """The kernel's count of OOM kills in this cgroup (cgroup v2 ``memory.events``), None if unreadable."""
    for path in (Path("/sys/fs/cgroup/memory.events"), Path("/sys/fs/cgroup/memory/memory.oom_control")):
        try:
            for line in path.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


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


def _failure(exc: BaseException) -> Outcome:
    """The stored outcome of a measurement that raised ``exc``."""
    return Outcome(_classify(exc), None, _error_text(exc))


def _free_memory(collect: bool) -> None:
    """Release what a measurement left behind (a full collection only after a failure: the
    traceback keeps the model alive, and gc.collect costs ~0.5 s once torch is loaded)."""
    if collect:
        gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():  # pragma: no cover - GPU machines
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Outcome:
    status: str
    payload: Optional[dict[str, Any]]
    error: Optional[str]


#: ``on_done(index, outcome)``: told as each call of a group finishes.
OnDone = Callable[[int, Outcome], None]


class InlineRunner:
    """Runs in this process; ``alarm=True`` enforces the timeout with SIGALRM."""

    def __init__(self, alarm: bool):
        self.alarm = alarm

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: Optional[float]) -> Outcome:
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
            return Outcome("ok", _payload(cost), None)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure is data, the sweep goes on
            if isinstance(exc, (SystemExit, GeneratorExit)):
                raise
            return _failure(exc)
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
            _free_memory(collect=failed)

    def run_group(self, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], timeout: Optional[float],
                  seed: int = 0, on_done: Optional[OnDone] = None) -> list[Optional[Outcome]]:
        """Run ``calls`` interleaved in shuffled rounds (:func:`explorer.measure.interleave.run_interleaved`).

        ``on_done(index, outcome)`` is called as each call finishes, while the others still time.
        With ``alarm`` the calls run one at a time instead (a SIGALRM cannot stop one member of
        an interleaved group), each with its own timeout. Never a None entry here (see ProcessRunner).
        """
        if self.alarm or len(calls) == 1:
            outcomes: list[Optional[Outcome]] = []
            for i, (fn, args) in enumerate(calls):
                outcomes.append(self.run(fn, args, timeout))
                if on_done is not None:
                    on_done(i, outcomes[-1])  # type: ignore[arg-type]
            return outcomes
        from explorer.measure.interleave import TaskResult, run_interleaved

        done: list[Optional[Outcome]] = [None] * len(calls)
        failed = [False]

        def finish(i: int, r: TaskResult) -> None:
            if r.error is None:
                try:
                    done[i] = Outcome("ok", _payload(r.value), None)
                except TypeError as exc:
                    done[i] = _failure(exc)
            else:
                failed[0] = True
                done[i] = _failure(r.error)
            if on_done is not None:
                on_done(i, done[i])  # type: ignore[arg-type]

        try:
            run_interleaved([functools.partial(fn, *args) for fn, args in calls], seed=seed, on_finish=finish)
            return done
        finally:
            _free_memory(collect=failed[0])

    def ensure_started(self) -> None:
        """Nothing to start in this process."""

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
    runner = InlineRunner(alarm=False)
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
        if msg[0] == "group":  # one ("one", index, outcome) message as each finishes, then ("end",)
            _, calls, seed = msg

            def send_one(i: int, o: Outcome) -> None:
                try:
                    conn.send(("one", i, (o.status, o.payload, o.error)))
                except Exception as exc:  # an unpicklable payload
                    conn.send(("one", i, ("failed", None, f"cannot send the result back: {exc}")))

            runner.run_group(calls, None, seed, on_done=send_one)
            conn.send(("end",))
            continue
        else:
            _, fn, args = msg
            out = runner.run(fn, args, None)
            reply = (out.status, out.payload, out.error)
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable payload
            bad = ("failed", None, f"cannot send the result back: {exc}")
            conn.send([bad] * len(reply) if isinstance(reply, list) else bad)


class ProcessRunner:
    """A persistent spawned worker; timeouts and crashes kill and replace it."""

    def __init__(self, preload: Sequence[str] = (), environ: Optional[Mapping[str, str]] = None):
        self.ctx = multiprocessing.get_context("spawn")
        self.environ = dict(environ or {})  # set in the worker's environment before it imports anything
        self.proc: Any = None
        self.conn: Any = None
        self.preload = list(preload)
        self._oom_before: Optional[int] = None

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main, args=(child, os.getpid()), daemon=True,
                                     name="explorer-measure")
        saved = {k: os.environ.get(k) for k in self.environ}
        os.environ.update(self.environ)  # a spawned child starts with the parent's environment now
        try:
            self.proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
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

    def _send_and_wait(self, message: tuple[Any, ...], timeout: Optional[float],
                       partial: Optional[Callable[[Any], bool]] = None) -> tuple[str, Any]:
        """Send ``message`` to the worker and wait for its reply: ``("reply", reply)``, or
        ``("died", outcome of _died())``, or ``("timeout", None)`` after killing the worker.
        With ``partial``, each message received is passed to it; it returns True for the last."""
        self.ensure_started()
        self._oom_before = oom_kill_count()
        self.conn.send(message)
        deadline = None if timeout is None or timeout <= 0 else time.monotonic() + timeout
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            if self.conn.poll(wait):
                try:
                    reply = self.conn.recv()
                except (EOFError, OSError):
                    return "died", self._died()
                if partial is None or partial(reply):
                    return "reply", reply
                continue
            if not self.proc.is_alive():
                return "died", self._died()
            if deadline is not None and time.monotonic() >= deadline:
                self._kill()
                return "timeout", None

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: Optional[float]) -> Outcome:
        what, reply = self._send_and_wait(("call", fn, args), timeout)
        if what == "reply":
            return Outcome(*reply)
        if what == "died":
            return reply
        return Outcome("timeout", None, f"MeasurementTimeout: measurement exceeded its timeout of "
                                         f"{timeout:g} s (worker process killed)")

    def run_group(self, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], timeout: Optional[float],
                  seed: int = 0, on_done: Optional[OnDone] = None) -> list[Optional[Outcome]]:
        """Run ``calls`` interleaved in the worker; ``timeout`` is the whole group's.

        ``on_done(index, outcome)`` is called here as soon as the worker reports a call finished.
        Calls still running when the group timed out or the worker died have None: which of them
        was to blame is unknown, so the caller runs them again one at a time (each with its own
        timeout); those that finished before are kept.
        """
        if len(calls) == 1:
            fn, args = calls[0]
            out = self.run(fn, args, timeout)
            if on_done is not None:
                on_done(0, out)
            return [out]
        outcomes: list[Optional[Outcome]] = [None] * len(calls)

        def receive(msg: Any) -> bool:
            if msg[0] == "one":
                _, i, triple = msg
                outcomes[i] = Outcome(*triple)
                if on_done is not None:
                    on_done(i, outcomes[i])  # type: ignore[arg-type]
                return False
            return True  # ("end",)

        self._send_and_wait(("group", list(calls), seed), timeout, partial=receive)
        return outcomes

    def _died(self) -> Outcome:
        code = self.proc.exitcode if self.proc is not None else None
        if code is None and self.proc is not None:
            self.proc.join(5)
            code = self.proc.exitcode
        self._kill()
        if code == -signal.SIGKILL:
            after = oom_kill_count()
            if after is not None and self._oom_before is not None and after > self._oom_before:
                return Outcome("oom", None, "OutOfMemory: the kernel's OOM killer ended the measurement process "
                                            f"(cgroup oom_kill count {self._oom_before} -> {after})")
            return Outcome("killed", None, "WorkerKilled: the measurement process was killed by SIGKILL (not by "
                                           "the OOM killer as far as the cgroup tells); a resume measures it again")
        return Outcome("failed", None, f"WorkerDied: the measurement process exited with code {code}")

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


def make_runner(isolation: str, measure_fns: Sequence[Callable[..., Any]], settings: Any,
                environ: Optional[Mapping[str, str]] = None) -> Any:
    """The runner for ``isolation`` (``auto`` resolved as the module docstring says).

    ``environ``: variables for the worker process's environment (``process`` only; the OpenMP
    wait policy must be set before the worker loads torch).
    """
    mode = isolation
    picklable = _picklable(*measure_fns, settings)
    if mode == "auto":
        mode = "process" if picklable else ("alarm" if _can_alarm() else "inline")
    if mode == "process" and not picklable:
        raise ValueError("invalid sweep.isolation='process': it needs picklable (module-level) measure functions; "
                         "use 'alarm' or 'inline'")
    if mode == "alarm" and not _can_alarm():
        warnings.warn("isolation='alarm' needs the main thread of a POSIX process; running inline without a "
                      "timeout", stacklevel=3)
        mode = "inline"
    if mode == "process":
        preload = sorted({getattr(f, "__module__", "") for f in measure_fns} - {"", "__main__"})
        return ProcessRunner(preload, environ)
    return InlineRunner(alarm=(mode == "alarm"))
