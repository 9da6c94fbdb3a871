"""`python -m explorer plot SOURCE [--out report.html] [--png DIR]`: the interactive report.

SOURCE is a results folder, a database path or SQLAlchemy URL (read by ``explorer.data.results.load``),
or, for convenience, a ``.csv`` / ``.parquet`` export of the results table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from explorer.analysis.pareto import pareto_front, parse_objectives


def load_table(source: str) -> pd.DataFrame:
    """The results table behind ``source``; CSV and Parquet files are read directly."""
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
    return results.load(source)


def load_reference(spec: str) -> pd.DataFrame:
    """``published`` for the bundled published tables, else a CSV path (either accepted format)."""
    if spec == "published":
        from explorer.data.reference import load_references

        return load_references()
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"invalid --reference={spec!r}: not a file; give a CSV or 'published'")
    return pd.read_csv(path)


def _group_by(text: str) -> list[str] | None:
    columns = [c.strip() for c in text.split(",") if c.strip()]
    return None if not columns or columns == ["none"] else columns


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m explorer plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="results folder, database path or URL, or a .csv/.parquet table")
    parser.add_argument("--out", default="report.html", help="HTML file to write (default: %(default)s)")
    parser.add_argument("--png", metavar="DIR", help="also write each figure as DIR/<name>.png (needs kaleido "
                        "and Chromium)")
    parser.add_argument("--title", default=None, help="page title (default: from SOURCE)")
    parser.add_argument("--objectives", default=None,
                        help="e.g. 'ttft_ms:min,accuracy:max' (the default; without accuracy the frontier "
                        "falls back to resolution:max)")
    parser.add_argument("--group-by", default="llm", help="column(s) for per-group frontiers, comma-separated, "
                        "or 'none' (default: %(default)s)")
    parser.add_argument("--reference", default=None, help="published points for the accuracy figure: a CSV, or "
                        "'published' for results/reference/")
    parser.add_argument("--budget", type=float, action="append", default=[], metavar="MS",
                        help="add a 'best accuracy with TTFT <= MS' table (repeatable)")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from explorer.analysis import report  # lazy: plotly only when the command runs

    try:
        objectives = parse_objectives(args.objectives) if args.objectives else None
        df = load_table(args.source)
        reference = load_reference(args.reference) if args.reference else None
        title = args.title or f"explorer report: {args.source}"
        out = report.write_report(df, args.out, title=title, objectives=objectives,
                                  group_by=_group_by(args.group_by), reference=reference, budgets=args.budget)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = pareto_front(df, objectives, report.resolve_group_by(df, _group_by(args.group_by)))
    print(result.summary())
    print(f"wrote {out}")
    if args.png:
        try:
            files = report.write_pngs(df, args.png, objectives=objectives, group_by=_group_by(args.group_by),
                                      reference=reference)
        except report.StaticExportUnavailable as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {len(files)} PNG file(s) to {args.png}")
    return 0
