"""The FastVLM README figure's TTFT ordering from the M1 profiles (docs/prediction.md).

    PYTHONPATH=$PWD python tools/predict_paper_m1.py

Vision encoders on the M1 Neural Engine profile (the paper exported them to CoreML), projector
and Qwen2-0.5B prefill on the M1 GPU profile (the paper ran the LLM through MLX), fp16; compared
with the TTFTs read off the figure (results/reference/fastvlm_readme_figure.csv).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from explorer.predict import PredictOptions, load_profile, predict_space
from explorer.data.reference import REFERENCE_DIR
from explorer.predict.validate import spearman


def main() -> None:
    df = predict_space("paper_baselines", load_profile("apple-m1-ane"), llm_profile=load_profile("apple-m1-gpu"),
                       options=PredictOptions(dtype="float16"), accuracy_metric=None)
    ref = pd.read_csv(REFERENCE_DIR / "fastvlm_readme_figure.csv")
    m = df.merge(ref[["encoder", "resolution", "paper_ttft_ms"]], on=["encoder", "resolution"])
    m["ratio"] = m.ttft_ms / m.paper_ttft_ms
    scale = math.exp(np.log(m.ratio).mean())
    m["ratio_error"] = m.ratio / scale - 1
    cols = ["encoder", "resolution", "visual_tokens", "encoder_gflops", "encoder_latency_ms", "prefill_latency_ms",
            "ttft_ms", "paper_ttft_ms", "ratio", "ratio_error"]
    print(m[cols].sort_values("paper_ttft_ms").to_markdown(index=False, floatfmt=".2f"))
    pairs = list(itertools.combinations(range(len(m)), 2))
    agree = sum((m.ttft_ms[i] - m.ttft_ms[j]) * (m.paper_ttft_ms[i] - m.paper_ttft_ms[j]) > 0 for i, j in pairs)
    print(f"\nSpearman(predicted, paper) = {spearman(list(m.paper_ttft_ms), list(m.ttft_ms)):.3f}; "
          f"{agree}/{len(pairs)} pairs in the paper's order; one global scale x{scale:.2f}; "
          f"median |ratio error| {m.ratio_error.abs().median() * 100:.0f}%, max {m.ratio_error.abs().max() * 100:.0f}%")
    for res in (512, 768, 1024):
        a = m[(m.encoder == "fastvithd") & (m.resolution == res)].ttft_ms.iloc[0]
        b = m[(m.encoder == "convnext_l") & (m.resolution == res)].ttft_ms.iloc[0]
        pa = m[(m.encoder == "fastvithd") & (m.resolution == res)].paper_ttft_ms.iloc[0]
        pb = m[(m.encoder == "convnext_l") & (m.resolution == res)].paper_ttft_ms.iloc[0]
        print(f"ConvNeXt-L / FastViTHD TTFT at {res}: predicted {b / a:.2f}x, paper {pb / pa:.2f}x")


if __name__ == "__main__":
    main()
