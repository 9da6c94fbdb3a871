"""What the TTFT of a deployed VLM leaves out here: its own image processor (docs/vlms.md).

A sweep times the registry's preprocessing (decode-free resize + crop of a source image to the
encoder's R x R input, ``measure.preprocess``) for every encoder, ``hf_vlm`` included. The
deployed models run their own processor instead: LLaVA-OneVision picks a pinpoint, resizes, cuts
9 tiles of 384 px plus a base view and normalises each; InternVL and SmolVLM tile too; Qwen2-VL
resizes and patchifies. This script times transformers' own image processors (PIL back-ends, built
from the catalog's processor facts: nothing downloaded) on a synthetic RGB image, beside the
registry's preprocessing to the same side, with the sweep's timer and protocol.

    python benchmarks/vlm_processor_time.py --side 1152 --threads 1
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable

import numpy as np
from PIL import Image

from explorer.measure.contention import load_average_text
from explorer.measure.preprocess import preprocess_fn
from explorer.measure.settings import MeasureSettings
from explorer.measure.timing import time_callable


def processors() -> dict[str, Callable[[], Any]]:
    """Each catalog model's own image processor, configured as the catalog says (docs/vlms.md)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import \
        LlavaOnevisionImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    return {
        "llava-onevision-0.5b": LlavaOnevisionImageProcessorPil,  # its defaults are the released model's
        "qwen2-vl-2b": lambda: Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056),
        "internvl3-1b": lambda: GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=12,
                                                         size={"height": 448, "width": 448}),
        "smolvlm-256m": lambda: SmolVLMImageProcessorPil(size={"longest_edge": 2048},
                                                         max_image_size={"longest_edge": 512}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1152, help="the square source image's side (pixels)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-time", type=float, default=5.0, help="seconds of timed calls per processor")
    args = ap.parse_args()
    settings = MeasureSettings(device="cpu", threads=args.threads, max_time_s=args.max_time, probe=False)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(args.side, args.side, 3), dtype=np.uint8))
    print(f"# image processors on a {args.side}x{args.side} RGB image, {args.threads} thread(s), "
          f"load average at start {load_average_text()}, pid {os.getpid()}")
    print("| preprocessing | output | median ms | 95% CI ms | n |")
    print("| --- | --- | --- | --- | --- |")
    generic = preprocess_fn("pil", "fastvithd", args.side, (args.side, args.side), "crop")
    t = time_callable(generic, settings)
    print(f"| registry `pil` resize + crop to {args.side} (what sweeps time) | {tuple(generic().shape)} | "
          f"{t.median_ms:.1f} | {t.ci_low_ms:.1f}-{t.ci_high_ms:.1f} | {t.n} |")
    for name, make in processors().items():
        ip = make()
        out = ip(image, return_tensors="np")
        shape = tuple(np.asarray(out["pixel_values"]).shape)
        t = time_callable(lambda: ip(image, return_tensors="np"), settings)
        print(f"| {name}'s own processor | {shape} | {t.median_ms:.1f} | {t.ci_low_ms:.1f}-{t.ci_high_ms:.1f} | {t.n} |")
    print(f"# load average at end {load_average_text()}")


if __name__ == "__main__":
    main()
