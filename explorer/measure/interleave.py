"""Interleaved measurement: several measurements timed in shuffled rounds, so that drift and bursts
of other work hit all of them alike.

:func:`run_interleaved` runs each task (a whole measurement: build, count, export, time) as a
coroutine (a greenlet) on the calling thread, one at a time. A task runs through its set-up
(building the model, counting FLOPs, exporting) and hands control back after each *turn* of
timed samples (:func:`~explorer.measure.timing.time_callable` does this on its own when it runs
under a round). Round order is shuffled with a seeded generator: in every round, each pending
measurement takes one turn, in a new order.

Why coroutines on one thread rather than threads: OpenMP keeps a thread team and a thread count
per calling thread, and libgomp shortens its spin-waits when it manages more threads than there
are cores. Tasks in threads of their own made every 2-thread sample 20-40% slower on 2 cores; on
one thread, every sample runs with the one team and the one ``torch.set_num_threads`` setting
that a one-at-a-time measurement has.

A turn is one sample (``turn_s`` > 0 lets a turn run on until that many seconds of its own
samples). The stopping rule and the caps stay each measurement's own (the median's CI within
``target_rel_ci``, ``max_iters``, ``max_time_s`` of its own samples, :mod:`.timing`), so a group
takes the samples, and the time, that the same measurements take one after another; one that
stops leaves the rounds and the rest go on. (A cap shared by the group, tried first, kept the
unconverged measurements in lockstep but gave the slow ones the budget the fast ones did not use:
the default sweep took 10-20% longer.)

``measure.window=group`` changes one thing: a timing that meets its stopping rule while another
of its group is still timing towards its own keeps sampling, one sample per round, until none
is (or its own ``max_iters`` / ``max_time_s`` ends it). Every measurement of the group then
spans the same stretch of time, so a host that changes speed for tens of seconds (docs/benchmarks.md,
"The host's own speed") shifts them alike instead of catching one measurement in a fast stretch
and another in a slow one; it costs the samples that early-converging measurements skip with
the default ``own``. The statistics use every sample; ``noisy`` is judged on them all.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

__all__ = ["Round", "TaskResult", "run_interleaved", "current_round", "DEFAULT_TURN_S"]

DEFAULT_TURN_S = 0.0
_ACTIVE: list[Optional["Round"]] = [None]


def current_round() -> Optional["Round"]:
    """The round of the task running now (None outside :func:`run_interleaved`)."""
    return _ACTIVE[0]


@dataclass
class TaskResult:
    """What one task returned, or the exception it raised."""

    value: Any = None
    error: Optional[BaseException] = None


class Round:
    """The handle a task's timer talks to: run a call, end a turn, say it has settled."""

    def __init__(self, index: int, turn_s: float, scheduler: Any, group: "_Group") -> None:
        self.index = index
        self.turn_s = turn_s
        self._scheduler = scheduler  # the greenlet that hands out the turns
        self._group = group

    def settle(self) -> None:
        """This task's timing has what it needs (it may still sample, riding along with the rest)."""
        self._group.settled.add(self.index)

    def others_unsettled(self) -> bool:
        """Whether another task of the group is still timing towards its own stopping rule."""
        group = self._group
        return any(j != self.index and j not in group.settled and j not in group.finished for j in range(group.size))

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run one timed call (inside ``torch.inference_mode``, entered and left around it: a
        context that stayed open across turns would be closed by whichever task ends first)."""
        import torch

        with torch.inference_mode():
            return fn()

    def end_turn(self) -> None:
        """Hand control back; returns when this task's next turn comes."""
        _ACTIVE[0] = None
        self._scheduler.switch()
        _ACTIVE[0] = self


@dataclass
class _Group:
    """What the tasks of one interleaved group know of each other."""

    size: int = 1
    settled: set[int] = field(default_factory=set)  # timings that met their stopping rule
    finished: set[int] = field(default_factory=set)  # tasks that returned or raised


def run_interleaved(tasks: Sequence[Callable[[], Any]], seed: int = 0, turn_s: float = DEFAULT_TURN_S,
                    on_round: Optional[Callable[[int, list[int]], None]] = None,
                    on_finish: Optional[Callable[[int, TaskResult], None]] = None) -> list[TaskResult]:
    """Run ``tasks`` one at a time in shuffled rounds of turns (see the module docstring).

    Returns one :class:`TaskResult` per task, in the tasks' order. A task that raises does not
    stop the others; KeyboardInterrupt stops the group. ``on_round(round_number, order)`` is told
    each round's order (tests); ``on_finish(index, result)`` is called (between turns, outside
    every task) as soon as a task has returned or raised, so its caller can keep the result
    before the rest of the group ends. Runs on the calling thread; not reentrant.
    """
    from greenlet import GreenletExit, getcurrent, greenlet

    if not tasks:
        return []
    if turn_s < 0:
        raise ValueError(f"invalid turn_s={turn_s!r}: a number of seconds >= 0")
    if _ACTIVE[0] is not None:
        raise RuntimeError("run_interleaved inside an interleaved task")
    import torch

    scheduler = getcurrent()
    results = [TaskResult() for _ in tasks]
    group = _Group(size=len(tasks))
    rounds = [Round(i, turn_s, scheduler, group) for i in range(len(tasks))]
    finished = group.finished

    def body(i: int) -> None:
        _ACTIVE[0] = rounds[i]
        try:
            results[i].value = tasks[i]()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure is the task's result
            results[i].error = exc
        finally:
            _ACTIVE[0] = None
            finished.add(i)

    lets = [greenlet(lambda i=i: body(i), parent=scheduler) for i in range(len(tasks))]
    rng = random.Random(seed)
    threads_before = torch.get_num_threads()  # a timing may set them; restored below
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
                lets[i].switch()
                if i in finished:
                    active.remove(i)
                    if on_finish is not None:
                        on_finish(i, results[i])
    finally:
        _ACTIVE[0] = None
        for i in active:  # interrupted: end the others' frames (their finally blocks run)
            if not lets[i].dead:
                lets[i].throw(GreenletExit)
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)
    return results
