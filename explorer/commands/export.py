"""``explorer export source=RESULTS [format=csv|parquet] [out=FILE] [space=NAME] [env=...]``.

RESULTS is a results folder (``results/fastvithd``), a ``.db`` file or a SQLAlchemy URL; the
columns are those of :func:`explorer.data.results.load` (docs/results.md). The file is written
atomically.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig

from explorer.checks import OptionError, check_choice, check_output_file, check_text
from explorer.commands.common import error
from explorer.conf.schema import hydra_node, options_of, hydra_command

_STATE: dict[str, Any] = {"exit": 0}


@dataclass(frozen=True)
class ExportOptions:
    """What to export and where (``out`` defaults to ``<results folder>/results.<format>``)."""

    SECTION: ClassVar[str] = "export"

    source: Optional[str] = None
    format: Optional[str] = None  # csv | parquet; default from out's suffix, else csv
    out: Optional[str] = None
    space: Optional[str] = None  # only this space's points (default: all)
    env: str = "latest"  # latest | all | an environment key

    def __post_init__(self) -> None:
        if self.source is None:
            raise OptionError("source", None, "a results folder, a .db file or a database URL (source=...)")
        check_text("source", self.source)
        if self.format is not None:
            check_choice("format", self.format, ("csv", "parquet"))
        elif self.out is not None and Path(self.out).suffix.lstrip(".") not in ("csv", "parquet"):
            raise OptionError("out", self.out, "a .csv or .parquet file, or give format=csv|parquet")
        check_text("env", self.env)

    def file_format(self) -> str:
        return self.format or (Path(self.out).suffix.lstrip(".") if self.out else "csv")

    def target(self) -> Path:
        if self.out:
            return Path(self.out)
        if "://" in self.source:  # type: ignore[operator]
            return Path(f"results.{self.file_format()}")
        src = Path(self.source)  # type: ignore[arg-type]
        return (src.parent if src.suffix in (".db", ".sqlite", ".sqlite3") else src) / f"results.{self.file_format()}"


def run_from_config(cfg: DictConfig) -> int:
    from explorer.data.results import export

    try:
        opts = options_of(ExportOptions, cfg)
        check_output_file("out", opts.target())  # before the database is read
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            written = export(opts.source, opts.target(), opts.file_format(), space=opts.space, env=opts.env)
    except (FileNotFoundError, RuntimeError, ValueError, OSError) as err:
        error(str(err))
        return 2
    print(f"wrote {written}")
    return 0


main = hydra_command("export", run_from_config, _STATE, schema=lambda: hydra_node(ExportOptions), spaces=False)
