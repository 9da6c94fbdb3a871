"""``python -m explorer export RESULTS [--format csv|parquet] [--out FILE]``: the results table as a file.

RESULTS is a results folder (``results/fastvithd``), a ``.db`` file or a SQLAlchemy URL; the
columns are those of :func:`explorer.data.results.load` (docs/results.md).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m explorer export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="results folder, .db file or SQLAlchemy URL")
    parser.add_argument("--format", choices=("csv", "parquet"), default=None,
                        help="file format (default: from --out's suffix, else csv); parquet needs pyarrow")
    parser.add_argument("--out", default=None, help="output file (default: <results folder>/results.<format>)")
    parser.add_argument("--space", default=None, help="only this space's points (default: all)")
    parser.add_argument("--env", default="latest",
                        help="environment of the numbers: latest (default), all, or an environment key")
    args = parser.parse_args(argv)

    from explorer.data.results import export

    fmt = args.format or (Path(args.out).suffix.lstrip(".") if args.out else "csv") or "csv"
    if fmt not in ("csv", "parquet"):
        parser.error(f"cannot tell the format from --out {args.out!r}; give --format csv or --format parquet")
    if args.out:
        out = Path(args.out)
    elif "://" in args.results:
        out = Path(f"results.{fmt}")
    else:
        src = Path(args.results)
        out = (src.parent if src.suffix in (".db", ".sqlite", ".sqlite3") else src) / f"results.{fmt}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            written = export(args.results, out, fmt, space=args.space, env=args.env)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0
