"""The training state: what a run trains (model, optimiser, schedule, scaler, data) and where it
stands (step, samples consumed, optimisation time), plus its log file ``metrics.jsonl``.

A checkpoint is exactly :meth:`TrainState.payload` (with the RNG states); resuming restores it
(:mod:`explorer.train.checkpoints`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from .build import Flags
from .config import TrainConfig
from .vlm import VLM
from .world import World


class RunLog:
    """``metrics.jsonl``: one JSON record per log / eval event, written by the main process only."""

    def __init__(self, path: Path, main: bool) -> None:
        self.path, self.main = path, main

    def write(self, record: dict[str, Any]) -> None:
        if self.main:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def start_fresh(self) -> None:
        """A new run: drop the log of an earlier run in the same folder."""
        if self.main and self.path.exists():
            self.path.unlink()

    def truncate(self, step: int) -> None:
        """Drop records past the checkpoint we resume from (they will be written again)."""
        if not self.main or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if record.get("step", 0) <= step:
                kept.append(line + "\n")
        self.path.write_text("".join(kept))

    def last_train_loss(self) -> Optional[float]:
        """The loss of the last logged training window (a resumed run that has no step left to take)."""
        if not self.path.exists():
            return None
        records = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
        losses = [r["loss"] for r in records if r.get("kind") == "train"]
        return losses[-1] if losses else None


@dataclass
class TrainState:
    """Everything one process of a run holds while it trains."""

    config: TrainConfig
    world: World
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    model: VLM
    flags: Flags
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    train_data: Dataset
    val_data: Optional[Dataset]
    test_data: Optional[Dataset]
    log: RunLog
    step: int = 0
    position: int = 0  # samples consumed
    train_time_s: float = 0.0  # optimisation time summed over all resumptions
    resumed_from: Optional[int] = None
    checkpoint_path: Optional[Path] = None

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.channels_last else torch.contiguous_format

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def params(self) -> dict[str, int]:
        """Parameter counts of each part and of what is trained."""
        return {"encoder": sum(p.numel() for p in self.model.encoder.parameters()),
                "projector": sum(p.numel() for p in self.model.projector.parameters()),
                "lm": sum(p.numel() for p in self.model.lm.parameters()),
                "trainable": sum(p.numel() for p in self.trainable())}

    def payload(self) -> dict[str, Any]:
        """What a checkpoint holds besides the RNG states."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "position": self.position, "train_time_s": self.train_time_s,
                "config": self.config.to_dict(), "world_size": self.world.size}
