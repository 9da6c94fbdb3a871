"""One self-contained HTML page (and optional PNGs) from a results table.

The page carries plotly.js inline exactly once, so it opens offline, from an e-mail or an
artifact store, years later. It holds every figure of :mod:`explorer.analysis.plots`, the frontier
tables with hypervolumes, answers to budget questions, the environments the numbers came from
and the rows that were left out, with the reason for each: a reader can tell what the figures
do *not* show.
"""
from __future__ import annotations

import datetime as _dt
import html
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from explorer.analysis import plots
from explorer.data.atomic import atomic_path
from explorer.analysis.pareto import (
    FrontierResult,
    frontier_membership,
    ObjectivesLike,
    best_under_budget,
    hypervolume,
    pareto_front,
    reference_point_from,
    status_ok,
)

__all__ = [
    "FigureEntry", "StaticExportUnavailable", "build_figures", "render_report", "write_report", "write_pngs",
    "write_png_files",
    "resolve_group_by",
]

STATIC_EXPORT_HELP = (
    "Static images need kaleido (>= 1) and a Chromium-based browser, and this machine lacks "
    "one of them. Install both, then run again:\n"
    "    pip install kaleido\n"
    "    apt-get install -y chromium    (Debian/Ubuntu; or install Google Chrome)\n"
    "The interactive HTML report does not need them."
)

#: Columns the frontier table shows when present (objectives are always shown).
FRONTIER_COLUMNS: tuple[str, ...] = (
    "encoder", "knobs", "resolution", "llm", "text_tokens", "visual_tokens", "encoder_params_m",
    "encoder_latency_ms", "projector_latency_ms", "prefill_latency_ms", "ttft_ms", "ttft_low_ms", "ttft_high_ms",
    "ttft_gflops",
    "accuracy", "accuracy_low", "accuracy_high", "accuracy_source", "accuracy_extrapolated", "membership",
    "noisy", "contended", "n_identical", "point_key",
)
ENVIRONMENT_COLUMNS: tuple[str, ...] = ("device", "dtype", "threads", "torch_version")


class StaticExportUnavailable(RuntimeError):
    """Static export is impossible here (no kaleido or no Chromium); the message says what to install."""


@dataclass(frozen=True)
class FigureEntry:
    """A report figure, or why it is missing (``figure`` None and ``reason`` set)."""

    name: str
    title: str
    figure: go.Figure | None
    reason: str = ""


def build_figures(
    df: pd.DataFrame,
    objectives: ObjectivesLike = None,
    group_by: str | Sequence[str] | None = "llm",
    reference: pd.DataFrame | None = None,
    result: FrontierResult | None = None,
) -> list[FigureEntry]:
    """Every figure the table supports; a figure whose columns are missing gets a reason instead.

    A figure that cannot be drawn is reported, not fatal: a sweep without accuracy still gets
    its latency figures.
    """
    if result is None:
        result = pareto_front(df, objectives, resolve_group_by(df, group_by))
    makers: list[tuple[str, str, Callable[[], go.Figure]]] = [
        ("frontier", "Pareto frontier", lambda: plots.objectives_scatter(df, result=result)),
        ("breakdown", "TTFT breakdown", lambda: plots.ttft_breakdown(df)),
        ("scaling", "Scaling with resolution", lambda: plots.resolution_scaling(df)),
        ("params", "Parameters against latency", lambda: plots.params_vs_latency(df)),
    ]
    has_accuracy = "accuracy" in df.columns and pd.to_numeric(df["accuracy"], errors="coerce").notna().any()
    if reference is not None or has_accuracy:
        makers.append(("accuracy", "Accuracy against TTFT (with published points)" if reference is not None
                       else "Accuracy against TTFT", lambda: plots.accuracy_vs_ttft(df, reference)))
    entries = []
    for name, title, make in makers:
        try:
            entries.append(FigureEntry(name, title, make()))
        except ValueError as err:
            entries.append(FigureEntry(name, title, None, str(err)))
    return entries


def resolve_group_by(df: pd.DataFrame, group_by: str | Sequence[str] | None) -> str | Sequence[str] | None:
    """The default grouping (``llm``) is dropped quietly when the table has no such column."""
    columns = [group_by] if isinstance(group_by, str) else list(group_by or [])
    if columns == ["llm"] and "llm" not in df.columns:
        return None
    return group_by


def _table(df: pd.DataFrame, table_id: str, caption: str = "") -> str:
    body = df.to_html(index=False, escape=True, na_rep="", border=0, table_id=table_id,
                      classes="data", float_format=lambda v: f"{v:.4g}")
    cap = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
    return f'{cap}<div class="scroll">{body}</div>'


def _with_membership(result: FrontierResult, judged: pd.DataFrame, overall: pd.Series) -> FrontierResult:
    """The result with a ``membership`` column on its frontier tables (overall and per group)."""
    import dataclasses

    front = result.front.assign(membership=overall.reindex(result.front.index))
    group_fronts = result.group_fronts
    if not group_fronts.empty and result.group_by:
        per_group = frontier_membership(judged, result.objectives, list(result.group_by))
        group_fronts = group_fronts.assign(membership=per_group.reindex(group_fronts.index))
    return dataclasses.replace(result, front=front, group_fronts=group_fronts)


def _frontier_section(result: FrontierResult, df: pd.DataFrame) -> str:
    objective_columns = [o.column for o in result.objectives]
    shown = list(dict.fromkeys([*FRONTIER_COLUMNS, *objective_columns]))
    parts = [
        "<p>Rows on a frontier are those no other valid row beats on every objective at once "
        f"({', '.join(html.escape(str(o)) for o in result.objectives)}). Rows with identical "
        "objective values are all kept (<code>n_identical</code> counts them).</p>"
    ]
    reference: dict[str, float] | None = None
    if result.n_valid:
        reference = reference_point_from(df.loc[result.on_front.index.difference(result.excluded.index)],
                                         result.objectives)
        ref_text = ", ".join(f"{k} = {v:.4g}" for k, v in reference.items())
        parts.append(f"<p>Hypervolume: the objective-space area each frontier dominates up to the "
                     f"reference point ({html.escape(ref_text)}: 10% past the worst valid value); "
                     "larger is better, comparable only within this report.</p>")
    rows = []
    for label, front in result.fronts().items():
        hv = hypervolume(front, result.objectives, reference) if reference else float("nan")
        rows.append({"frontier": label, "points": len(front), "hypervolume": hv})
    parts.append(_table(pd.DataFrame(rows), "hypervolume-table"))
    overall = None
    if len(objective_columns) >= 2 and result.n_valid:
        judged = df.loc[result.on_front.index.difference(result.excluded.index, sort=False)]
        overall = frontier_membership(judged, result.objectives)
        counts = overall.value_counts()
        parts.append(
            "<p>Given the intervals (accuracy: the 80% interval of each value; a published or trained "
            f"value is exact; TTFT: {_latency_interval_text(judged)}), "
            f"<b>{int(counts.get('certain', 0))}</b> row(s) are certainly on the overall "
            f"frontier, <b>{int(counts.get('possible', 0))}</b> possibly (an interval overlaps a rival's, "
            f"so the order is not settled) and {int(counts.get('dominated', 0))} certainly off it "
            "(<code>membership</code>; per group in the group table).</p>")
        result = _with_membership(result, judged, overall)
    table = result.front.reindex(columns=[c for c in shown if c in result.front.columns])
    parts.append(_table(table, "frontier-table", f"Overall frontier ({len(table)} rows), best "
                        f"{result.objectives[0]} first."))
    if overall is not None:
        maybe = overall.index[overall.eq("possible").fillna(False).astype(bool)].difference(result.front.index)
        if len(maybe):
            extra = df.loc[maybe].assign(membership="possible")
            parts.append(_table(extra.reindex(columns=[c for c in shown if c in extra.columns]),
                                "possible-frontier-table",
                                f"{len(maybe)} row(s) off the frontier of the point values but possibly on it "
                                "given the intervals (a rival's interval overlaps theirs)."))
    if not result.group_fronts.empty:
        columns = ["group"] + [c for c in shown if c in result.group_fronts.columns]
        grouped = result.group_fronts.reindex(columns=columns)
        parts.append(_table(grouped, "group-frontier-table",
                            f"Frontier per {', '.join(result.group_by)} ({len(grouped)} rows)."))
    return "\n".join(parts)


def _latency_interval_text(df: pd.DataFrame) -> str:
    """What the TTFT intervals are, from the table's ``latency_level`` / ``latency_drift``."""
    if not {"ttft_low_ms", "ttft_high_ms"} <= set(df.columns) or df["ttft_low_ms"].isna().all():
        return "no interval, exact"
    level = pd.to_numeric(df.get("latency_level"), errors="coerce").dropna() if "latency_level" in df.columns \
        else pd.Series(dtype=float)
    drift = df["latency_drift"].dropna().unique() if "latency_drift" in df.columns else []
    text = (f"the {100 * float(level.iloc[0]):g}% interval" if len(level) else "the interval") + \
        " a re-measurement in another run would fall in"
    return text + (f", drift allowance {html.escape('; '.join(map(str, drift)))}" if len(drift) else "")


def _budget_section(df: pd.DataFrame, budgets: Sequence[float], group_by: str | Sequence[str] | None) -> str:
    if not budgets or "ttft_ms" not in df.columns or "accuracy" not in df.columns:
        return ""
    tables = []
    for budget in budgets:
        best = best_under_budget(df, "ttft_ms", float(budget), "accuracy", group_by)
        keep = [c for c in ("llm", "encoder", "knobs", "resolution", "accuracy", "ttft_ms", "ttft_low_ms",
                            "ttft_high_ms", "within_budget", "n_tied", "tied_with", "n_under_budget", "cheapest_ttft_ms", "point_key")
                if c in best.columns]
        tables.append(_table(best[keep], f"budget-{budget:g}", f"Best accuracy with TTFT <= {budget:g} ms"))
    return "<h2>Best under a TTFT budget</h2>\n" + "\n".join(tables)


def _environment_section(df: pd.DataFrame) -> str:
    present = [c for c in ENVIRONMENT_COLUMNS if c in df.columns]
    if not present or df.empty:
        return "<p>The table records no environment columns.</p>"
    env = df[present].astype("string").fillna("<missing>").value_counts(dropna=False).rename("rows").reset_index()
    note = ""
    if len(env) > 1:
        note = ("<p class=\"warn\">The rows come from more than one environment: latencies measured on "
                "different devices, dtypes or thread counts are not comparable point for point.</p>")
    return note + _table(env, "environment-table")


def _fleet_section(df: pd.DataFrame, objectives: ObjectivesLike, budgets: Sequence[float]) -> str:
    """Across environments (a fleet's table, ``results.load(env="all")``): one frontier per environment
    and the points on all of them; empty for a table of one environment."""
    if "env_key" not in df.columns or df.loc[status_ok(df), "env_key"].nunique() < 2:
        return ""
    from explorer.analysis.fleet import compare_environments

    fleet = compare_environments(df, objectives, budget_ms=min(budgets) if budgets else None)
    parts = ["<h2>Across environments</h2>",
             "<p>Latencies from different environments are never mixed: each has its own frontier. "
             f"{len(fleet.common_points)} point(s) are measured in all {len(fleet.fronts)} environments; "
             f"{len(fleet.on_every_front)} of them are on every environment's frontier.</p>",
             _table(fleet.table(), "fleet-table", "Each environment and its frontier (env_key: the columns below).")]
    robust = df[df["point_key"].isin(fleet.on_every_front)]
    if len(robust):
        wide = robust.pivot_table(index="point_key", columns="env_key", values="ttft_ms", aggfunc="first")
        wide = wide.reindex(columns=[e for e in fleet.fronts if e in wide.columns])  # the table's order
        wide.columns = [f"ttft_ms @ {str(c)[:8]}" for c in wide.columns]  # env keys, as in the table above
        first = robust.drop_duplicates("point_key").set_index("point_key")
        keep = [c for c in ("encoder", "knobs", "resolution", "llm", "text_tokens", "accuracy") if c in first.columns]
        table = first[keep].join(wide).reset_index()
        table = table[[c for c in table.columns if c != "point_key"] + ["point_key"]]
        parts.append(_table(table, "fleet-common-table", "Points on every environment's frontier, "
                            "with their TTFT in each."))
    if fleet.budget_ms is not None:
        parts.append(_table(fleet.within_budget, "fleet-budget-table",
                            f"Points with TTFT <= {fleet.budget_ms:g} ms in every environment "
                            f"({len(fleet.within_budget)}), by their worst TTFT."))
    return "\n".join(parts)


def _strategies_section(df: pd.DataFrame) -> str:
    """Token strategies beside their equal-token baselines, and the paper's headline comparisons,
    when the table holds them (``docs/vlms.md``); empty otherwise."""
    from explorer.analysis.equal_tokens import equal_token_pairs
    from explorer.analysis.headline import headline_by_runtime, headline_table

    needed = {"encoder", "knobs", "resolution", "llm", "visual_tokens", "encoder_latency_ms", "ttft_ms"}
    if not needed <= set(df.columns):
        return ""
    parts = []
    pairs = equal_token_pairs(df)
    if len(pairs):
        parts += ["<h2>Token strategies and equal-token baselines</h2>",
                  "<p>Each token strategy beside the same tower on one view of the image, downsampled to the "
                  "size whose token count is closest (plain downsampling): equal tokens, so equal prefill; "
                  "the ratios are strategy / baseline.</p>",
                  _table(pairs, "equal-token-table")]
    sourced = df.assign(latency_source=df.get("latency_source", "measured"))
    several = "env_key" in df.columns and df["env_key"].nunique() > 1  # e.g. one sweep per runtime
    heads = headline_by_runtime(sourced) if several else headline_table(sourced)
    if len(heads):
        caption = "Other side's TTFT / FastVLM's, beside the paper's ratio; both TTFTs in parts (ms)."
        if several:
            caption += " One row per environment, then each side at its fastest one (runtime = fastest)."
        parts += ["<h2>The paper's headline comparisons</h2>",
                  _table(heads.drop(columns=["fast", "other"]), "headline-table", caption)]
    return "\n".join(parts)


def _confidence_note(df: pd.DataFrame) -> str:
    """How many rows have a latency whose CI missed its target or that was taken under
    contention (the hover marks them); '' when none has."""
    from explorer.data.confidence import CONTENDED_MARK, NOISY_MARK
    from explorer.data.results import flag_line

    space = None
    if "space" in df.columns and df["space"].nunique() == 1:
        space = str(df["space"].dropna().iloc[0])
    line = flag_line(df, space)
    if line is None:
        return ""
    return (f'<p class="warn" id="confidence-note">{html.escape(line)}. In the hover text, {NOISY_MARK} follows a '
            f"latency whose 95% CI missed its target and {CONTENDED_MARK} one measured while other processes "
            "used the machine.</p>")


def _excluded_section(result: FrontierResult) -> str:
    if result.excluded.empty:
        return "<p>None: every row took part.</p>"
    return _table(result.excluded.reset_index(names="row"), "excluded-table",
                  f"{len(result.excluded)} row(s) left out of the frontier.")


CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px auto; max-width: 1280px;
       color: #222; padding: 0 16px; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta, .caption { color: #555; } .warn { color: #a04000; }
.scroll { overflow-x: auto; margin-bottom: 16px; }
table.data { border-collapse: collapse; font-size: 13px; }
table.data th, table.data td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }
table.data th { background: #f6f6f6; }
.figure { margin: 12px 0 28px; } .missing { color: #777; font-style: italic; }
"""


def render_report(
    df: pd.DataFrame,
    title: str = "explorer report",
    objectives: ObjectivesLike = None,
    group_by: str | Sequence[str] | None = "llm",
    reference: pd.DataFrame | None = None,
    budgets: Sequence[float] = (),
) -> str:
    """The report page as a string (see :func:`write_report`)."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"invalid df={type(df).__name__}: a pandas DataFrame is required")
    group_by = resolve_group_by(df, group_by)
    result = pareto_front(df, objectives, group_by)
    figures = build_figures(df, objectives, group_by, reference, result)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_ok = int(status_ok(df).sum())
    notes = "".join(f"<p class=\"warn\">{html.escape(n)}</p>" for n in result.notes)
    notes += _confidence_note(df)

    blocks = []
    for entry in figures:
        blocks.append(f'<div class="figure" id="section-{entry.name}">')
        if entry.figure is not None:
            blocks.append(pio.to_html(entry.figure, full_html=False, include_plotlyjs=False,
                                      div_id=f"figure-{entry.name}", config={"displaylogo": False},
                                      default_height="520px" if entry.name != "breakdown" else
                                      f"{int(entry.figure.layout.height or 520)}px"))
        else:
            blocks.append(f'<p class="missing">{html.escape(entry.title)} not shown: '
                          f"{html.escape(entry.reason)}</p>")
        blocks.append("</div>")

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
<script type="text/javascript">window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>
<script type="text/javascript">{get_plotlyjs()}</script>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{len(df)} rows, {n_ok} measured OK, {result.n_valid} on the objectives
({", ".join(html.escape(str(o)) for o in result.objectives)}), {len(result.front)} on the overall frontier.
Written {now} by explorer.</p>
{notes}
<h2>Figures</h2>
{"".join(blocks)}
<h2>Frontier</h2>
{_frontier_section(result, df)}
{_budget_section(df, budgets, group_by)}
{_fleet_section(df, objectives, budgets)}
{_strategies_section(df)}
<h2>Environment</h2>
{_environment_section(df)}
<h2>Rows left out</h2>
{_excluded_section(result)}
</body>
</html>
"""


def write_report(
    df: pd.DataFrame,
    path: str | Path,
    title: str = "explorer report",
    objectives: ObjectivesLike = None,
    group_by: str | Sequence[str] | None = "llm",
    reference: pd.DataFrame | None = None,
    budgets: Sequence[float] = (),
) -> Path:
    """Write the self-contained report page to ``path`` (parents created); returns the path.

    ``objectives`` as for :func:`explorer.analysis.pareto.pareto_front`; ``group_by`` names the column(s)
    of the per-group frontiers (``'llm'`` by default, dropped when absent); ``reference`` adds
    published points to the accuracy figure; each of ``budgets`` (ms) adds a table of the best
    accuracy within that TTFT.
    """
    if not isinstance(path, (str, Path)) or not str(path):
        raise ValueError(f"invalid path={path!r}: a file path for the HTML page is required")
    out = Path(path)
    if out.exists() and out.is_dir():
        raise ValueError(f"invalid path={str(out)!r}: it is a directory; give a file name such as report.html")
    page = render_report(df, title, objectives, group_by, reference, budgets)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:  # a full disk never leaves a truncated page behind
        tmp.write_text(page, encoding="utf-8")
    return out


def write_pngs(
    df: pd.DataFrame,
    directory: str | Path,
    objectives: ObjectivesLike = None,
    group_by: str | Sequence[str] | None = "llm",
    reference: pd.DataFrame | None = None,
    width: int = 1100,
    height: int = 600,
    scale: float = 1.0,
) -> list[Path]:
    """Write each report figure as ``<directory>/<name>.png`` through kaleido; returns the paths.

    Raises :class:`StaticExportUnavailable` (with what to install) where kaleido or a Chromium
    is missing; kaleido is an optional extra, not a dependency of explorer.
    """
    if not isinstance(directory, (str, Path)) or not str(directory):
        raise ValueError(f"invalid directory={directory!r}: a folder for the PNG files is required")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    entries = [e for e in build_figures(df, objectives, resolve_group_by(df, group_by), reference) if e.figure]
    files = [folder / f"{e.name}.png" for e in entries]
    figs = [e.figure for e in entries]
    write_png_files(figs, files, width, [int(f.layout.height or height) for f in figs], scale)
    return files


def write_png_files(figs: Sequence[go.Figure], files: Sequence[Path], width: int, heights: Sequence[int],
                    scale: float = 1.0) -> None:
    """Write each figure to its file as PNG through kaleido, all in one call where plotly allows:
    the one static export path (the report's ``png=`` and the notebooks' figures).

    Raises :class:`StaticExportUnavailable` (with what to install) where kaleido or a Chromium is
    missing.
    """
    if importlib.util.find_spec("kaleido") is None:
        raise StaticExportUnavailable(STATIC_EXPORT_HELP + "\n(kaleido is not installed.)")
    try:
        if hasattr(pio, "write_images"):
            pio.write_images(figs, files, format="png", width=width, height=heights, scale=scale)
        else:  # plotly < 6.1 writes one at a time
            for fig, file, h in zip(figs, files, heights):
                fig.write_image(file, format="png", width=width, height=h, scale=scale)
    except RuntimeError as err:
        text = str(err).lower()
        if "chrome" in text or "kaleido" in text or "browser" in text:
            raise StaticExportUnavailable(f"{STATIC_EXPORT_HELP}\n(kaleido said: {str(err).strip()})") from err
        raise
