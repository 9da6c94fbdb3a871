"""explorer: latency-accuracy design-space exploration for vision-language models.

The public API, importable from here (each is loaded on first use, so ``import explorer`` stays
cheap): ``results`` (the results table), ``run_sweep`` / ``plan_sweep``, ``run_search`` /
``prepare_search``, ``SweepOptions`` / ``SearchOptions``, ``MeasureBackend``, ``MeasureSettings``,
``load_space``, ``Store``, ``pareto_front``.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC: dict[str, tuple[str, str]] = {
    "results": ("explorer.data.results", ""),
    "pareto": ("explorer.analysis.pareto", ""),
    "plots": ("explorer.analysis.plots", ""),
    "report": ("explorer.analysis.report", ""),
    "run_sweep": ("explorer.engine.sweep", "run_sweep"),
    "plan_sweep": ("explorer.engine.sweep", "plan_sweep"),
    "run_search": ("explorer.engine.search", "run_search"),
    "prepare_search": ("explorer.engine.search", "prepare_search"),
    "SweepOptions": ("explorer.engine.options", "SweepOptions"),
    "SearchOptions": ("explorer.engine.options", "SearchOptions"),
    "MeasureBackend": ("explorer.engine.backend", "MeasureBackend"),
    "MeasureSettings": ("explorer.measure.settings", "MeasureSettings"),
    "load_space": ("explorer.data.space", "load_space"),
    "Store": ("explorer.data.store", "Store"),
    "pareto_front": ("explorer.analysis.pareto", "pareto_front"),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'explorer' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    value = importlib.import_module(module)
    return getattr(value, attr) if attr else value
