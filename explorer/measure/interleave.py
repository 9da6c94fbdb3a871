"""Interleaved measurement: several measurements timed in shuffled rounds, so that drift and bursts
of other work hit all of them alike.

:func:`run_interleaved` runs each task (a whole measurement: build, count, export, time) in a
thread of its own, but only one task runs at a time: the caller's thread hands a baton round.
A task keeps the baton through its set-up (building the model, counting FLOPs, exporting) and
gives it back after each *turn* of timed samples (:func:`time_callable` does this on its own when
it runs under a round). Every timed call runs on the caller's thread, so one OpenMP team and one
``torch.set_num_threads`` setting serve every sample (OpenMP's thread count is per calling
thread). Round order is shuffled with a seeded generator: in every round, each pending
measurement takes one turn, in a new order.

Within a round a measurement's turn is at least one sample and lasts until ``turn_s`` seconds of
its own samples, so millisecond-long calls take many samples per turn and second-long calls one.
The stopping rule stays each measurement's own (the median's CI, :mod:`.timing`); a measurement
that has converged leaves the rounds and the rest go on.
"""
from __future__ import annotations

import queue
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

__all__ = ["Round", "TaskResult", "run_interleaved", "current_round"]

_LOCAL = threading.local()
DEFAULT_TURN_S = 0.2


def current_round() -> Optional["Round"]:
    """The round the calling thread's task runs under (None outside :func:`run_interleaved`)."""
    return getattr(_LOCAL, "round", None)


@dataclass
class TaskResult:
    """What one task returned, or the exception it raised."""

    value: Any = None
    error: Optional[BaseException] = None


class Round:
    """The handle a task's timer talks to: run a call on the timing thread; end a turn."""

    def __init__(self, index: int, inbox: "queue.Queue[Any]", outbox: "queue.Queue[Any]", turn_s: float) -> None:
        self.index = index
        self.turn_s = turn_s
        self._to_timer = inbox
        self._from_timer = outbox

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the timing thread (inside ``torch.inference_mode``) and return its result."""
        self._to_timer.put(("call", fn))
        ok, value = self._from_timer.get()
        if not ok:
            raise value
        return value

    def end_turn(self) -> None:
        """Give the baton back; returns when this task's next turn comes."""
        self._to_timer.put(("turn",))
        self._from_timer.get()


def _task_main(task: Callable[[], Any], rnd: Round, result: TaskResult) -> None:
    _LOCAL.round = rnd
    try:
        rnd._from_timer.get()  # wait for the first turn
        result.value = task()
    except BaseException as exc:  # noqa: BLE001 - every failure is the task's result
        result.error = exc
    finally:
        _LOCAL.round = None
        rnd._to_timer.put(("done",))


def run_interleaved(tasks: Sequence[Callable[[], Any]], seed: int = 0, turn_s: float = DEFAULT_TURN_S,
                    on_round: Optional[Callable[[int, list[int]], None]] = None) -> list[TaskResult]:
    """Run ``tasks`` one at a time in shuffled rounds of turns (see the module docstring).

    Returns one :class:`TaskResult` per task, in the tasks' order. A task that raises does not
    stop the others. ``on_round(round_number, order)`` is told each round's order (tests).
    """
    if not tasks:
        return []
    if turn_s < 0:
        raise ValueError(f"invalid turn_s={turn_s!r}: a number of seconds >= 0")
    results = [TaskResult() for _ in tasks]
    rounds = [Round(i, queue.Queue(), queue.Queue(), turn_s) for i in range(len(tasks))]
    threads = [threading.Thread(target=_task_main, args=(t, r, res), name=f"explorer-measure-{i}", daemon=True)
               for i, (t, r, res) in enumerate(zip(tasks, rounds, results))]
    for th in threads:
        th.start()
    rng = random.Random(seed)
    threads_before = torch.get_num_threads()  # timings may set the timing thread's; restored below
    active = list(range(len(tasks)))
    number = 0
    try:
        while active:
            order = list(active)
            rng.shuffle(order)
            if on_round is not None:
                on_round(number, list(order))
            number += 1
            for i in order:
                rnd = rounds[i]
                rnd._from_timer.put(None)  # your turn
                while True:
                    msg = rnd._to_timer.get()
                    if msg[0] == "call":
                        try:
                            with torch.inference_mode():
                                out = (True, msg[1]())
                        except BaseException as exc:  # noqa: BLE001 - handed back to the task
                            out = (False, exc)
                        rnd._from_timer.put(out)
                        continue
                    if msg[0] == "done":
                        active.remove(i)
                    break
    finally:
        for th in threads:
            th.join(timeout=0 if active else None)
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)
    return results
