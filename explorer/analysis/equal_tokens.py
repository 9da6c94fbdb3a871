"""Token strategies beside their equal-token baselines, read off a results table.

A token strategy (``hf_vlm`` with the model's tiling, pooling, a pixel shuffle or a tile cap) is
judged against the same tower on one view of the image (``tiling: none``, no pooling, the model's
own shuffle) at the input size whose plain token count is closest: plain downsampling. At equal
tokens the prefill is the same, so the comparison isolates what the strategy does to the encoder
(and to accuracy, where the table has it). Pure: data frames in, data frames out.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import pandas as pd

__all__ = ["is_strategy", "is_baseline", "equal_token_pairs", "MAX_TOKEN_GAP"]

MAX_TOKEN_GAP = 0.15  # a baseline further than this (relative) from the strategy's tokens is no baseline
_BASELINE_KNOBS = {"tiling": "none", "pool": 1, "pixel_shuffle": None, "max_tiles": None}


def _knobs(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    return json.loads(value) if isinstance(value, str) and value else {}


def is_baseline(knobs: Mapping[str, Any]) -> bool:
    """One plain view: ``tiling: none`` and no strategy knob away from its default."""
    return all(knobs.get(k, None if k != "pool" else 1) == v for k, v in _BASELINE_KNOBS.items() if k != "tiling") \
        and knobs.get("tiling") == "none"


def is_strategy(knobs: Mapping[str, Any]) -> bool:
    return "model" in knobs and not is_baseline(knobs)


def equal_token_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ``hf_vlm`` strategy row with a baseline in ``df`` (same model, aspect, LLM and
    prompt; tokens within :data:`MAX_TOKEN_GAP`): both rows' tokens, encoder GFLOPs and latency,
    TTFT, accuracy when present, and the ratios strategy / baseline."""
    cols = ["model", "strategy", "resolution", "tokens", "encoder_gflops", "encoder_ms", "ttft_ms",
            "baseline_resolution", "baseline_tokens", "baseline_encoder_gflops", "baseline_encoder_ms",
            "baseline_ttft_ms", "encoder_ratio", "ttft_ratio", "llm"]
    if df.empty or "encoder" not in df.columns:
        return pd.DataFrame(columns=cols)
    rows = df[df["encoder"] == "hf_vlm"]
    if "status" in rows.columns:
        rows = rows[rows["status"] == "ok"]
    rows = rows.assign(_k=rows["knobs"].map(_knobs))
    base = rows[rows["_k"].map(is_baseline)]
    out = []
    for _, r in rows[rows["_k"].map(is_strategy)].iterrows():
        k = r["_k"]
        same = base[(base["_k"].map(lambda b: b.get("model") == k.get("model")
                                    and float(b.get("aspect", 1.0)) == float(k.get("aspect", 1.0))))
                    & (base["llm"] == r["llm"]) & (base["text_tokens"] == r["text_tokens"])]
        if same.empty:
            continue
        b = same.loc[(same["visual_tokens"] - r["visual_tokens"]).abs().idxmin()]
        if abs(b["visual_tokens"] - r["visual_tokens"]) > MAX_TOKEN_GAP * r["visual_tokens"]:
            continue
        strategy = ", ".join(f"{n}={v}" for n, v in sorted(k.items()) if n not in ("model", "aspect")) or "tiling=model"
        out.append({"model": k["model"], "strategy": strategy, "resolution": int(r["resolution"]),
                    "tokens": int(r["visual_tokens"]), "encoder_gflops": r["encoder_gflops"],
                    "encoder_ms": r["encoder_latency_ms"], "ttft_ms": r["ttft_ms"],
                    "baseline_resolution": int(b["resolution"]), "baseline_tokens": int(b["visual_tokens"]),
                    "baseline_encoder_gflops": b["encoder_gflops"], "baseline_encoder_ms": b["encoder_latency_ms"],
                    "baseline_ttft_ms": b["ttft_ms"], "encoder_ratio": r["encoder_latency_ms"] / b["encoder_latency_ms"],
                    "ttft_ratio": r["ttft_ms"] / b["ttft_ms"], "llm": r["llm"],
                    **({"accuracy": r["accuracy"], "baseline_accuracy": b["accuracy"]} if "accuracy" in df.columns else {})})
    return pd.DataFrame(out, columns=cols + (["accuracy", "baseline_accuracy"] if "accuracy" in df.columns else []))
