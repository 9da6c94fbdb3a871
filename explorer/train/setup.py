"""A run's starting state: seeded data and model, optimiser, schedule, then the newest checkpoint
of ``output_dir`` restored when there is one (``resume=True``)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from torch import nn

from .build import (build_vlm, check_sequence_room, init_weights, make_optimizer, make_scheduler, resolve_precision,
                    trainable_flags)
from .checkpoints import latest_checkpoint, resume
from .config import TrainConfig
from .loading import datasets
from .state import RunLog, TrainState
from .world import World, micro_batch_size


def prepare_state(config: TrainConfig, world: World) -> TrainState:
    """The state a run starts (or resumes) from; writes ``config.json`` and starts ``metrics.jsonl``."""
    micro_batch_size(config, world)  # refuse a batch that does not split before building anything
    device = world.device(config)
    amp_dtype = resolve_precision(config.precision, device)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    train_data, val_data, test_data = datasets(config)
    model = build_vlm(config)
    init_weights(model, config, verbose=world.main)
    check_sequence_room(model, config)
    flags = trainable_flags(config)
    model.set_trainable(*flags)
    if world.size > 1 and device.type == "cuda" and config.sync_batchnorm and flags[0]:
        model.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder)
    model.to(device)
    model.encoder.to(memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
    optimizer = make_optimizer(model, config)
    state = TrainState(
        config=config, world=world, device=device, amp_dtype=amp_dtype, model=model, flags=flags,
        optimizer=optimizer, scheduler=make_scheduler(optimizer, config),
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        train_data=train_data, val_data=val_data, test_data=test_data,
        log=RunLog(out / "metrics.jsonl", world.main))

    checkpoint = latest_checkpoint(out) if config.resume else None
    if checkpoint is not None:
        resume(state, checkpoint)
        state.log.truncate(state.step)
    else:
        state.log.start_fresh()
    if world.main:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return state
