"""Plotly figures of a results table: frontier, TTFT breakdown, scaling, parameters, published points.

Every function takes a :class:`pandas.DataFrame` with the documented results-table columns and
returns a :class:`plotly.graph_objects.Figure`; nothing is measured or written here (the report
module writes). Only rows with ``status == 'ok'`` (when the column exists) are drawn, and every
point's hover shows its full configuration and costs, so a figure alone answers "which design is
that dot".
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from explorer.analysis.pareto import OVERALL, FrontierResult, Objective, ObjectivesLike, group_label, pareto_front, status_ok
from explorer.data.confidence import CONTENDED_MARK, NOISY_MARK, any_true, marks

__all__ = [
    "hover_text",
    "config_label",
    "objectives_scatter",
    "ttft_breakdown",
    "resolution_scaling",
    "params_vs_latency",
    "accuracy_vs_ttft",
    "reference_points",
]

PALETTE: tuple[str, ...] = tuple(qualitative.Plotly) + tuple(qualitative.Dark24)
#: Colours of the three TTFT parts, the same in every figure.
PART_COLOURS: dict[str, str] = {
    "encoder_latency_ms": "#4C78A8",
    "projector_latency_ms": "#F58518",
    "prefill_latency_ms": "#54A24B",
}
PART_NAMES: dict[str, str] = {
    "encoder_latency_ms": "vision encoder",
    "projector_latency_ms": "projector",
    "prefill_latency_ms": "LLM prefill",
}
LABELS: dict[str, str] = {
    "ttft_ms": "TTFT (ms)",
    "accuracy": "accuracy (%)",
    "resolution": "input resolution (px)",
    "visual_tokens": "visual tokens",
    "encoder_latency_ms": "vision encoder latency (ms)",
    "encoder_params_m": "vision encoder parameters (M)",
    "encoder_gflops": "vision encoder GFLOP",
    "prefill_latency_ms": "LLM prefill latency (ms)",
    "ttft_gflops": "TTFT GFLOP",
}


def _require(df: object, columns: Sequence[str], figure: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"invalid df={type(df).__name__}: {figure} needs a pandas DataFrame")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"invalid df: {figure} needs column(s) {missing}; the table has {sorted(map(str, df.columns))}"
        )
    return df


def _ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[status_ok(df)]


def _finite(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows where every column holds a finite number, those columns as floats."""
    out = df.copy()
    for c in columns:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    if not len(out):
        return out
    keep = np.all(np.isfinite(out[list(columns)].to_numpy(dtype=float)), axis=1)
    return out[keep]


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _label(column: str) -> str:
    return LABELS.get(column, column)


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{float(value):.{digits}g}"
    return str(value)


def _knobs_text(knobs: object) -> str:
    """``{"depth": 2}`` as ``depth=2``; '' for no knobs; text that is not JSON as it is."""
    if knobs is None or (isinstance(knobs, float) and math.isnan(knobs)) or knobs is pd.NA:
        return ""
    if isinstance(knobs, dict):
        parsed: object = knobs
    else:
        try:
            parsed = json.loads(str(knobs))
        except ValueError:
            return str(knobs)
    if isinstance(parsed, dict):
        return ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(parsed.items()))
    return str(parsed) if parsed not in (None, [], "") else ""


def config_label(row: pd.Series | dict) -> str:
    """Encoder plus its knobs, e.g. ``fastvithd (depths=[2,12,24,4,2])``: one line per design."""
    encoder = _fmt(row.get("encoder")) or "?"
    knobs = _knobs_text(row.get("knobs"))
    return f"{encoder} ({knobs})" if knobs else encoder


def _config_labels(df: pd.DataFrame) -> pd.Series:
    return pd.Series([config_label(r) for r in df.to_dict("records")], index=df.index, dtype=object)


#: The factor whose confidence columns (``<factor>_noisy``, ``_contended``) mark each TTFT part.
PART_FACTORS: dict[str, str] = {"encoder_latency_ms": "encoder", "projector_latency_ms": "projector",
                                "prefill_latency_ms": "prefill"}


def _marked(r: dict, column: str, factor: str) -> str:
    """A latency as hover text followed by its factor's marks ('' when not measured)."""
    text = _fmt(r.get(column))
    return text + marks(r.get(f"{factor}_noisy"), r.get(f"{factor}_contended")) if text else ""


def _flags_line(r: dict) -> str:
    """``"~ CI missed its target: encoder · ! measured under contention: prefill (1.5 other cores
    busy)"``; '' when nothing is flagged."""
    noisy, contended = [], []
    for factor in ("preprocess", "encoder", "projector", "prefill"):
        if any_true([r.get(f"{factor}_noisy")]):
            noisy.append(factor)
        if any_true([r.get(f"{factor}_contended")]):
            cores = _fmt(r.get(f"{factor}_other_cores"), 2)
            contended.append(factor + (f" ({cores} other cores busy)" if cores else ""))
    out = []
    if noisy:
        out.append(f"{NOISY_MARK} CI missed its target: {', '.join(noisy)}")
    if contended:
        out.append(f"{CONTENDED_MARK} measured under contention: {', '.join(contended)}")
    return " · ".join(out)


def hover_text(df: pd.DataFrame) -> pd.Series:
    """One HTML hover block per row: configuration, tokens, every cost (each latency followed by
    ``~`` when its CI missed its target and ``!`` when taken under contention, with a line naming
    them), accuracy and its source."""

    def one(r: dict) -> str:
        lines = [f"<b>{config_label(r)}</b>"]
        where = [f"{_fmt(r.get('resolution'))} px" if _fmt(r.get("resolution")) else "", _fmt(r.get("llm"))]
        lines.append(" → ".join(w for w in where if w))
        tokens = [(n, _fmt(r.get(c))) for n, c in
                  (("visual", "visual_tokens"), ("text", "text_tokens"), ("prefill", "prefill_tokens"))]
        if any(v for _, v in tokens):
            lines.append("tokens: " + ", ".join(f"{n} {v}" for n, v in tokens if v))
        parts = [(PART_NAMES[c], _marked(r, c, PART_FACTORS[c])) for c in PART_COLOURS]
        if _fmt(r.get("ttft_ms")) or any(v for _, v in parts):
            ttft = _fmt(r.get("ttft_ms"))
            ttft += marks(r.get("noisy"), r.get("contended")) if ttft else ""
            lines.append(f"TTFT {ttft} ms = " + " + ".join(f"{n} {v}" for n, v in parts if v))
        lines.append(_flags_line(r))
        t_low, t_high, level = _fmt(r.get("ttft_low_ms")), _fmt(r.get("ttft_high_ms")), r.get("latency_level")
        if t_low and t_high:  # explorer.intervals: where a re-measurement in another run would land
            at = f"{100 * float(level):g}% " if isinstance(level, (int, float)) and level == level else ""
            lines.append(f"TTFT {at}re-measurement interval {t_low}–{t_high} ms")
        spread = (_fmt(r.get("encoder_latency_p10_ms")), _fmt(r.get("encoder_latency_p90_ms")))
        if all(spread):
            lines.append(f"encoder p10–p90 {spread[0]}–{spread[1]} ms, cv {_fmt(r.get('encoder_latency_cv'), 2)}")
        sizes = [(n, _fmt(r.get(c))) for n, c in (("encoder", "encoder_params_m"), ("projector", "projector_params_m"),
                                               ("LLM", "llm_params_m"))]
        if any(v for _, v in sizes):
            lines.append("params (M): " + ", ".join(f"{n} {v}" for n, v in sizes if v))
        flops = [(n, _fmt(r.get(c))) for n, c in (("encoder", "encoder_gflops"), ("projector", "projector_gflops"),
                                               ("prefill", "prefill_gflops"), ("total", "ttft_gflops"))]
        if any(v for _, v in flops):
            lines.append("GFLOP: " + ", ".join(f"{n} {v}" for n, v in flops if v))
        accuracy = _fmt(r.get("accuracy"))
        source = _fmt(r.get("accuracy_source"))
        low, high = _fmt(r.get("accuracy_low")), _fmt(r.get("accuracy_high"))
        interval = f" [{low}, {high}]" if low and high and low != high else ""
        lines.append(f"accuracy {accuracy or 'n/a'}{interval}" + (f" ({source})" if source else "")
                     + (" · extrapolated" if r.get("accuracy_extrapolated") is True else ""))
        env = [_fmt(r.get(c)) for c in ("device", "dtype")]
        if _fmt(r.get("threads")):
            env.append(f"{_fmt(r.get('threads'))} threads")
        if any(env):
            lines.append(" · ".join(e for e in env if e))
        if _fmt(r.get("point_key")):
            lines.append(f"key {_fmt(r.get('point_key'))[:12]}")
        return "<br>".join(line for line in lines if line)

    return pd.Series([one(r) for r in df.to_dict("records")], index=df.index, dtype=object)


def _log_axis(values: pd.Series) -> bool:
    """Log scale when the values span more than 20x (TTFTs from 30 ms to 1 s do)."""
    v = values[np.isfinite(values) & (values > 0)]
    return bool(len(v) > 1 and v.max() / v.min() > 20)


def _staircase_shape(x: Objective) -> str:
    """Pareto attainment boundary: with x minimised the best value holds until the next point."""
    return "hv" if x.minimize else "vh"


def interval_marks(part: pd.DataFrame, column: str, base: str = "circle") -> dict:
    """Plotly keywords for one trace: error bars from ``column``'s interval columns where the table
    has them, and an open marker for every predicted value (``accuracy_source`` ``predicted:...``)."""
    out: dict = {}
    if column == "accuracy" and {"accuracy_low", "accuracy_high"} <= set(part.columns):
        value = pd.to_numeric(part["accuracy"], errors="coerce")
        high = (pd.to_numeric(part["accuracy_high"], errors="coerce") - value).clip(lower=0).fillna(0)
        low = (value - pd.to_numeric(part["accuracy_low"], errors="coerce")).clip(lower=0).fillna(0)
        if (high > 0).any() or (low > 0).any():
            out["error_y"] = dict(type="data", symmetric=False, array=high.tolist(), arrayminus=low.tolist(),
                                  thickness=1, width=3)
    if "accuracy_source" in part.columns:
        predicted = part["accuracy_source"].astype(str).str.startswith("predicted:")
        out["symbol"] = [f"{base}-open" if p else base for p in predicted]
    return out


def objectives_scatter(
    df: pd.DataFrame,
    objectives: ObjectivesLike = None,
    group_by: str | Sequence[str] | None = "llm",
    result: FrontierResult | None = None,
    log_x: bool | None = None,
) -> go.Figure:
    """Every valid design point on the first two objectives, with a frontier staircase per group.

    Dominated points are faint, frontier points solid; with several groups the overall frontier
    is drawn dashed on top. ``result`` reuses a :func:`~explorer.analysis.pareto.pareto_front` result.
    """
    if result is None:
        _require(df, [], "objectives_scatter")
        if group_by is not None and isinstance(group_by, str) and group_by not in df.columns:
            group_by = None
        result = pareto_front(df, objectives, group_by)
    if len(result.objectives) < 2:
        raise ValueError(
            f"invalid objectives={[str(o) for o in result.objectives]}: a scatter needs two objectives"
        )
    xo, yo = result.objectives[0], result.objectives[1]
    valid = df.loc[result.on_front.index.difference(result.excluded.index, sort=False)]
    valid = _finite(valid, [xo.column, yo.column])
    shape = _staircase_shape(xo)
    fig = go.Figure()

    if result.group_by:
        columns = list(result.group_by)
        labels = pd.Series(
            [group_label(columns, key) for key in valid[columns].itertuples(index=False, name=None)],
            index=valid.index, dtype=object,
        )
        fronts = {k: v for k, v in result.fronts().items() if k != OVERALL}
    else:
        labels = pd.Series(OVERALL, index=valid.index, dtype=object)
        fronts = {OVERALL: result.front}

    for i, (name, front) in enumerate(fronts.items()):
        colour = _colour(i)
        members = valid[labels.eq(name)] if len(valid) else valid
        dominated = members.drop(index=front.index, errors="ignore")
        if len(dominated):
            marks = interval_marks(dominated, yo.column)
            fig.add_trace(go.Scatter(
                x=dominated[xo.column], y=dominated[yo.column], mode="markers", name=f"{name}: dominated",
                legendgroup=name, marker=dict(color=colour, size=7, opacity=0.35, symbol=marks.get("symbol")),
                error_y=marks.get("error_y"),
                text=hover_text(dominated), hovertemplate="%{text}<extra>dominated</extra>",
            ))
        front = _finite(front, [xo.column, yo.column]).sort_values(xo.column)
        marks = interval_marks(front, yo.column)
        fig.add_trace(go.Scatter(
            x=front[xo.column], y=front[yo.column], mode="lines+markers", line_shape=shape,
            name=f"{name}: frontier" if result.group_by else "frontier", legendgroup=name,
            marker=dict(color=colour, size=10, line=dict(width=1.5, color=colour), symbol=marks.get("symbol")),
            line=dict(color=colour, width=2), error_y=marks.get("error_y"),
            text=hover_text(front), hovertemplate="%{text}<extra>frontier</extra>",
        ))
    if result.group_by and len(fronts) > 1 and len(result.front):
        overall = result.front.sort_values(xo.column)
        fig.add_trace(go.Scatter(
            x=overall[xo.column], y=overall[yo.column], mode="lines", line_shape=shape,
            name="overall frontier", line=dict(color="black", width=1.5, dash="dash"), hoverinfo="skip",
        ))

    arrow = {True: "lower is better", False: "higher is better"}
    subtitle = " ".join(result.notes[:1]) if result.fallback else ""
    if not subtitle and "accuracy" in (xo.column, yo.column) and "accuracy_source" in valid.columns and \
            valid["accuracy_source"].astype(str).str.startswith("predicted:").any():
        subtitle = ("open markers: predicted accuracy (bars: its 80% interval); filled: published, trained or "
                    "given")
    title = f"{_label(yo.column)} vs {_label(xo.column)}: Pareto frontier"
    if result.group_by:
        title += f" per {', '.join(result.group_by)}"
    fig.update_layout(
        title=dict(text=title, subtitle=dict(text=subtitle)),
        xaxis_title=f"{_label(xo.column)}, {arrow[xo.minimize]}",
        yaxis_title=f"{_label(yo.column)}, {arrow[yo.minimize]}",
        template="plotly_white", hovermode="closest", legend=dict(groupclick="togglegroup"),
    )
    use_log = _log_axis(valid[xo.column]) if log_x is None else log_x
    if use_log:
        fig.update_xaxes(type="log")
    return fig


def _facet_rows(df: pd.DataFrame, column: str) -> list[tuple[str, pd.DataFrame]]:
    if column not in df.columns:
        return [("", df)]
    return [(str(k), part) for k, part in df.groupby(df[column].astype("string").fillna("<missing>"), sort=True)]


def ttft_breakdown(df: pd.DataFrame, facet: str = "llm") -> go.Figure:
    """TTFT as stacked vision + projector + prefill bars over resolution, one panel per LLM.

    Bars are grouped by encoder configuration (outer axis label, encoders in order of their
    smallest resolution) and resolution (inner, ascending). Rows
    that share a panel, configuration, resolution and text length are drawn once, at their
    median (hover says how many).
    """
    parts = list(PART_COLOURS)
    _require(df, ["encoder", "resolution", *parts], "ttft_breakdown")
    rows = _finite(_ok_rows(df), [*parts, "resolution"])
    if rows.empty:
        raise ValueError("invalid df: no row with status 'ok' and all three TTFT parts measured")
    rows = rows.assign(__config=_config_labels(rows))
    has_text = "text_tokens" in rows.columns and rows["text_tokens"].nunique(dropna=True) > 1
    keys = ["__config", "resolution"] + (["text_tokens"] if has_text else [])
    facets = _facet_rows(rows, facet)
    height = 380 * len(facets) + 90  # room below each panel for the two-level axis labels
    fig = make_subplots(
        rows=len(facets), cols=1, shared_xaxes=False, vertical_spacing=min(0.3, 130 / height),
        subplot_titles=[f"{facet}: {name}" if name else "" for name, _ in facets],
    )
    for r, (_, part) in enumerate(facets, start=1):
        agg = part.groupby(keys, sort=True, dropna=False)
        med = agg[parts].median().reset_index()
        med["__n"] = agg.size().to_numpy()
        # Plotly orders a multicategory axis by first appearance of each level: listing the
        # bars by resolution first keeps every encoder's resolutions ascending.
        med = med.sort_values(["resolution", "__config"] + (["text_tokens"] if has_text else []))
        inner = med["resolution"].map(lambda v: f"{int(v)} px")
        if has_text:
            inner = inner + " / " + med["text_tokens"].map(lambda v: f"{_fmt(v)} txt")
        x = [med["__config"].str.replace(" (", "<br>(", n=1, regex=False).tolist(), inner.tolist()]
        total = med[parts].sum(axis=1)
        for c in parts:
            share = (med[c] / total.where(total > 0)).fillna(0.0)
            fig.add_trace(go.Bar(
                x=x, y=med[c], name=PART_NAMES[c], legendgroup=c, showlegend=(r == 1),
                marker_color=PART_COLOURS[c],
                customdata=np.column_stack([total, share * 100, med["__n"]]),
                hovertemplate=(f"{PART_NAMES[c]}: %{{y:.3g}} ms (%{{customdata[1]:.0f}}% of TTFT "
                               "%{customdata[0]:.3g} ms)<br>%{x}<br>median of %{customdata[2]} row(s)"
                               "<extra></extra>"),
            ), row=r, col=1)
        fig.update_yaxes(title_text="ms", row=r, col=1)
    fig.update_layout(
        barmode="stack", template="plotly_white", height=height,
        title=dict(text="Time to first token = vision encoder + projector + LLM prefill"),
    )
    return fig


def _per_encoder(df: pd.DataFrame, value: str) -> pd.DataFrame:
    """One value per (encoder configuration, resolution): encoder costs repeat across LLMs."""
    rows = _finite(_ok_rows(df), [value, "resolution"])
    if rows.empty:
        return rows.assign(__config=pd.Series(dtype=object))
    rows = rows.assign(__config=_config_labels(rows))
    return rows.groupby(["__config", "resolution"], sort=True)[value].median().reset_index()


def resolution_scaling(df: pd.DataFrame) -> go.Figure:
    """Vision encoder latency and visual tokens against input resolution, a line per encoder."""
    _require(df, ["encoder", "resolution"], "resolution_scaling")
    panels = [c for c in ("encoder_latency_ms", "visual_tokens") if c in df.columns]
    if not panels:
        raise ValueError("invalid df: resolution_scaling needs encoder_latency_ms or visual_tokens")
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[_label(c) for c in panels],
                        horizontal_spacing=0.1)
    configs: dict[str, int] = {}
    drawn = 0
    for col, value in enumerate(panels, start=1):
        data = _per_encoder(df, value)
        for config, part in data.groupby("__config", sort=True):
            i = configs.setdefault(str(config), len(configs))
            fig.add_trace(go.Scatter(
                x=part["resolution"], y=part[value], mode="lines+markers", name=str(config),
                legendgroup=str(config), showlegend=col == 1 or str(config) not in
                {t.name for t in fig.data}, line=dict(color=_colour(i)),
                hovertemplate=f"<b>{config}</b><br>%{{x}} px: %{{y:.4g}} {_label(value)}<extra></extra>",
            ), row=1, col=col)
            drawn += 1
        fig.update_xaxes(title_text=_label("resolution"), row=1, col=col)
        fig.update_yaxes(title_text=_label(value), row=1, col=col)
    if not drawn:
        raise ValueError("invalid df: no row with status 'ok' has a resolution and encoder latency or tokens")
    fig.update_layout(template="plotly_white", title=dict(text="Scaling with input resolution"))
    return fig


def params_vs_latency(df: pd.DataFrame) -> go.Figure:
    """Vision encoder parameters against its latency, one point per encoder and resolution."""
    _require(df, ["encoder", "encoder_params_m", "encoder_latency_ms"], "params_vs_latency")
    rows = _finite(_ok_rows(df), ["encoder_params_m", "encoder_latency_ms"])
    if rows.empty:
        raise ValueError("invalid df: no row with status 'ok' has encoder_params_m and encoder_latency_ms")
    rows = rows.assign(__config=_config_labels(rows))
    if "resolution" not in rows.columns:
        rows = rows.assign(resolution=np.nan)
    data = rows.groupby(["__config", "resolution"], sort=True, dropna=False)[
        ["encoder_params_m", "encoder_latency_ms"]].median().reset_index()
    fig = go.Figure()
    for i, (config, part) in enumerate(data.groupby("__config", sort=True)):
        fig.add_trace(go.Scatter(
            x=part["encoder_latency_ms"], y=part["encoder_params_m"], mode="markers+text", name=str(config),
            text=[f"{_fmt(r)}" for r in part["resolution"]], textposition="top center",
            marker=dict(size=11, color=_colour(i)),
            hovertemplate=(f"<b>{config}</b> @ %{{text}} px<br>latency %{{x:.4g}} ms<br>"
                           "%{y:.4g} M parameters<extra></extra>"),
        ))
    fig.update_layout(
        template="plotly_white", title=dict(text="Vision encoder size against latency (labels: resolution)"),
        xaxis_title=_label("encoder_latency_ms"), yaxis_title=_label("encoder_params_m"),
    )
    if _log_axis(data["encoder_latency_ms"]):
        fig.update_xaxes(type="log")
    return fig


def reference_points(reference: pd.DataFrame) -> pd.DataFrame:
    """Published points with ``encoder``, ``ttft_ms``, ``accuracy`` columns.

    Also takes the long format of ``results/reference/*.csv`` (``value`` and ``paper_ttft_ms``;
    rows without a TTFT are dropped, and with a ``metric`` column only one metric may remain).
    """
    _require(reference, ["encoder"], "accuracy_vs_ttft (reference)")
    ref = reference.copy()
    if "ttft_ms" not in ref.columns and "paper_ttft_ms" in ref.columns:
        ref["ttft_ms"] = ref["paper_ttft_ms"]
    if "accuracy" not in ref.columns and "value" in ref.columns:
        ref["accuracy"] = ref["value"]
    _require(ref, ["encoder", "ttft_ms", "accuracy"], "accuracy_vs_ttft (reference; or value, paper_ttft_ms)")
    ref = _finite(ref, ["ttft_ms", "accuracy"])
    if "metric" in ref.columns and ref["metric"].nunique() > 1:
        raise ValueError(
            f"invalid reference: it mixes metrics {sorted(map(str, ref['metric'].unique()))} among rows "
            "with a TTFT; filter it to one metric first"
        )
    return ref


def accuracy_vs_ttft(df: pd.DataFrame, reference: pd.DataFrame | None = None) -> go.Figure:
    """Accuracy against TTFT, a line per encoder configuration, with published points overlaid.

    ``reference`` holds published readings (columns ``encoder``, ``ttft_ms``, ``accuracy``, and
    optionally ``resolution``, ``llm``, ``source``; or the ``results/reference`` long format, see
    :func:`reference_points`): drawn as open diamonds joined by dotted lines. Published TTFTs come from another device, so compare shapes and ratios, not ms.
    """
    _require(df, ["ttft_ms", "accuracy"], "accuracy_vs_ttft")
    if reference is not None:
        reference = reference_points(reference)
    own = _finite(_ok_rows(df), ["ttft_ms", "accuracy"])
    ref = reference
    if own.empty and (ref is None or ref.empty):
        raise ValueError("invalid df: no row with status 'ok' has both ttft_ms and accuracy, and no reference")
    fig = go.Figure()
    colours: dict[str, str] = {}
    if len(own):
        own = own.assign(__config=_config_labels(own))
        if "llm" in own.columns and own["llm"].nunique() > 1:
            own["__config"] = own["__config"] + " · " + own["llm"].astype(str)
        for config, part in own.groupby("__config", sort=True):
            colour = colours.setdefault(str(part["encoder"].iloc[0]) if "encoder" in part else str(config),
                                        _colour(len(colours)))
            part = part.sort_values("ttft_ms")
            marks = interval_marks(part, "accuracy")
            fig.add_trace(go.Scatter(
                x=part["ttft_ms"], y=part["accuracy"], mode="lines+markers", name=str(config),
                marker=dict(size=9, color=colour, symbol=marks.get("symbol")), line=dict(color=colour),
                error_y=marks.get("error_y"),
                text=hover_text(part), hovertemplate="%{text}<extra>this table</extra>",
            ))
    if ref is not None and len(ref):
        for encoder, part in ref.groupby(ref["encoder"].astype(str), sort=True):
            colour = colours.setdefault(str(encoder), _colour(len(colours)))
            part = part.sort_values("ttft_ms")
            info = [
                " · ".join(x for x in (
                    f"<b>{encoder}</b> (published)",
                    f"{_fmt(r.get('resolution'))} px" if _fmt(r.get("resolution")) else "",
                    _fmt(r.get("llm")),
                ) if x) + f"<br>TTFT {_fmt(r['ttft_ms'])} ms, accuracy {_fmt(r['accuracy'])}"
                + (f"<br>{_fmt(r.get('source'))}" if _fmt(r.get("source")) else "")
                for r in part.to_dict("records")
            ]
            fig.add_trace(go.Scatter(
                x=part["ttft_ms"], y=part["accuracy"], mode="lines+markers", name=f"{encoder} (published)",
                marker=dict(size=10, symbol="diamond-open", color=colour, line=dict(width=2)),
                line=dict(color=colour, dash="dot", width=1.5), text=info,
                hovertemplate="%{text}<extra>published</extra>",
            ))
    fig.update_layout(
        template="plotly_white",
        title=dict(text="Accuracy against time to first token",
                   subtitle=dict(text="published points were timed on the paper's device: compare shapes and ratios"
                                 if ref is not None and len(ref) else "")),
        xaxis_title=f"{_label('ttft_ms')}, lower is better", yaxis_title=f"{_label('accuracy')}, higher is better",
    )
    xs = pd.concat([own["ttft_ms"] if len(own) else pd.Series(dtype=float),
                    ref["ttft_ms"] if ref is not None else pd.Series(dtype=float)])
    if _log_axis(xs):
        fig.update_xaxes(type="log")
    return fig
