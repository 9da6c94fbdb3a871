"""Checkpoints: save, load and resume a training state exactly.

A checkpoint holds model, optimiser, scheduler, grad scaler, RNG states, step and data position
(:meth:`explorer.train.state.TrainState.payload`), so a run killed and resumed from its last
checkpoint retraces the uninterrupted run step for step (bit-identical on the same machine and
thread count). Files: ``<output_dir>/checkpoints/step_XXXXXXX.pt``, written atomically, the newest
``keep_checkpoints`` kept.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from .config import RESUME_FREE_FIELDS

if TYPE_CHECKING:
    from .state import TrainState


def checkpoint_dir(output_dir: Union[str, Path]) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(path: Union[str, Path]) -> Optional[Path]:
    """The newest ``step_*.pt`` of a run directory (or of its ``checkpoints`` folder)."""
    path = Path(path)
    folder = path if path.name == "checkpoints" else checkpoint_dir(path)
    found = sorted(folder.glob("step_*.pt")) if folder.is_dir() else []
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    """Python's and torch's (CPU and every CUDA device's) random states."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any], keep: int) -> None:
    """Write ``payload`` to ``path`` atomically, then drop all but the newest ``keep`` checkpoints."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint under the real name
    for old in sorted(path.parent.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: Union[str, Path]) -> dict[str, Any]:
    """A checkpoint's payload, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)


def config_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Config fields that differ between a checkpoint and this run, except those free to change."""
    keys = (set(saved) | set(current)) - RESUME_FREE_FIELDS
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def save(state: "TrainState") -> Path:
    """Checkpoint the state at its step (the main process writes; every process waits for it)."""
    path = checkpoint_dir(state.output_dir) / f"step_{state.step:07d}.pt"
    if state.world.main:
        save_checkpoint(path, {**state.payload(), "rng": rng_state()}, state.config.keep_checkpoints)
    state.world.barrier()  # nobody runs ahead of a checkpoint (a kill after it loses no step)
    state.checkpoint_path = path
    return path


def resume(state: "TrainState", path: Path) -> None:
    """Restore ``state`` from the checkpoint at ``path``; refuses one written by another config or world."""
    saved = load_checkpoint(path)
    mismatch = config_mismatch(saved["config"], state.config.to_dict())
    if mismatch:
        raise ValueError(f"cannot resume from {path}: config fields {mismatch} differ from the checkpoint's; "
                         "use another output_dir or resume=False")
    if saved.get("world_size", 1) != state.world.size:
        raise ValueError(f"cannot resume from {path}: it was written by {saved.get('world_size', 1)} process(es), "
                         f"this run has {state.world.size}")
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    state.step, state.position, state.train_time_s = saved["step"], saved["position"], saved["train_time_s"]
    state.resumed_from = state.step
    state.checkpoint_path = path
