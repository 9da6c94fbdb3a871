"""Fast stand-ins for the measurement functions and model lookups (module level: picklable).

The counters count calls in the process that ran them (use ``isolation="inline"`` to count).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping

from explorer.data.space import EncoderShape
from explorer.engine.backend import FixedEnvironment, MeasureBackend
from explorer.engine.options import SearchOptions, SweepOptions, options_from
from explorer.engine.search import run_search
from explorer.engine.sweep import run_sweep
from explorer.measure.costs import EncoderCost, PrefillCost, ProjectorCost, Timing

CALLS: collections.Counter = collections.Counter()
LLM_HIDDEN = {"llm-a": 32, "llm-b": 64}


def timing(ms: float) -> Timing:
    return Timing(median_ms=ms, p10_ms=ms * 0.9, p90_ms=ms * 1.1, mean_ms=ms, cv=0.05, n=5,
                  ci_low_ms=ms * 0.95, ci_high_ms=ms * 1.05, noisy=False)


def shape(family: str, knobs: Mapping[str, Any], resolution: int) -> EncoderShape:
    if family not in ("toy", "toy2"):
        raise ValueError(f"unknown encoder {family!r}; known encoders: toy, toy2")
    width = knobs.get("width", 1)
    if not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(f"invalid width={width!r}: a positive number")
    if resolution % 32:
        raise ValueError(f"invalid resolution={resolution!r}: a multiple of 32")
    return EncoderShape(out_channels=int(64 * width), visual_tokens=(resolution // 32) ** 2,
                        params_m=float(10 * width * knobs.get("depth", 1)))


def llm_info(llm: str) -> tuple[int, dict[str, Any], float]:
    if llm not in LLM_HIDDEN:
        raise ValueError(f"invalid llm={llm!r}: one of {', '.join(LLM_HIDDEN)}")
    return LLM_HIDDEN[llm], {"name": llm, "hidden": LLM_HIDDEN[llm]}, 100.0


def gflops(family: str, knobs: Mapping[str, Any], resolution: int) -> float:
    return 0.001 * resolution


@dataclass(frozen=True)
class FakeEnv:
    key: str = "fake-env"

    def to_dict(self) -> dict[str, Any]:
        return {"device": "fake", "device_type": "cpu", "dtype": "float32", "threads": 1,
                "torch_version": "0", "settings_digest": "x"}


def measure_encoder(name: str, knobs: dict[str, Any], resolution: int, settings: Any, time: bool = True) -> EncoderCost:
    CALLS["encoder"] += 1
    if knobs.get("fail"):
        raise RuntimeError(f"boom at {resolution}")
    s = shape(name, knobs, resolution)
    delay = float(os.environ.get("EXPLORER_FAKE_DELAY", "0")) + float(knobs.get("sleep_s", 0))
    if delay:
        _sleep(delay)
    return EncoderCost(encoder=name, knobs=dict(knobs), resolution=resolution, visual_tokens=s.visual_tokens,
                       out_channels=s.out_channels, params_m=s.params_m, gflops=resolution / 100,
                       latency=timing(resolution / 10), peak_mem_mb=1.0, peak_mem_method="fake")


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def measure_projector(in_channels: int, hidden: int, tokens: int, settings: Any, time: bool = True) -> ProjectorCost:
    CALLS["projector"] += 1
    return ProjectorCost(in_channels=in_channels, hidden=hidden, tokens=tokens, params_m=0.01, gflops=0.001,
                         latency=timing(0.1))


def measure_prefill(llm: str, tokens: int, settings: Any, time: bool = True) -> PrefillCost:
    CALLS["prefill"] += 1
    return PrefillCost(llm=llm, tokens=tokens, params_m=100.0, gflops=tokens * 0.2, latency=timing(tokens * 1.0),
                       method="whole-model")


def hang(*args: Any, **kwargs: Any) -> Any:
    _sleep(60)


def raise_oom(*args: Any, **kwargs: Any) -> Any:
    raise MemoryError("fake allocation failure")


#: The fakes as one backend (what the engines take instead of explorer.measure's functions).
BACKEND = MeasureBackend(measure_encoder=measure_encoder, measure_projector=measure_projector,
                         measure_prefill=measure_prefill, encoder_shape=shape, llm_info=llm_info,
                         environment=FixedEnvironment(FakeEnv()), encoder_gflops=gflops, real_models=False)

_OPTION_NAMES = {f.name for f in dataclasses.fields(SweepOptions)}


def backend(**changes: Any) -> MeasureBackend:
    """BACKEND with some parts replaced (``environment`` may be an Environment-like value)."""
    if "environment" in changes and not callable(changes["environment"]):
        changes["environment"] = FixedEnvironment(changes["environment"])
    return dataclasses.replace(BACKEND, **changes)


def split(kw: dict[str, Any]) -> tuple[SweepOptions, MeasureBackend]:
    """Keyword arguments of a test as (SweepOptions, backend): option names go to the options
    (isolation inline and no progress bar unless given), everything else replaces backend parts."""
    opts = {k: kw.pop(k) for k in list(kw) if k in _OPTION_NAMES}
    opts.setdefault("isolation", "inline")
    opts.setdefault("progress", False)
    return SweepOptions(**opts), backend(**kw)


def run(space: Any, settings: Any, store: Any, **kw: Any) -> Any:
    """run_sweep with the fakes; ``kw`` as :func:`split` takes them."""
    options, be = split(dict(kw))
    return run_sweep(space, settings, store, options, be)


_SEARCH_NAMES = {f.name for f in dataclasses.fields(SearchOptions)}


def search(space: Any, settings: Any, store: Any, **kw: Any) -> Any:
    """run_search with the fakes: search option names (``study_name`` for ``study``, ``constraints``
    as a mapping of limits) go to SearchOptions, sweep option names to SweepOptions, the rest to the backend."""
    kw = dict(kw)
    values = {k: kw.pop(k) for k in list(kw) if k in _SEARCH_NAMES}
    if "study_name" in kw:
        values["study"] = kw.pop("study_name")
    values.update(dict(kw.pop("constraints", None) or {}))
    options = options_from(SearchOptions, values)
    sweep_options, be = split(kw)
    return run_search(space, settings, store, options, sweep_options, be)


def kill_self(*args: Any, **kwargs: Any) -> Any:
    """A measurement whose process dies by SIGKILL (as a user's `kill -9`, or a scheduler's preemption)."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def kill_when(proc: Any, ready: Any, timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    """SIGKILL the subprocess ``proc`` as soon as ``ready()`` is true (at most ``timeout_s``; a
    process that ends first fails the test with its output), then wait for it and close its
    stdout. What the kill tests of the sweep share."""
    import signal

    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, f"{what} in time"
            time.sleep(poll_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
