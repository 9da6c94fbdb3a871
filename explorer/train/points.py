"""Train the chosen design points of a sweep and put their accuracy into its store.

A design point is (encoder + knobs, resolution, LLM, text tokens). With the default from-scratch
decoder (``lm='scratch'``) the trained VLM does not depend on which catalog LLM the point was
timed with, so one run serves every point that shares (encoder, knobs, resolution): its accuracy
is stored for those fields with ``llm`` left open, and ``results.load`` then attaches it to each
such point. With ``lm='hf'`` (a real local causal LM) the accuracy is stored for the point's LLM.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import pandas as pd

from explorer.data.space import canonical_json
from explorer.data.store import Store
from .config import TrainConfig
from .trainer import TrainResult, train

SELECTIONS = ("pareto", "all")


@dataclass(frozen=True)
class TrainTarget:
    """One training run: the encoder configuration and resolution it trains, and the points it serves."""

    encoder: str
    knobs: dict[str, Any]
    resolution: int
    llm: Optional[str]  # None: the accuracy applies to every LLM of these points (scratch decoder)
    point_keys: tuple[str, ...]

    @property
    def label(self) -> str:
        knobs = ",".join(f"{k}={v}" for k, v in sorted(self.knobs.items())) or "default"
        llm = f"-{self.llm}" if self.llm else ""
        return f"{self.encoder}[{knobs}]@{self.resolution}{llm}"

    @property
    def slug(self) -> str:
        """A file-system-safe name for the run's output folder."""
        return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in self.label)


def select_points(df: pd.DataFrame, selection: Union[str, Sequence[str]]) -> pd.DataFrame:
    """Rows of a results table to train: ``'pareto'`` (the TTFT frontier), ``'all'`` or point keys.

    ``'pareto'`` uses :func:`explorer.analysis.pareto.pareto_front` with its defaults (minimise TTFT,
    maximise accuracy, or resolution where no accuracy is known yet): the cheapest configurations
    that could still be worth their latency.
    """
    if df.empty:
        raise ValueError("the results table is empty: run the sweep first")
    if isinstance(selection, str) and selection in SELECTIONS:
        if selection == "all":
            return df[df["status"] == "ok"] if "status" in df.columns else df
        from explorer.analysis.pareto import pareto_front

        front = pareto_front(df).front
        if front.empty:
            raise ValueError("the frontier is empty: no completed design point has a TTFT yet")
        return df.loc[front.index]
    keys = [selection] if isinstance(selection, str) else list(selection)
    keys = [k.strip() for part in keys for k in str(part).split(",") if k.strip()]
    unknown = [k for k in keys if k not in set(df["point_key"])]
    if not keys or unknown:
        raise ValueError(f"invalid train.points={selection!r}: 'pareto', 'all' or point keys of this sweep; "
                         f"unknown: {unknown[:5]}")
    return df[df["point_key"].isin(keys)]


def plan_targets(rows: pd.DataFrame, per_llm: bool = False) -> list[TrainTarget]:
    """Group selected rows into training runs (one per encoder config and resolution, or per LLM too)."""
    groups: dict[tuple, list[str]] = {}
    info: dict[tuple, tuple[str, dict[str, Any], int, Optional[str]]] = {}
    for r in rows.itertuples():
        knobs = json.loads(r.knobs) if isinstance(r.knobs, str) and r.knobs else dict(r.knobs or {})
        llm = r.llm if per_llm else None
        key = (r.encoder, canonical_json(knobs), int(r.resolution), llm)
        groups.setdefault(key, []).append(r.point_key)
        info[key] = (r.encoder, knobs, int(r.resolution), llm)
    return [TrainTarget(*info[k], point_keys=tuple(v)) for k, v in groups.items()]


def config_for(target: TrainTarget, base: TrainConfig, output_root: Union[str, Path]) -> TrainConfig:
    """The base training config aimed at one target (its encoder, knobs, resolution and folder)."""
    return dataclasses.replace(base, encoder=target.encoder, encoder_knobs=dict(target.knobs),
                               resolution=target.resolution, output_dir=str(Path(output_root) / target.slug))


def task_name(config: TrainConfig) -> str:
    if config.data == "proxy":
        return "proxy:" + "+".join(config.proxy.tasks)
    return "llava:" + Path(str(config.llava_train)).stem


def train_targets(
    targets: Sequence[TrainTarget],
    base: TrainConfig,
    store: Store,
    output_root: Union[str, Path],
    metric: str = "exact_match",  # the one shown on the frontier; every standard metric is stored
    log: Callable[[str], None] = print,
    run: Callable[[TrainConfig], TrainResult] = train,
) -> list[tuple[TrainTarget, TrainResult]]:
    """Train each target (resuming its own checkpoints) and store its test accuracy at once.

    Each accuracy is committed as soon as its run ends, so an interrupted batch keeps what it
    finished; running again resumes the unfinished run from its last checkpoint.
    """
    configs = [config_for(t, base, output_root) for t in targets]
    for c in configs:
        c.check_runnable()  # every run's config checked against this machine before the first one starts
    done: list[tuple[TrainTarget, TrainResult]] = []
    for i, (target, config) in enumerate(zip(targets, configs), 1):
        log(f"[{i}/{len(targets)}] training {target.label} -> {config.output_dir}")
        result = run(config)
        accuracy = result.test_accuracy if result.test_accuracy is not None else result.val_accuracy
        if accuracy is None:
            raise RuntimeError(f"training {target.label} produced no accuracy (see {result.log_path})")
        details = {"split": "test" if result.test_accuracy is not None else "val", "steps": result.steps,
                   "val_accuracy": result.val_accuracy, "test_by_task": result.test_by_task,
                   "output_dir": result.output_dir, "lm": config.lm, "train_time_s": result.train_time_s,
                   "config": config.to_dict()}
        values = dict(result.test_metrics if result.test_accuracy is not None else result.val_metrics)
        values["exact_match"] = accuracy
        if metric not in values:
            raise ValueError(f"invalid metric={metric!r}: this run reports {sorted(values)}")
        # The primary metric goes in last: the newest stored accuracy is the one the table shows.
        order = [m for m in values if m != metric] + [metric]
        for name in order:
            source = f"trained:{task_name(config)}:{name}"
            if target.llm is None:
                store.add_accuracy(100.0 * values[name], source, encoder=target.encoder, knobs=target.knobs or None,
                                   resolution=target.resolution, metric=name, details=details)
            else:
                for key in target.point_keys:
                    store.add_accuracy(100.0 * values[name], source, point_key=key, metric=name, details=details)
        others = ", ".join(f"{m} {100.0 * values[m]:.1f}%" for m in order[:-1])
        log(f"    {target.label}: test {metric} {100.0 * values[metric]:.1f}% ({others}) after {result.steps} steps "
            f"({result.train_time_s / 60:.1f} min) -> accuracy_source={source}")
        done.append((target, result))
    return done


def base_config(overrides: Mapping[str, Any]) -> TrainConfig:
    """A TrainConfig from plain overrides (``proxy`` may be a mapping of ProxyTaskConfig fields)."""
    from .data import ProxyTaskConfig

    values = dict(overrides)
    proxy = values.pop("proxy", None)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown train.config key(s) {unknown}; allowed: {sorted(names)}")
    config = TrainConfig(**values)
    if proxy:
        fields = {f.name for f in dataclasses.fields(ProxyTaskConfig)}
        bad = sorted(set(proxy) - fields)
        if bad:
            raise ValueError(f"unknown train.config.proxy key(s) {bad}; allowed: {sorted(fields)}")
        proxy = {k: tuple(v) if isinstance(v, list) else v for k, v in proxy.items()}
        try:
            config = dataclasses.replace(config, proxy=dataclasses.replace(config.proxy, **proxy))
        except ValueError as err:  # the proxy task's own check, named as the section it came from
            raise ValueError(f"invalid proxy.{str(err).removeprefix('invalid ')}") from None
    return config
