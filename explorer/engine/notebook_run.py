"""How a notebook gets its rows and writes its figures: read a space's database, or measure a QUICK copy.

The notebooks (``notebooks/*.py``) answer questions about a named space. They never keep their own
measuring code: :func:`read_or_measure` reads the rows of the space's design points from its results
database (what ``python -m explorer sweep +space=NAME`` writes) or, when there is none, measures
through :func:`explorer.engine.sweep.plan_sweep` / :func:`explorer.engine.sweep.run_sweep`, the CLI's functions.

QUICK mode (``EXPLORER_QUICK=1``, what CI runs) measures a reduced copy of the space with the
:data:`QUICK_TIMING` caps into its own database (``<results>/quick/store.db``), so QUICK medians
never mix with a full sweep's. :func:`export_figure` writes a static PNG where kaleido and a
Chromium are available and says why not otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import pandas as pd

from explorer.data.results import load
from explorer.data.space import Space, enumerate_points
from explorer.data.store import Store
from explorer.engine.backend import MeasureBackend
from explorer.engine.options import SweepOptions
from explorer.engine.sweep import default_settings, plan_sweep, run_sweep

__all__ = ["QUICK_TIMING", "NotebookPaths", "env_flag", "resolve_paths", "notebook_setup", "quick_settings",
           "read_or_measure", "runtime_environment", "stored_runtimes", "export_figure"]

# QUICK: no warm-up beyond the timer's one untimed calibration call, and a single timed call per
# measurement (a median of one sample: flagged noisy in the store, and said so in every figure).
QUICK_TIMING: Mapping[str, Any] = {"warmup_s": 0.0, "warmup_iters": 0, "min_iters": 1, "max_iters": 1,
                                   "max_time_s": 1.0}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_flag(name: str, default: bool, environ: Optional[Mapping[str, str]] = None) -> bool:
    """The boolean in environment variable ``name`` (1/0, true/false, yes/no, on/off); ``default`` if unset or empty.

    Anything else raises ValueError naming the variable, so a typo does not silently pick a mode.
    """
    value = (os.environ if environ is None else environ).get(name, "").strip().lower()
    if value == "":
        return bool(default)
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"invalid {name}={value!r}: one of {', '.join(_TRUE + _FALSE)} (or unset)")


@dataclass(frozen=True)
class NotebookPaths:
    """Where a notebook reads and writes: the checkout, the space's database, the QUICK database, figures."""

    root: Path
    results_dir: Path
    results_db: Path
    quick_db: Path
    figures_dir: Path


def resolve_paths(space: str, results_dir: Union[str, Path, None] = None, results_db: Union[str, Path, None] = None,
                  environ: Optional[Mapping[str, str]] = None, root: Optional[Path] = None) -> NotebookPaths:
    """The notebook's paths: ``results_dir`` (else ``$EXPLORER_RESULTS_DIR``, else ``<checkout>/results``);
    ``results_db`` (else ``<results_dir>/<space>/store.db``); QUICK's ``<results_dir>/quick/store.db``."""
    env = os.environ if environ is None else environ
    if root is None:
        import explorer

        root = Path(explorer.__file__).resolve().parents[1]  # the checkout (editable install)
        if not (root / "search_spaces").is_dir():
            root = Path.cwd()
    folder = Path(results_dir or env.get("EXPLORER_RESULTS_DIR") or root / "results")
    db = Path(results_db) if results_db else folder / space / "store.db"
    return NotebookPaths(root=root, results_dir=folder, results_db=db, quick_db=folder / "quick" / "store.db",
                         figures_dir=root / "docs" / "figures")


def notebook_setup(space: str, quick: bool, results_dir: Union[str, Path, None] = None,
                   results_db: Union[str, Path, None] = None,
                   write_figures: Optional[bool] = None) -> tuple[bool, NotebookPaths, bool]:
    """The measuring notebooks' preamble: ``(QUICK, PATHS, WRITE_FIGURES)`` with the environment's
    overrides (``EXPLORER_QUICK``; ``EXPLORER_WRITE_FIGURES`` when ``write_figures`` is None), the
    paths of :func:`resolve_paths`, pandas' display width, and one line saying what was chosen."""
    quick = env_flag("EXPLORER_QUICK", quick)
    paths = resolve_paths(space, results_dir, results_db)
    write = env_flag("EXPLORER_WRITE_FIGURES", False) if write_figures is None else bool(write_figures)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 40)
    present = "present" if paths.results_db.is_file() else "absent"
    print(f"QUICK={quick}; results database {paths.results_db} ({present}); "
          f"figures {'written to ' + str(paths.figures_dir) if write else 'not written'}")
    return quick, paths, write


def quick_settings(space: Space, **overrides: Any) -> Any:
    """The space's measurement settings with the :data:`QUICK_TIMING` caps (and ``overrides``)."""
    return default_settings(space, **QUICK_TIMING, **overrides)


def runtime_environment(store: Store, runtime: str) -> Optional[str]:
    """The key of the most recently measured environment of ``store`` whose encoder and projector
    ran under ``runtime`` (``eager``, ``compile``, ``onnxruntime``), or None."""
    envs = store.environments()
    keys = [k for k, e in envs.items() if e.get("runtime", "eager") == runtime]
    return max(keys, key=lambda k: str(envs[k].get("_last") or "")) if keys else None


def stored_runtimes(results_db: Union[str, Path]) -> list[str]:
    """The runtimes with at least one environment in the database at ``results_db`` (none if it is absent)."""
    if not Path(results_db).is_file():
        return []
    store = Store(results_db, create=False)
    try:
        return sorted({e.get("runtime", "eager") for e in store.environments().values()})
    finally:
        store.close()


def _rows_of(store: Store, keys: set[str], runtime: str, include_preprocess: bool) -> pd.DataFrame:
    env = runtime_environment(store, runtime)
    if env is None:
        return pd.DataFrame()
    frame = load(store, env=env, accuracy_metric=None, ttft_includes_preprocess=include_preprocess)
    return frame[frame["point_key"].isin(keys)].reset_index(drop=True)


def read_or_measure(full: Space, quick: Space, paths: NotebookPaths, *, quick_mode: bool,
                    log: Callable[[str], None] = print, options: Optional[SweepOptions] = None,
                    backend: MeasureBackend = MeasureBackend(),
                    ttft_includes_preprocess: bool = False, runtime: str = "eager") -> tuple[pd.DataFrame, str]:
    """Rows (accuracy not joined) of ``full``'s design points, and a sentence saying where they come from.

    QUICK: read ``paths.results_db`` if it holds a complete measurement of any of them, else sweep
    ``quick`` into ``paths.quick_db`` with :func:`quick_settings`. Not QUICK: ``run_sweep(full)``
    into ``paths.results_db`` with the space's own settings; it measures only what the database
    lacks, so an interrupted run resumes. ``options`` (default: a progress bar except in QUICK
    mode) and ``backend`` go to ``plan_sweep``/``run_sweep`` (tests pass fake measurers there).
    ``ttft_includes_preprocess=False`` (default): ``ttft_ms`` is the paper's definition, encoder
    input tensor to first token, so it equals encoder + projector + prefill.
    ``runtime`` (``measure.runtime``) runs the encoder and projector through eager PyTorch,
    torch.compile or ONNX Runtime; rows are read from, and measured into, that runtime's
    environment only, so one database holds every runtime without mixing them.
    """
    keys = {p.key for p in enumerate_points(full)}
    if quick_mode and paths.results_db.is_file():
        store = Store(paths.results_db, create=False)
        try:
            rows = _rows_of(store, keys, runtime, ttft_includes_preprocess)
        finally:
            store.close()
        if len(rows) and rows["status"].eq("ok").any():
            log(f"read {len(rows)} of the {len(keys)} design points ({runtime}) from {paths.results_db}; "
                "nothing measured")
            return rows, f"{paths.results_db} (read)"
        log(f"{paths.results_db} holds none of these design points under runtime {runtime!r}: "
            "measuring the QUICK subset instead")
    if quick_mode:
        space, settings, db = quick, quick_settings(full, runtime=runtime), paths.quick_db
    else:
        space, settings, db = full, default_settings(full, runtime=runtime), paths.results_db
    options = options if options is not None else SweepOptions(progress=not quick_mode)
    db.parent.mkdir(parents=True, exist_ok=True)
    store = Store(db)
    try:
        plan = plan_sweep(space, settings, store, options, backend)
        log(plan.describe())
        report = run_sweep(space, settings, store, options, backend, plan=plan)
        log(report.format(store))
        frame = load(store, env=plan.env_key, accuracy_metric=None, ttft_includes_preprocess=ttft_includes_preprocess)
    finally:
        store.close()
    rows = frame[frame["point_key"].isin({p.key for p in plan.points})].reset_index(drop=True)
    mode = "QUICK timing caps" if quick_mode else "the space's timing protocol"
    return rows, f"{db} (measured here with {mode})"


def export_figure(fig: Any, path: Union[str, Path, None], *, width: int = 1100, height: Optional[int] = None,
                  scale: float = 2, log: Callable[[str], None] = print) -> Optional[Path]:
    """Write ``fig`` as a PNG at ``path`` (None: export off, said so); returns the path, or None where
    static export is unavailable (kaleido >= 1 and a Chrome/Chromium are needed), with a note."""
    if path is None:
        log("figure not exported (set WRITE_FIGURES = True or EXPLORER_WRITE_FIGURES=1 to write docs/figures/)")
        return None
    from explorer.analysis.report import write_png_files

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png_files([fig], [path], width, [int(height or fig.layout.height or 600)], scale)
    except Exception as exc:  # no kaleido, or no Chrome for it: say so and go on
        first = (str(exc).strip().splitlines() or [""])[0]
        log(f"NOTE: static export of {path.name} skipped ({type(exc).__name__}: {first}). "
            "It needs `pip install kaleido` (>= 1) and a Chrome/Chromium on the machine.")
        return None
    log(f"wrote {path}")
    return path
