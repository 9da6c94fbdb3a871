"""Predicted results tables: the sweep's columns, filled by the cost model instead of a stopwatch.

:func:`predict_space` gives one row per design point with every column of
:data:`explorer.data.results.COLUMNS` plus :data:`PREDICTED_COLUMNS`: ``latency_source`` is
``predicted:<profile>`` (measured tables say ``measured``), ``ttft_low_ms`` / ``ttft_high_ms`` the
profile's interval. Timing percentiles, CVs and peak memory are NaN: nothing was timed.

Predicted and measured numbers never share a column silently: :func:`side_by_side` joins a
measured table and a predicted one on ``point_key`` with ``_measured`` / ``_predicted`` suffixes,
and :func:`check_single_source` refuses a table that mixes sources.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import pandas as pd
import torch

from explorer.checks import check_bool, check_choice, check_int
from explorer.predict.model import Prediction, predict_trace
from explorer.predict.profile import DeviceProfile
from explorer.predict.pruned import trace_pruned_prefill
from explorer.predict.trace import trace_encoder, trace_prefill, trace_projector

__all__ = ["PREDICTED_COLUMNS", "PredictOptions", "predict_space", "side_by_side", "check_single_source",
           "mark_measured"]

PREDICTED_COLUMNS: tuple[str, ...] = ("latency_source", "ttft_low_ms", "ttft_high_ms", "encoder_latency_low_ms",
                                      "encoder_latency_high_ms", "prefill_latency_low_ms", "prefill_latency_high_ms")


@dataclass(frozen=True)
class PredictOptions:
    dtype: str = "float32"
    batch_size: int = 1
    reparameterize: bool = True

    def __post_init__(self) -> None:
        check_choice("dtype", self.dtype, ("float32", "float16", "bfloat16"))
        check_int("batch_size", self.batch_size, low=1)
        check_bool("reparameterize", self.reparameterize)


def _source(profile: DeviceProfile) -> str:
    return f"predicted:{profile.name}"


def predict_space(space: Any, profile: DeviceProfile, *, llm_profile: Optional[DeviceProfile] = None,
                  options: PredictOptions = PredictOptions(), accuracy_metric: Optional[str] = "avg5") -> pd.DataFrame:
    """One predicted row per design point of ``space`` (a Space, a name or a YAML path).

    ``llm_profile`` (default ``profile``) costs the projector and prefill, for a machine whose
    vision encoder and LLM run on different units (the paper's: CoreML encoder, MLX LLM).
    """
    from explorer.models.llm import get_llm_spec
    from explorer.data.results import COLUMNS, pruning_text
    from explorer.data.space import Space, encoder_shape, enumerate_points, load_space

    profile.peak(options.dtype)  # refuse a dtype the profile has no number for, before any work
    llm_prof = llm_profile or profile
    llm_prof.peak(options.dtype)
    if not isinstance(space, Space):
        space = load_space(space)
    points = enumerate_points(space)
    enc_cache: dict[tuple[Any, ...], tuple[Prediction, float]] = {}
    proj_cache: dict[tuple[int, int, int], tuple[Prediction, float]] = {}
    pre_cache: dict[tuple[Any, ...], tuple[Prediction, float]] = {}
    rows = []
    for p in points:
        knobs = dict(p.knobs)
        knobs = {k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items()}
        shape = encoder_shape(p.encoder, knobs, p.resolution)
        spec = get_llm_spec(p.llm)
        ekey = (p.encoder, repr(sorted(knobs.items())), p.resolution)
        if ekey not in enc_cache:
            tr = trace_encoder(p.encoder, knobs, p.resolution, dtype=options.dtype, batch=options.batch_size,
                               reparameterize=options.reparameterize)
            enc_cache[ekey] = (predict_trace(tr, profile, options.dtype), tr.flops / 1e9 / options.batch_size)
        pkey = (shape.out_channels, spec.hidden, shape.visual_tokens)
        if pkey not in proj_cache:
            tr = trace_projector(*pkey, dtype=options.dtype)
            proj_cache[pkey] = (predict_trace(tr, llm_prof, options.dtype), tr.flops / 1e9)
        tokens = shape.visual_tokens + p.text_tokens
        fkey: tuple[Any, ...] = (spec.name if p.llm == spec.name else p.llm, tokens)
        if p.pruning is not None:  # two segments: K layers over V + T, the rest over T + kept(V)
            fkey += (shape.visual_tokens, p.pruning)
        if fkey not in pre_cache:
            tr = (trace_prefill(spec, tokens, dtype=options.dtype) if p.pruning is None else
                  trace_pruned_prefill(spec, shape.visual_tokens, p.text_tokens, p.pruning, dtype=options.dtype))
            pre_cache[fkey] = (predict_trace(tr, llm_prof, options.dtype), tr.flops / 1e9)
        (enc, enc_gf), (proj, proj_gf), (pre, pre_gf) = enc_cache[ekey], proj_cache[pkey], pre_cache[fkey]
        ttft = enc.ms + proj.ms + pre.ms
        nan = math.nan
        row = {
            "point_key": p.key, "encoder": p.encoder, "knobs": _knobs_json(p), "resolution": p.resolution,
            "llm": p.llm, "text_tokens": p.text_tokens, "visual_tokens": shape.visual_tokens,
            "encoder_params_m": shape.params_m, "encoder_gflops": enc_gf, "encoder_latency_ms": enc.ms,
            "encoder_latency_p10_ms": nan, "encoder_latency_p90_ms": nan, "encoder_latency_cv": nan,
            "encoder_peak_mem_mb": nan,
            "projector_params_m": (shape.out_channels * spec.hidden + spec.hidden * spec.hidden + 2 * spec.hidden) / 1e6,
            "projector_gflops": proj_gf, "projector_latency_ms": proj.ms, "prefill_tokens": tokens,
            "prefill_gflops": pre_gf, "prefill_latency_ms": pre.ms, "prefill_latency_p10_ms": nan,
            "prefill_latency_p90_ms": nan, "prefill_method": "predicted" if p.pruning is None else "predicted: pruned",
            "llm_params_m": spec.num_params() / 1e6,
            "ttft_ms": ttft, "ttft_gflops": enc_gf + proj_gf + pre_gf, "accuracy": nan, "accuracy_source": None,
            "device": profile.name if llm_prof is profile else f"{profile.name} + {llm_prof.name}",
            "dtype": options.dtype, "threads": profile.threads, "torch_version": torch.__version__,
            "status": "ok", "error": "", "measured_at": None,
            "latency_source": _source(profile) if llm_prof is profile else f"predicted:{profile.name}+{llm_prof.name}",
            "ttft_low_ms": enc.low_s * 1e3 + proj.low_s * 1e3 + pre.low_s * 1e3,
            "ttft_high_ms": enc.high_s * 1e3 + proj.high_s * 1e3 + pre.high_s * 1e3,
            "encoder_latency_low_ms": enc.low_s * 1e3, "encoder_latency_high_ms": enc.high_s * 1e3,
            "prefill_latency_low_ms": pre.low_s * 1e3, "prefill_latency_high_ms": pre.high_s * 1e3,
        }
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(COLUMNS) + list(PREDICTED_COLUMNS))
    df["space"] = space.name
    df["pruning"] = [pruning_text(p.pruning) for p in points]
    if accuracy_metric and len(df):
        from explorer.data.reference import attach_accuracy

        df = attach_accuracy(df, metric=accuracy_metric)
    return df


def _knobs_json(point: Any) -> str:
    from explorer.data.space import canonical_json

    return canonical_json({k: list(v) if isinstance(v, tuple) else v for k, v in point.knobs})


def mark_measured(df: pd.DataFrame) -> pd.DataFrame:
    """A measured results table with ``latency_source='measured'`` (a copy)."""
    out = df.copy()
    if "latency_source" in out.columns and out["latency_source"].astype(str).str.startswith("predicted").any():
        raise ValueError("mark_measured: this table holds predicted rows; it is not a measured table")
    out["latency_source"] = "measured"
    return out


def check_single_source(df: pd.DataFrame) -> str:
    """The one latency source of ``df``; raises if predicted and measured rows are mixed."""
    if "latency_source" not in df.columns:
        return "measured"
    sources = sorted(set(df["latency_source"].fillna("measured").astype(str)))
    if len(sources) > 1:
        raise ValueError(f"the table mixes latency sources {', '.join(sources)}: compare them with "
                         "explorer.predict.side_by_side instead of putting them in one column")
    return sources[0] if sources else "measured"


_SIDE_COLUMNS = ("encoder_latency_ms", "projector_latency_ms", "prefill_latency_ms", "ttft_ms")


def side_by_side(measured: pd.DataFrame, predicted: pd.DataFrame,
                 columns: Iterable[str] = _SIDE_COLUMNS) -> pd.DataFrame:
    """Measured and predicted latencies of the same points in separate columns, with their ratio.

    Rows are the points both tables have (by ``point_key``); ``<col>_measured``,
    ``<col>_predicted`` and ``ttft_ratio`` = predicted / measured.
    """
    if check_single_source(measured) != "measured":
        raise ValueError("side_by_side: the first table must be measured (latency_source='measured')")
    src = check_single_source(predicted)
    if not src.startswith("predicted"):
        raise ValueError("side_by_side: the second table must be predicted (latency_source='predicted:...')")
    cols = list(columns)
    keys = ["point_key", "encoder", "knobs", "resolution", "llm", "text_tokens"]
    m = measured[keys + cols].rename(columns={c: f"{c}_measured" for c in cols})
    p = predicted[["point_key"] + cols + [c for c in ("ttft_low_ms", "ttft_high_ms") if c in predicted.columns]]
    p = p.rename(columns={c: f"{c}_predicted" for c in cols})
    out = m.merge(p, on="point_key", how="inner")
    out["ttft_ratio"] = out["ttft_ms_predicted"] / out["ttft_ms_measured"]
    out["latency_source"] = f"measured vs {src}"
    return out

