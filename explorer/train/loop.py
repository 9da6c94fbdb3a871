"""The step loop: optimisation steps from the state's position to ``max_steps`` (or a stop).

Each step takes one global batch: this process's micro-batches (``grad_accum_steps`` of them),
gradients averaged over processes, the loss the token-weighted mean over the global batch as in
one process; then clipping, the optimiser, the schedule. Around each step: the log record, the
periodic evaluation, checkpoints, and the stop hook (``stop(step, record)`` returning True saves a
checkpoint and ends the run early, like ``stop_after_steps``: the way tests simulate a kill).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from .build import set_modes
from .checkpoints import save
from .evaluation import evaluate_during_training
from .loading import ResumableBatchSampler, ShardSampler, loader
from .state import TrainState
from .vlm import IGNORE_INDEX, VLM
from .world import micro_batch_size

StopHook = Callable[[int, dict[str, Any]], bool]


@dataclass
class LoopOutcome:
    """What this call of the loop did (a resumed run counts only its own steps here)."""

    stopped: bool = False  # a stop hook or stop_after_steps ended the run before max_steps
    last_loss: Optional[float] = None  # mean loss of the last logged window
    steps: int = 0
    time_s: float = 0.0

    @property
    def steps_per_minute(self) -> Optional[float]:
        return 60.0 * self.steps / self.time_s if self.time_s > 0 else None


def target_tokens(model: VLM, samples: list[Any]) -> int:
    """Answer tokens (the loss terms) of these samples, counted from their text alone."""
    return sum(sum(1 for t in model.encode_turns(s.turns, final_answer=True)[1] if t != IGNORE_INDEX)
               for s in samples)


def optimisation_step(state: TrainState, runner: nn.Module, trainable: list[torch.nn.Parameter],
                      images: torch.Tensor, samples: list[Any]) -> dict[str, float]:
    """One optimiser step on one global batch; returns its loss, learning rate and gradient norm."""
    config, world, device = state.config, state.world, state.device
    micro = micro_batch_size(config, world)
    images = images.to(device, memory_format=state.memory_format, non_blocking=True)
    counts = world.all_reduce(torch.tensor([float(target_tokens(state.model, samples))], dtype=torch.float64))
    global_tokens = max(1.0, float(counts[0]))
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for m in range(config.grad_accum_steps):
        part = slice(m * micro, (m + 1) * micro)
        with world.no_sync(runner, last_micro_batch=m == config.grad_accum_steps - 1):
            with torch.autocast(device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
                total, _ = runner(images[part], [s.turns for s in samples[part]])
            # DDP averages gradients over processes; scaling by the world size makes them the
            # gradient of the token-weighted mean over the global batch.
            state.scaler.scale(total * (world.size / global_tokens)).backward()
        loss_sum += total.detach().double()
    loss = float(world.all_reduce(loss_sum)) / global_tokens
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss is {loss} at step {state.step + 1}; lower lr or use fp32")
    state.scaler.unscale_(state.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip if config.grad_clip > 0 else float("inf"))
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    lr = state.scheduler.get_last_lr()[0]
    state.scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"loss": loss, "lr": lr, "grad_norm": float(grad_norm)}


def _progress_bar(state: TrainState) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=state.config.max_steps, initial=state.step, desc=f"train R={state.config.resolution}",
                disable=not state.config.progress or not state.world.main, dynamic_ncols=True)


def _after_step(state: TrainState, record: dict[str, Any], window: list[float], outcome: LoopOutcome,
                stop: Optional[StopHook]) -> bool:
    """Log, evaluate and checkpoint as the config asks after a step; True when the run stops here."""
    config, step = state.config, state.step
    if step % config.log_every == 0 or step == config.max_steps:
        outcome.last_loss = sum(window) / len(window)
        state.log.write({**record, "loss": outcome.last_loss, "kind": "train"})
        window.clear()
    if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
        evaluate_during_training(state)
    want_stop = (config.stop_after_steps is not None and step >= config.stop_after_steps) or \
        (stop is not None and stop(step, record))
    if step % config.checkpoint_every == 0 or step == config.max_steps or want_stop:
        save(state)
    return want_stop and step < config.max_steps


def run_steps(state: TrainState, stop: Optional[StopHook] = None) -> LoopOutcome:
    """Train from the state's step to ``max_steps`` or a stop; the state advances as it goes."""
    config, world = state.config, state.world
    batches = ResumableBatchSampler(len(state.train_data), config.batch_size, config.seed,  # type: ignore[arg-type]
                                    state.position, config.max_steps - state.step)
    sampler = ShardSampler(batches, world.size, world.rank, config.grad_accum_steps)
    set_modes(state.model, state.flags)
    runner, trainable = world.wrap(state.model, state.device), state.trainable()
    outcome, window, bar = LoopOutcome(), [], _progress_bar(state)
    t_last = time.perf_counter()
    for images, samples in loader(state.train_data, sampler, config.num_workers):
        record: dict[str, Any] = optimisation_step(state, runner, trainable, images, samples)
        dt = time.perf_counter() - t_last  # includes rendering/loading the batch, not evaluation
        state.train_time_s += dt
        state.step += 1
        state.position += config.batch_size
        outcome.time_s += dt
        outcome.steps += 1
        window.append(record["loss"])
        record = {"step": state.step, **record, "samples": state.position, "train_time_s": round(state.train_time_s, 3)}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
        if _after_step(state, record, window, outcome, stop):
            outcome.stopped = True
            break
        t_last = time.perf_counter()
    if bar is not None:
        bar.close()
    if window:
        outcome.last_loss = sum(window) / len(window)
    elif outcome.last_loss is None:
        outcome.last_loss = state.log.last_train_loss()
    return outcome
