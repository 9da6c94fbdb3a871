"""A realistic hand-made results table for the analysis tests and the report screenshot.

TTFT and accuracy are the readings off the FastVLM paper's accuracy-vs-TTFT figure (Qwen2-0.5B,
average of five benchmarks, TTFT on the paper's Apple-silicon device; read from a plot, so
approximate). The split of each TTFT into vision encoder, projector and prefill is made up from
a simple prefill model (a fixed cost plus a cost per token), so the parts add up to the
published TTFT. Qwen2-1.5B rows reuse the encoder times with a slower prefill and have no
accuracy yet (as after a sweep, before training); two rows failed.
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd

TEXT_TOKENS = 64

#: encoder -> (downsampling, parameters in M, GFLOP at 1024 px, knobs)
ENCODERS: dict[str, tuple[int, float, float, dict]] = {
    "fastvithd": (64, 125.1, 487.0, {}),
    "convnext_l": (64, 199.8, 1310.0, {}),
    "vit_l14_clip": (14, 304.0, 1640.0, {}),
    "siglip_so400m": (14, 428.2, 2270.0, {}),
    "convnext_xxl": (64, 846.0, 5100.0, {}),
}

#: (encoder, resolution, TTFT ms, avg-5 accuracy %) read off the paper's figure.
PAPER_FIGURE: list[tuple[str, int, float, float]] = [
    ("fastvithd", 256, 30, 48.4),
    ("fastvithd", 512, 50, 52.5),
    ("fastvithd", 768, 95, 54.5),
    ("fastvithd", 1024, 165, 55.9),
    ("convnext_l", 320, 63, 49.0),
    ("convnext_l", 512, 120, 52.2),
    ("convnext_l", 768, 292, 54.4),
    ("convnext_l", 1024, 940, 55.3),
    ("vit_l14_clip", 336, 255, 47.3),
    ("siglip_so400m", 384, 535, 55.5),
    ("convnext_xxl", 256, 118, 51.9),
]

PREFILL_MS = {"qwen2-0.5b": (8.0, 0.07), "qwen2-1.5b": (18.0, 0.19)}


def _tokens(encoder: str, resolution: int) -> int:
    side = math.ceil(resolution / ENCODERS[encoder][0])
    return side * side


def _row(encoder: str, resolution: int, llm: str, encoder_ms: float, accuracy: float) -> dict:
    down, params, gflops_1024, knobs = ENCODERS[encoder]
    visual = _tokens(encoder, resolution)
    prefill_tokens = visual + TEXT_TOKENS
    fixed, per_token = PREFILL_MS[llm]
    prefill_ms = fixed + per_token * prefill_tokens
    projector_ms = 0.3 + 0.002 * visual
    key = json.dumps([encoder, knobs, resolution, llm, TEXT_TOKENS], sort_keys=True)
    return {
        "point_key": hashlib.sha1(key.encode()).hexdigest()[:16],
        "encoder": encoder,
        "knobs": json.dumps(knobs, sort_keys=True),
        "resolution": resolution,
        "llm": llm,
        "text_tokens": TEXT_TOKENS,
        "visual_tokens": visual,
        "encoder_params_m": params,
        "encoder_gflops": round(gflops_1024 * (resolution / 1024) ** 2, 1),
        "encoder_latency_ms": round(encoder_ms, 2),
        "encoder_latency_p10_ms": round(encoder_ms * 0.97, 2),
        "encoder_latency_p90_ms": round(encoder_ms * 1.04, 2),
        "encoder_latency_cv": 0.03,
        "projector_gflops": round(2 * visual * (3072 * 896 + 896 * 896) / 1e9, 3),
        "projector_latency_ms": round(projector_ms, 2),
        "prefill_tokens": prefill_tokens,
        "prefill_gflops": round(2 * prefill_tokens * (494 if llm == "qwen2-0.5b" else 1540) / 1e3, 1),
        "prefill_latency_ms": round(prefill_ms, 2),
        "ttft_ms": round(encoder_ms, 2) + round(projector_ms, 2) + round(prefill_ms, 2),
        "accuracy": accuracy,
        "accuracy_source": "paper figure (approx.)" if not math.isnan(accuracy) else None,
        "device": "Apple M1 Max (paper)",
        "dtype": "float16",
        "threads": 8,
        "torch_version": "2.13.0",
        "status": "ok",
        "error": None,
        "measured_at": "2025-06-01T12:00:00",
    }


def paper_table() -> pd.DataFrame:
    """The figure's eleven points (0.5B), six 1.5B rows without accuracy, two failed rows."""
    rows = []
    encoder_ms: dict[tuple[str, int], float] = {}
    for encoder, resolution, ttft, accuracy in PAPER_FIGURE:
        visual = _tokens(encoder, resolution)
        fixed, per_token = PREFILL_MS["qwen2-0.5b"]
        ms = ttft - (fixed + per_token * (visual + TEXT_TOKENS)) - (0.3 + 0.002 * visual)
        encoder_ms[(encoder, resolution)] = ms
        rows.append(_row(encoder, resolution, "qwen2-0.5b", ms, accuracy))
    for encoder, resolution in [("fastvithd", 256), ("fastvithd", 512), ("fastvithd", 768),
                                ("fastvithd", 1024), ("convnext_l", 512), ("vit_l14_clip", 336)]:
        rows.append(_row(encoder, resolution, "qwen2-1.5b", encoder_ms[(encoder, resolution)], math.nan))
    failed = _row("fastvithd", 1536, "qwen2-1.5b", math.nan, math.nan)
    failed.update(status="failed", error="RuntimeError: out of memory at 1536 px", ttft_ms=math.nan,
                  prefill_latency_ms=math.nan, projector_latency_ms=math.nan)
    rows.append(failed)
    timeout = _row("siglip_so400m", 768, "qwen2-0.5b", 2100.0, math.nan)
    timeout.update(status="timeout", error="measurement exceeded 600 s")
    rows.append(timeout)
    return pd.DataFrame(rows)


def reference_table() -> pd.DataFrame:
    """The published readings alone, as a reference overlay takes them."""
    return pd.DataFrame(
        [{"encoder": e, "resolution": r, "llm": "qwen2-0.5b", "ttft_ms": t, "accuracy": a,
          "source": "FastVLM paper, accuracy-vs-TTFT figure (approx.)"} for e, r, t, a in PAPER_FIGURE]
    )


def random_table(n: int, seed: int) -> pd.DataFrame:
    """Random rows with few distinct values (so ties and duplicates happen), NaNs and failures."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "point_key": [f"p{i}" for i in range(n)],
        "encoder": rng.choice(["fastvithd", "convnext_l", "vit_l14_clip"], n),
        "llm": rng.choice(["qwen2-0.5b", "qwen2-1.5b"], n),
        "resolution": rng.choice([256, 512, 768, 1024], n),
        "ttft_ms": rng.integers(1, 12, n).astype(float) * 10.0,
        "accuracy": rng.integers(40, 52, n).astype(float),
        "encoder_gflops": rng.integers(1, 6, n).astype(float),
        "status": np.where(rng.random(n) < 0.1, "failed", "ok"),
    })
    df.loc[rng.random(n) < 0.08, "ttft_ms"] = np.nan
    df.loc[rng.random(n) < 0.08, "accuracy"] = np.nan
    return df
