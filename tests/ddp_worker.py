"""One process of a torch.distributed training job, for tests (``python tests/ddp_worker.py CONFIG.json``).

The launcher sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and LOCAL_RANK, as torchrun does.
With ``--stop-at K`` the job first stops after step K (with a checkpoint, as a killed job would
have left it), then trains again in the same output folder, resuming from that checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch
import torch.distributed as dist

from explorer.train.points import base_config
from explorer.train.trainer import train

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--stop-at", type=int, default=None)
    ap.add_argument("--let-train-join", action="store_true", help="train() joins the job itself (torchrun path)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = base_config(json.loads(open(args.config).read()))
    if args.let_train_join:
        result = train(config)
        assert result.world_size == 2 and not dist.is_initialized()  # train() left the group it made
        raise SystemExit(0)
    dist.init_process_group("gloo")  # train() uses a group that is already there
    if args.stop_at is not None:
        first = train(dataclasses.replace(config, stop_after_steps=args.stop_at))
        assert first.stopped_early and first.steps == args.stop_at and first.world_size == 2
    result = train(config)
    assert result.world_size == dist.get_world_size()
    dist.destroy_process_group()
