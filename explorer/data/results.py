"""The results table: one row per design point, joined with its measurements and accuracy.

``load("results/fastvithd")`` (a results folder, a ``.db`` file or any SQLAlchemy URL) gives a
pandas DataFrame whose columns are documented in ``docs/results.md`` (and listed in
:data:`COLUMNS`). TTFT is the sum of the three medians measured in the same environment;
measurements from different environments are never mixed in one row.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import pandas as pd

from explorer.checks import check_bool
from explorer.data.confidence import TimingFlags, any_true, legend, marks, remeasure_command, timing_flags
from explorer.data.drift import INTERVAL_COLUMNS as LATENCY_INTERVAL_COLUMNS, history_drift, row_intervals, ties
from explorer.data.space import canonical_json
from explorer.data.atomic import atomic_path
from explorer.data.store import AccuracyRecord, MeasurementRecord, PointRecord, Store
from explorer.intervals import DEFAULT_DRIFT, LEVEL, Drift

__all__ = ["COLUMNS", "EXTRA_COLUMNS", "CONFIDENCE_COLUMNS", "LATENCY_INTERVAL_COLUMNS", "pruning_text", "load",
           "frame_from_store", "fastest_per_resolution", "summary_table", "tie_lines", "point_label", "flag_counts",
           "flag_line", "export"]

#: The documented columns, in order (docs/architecture.md "Results table columns").
COLUMNS: tuple[str, ...] = (
    "point_key", "encoder", "knobs", "resolution", "llm", "text_tokens", "visual_tokens", "encoder_params_m",
    "encoder_gflops", "encoder_latency_ms", "encoder_latency_p10_ms", "encoder_latency_p90_ms",
    "encoder_latency_cv", "encoder_peak_mem_mb", "preprocess_ms", "projector_params_m", "projector_gflops",
    "projector_latency_ms", "prefill_tokens", "prefill_gflops", "prefill_latency_ms", "prefill_latency_p10_ms",
    "prefill_latency_p90_ms", "prefill_method", "llm_params_m", "ttft_ms", "ttft_gflops", "accuracy",
    "accuracy_low", "accuracy_high", "accuracy_source", "accuracy_extrapolated", "device", "dtype", "threads", "torch_version", "status", "error", "measured_at",
)
#: How far each latency can be trusted (explorer.data.confidence), per timed factor: ``*_noisy``
#: (a cap ended its timing before the median's 95% CI reached its target), ``*_contended``
#: (other processes or the hypervisor took the machine while it was timed) and ``*_other_cores``
#: (mean logical cores other processes kept busy meanwhile; NaN: not observed); NA where the
#: factor was not timed. ``noisy`` / ``contended``: any timed part of the point is.
CONFIDENCE_COLUMNS: tuple[str, ...] = (
    "encoder_noisy", "encoder_contended", "encoder_other_cores", "preprocess_noisy", "preprocess_contended",
    "projector_noisy", "projector_contended", "projector_other_cores", "prefill_noisy", "prefill_contended",
    "prefill_other_cores", "noisy", "contended",
)
#: Appended after COLUMNS: the space the point came from, the environment key of its values, the
#: runtime that ran encoder and projector, the one that ran the prefill (``transformers`` or
#: ``llamacpp/<quant>``), the LM-head convention of the prefill, whether ``ttft_ms`` counts
#: ``preprocess_ms``, then :data:`CONFIDENCE_COLUMNS`, then :data:`LATENCY_INTERVAL_COLUMNS` (each
#: latency's re-measurement interval at ``latency_level``: explorer.data.drift), then ``pruning``:
#: the point's in-LLM pruning as canonical JSON (``{"after_layer":2,"ratio":0.5}``), None for a
#: point without, and ``accuracy_approximate``: the accuracy was read off a plot (the reference
#: CSV's ``approximate`` column; its interval is the value +-0.5).
EXTRA_COLUMNS: tuple[str, ...] = ("space", "env_key", "runtime", "llm_runtime", "lm_head", "ttft_includes_preprocess",
                                  *CONFIDENCE_COLUMNS, *LATENCY_INTERVAL_COLUMNS, "pruning", "accuracy_approximate")
_BOOL_COLUMNS = tuple(c for c in CONFIDENCE_COLUMNS if c.endswith(("_noisy", "_contended")) or c in ("noisy", "contended"))

_FAIL_ORDER = ("oom", "killed", "timeout", "failed")


def _nan() -> float:
    return float("nan")


def _num(value: Any) -> float:
    if value is None:
        return _nan()
    try:
        return float(value)
    except (TypeError, ValueError):
        return _nan()


def _latency(payload: Optional[Mapping[str, Any]], field: str) -> float:
    lat = (payload or {}).get("latency")
    if not isinstance(lat, Mapping):
        return _nan()
    return _num(lat.get(field))


def _confidence(timings: Mapping[str, Optional[TimingFlags]]) -> dict[str, Any]:
    """The CONFIDENCE_COLUMNS of a row from the flags of its timings (None: not timed)."""
    out: dict[str, Any] = {}
    for part, flags in timings.items():
        out[f"{part}_noisy"] = flags.noisy if flags is not None else None
        out[f"{part}_contended"] = flags.contended if flags is not None else None
        if part != "preprocess":
            out[f"{part}_other_cores"] = (flags.other_cores if flags is not None and flags.other_cores is not None
                                          else _nan())
    timed = [f for f in timings.values() if f is not None]
    out["noisy"] = any(f.noisy for f in timed) if timed else None
    out["contended"] = any(f.contended for f in timed) if timed else None
    return out


def _open(source: Union[str, Path, Store]) -> tuple[Store, bool]:
    if isinstance(source, Store):
        return source, False
    text = str(source)
    if "://" not in text:
        path = Path(text).expanduser()
        db = path if path.suffix in (".db", ".sqlite", ".sqlite3") else path / "store.db"
        if not db.is_file():
            raise FileNotFoundError(f"no results database at {db} (give a results folder, a .db file or a URL)")
    return Store(text, create=False), True


def load(source: Union[str, Path, Store], *, space: Optional[str] = None, env: str = "latest",
         accuracy_metric: Optional[str] = "avg5", accuracy_csv: Optional[Union[str, Path]] = None,
         ttft_includes_preprocess: bool = True, predict_accuracy: bool = True,
         accuracy_recipe: Optional[str] = "auto", latency_level: float = LEVEL) -> pd.DataFrame:
    """The results table of a results folder, a ``.db`` path, a SQLAlchemy URL or a Store.

    ``space`` keeps one space's points (default: all points, each once). ``env`` picks the
    environment the numbers come from: ``"latest"`` (the environment of the most recent
    measurement of these points; a warning names any others), ``"all"`` (one row per point and
    environment that measured it) or an environment key.

    Accuracy: values stored in the database (training runs) come first; rows still without one
    take the user's ``accuracy_csv``, then the published tables (``results/reference/``) for
    ``accuracy_metric`` (``None`` leaves published numbers out). See :mod:`explorer.data.reference`.
    Rows still without one are predicted by the accuracy model (``predict_accuracy``; recipe
    ``accuracy_recipe``, see :func:`explorer.accuracy.fill_accuracy`), with ``accuracy_source =
    predicted:...``; every row's ``accuracy_low`` / ``accuracy_high`` is its 80% interval.

    ``ttft_includes_preprocess``: ``ttft_ms`` counts the measured image preprocessing
    (``preprocess_ms``; the deployed definition, default) or leaves it out (``False``: the
    FastVLM paper's definition, encoder input tensor to first token). Rows whose preprocessing
    was not measured never count it; ``ttft_includes_preprocess`` says per row what was summed.

    Latency intervals: every timed factor and TTFT carry the interval a re-measurement in another
    run on the same machine would fall in, at ``latency_level`` (``*_low_ms`` / ``*_high_ms``;
    docs/measurement.md, "Re-measurement intervals"), with the drift allowance calibrated from the
    store's re-measurements when it holds enough (``latency_drift`` says which).
    """
    check_bool("ttft_includes_preprocess", ttft_includes_preprocess)
    store, owned = _open(source)
    try:
        df = frame_from_store(store, space=space, env=env, ttft_includes_preprocess=ttft_includes_preprocess,
                              strict=True, latency_level=latency_level)
    finally:
        if owned:
            store.close()
    if accuracy_metric is None and accuracy_csv is None:
        return df
    from .reference import attach_accuracy

    df = attach_accuracy(df, metric=accuracy_metric or "avg5", user_csv=accuracy_csv,
                         published=accuracy_metric is not None)
    if not predict_accuracy or accuracy_metric is None:
        return df
    from explorer.accuracy import fill_accuracy  # the accuracy layer sits on data; imported on use

    return fill_accuracy(df, metric=accuracy_metric, recipe=accuracy_recipe)[list(df.columns)]


def pruning_text(pruning: Any) -> Optional[str]:
    """The ``pruning`` column: canonical JSON of a Pruning's ``{after_layer, ratio}``, None without."""
    return None if pruning is None else canonical_json(pruning.to_dict())


def _accuracy_for(point: PointRecord, by_key: dict[str, AccuracyRecord],
                  by_fields: list[AccuracyRecord]) -> Optional[AccuracyRecord]:
    if point.key in by_key:
        return by_key[point.key]
    p = point.point
    if p.pruning is not None:  # a value stored by fields is the unpruned model's, not this point's
        return None
    knobs = canonical_json(p.knob_dict())
    for acc in reversed(by_fields):  # the latest matching row wins
        if acc.encoder != p.encoder:
            continue
        if canonical_json(acc.knobs or {}) != knobs:
            continue
        if acc.resolution is not None and acc.resolution != p.resolution:
            continue
        if acc.llm is not None and acc.llm != p.llm:
            continue
        return acc
    return None


def frame_from_store(store: Store, *, space: Optional[str] = None, env: str = "latest",
                     ttft_includes_preprocess: bool = True, strict: bool = False,
                     latency_level: float = LEVEL) -> pd.DataFrame:
    """:func:`load` on an open store (``strict``: an unknown ``space`` or ``env`` is an error, as in
    :func:`load`, instead of an empty or all-pending table)."""
    if strict and space is not None and space not in store.spaces():
        known = store.spaces()
        raise ValueError(f"invalid space={space!r}: not in {store.url}; its spaces: {', '.join(known) or 'none yet'}")
    records = store.points(space)
    if space is None:  # the same point in several spaces: one row
        seen: set[str] = set()
        unique = []
        for r in records:
            if r.key not in seen:
                seen.add(r.key)
                unique.append(r)
        records = unique
    wanted = {k for r in records for k in (r.encoder_key, r.projector_key, r.prefill_key)}
    meas: dict[tuple[str, str, str], MeasurementRecord] = {}
    env_info: dict[str, dict[str, Any]] = {}
    env_last: dict[str, Any] = {}
    for m in store.measurements():
        if m.key not in wanted:
            continue
        meas[(m.kind, m.key, m.env_key)] = m
        env_info[m.env_key] = m.environment
        if m.finished_at is not None and (m.env_key not in env_last or m.finished_at >= env_last[m.env_key]):
            env_last[m.env_key] = m.finished_at

    if env == "all":
        envs = sorted(env_info, key=lambda k: env_last.get(k) or 0)
    elif env == "latest":
        envs = [max(env_last, key=lambda k: env_last[k])] if env_last else []
        others = [k for k in env_info if k not in envs]
        if others:
            warnings.warn(f"the results hold measurements from {len(env_info)} environments; showing the latest "
                          f"({envs[0]}). Pass env='all' or an environment key ({', '.join(others)}) for the others.",
                          stacklevel=3)
    else:
        if strict and env not in env_info:
            raise ValueError(f"invalid env={env!r}: not an environment of {store.url}; use latest, all or one of "
                             f"{', '.join(env_info) or 'none (nothing measured yet)'}")
        envs = [env]

    accuracy = store.accuracy()
    acc_by_key = {a.point_key: a for a in accuracy if a.point_key is not None}  # latest wins
    acc_fields = [a for a in accuracy if a.point_key is None]

    drifts = history_drift(store)
    rows = []
    for rec in records:
        acc = _accuracy_for(rec, acc_by_key, acc_fields)
        row_envs = [e for e in envs if any((k, key, e) in meas for k, key in (
            ("encoder", rec.encoder_key), ("projector", rec.projector_key), ("prefill", rec.prefill_key)))]
        if env != "all" or not row_envs:
            row_envs = row_envs or (envs[:1] if envs else [None])
        for e in row_envs:
            rows.append(_row(rec, e, env_info.get(e) if e else None, meas, acc, ttft_includes_preprocess,
                             drifts.get(e, DEFAULT_DRIFT) if e else DEFAULT_DRIFT, latency_level))
    frame = pd.DataFrame(rows, columns=list(COLUMNS + EXTRA_COLUMNS))
    return _types(frame)


def _row(rec: PointRecord, env_key: Optional[str], environment: Optional[Mapping[str, Any]],
         meas: Mapping[tuple[str, str, str], MeasurementRecord], acc: Optional[AccuracyRecord],
         include_preprocess: bool = True, drift: Drift = DEFAULT_DRIFT, level: float = LEVEL) -> dict[str, Any]:
    p = rec.point
    parts = {kind: meas.get((kind, key, env_key)) if env_key else None for kind, key in (
        ("encoder", rec.encoder_key), ("projector", rec.projector_key), ("prefill", rec.prefill_key))}
    ok = {k: (m.payload or {}) if m is not None and m.status == "ok" else None for k, m in parts.items()}
    enc, proj, pre = ok["encoder"], ok["projector"], ok["prefill"]

    statuses = {k: (m.status if m is not None else "pending") for k, m in parts.items()}
    failed = [k for k, s in statuses.items() if s in _FAIL_ORDER]
    if failed:
        status = min((statuses[k] for k in failed), key=_FAIL_ORDER.index)
    elif any(s == "pending" for s in statuses.values()):
        status = "pending"
    else:
        status = "ok"
    errors = []
    for k in failed:
        part = parts[k]
        text = (part.error or "") if part is not None else ""
        errors.append(f"{k}: {text.splitlines()[0] if text else statuses[k]}")

    enc_ms, proj_ms, pre_ms = (_latency(enc, "median_ms"), _latency(proj, "median_ms"), _latency(pre, "median_ms"))
    prep = (enc or {}).get("preprocess_latency")
    confidence = _confidence({"encoder": timing_flags((enc or {}).get("latency")), "preprocess": timing_flags(prep),
                              "projector": timing_flags((proj or {}).get("latency")),
                              "prefill": timing_flags((pre or {}).get("latency"))})
    prep_ms = _num(prep.get("median_ms")) if isinstance(prep, Mapping) else _nan()
    with_prep = bool(include_preprocess and prep_ms == prep_ms)  # not NaN
    ttft_ms = enc_ms + proj_ms + pre_ms + (prep_ms if with_prep else 0.0)  # NaN unless all parts were timed
    gfl = [_num((x or {}).get("gflops")) if x is not None else _nan() for x in (enc, proj, pre)]
    finished = [m.finished_at for m in parts.values() if m is not None and m.finished_at is not None]
    env = environment or {}
    visual = (enc or {}).get("visual_tokens", rec.visual_tokens)
    prefill_tokens = (pre or {}).get("tokens")
    if prefill_tokens is None and visual is not None:
        prefill_tokens = int(visual) + p.text_tokens
    return {
        "point_key": rec.key,
        "encoder": p.encoder,
        "knobs": canonical_json(p.knob_dict()),
        "resolution": p.resolution,
        "llm": p.llm,
        "text_tokens": p.text_tokens,
        "visual_tokens": visual,
        "encoder_params_m": _num((enc or {}).get("params_m")),
        "encoder_gflops": gfl[0],
        "encoder_latency_ms": enc_ms,
        "encoder_latency_p10_ms": _latency(enc, "p10_ms"),
        "encoder_latency_p90_ms": _latency(enc, "p90_ms"),
        "encoder_latency_cv": _latency(enc, "cv"),
        "encoder_peak_mem_mb": _num((enc or {}).get("peak_mem_mb")),
        "preprocess_ms": prep_ms,
        "projector_params_m": _num((proj or {}).get("params_m")),
        "projector_gflops": gfl[1],
        "projector_latency_ms": proj_ms,
        "prefill_tokens": prefill_tokens,
        "prefill_gflops": gfl[2],
        "prefill_latency_ms": pre_ms,
        "prefill_latency_p10_ms": _latency(pre, "p10_ms"),
        "prefill_latency_p90_ms": _latency(pre, "p90_ms"),
        "prefill_method": (pre or {}).get("method"),
        "llm_params_m": _num((pre or {}).get("params_m")),
        "ttft_ms": ttft_ms,
        "ttft_gflops": sum(gfl),
        "accuracy": acc.value if acc is not None else _nan(),
        "accuracy_low": _nan(),
        "accuracy_high": _nan(),
        "accuracy_source": acc.source if acc is not None else None,
        "accuracy_extrapolated": False,
        "device": env.get("device"),
        "dtype": env.get("dtype"),
        "threads": env.get("threads"),
        "torch_version": env.get("torch_version"),
        "status": status,
        "error": "; ".join(errors) if errors else None,
        "measured_at": max(finished) if finished else None,
        "space": rec.space,
        "env_key": env_key,
        "runtime": env.get("runtime", "eager") if environment else None,
        "llm_runtime": env.get("llm_runtime", "transformers") if environment else None,
        "lm_head": (pre or {}).get("lm_head", "last") if pre is not None else None,
        "ttft_includes_preprocess": with_prep,
        **confidence,
        **row_intervals(ok, with_prep, drift, level),
        "pruning": pruning_text(p.pruning),
        "accuracy_approximate": False,
    }


def _types(frame: pd.DataFrame) -> pd.DataFrame:
    """Stable dtypes whatever the rows hold (numbers float/Int64, text object, time datetime)."""
    floats = [c for c in COLUMNS if c.endswith(("_ms", "_m", "_gflops", "_cv", "_mb")) or c in ("accuracy", "accuracy_low", "accuracy_high")]
    for c in floats:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    for c in ("resolution", "text_tokens", "visual_tokens", "prefill_tokens", "threads"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("Int64")
    frame["measured_at"] = pd.to_datetime(frame["measured_at"])
    for c in _BOOL_COLUMNS:
        frame[c] = frame[c].astype("boolean")
    for c in ("encoder_other_cores", "projector_other_cores", "prefill_other_cores",
              *(c for c in LATENCY_INTERVAL_COLUMNS if c != "latency_drift")):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    return frame


_SUMMARY_COLUMNS = ("llm", "resolution", "encoder", "knobs", "visual_tokens", "preprocess_ms", "encoder_latency_ms",
                    "projector_latency_ms", "prefill_latency_ms", "ttft_ms")
_SUMMARY_DIGITS = {"preprocess_ms": 1, "encoder_latency_ms": 1, "projector_latency_ms": 2, "prefill_latency_ms": 1,
                   "ttft_ms": 1}
#: The summary's latency columns and the factor whose flags mark each.
_MARKED_BY = {"preprocess_ms": "preprocess", "encoder_latency_ms": "encoder", "projector_latency_ms": "projector",
              "prefill_latency_ms": "prefill"}


#: What :func:`fastest_per_resolution` adds: the TTFT interval of the fastest point, how many other
#: points of its LLM and resolution it cannot be told apart from (their TTFT intervals overlap) and
#: which (``point_label``, fastest first, ``"; "``-separated).
_TIE_COLUMNS = ("ttft_low_ms", "ttft_high_ms", "n_tied", "tied_with")


def point_label(row: Mapping[str, Any]) -> str:
    """``fastvithd width_mult=0.75`` (the encoder and its knobs; the encoder alone without knobs)."""
    import json

    try:
        knobs = json.loads(row.get("knobs") or "{}")
    except (TypeError, ValueError):
        knobs = {}
    text = " ".join(f"{k}={v}" for k, v in sorted(knobs.items())) if isinstance(knobs, dict) else str(knobs)
    return f"{row.get('encoder')} {text}".strip()


def _fastest_rows(frame: pd.DataFrame) -> pd.DataFrame:
    ok = frame[(frame["status"] == "ok") & frame["ttft_ms"].notna()]
    if ok.empty:
        return ok
    idx = ok.groupby(["llm", "resolution"])["ttft_ms"].idxmin()
    best = ok.loc[idx].sort_values(["llm", "resolution"]).reset_index(drop=True)
    if not all(c in ok.columns for c in ("ttft_low_ms", "ttft_high_ms")):  # a table from before the intervals
        return best.assign(n_tied=0, tied_with="")
    n_tied, tied_with = [], []
    for row in best.to_dict("records"):
        group = ok[(ok["llm"] == row["llm"]) & (ok["resolution"] == row["resolution"])].to_dict("records")
        found = ties(group, row)
        n_tied.append(len(found))
        tied_with.append("; ".join(point_label(r) for r in found))
    return best.assign(n_tied=n_tied, tied_with=tied_with)


def _summary_columns(frame: pd.DataFrame) -> list[str]:
    """The summary's columns, with ``pruning`` after ``knobs`` when some row of ``frame`` is pruned."""
    cols = list(_SUMMARY_COLUMNS)
    if "pruning" in frame.columns and frame["pruning"].notna().any():
        cols.insert(cols.index("knobs") + 1, "pruning")
    return cols


def fastest_per_resolution(frame: pd.DataFrame) -> pd.DataFrame:
    """Per LLM and resolution, the complete point with the lowest TTFT (the sweep's summary), its
    TTFT interval, and the points it cannot be told apart from: ``n_tied`` of them, named in
    ``tied_with``, whose TTFT intervals overlap its own (then it is not "the fastest", only one
    of the tied fastest)."""
    best = _fastest_rows(frame)
    if best.empty:
        return pd.DataFrame(columns=list(_SUMMARY_COLUMNS + _TIE_COLUMNS))
    shown = best.reindex(columns=_summary_columns(best) + list(_TIE_COLUMNS))
    return shown.round({**_SUMMARY_DIGITS, "ttft_low_ms": 1, "ttft_high_ms": 1})


def _part_flags(row: Mapping[str, Any], part: str) -> tuple[bool, bool]:
    return any_true([row.get(f"{part}_noisy")]), any_true([row.get(f"{part}_contended")])


def summary_table(frame: pd.DataFrame, space: Optional[str] = None) -> tuple[str, Optional[str]]:
    """:func:`fastest_per_resolution` as text, each latency followed by its marks (``~``: its CI
    missed the target, ``!``: taken under contention; TTFT takes the marks of the parts it sums),
    and the one-line legend for the marks present (``None`` when no value is marked; ``space``
    names the space in its re-measure command). The ``fastest`` column says ``yes`` where the
    point's TTFT interval lies below every other point's of its LLM and resolution, ``tied (k)``
    where k points (itself included) cannot be told apart; :func:`tie_lines` names them with their
    intervals, so no order is claimed that the intervals cannot support. ``("", None)`` when no
    point is complete."""
    best = _fastest_rows(frame)
    if best.empty:
        return "", None
    shown = best[_summary_columns(best)].copy().astype(object)
    shown.insert(shown.columns.get_loc("knobs") + 1, "fastest",
                 ["yes" if n == 0 else f"tied ({n + 1})" for n in best["n_tied"]])
    seen = [False, False]
    records = best.to_dict("records")
    for column in _SUMMARY_DIGITS:
        texts = []
        for row in records:
            if column == "ttft_ms":
                parts = ["encoder", "projector", "prefill"] + (["preprocess"] if row.get("ttft_includes_preprocess")
                                                               else [])
            else:
                parts = [_MARKED_BY[column]]
            flags = [_part_flags(row, p) for p in parts]
            noisy, contended = any(f[0] for f in flags), any(f[1] for f in flags)
            value = row[column]
            if value is None or value != value:
                texts.append(("NaN", ""))
                continue
            seen[0], seen[1] = seen[0] or noisy, seen[1] or contended
            texts.append((f"{float(value):.{_SUMMARY_DIGITS[column]}f}", marks(noisy, contended)))
        width = max(len(m) for _, m in texts)  # marks padded so the numbers of a column stay aligned
        shown[column] = [number + m.ljust(width) for number, m in texts]
    return shown.to_string(index=False), legend(seen[0], seen[1], space)


def tie_lines(frame: pd.DataFrame, best: Optional[pd.DataFrame] = None) -> Optional[str]:
    """One line per LLM and resolution whose fastest point is tied: ``"tied at 512 px (qwen2-0.5b),
    TTFT 90% intervals overlap: A 812.0 [700.1-950.2], B 845.3 [...]"``; ``None`` when none is."""
    best = _fastest_rows(frame) if best is None else best
    lines = []
    for row in best.to_dict("records"):
        if not row.get("n_tied"):
            continue
        group = frame[(frame["status"] == "ok") & frame["ttft_ms"].notna() & (frame["llm"] == row["llm"])
                      & (frame["resolution"] == row["resolution"])].to_dict("records")
        tied = [row] + ties(group, row)
        level = row.get("latency_level")
        at = f"{100 * float(level):g}% " if level is not None and level == level else ""
        lines.append(f"tied at {row['resolution']} px ({row['llm']}): TTFT {at}intervals overlap, no order claimed: "
                     + ", ".join(f"{point_label(r)} {float(r['ttft_ms']):.1f} [{float(r['ttft_low_ms']):.1f}-"
                                 f"{float(r['ttft_high_ms']):.1f}]" for r in tied) + " ms")
    return "\n".join(lines) or None


def flag_counts(frame: pd.DataFrame) -> dict[str, int]:
    """How many rows have a noisy value, a contended one, either (``flagged``), out of ``rows``."""
    def column(name: str) -> pd.Series:
        if name not in frame.columns:
            return pd.Series(False, index=frame.index)
        return frame[name].astype("boolean").fillna(False).astype(bool)

    noisy, contended = column("noisy"), column("contended")
    return {"noisy": int(noisy.sum()), "contended": int(contended.sum()), "flagged": int((noisy | contended).sum()),
            "rows": int(len(frame))}


def flag_line(frame: pd.DataFrame, space: Optional[str] = None, command: bool = True) -> Optional[str]:
    """``"3 of 18 points have a noisy or contended value ..."``; ``None`` when none has."""
    counts = flag_counts(frame)
    if not counts["flagged"]:
        return None
    text = (f"{counts['flagged']} of {counts['rows']} points have a noisy or contended value "
            f"({counts['noisy']} noisy, {counts['contended']} contended: columns noisy, contended of the results)")
    if command:
        text += f"; re-measure: {remeasure_command(space, counts['noisy'] > 0, counts['contended'] > 0)}"
    return text


def export(source: Union[str, Path, Store], out: Union[str, Path], fmt: Optional[str] = None, *,
           space: Optional[str] = None, env: str = "latest") -> Path:
    """Write the results table as CSV or Parquet (``fmt`` from the suffix when not given)."""
    out = Path(out)
    fmt = (fmt or out.suffix.lstrip(".") or "csv").lower()
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"invalid format={fmt!r}: csv or parquet")
    frame = load(source, space=space, env=env)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise RuntimeError("Parquet export needs pyarrow, which is not installed: `pip install pyarrow` "
                               "(or export CSV with format=csv)") from None
    with atomic_path(out) as tmp:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return out
