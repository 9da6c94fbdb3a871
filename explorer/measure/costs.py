"""The values measurement returns: one frozen dataclass per factor of TTFT.

These are the contract between measurement and the engines/store: every field is a plain
JSON-serialisable value so a cost round-trips through the store unchanged
(``Cost.from_dict(cost.to_dict()) == cost``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

T = TypeVar("T")
_TIMING_FIELDS = ("latency", "preprocess_latency")


class _Serialisable:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        kwargs = dict(data)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in _TIMING_FIELDS and isinstance(kwargs.get(f.name), dict):
                kwargs[f.name] = Timing(**kwargs[f.name])
        return cls(**kwargs)  # type: ignore[call-arg]


@dataclass(frozen=True)
class Timing(_Serialisable):
    """Latency statistics of one measured callable (milliseconds)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    cv: float  # coefficient of variation (std / mean)
    n: int  # timed repetitions
    ci_low_ms: float  # 95% confidence interval of the median
    ci_high_ms: float
    noisy: bool  # True when a cap ended the protocol before the CI reached the target
    # What else used the machine while the samples were taken (explorer.measure.contention):
    # mean logical cores busy with other processes, the fraction of CPU time the hypervisor
    # stole, and whether either crossed the contention thresholds. None: not observed (older
    # stores, or a device without the counters).
    other_cores: Optional[float] = None
    steal: Optional[float] = None
    contended: bool = False
    # How fast the machine was (explorer.measure.probe): the median time of the reference probe
    # over the samples, and the median of sample / probe (latency in probe units). None: no probe.
    probe_ms: Optional[float] = None
    probe_units: Optional[float] = None
    # How much the machine's speed moved over the samples: the probe's 10th and 90th percentiles.
    probe_p10_ms: Optional[float] = None
    probe_p90_ms: Optional[float] = None
    # Where a re-measurement in another run on this machine would land, at remeasure_level, with the
    # default drift allowance (explorer.intervals; docs/measurement.md "Re-measurement intervals").
    # None: older payloads (the results compute it from the fields above).
    remeasure_low_ms: Optional[float] = None
    remeasure_high_ms: Optional[float] = None
    remeasure_level: Optional[float] = None


@dataclass(frozen=True)
class EncoderCost(_Serialisable):
    encoder: str
    knobs: dict[str, Any]
    resolution: int
    visual_tokens: int
    out_channels: int
    params_m: float
    gflops: float  # 2 x MACs, one image
    latency: Optional[Timing]  # one forward at settings.batch_size; None when not timed
    peak_mem_mb: Optional[float]
    peak_mem_method: str
    skipped_ops: dict[str, int] = field(default_factory=dict)
    # Image preprocessing (decoded source image -> this encoder's input), timed at batch_size
    # images; None when settings.preprocess == "none" or not timed. ``preprocess`` says what
    # ran, e.g. "pil:1920x1080->crop->256".
    preprocess_latency: Optional[Timing] = None
    preprocess: str = "none"
    runtime: str = "eager"  # what ran the encoder: eager | compile | onnxruntime
    runtime_error: float = 0.0  # relative max-abs error of the runtime's output against eager


@dataclass(frozen=True)
class ProjectorCost(_Serialisable):
    in_channels: int
    hidden: int
    tokens: int
    params_m: float
    gflops: float
    latency: Optional[Timing]
    runtime: str = "eager"
    runtime_error: float = 0.0


@dataclass(frozen=True)
class PrefillCost(_Serialisable):
    llm: str
    tokens: int  # prompt length P = visual + text tokens
    params_m: float
    gflops: float  # exact for the documented prefill convention
    latency: Optional[Timing]
    method: str  # "whole-model", "layer-sampled(k=..)" or "not-timed"
    skipped_ops: dict[str, int] = field(default_factory=dict)
    lm_head: str = "last"  # LM head on the last prompt position or on all of them
    attention: str = "sdpa"  # transformers' attention implementation that was timed
