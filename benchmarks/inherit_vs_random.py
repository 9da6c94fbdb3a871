"""Weight inheritance against random initialisation for FastViTHD knob variants, on the proxy task.

    PYTHONPATH=$PWD python benchmarks/inherit_vs_random.py --out results/bench_inherit

1. Trains a parent VLM (a small FastViTHD + the scratch decoder) on the proxy task.
2. For each variant (half width, half depth, both) measures the loss on fixed training batches
   before any update: random init; inherited (encoder by first-k channels and evenly spaced
   blocks, projector sliced, decoder copied); and a control with the decoder and projector
   inherited but the encoder fresh (how much of the gain is the encoder's own).
3. Trains each variant for a few steps from inherited and from random weights (``train()``
   with ``inherit_from``) and reports the loss curves' start and end.
Writes ``summary.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from explorer.train.data import ProxyTaskConfig, ProxyTextDataset
from explorer.train.inherit import inherit_state
from explorer.train.build import build_vlm
from explorer.train.checkpoints import latest_checkpoint, load_checkpoint
from explorer.train.config import TrainConfig
from explorer.train.trainer import train

PARENT = {"depths": [2, 2, 4, 2, 2], "widths": [16, 32, 64, 64, 128], "head_dim": 16}
VARIANTS = {
    "half_width": {"depths": [2, 2, 4, 2, 2], "widths": [8, 16, 32, 32, 64], "head_dim": 16},
    "half_depth": {"depths": [1, 1, 2, 1, 1], "widths": [16, 32, 64, 64, 128], "head_dim": 16},
    "half_both": {"depths": [1, 1, 2, 1, 1], "widths": [8, 16, 32, 32, 64], "head_dim": 16},
}


@torch.no_grad()
def fixed_batch_loss(config: TrainConfig, model: torch.nn.Module, batches: int = 4) -> float:
    ds = ProxyTextDataset(dataclasses.replace(config.proxy, resolution=config.resolution), "train")
    model.eval()  # BatchNorm with its running statistics, as the model stands
    total = 0.0
    for b in range(batches):
        samples = [ds[10_000 + b * config.batch_size + i] for i in range(config.batch_size)]
        images = torch.stack([s.image for s in samples])
        total += float(model.loss(images, [s.turns for s in samples]))
    return total / batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/bench_inherit")
    ap.add_argument("--parent-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--resolution", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    proxy = ProxyTaskConfig(tasks=("read_code",), code_chars="0123456789", code_length=1, text_size=(0.10, 0.25),
                            distractors=1, val_size=100, test_size=100)
    base = TrainConfig(output_dir=str(out / "parent"), resolution=args.resolution, proxy=proxy,
                       encoder_knobs=dict(PARENT), batch_size=16, max_steps=args.parent_steps, lr=2e-3,
                       warmup_steps=30, threads=1, progress=False, log_every=1, eval_samples=100,
                       max_new_tokens=3, checkpoint_every=100)
    parent = train(base)
    parent_state = load_checkpoint(latest_checkpoint(parent.output_dir))["model"]
    summary: dict = {"parent": {"steps": parent.steps, "test_accuracy": parent.test_accuracy,
                                "train_loss": parent.train_loss}}
    for name, knobs in VARIANTS.items():
        cfg = dataclasses.replace(base, encoder_knobs=dict(knobs), output_dir=str(out / name))
        torch.manual_seed(1)
        random_model = build_vlm(cfg)
        torch.manual_seed(1)
        inherited = build_vlm(cfg)
        report = inherit_state(inherited, parent_state)
        torch.manual_seed(1)
        control = build_vlm(cfg)
        fresh_encoder = {f"encoder.{k}": v.clone() for k, v in control.encoder.state_dict().items()}
        inherit_state(control, parent_state)
        control.load_state_dict(fresh_encoder, strict=False)
        row = {"fresh_tensors": len(report.fresh),
               "loss_random": fixed_batch_loss(cfg, random_model),
               "loss_inherited": fixed_batch_loss(cfg, inherited),
               "loss_lm_only_inherited": fixed_batch_loss(cfg, control)}
        for how in ("random", "inherited"):
            run = dataclasses.replace(cfg, output_dir=str(out / f"{name}_{how}"), max_steps=args.steps,
                                      warmup_steps=5, inherit_from=parent.output_dir if how == "inherited" else None)
            r = train(run)
            losses = [json.loads(line)["loss"] for line in Path(r.log_path).read_text().splitlines()
                      if json.loads(line).get("kind") == "train"]
            row[f"train_{how}"] = {"first5": sum(losses[:5]) / 5, "last5": sum(losses[-5:]) / 5,
                                   "test_accuracy": r.test_accuracy}
        summary[name] = row
        print(name, json.dumps(row))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
