"""``explorer plot source=SOURCE [out=report.html] [png=DIR] [...]``: the interactive report.

SOURCE is a results folder, a database path or SQLAlchemy URL (read by ``explorer.data.results.load``),
or, for convenience, a ``.csv`` / ``.parquet`` export of the results table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import pandas as pd
from omegaconf import DictConfig

from explorer.analysis.pareto import pareto_front, parse_objectives
from explorer.checks import OptionError, check_number, check_output_file, check_output_folder, check_text
from explorer.commands.common import error
from explorer.conf.schema import hydra_node, options_of, hydra_command

_STATE: dict[str, Any] = {"exit": 0}


def load_table(source: str, env: str = "latest") -> pd.DataFrame:
    """The results table behind ``source`` (``env`` as :func:`explorer.data.results.load` takes it);
    CSV and Parquet files are read directly."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet", ".pq"):
        if not path.is_file():
            raise ValueError(f"invalid source={source!r}: no such file")
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    try:
        from explorer.data import results  # lazy: the data layer pulls in SQLAlchemy
    except ModuleNotFoundError as err:
        if err.name != "explorer.data.results":
            raise
        raise ValueError(
            f"invalid source={source!r}: reading a results folder or database needs explorer.data.results, "
            "which this installation lacks; pass a .csv export instead"
        ) from err
    return results.load(source, env=env)


def load_reference(spec: str) -> pd.DataFrame:
    """``published`` for the bundled published tables, else a CSV path (either accepted format)."""
    if spec == "published":
        from explorer.data.reference import load_references

        return load_references()
    from explorer.analysis.plots import reference_points

    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"invalid reference={spec!r}: not a file; give a CSV or 'published'")
    try:
        table = pd.read_csv(path)
        reference_points(table)  # the columns the figure needs, checked now rather than skipped in the page
    except ValueError as err:
        raise ValueError(f"invalid reference={spec!r}: {str(err).splitlines()[0]}") from None
    return table


@dataclass(frozen=True)
class PlotOptions:
    """What the report shows (``env=all`` compares the environments of a fleet; ``objectives`` default ``ttft_ms:min,accuracy:max``; ``group_by``
    a column, a list of columns or ``none``; ``budgets`` add 'best accuracy with TTFT <= MS' tables)."""

    SECTION: ClassVar[str] = "plot"

    source: Optional[str] = None
    out: str = "report.html"
    png: Optional[str] = None  # also write each figure as PNG into this folder (kaleido + Chromium)
    title: Optional[str] = None
    objectives: Any = None
    group_by: Any = "llm"
    reference: Optional[str] = None  # a CSV of published points, or 'published' for results/reference/
    budgets: Any = ()
    env: str = "latest"  # latest | all (a fleet: one frontier per environment) | an env_key

    def __post_init__(self) -> None:
        if self.source is None:
            raise OptionError("source", None, "a results folder, database path or URL, or a .csv/.parquet table")
        check_text("source", self.source)
        check_text("out", self.out)
        if self.png is not None:
            check_text("png", self.png)
        check_text("env", self.env)
        if self.objectives is not None:
            try:
                parse_objectives(self.objectives)
            except ValueError as err:
                raise OptionError("objectives", self.objectives, str(err)) from None
        budgets = self.budgets if isinstance(self.budgets, (list, tuple)) else [self.budgets]
        for b in budgets:
            check_number("budgets", b, low=0, low_open=True)
        object.__setattr__(self, "budgets", tuple(float(b) for b in budgets))
        groups = self.group_by if isinstance(self.group_by, (list, tuple)) else [self.group_by]
        for g in groups:
            check_text("group_by", g)

    def groups(self) -> Optional[list[str]]:
        groups = list(self.group_by) if isinstance(self.group_by, (list, tuple)) else [self.group_by]
        return None if groups in ([], ["none"]) else groups


def run_from_config(cfg: DictConfig) -> int:
    from explorer.analysis import report  # lazy: plotly only when the command runs

    try:
        opts = options_of(PlotOptions, cfg)
        objectives = parse_objectives(opts.objectives) if opts.objectives is not None else None
        check_output_file("out", opts.out)  # before the source is read
        if opts.png:
            check_output_folder("png", opts.png)
        df = load_table(opts.source, opts.env)
        reference = load_reference(opts.reference) if opts.reference else None
        title = opts.title or f"explorer report: {opts.source}"
        out = report.write_report(df, opts.out, title=title, objectives=objectives, group_by=opts.groups(),
                                  reference=reference, budgets=list(opts.budgets))
    except (ValueError, FileNotFoundError, OSError) as err:
        error(str(err))
        return 2
    result = pareto_front(df, objectives, report.resolve_group_by(df, opts.groups()))
    print(result.summary())
    print(f"wrote {out}")
    if opts.png:
        try:
            files = report.write_pngs(df, opts.png, objectives=objectives, group_by=opts.groups(), reference=reference)
        except report.StaticExportUnavailable as err:
            error(str(err))
            return 1
        print(f"wrote {len(files)} PNG file(s) to {opts.png}")
    return 0


main = hydra_command("plot", run_from_config, _STATE, schema=lambda: hydra_node(PlotOptions), spaces=False)
