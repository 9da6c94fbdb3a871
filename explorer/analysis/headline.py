"""The FastVLM paper's three headline TTFT comparisons, read off a results table.

Pure functions over a results frame (``explorer.data.results.load`` or ``predict_space``; one
latency source per frame, measured or predicted, never mixed). Each comparison is a pair of design
points of ``search_spaces/headline_comparisons.yaml``; :func:`headline_table` gives, per
comparison, the ratio of the two TTFTs beside the paper's number and both TTFTs split into their
parts (encoder, projector, prefill), with the ratios of the parts that explain the difference.
:func:`equal_token_resolution` is the plain-downsampling baseline's input size for a token count.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import pandas as pd

from explorer.data.space import canonical_json

__all__ = ["Side", "Headline", "HEADLINES", "headline_table", "headline_by_runtime", "headline_sentence",
           "equal_token_resolution"]


@dataclass(frozen=True)
class Side:
    """One design point of a comparison (knobs as a plain dict; text tokens: whatever the table has)."""

    label: str
    encoder: str
    resolution: int
    llm: str
    knobs: Mapping[str, Any] = field(default_factory=dict)

    def select(self, df: pd.DataFrame) -> pd.DataFrame:
        want = canonical_json(dict(self.knobs))
        knobs = df["knobs"].map(lambda k: canonical_json(json.loads(k) if isinstance(k, str) and k else {}))
        return df[(df["encoder"] == self.encoder) & (df["resolution"] == self.resolution) & (df["llm"] == self.llm)
                  & (knobs == want)]


@dataclass(frozen=True)
class Headline:
    name: str
    paper_ratio: float  # the paper's TTFT ratio, other / FastVLM
    fast: Side
    other: Side
    note: str = ""


HEADLINES: tuple[Headline, ...] = (
    Headline("LLaVA-OneVision-0.5B @1152", 85.0,
             Side("FastViTHD@1152 + Qwen2-0.5B", "fastvithd", 1152, "qwen2-0.5b"),
             Side("LLaVA-OneVision-0.5B@1152", "hf_vlm", 1152, "qwen2-0.5b", {"model": "llava-onevision-0.5b"}),
             "SigLIP-SO400M on 10 views (AnyRes 3x3 + base): 7371 tokens against 324"),
    Headline("Cambrian-1-8B", 7.9,
             Side("FastViTHD@1024 + Qwen2-7B", "fastvithd", 1024, "qwen2-7b"),
             Side("Cambrian-1-8B (4 towers + SVA, Llama-3-8B)", "cambrian1", 1024, "llama3-8b"),
             "approximation: the towers are exact, the aggregator one SVA layer (under 1% of the FLOPs)"),
    Headline("LLaVA-1.5 setup", 3.2,
             Side("FastViTHD@768 + Vicuna-7B", "fastvithd", 768, "vicuna-7b"),
             Side("ViT-L/14@336 + Vicuna-7B (LLaVA-1.5)", "vit_l14_clip", 336, "vicuna-7b"),
             "the paper's FastViTHD resolution for this claim is not in the facts at hand; 768 (144 tokens) chosen"),
)

PARTS = ("encoder_latency_ms", "projector_latency_ms", "prefill_latency_ms")


def _counts_preprocess(r: pd.Series) -> bool:
    """Whether the row's ``ttft_ms`` counted its preprocessing (then it is one of the parts)."""
    return bool(r.get("ttft_includes_preprocess", False)) and pd.notna(r.get("preprocess_ms", math.nan))


def _one(df: pd.DataFrame, side: Side) -> Optional[pd.Series]:
    rows = side.select(df)
    if "status" in rows:
        rows = rows[rows["status"] == "ok"]
    return None if rows.empty else rows.iloc[0]


def _ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan


def headline_table(df: pd.DataFrame, headlines: tuple[Headline, ...] = HEADLINES) -> pd.DataFrame:
    """One row per comparison found in ``df``: both sides' TTFT parts, the ratios, the paper's ratio.

    Columns: comparison, paper_ratio, ratio (other TTFT / FastVLM TTFT), encoder_ratio,
    prefill_ratio, tokens_fast, tokens_other, then ``fast_*`` and ``other_*`` for
    preprocess/encoder/projector/prefill/ttft in ms (preprocess is 0 where the row's TTFT left it
    out), latency_source and note. A comparison whose points are missing from ``df`` is left out.
    """
    out = []
    for h in headlines:
        a, b = _one(df, h.fast), _one(df, h.other)
        if a is None or b is None:
            continue
        row: dict[str, Any] = {"comparison": h.name, "paper_ratio": h.paper_ratio,
                               "ratio": _ratio(float(b["ttft_ms"]), float(a["ttft_ms"])),
                               "encoder_ratio": _ratio(float(b["encoder_latency_ms"]), float(a["encoder_latency_ms"])),
                               "prefill_ratio": _ratio(float(b["prefill_latency_ms"]), float(a["prefill_latency_ms"])),
                               "tokens_fast": int(a["visual_tokens"]), "tokens_other": int(b["visual_tokens"]),
                               "fast": h.fast.label, "other": h.other.label}
        for prefix, r in (("fast", a), ("other", b)):
            row[f"{prefix}_preprocess_ms"] = float(r["preprocess_ms"]) if _counts_preprocess(r) else 0.0
            for part in PARTS + ("ttft_ms",):
                row[f"{prefix}_{part.replace('_latency', '')}"] = float(r[part])
        row["latency_source"] = str(a.get("latency_source", "measured")) if hasattr(a, "get") else "measured"
        row["note"] = h.note
        out.append(row)
    return pd.DataFrame(out)


def headline_by_runtime(df: pd.DataFrame, headlines: tuple[Headline, ...] = HEADLINES) -> pd.DataFrame:
    """The measured comparisons once per runtime, and once with each side at its fastest runtime.

    ``df``: a measured results frame holding several environments (``results.load(db, env="all")``
    after one sweep per ``measure.runtime``), told apart by ``env_key`` and named by their
    ``runtime`` and ``llm_runtime`` columns. Each environment gives the rows of
    :func:`headline_table` with ``runtime`` set to its name (``eager``, ``compile`` ...); then
    ``runtime = "fastest"`` puts each side at the environment where its TTFT is lowest (a deployer
    of either system would pick that one), naming it in ``fast_runtime`` / ``other_runtime``.
    """
    if df.empty:
        return pd.DataFrame()
    frame = df.copy()
    for column in ("env_key", "runtime", "llm_runtime"):
        if column not in frame.columns:
            frame[column] = "" if column != "runtime" else "eager"
    frame["latency_source"] = frame["latency_source"] if "latency_source" in frame.columns else "measured"
    groups: list[tuple[str, pd.DataFrame]] = []  # (runtime name, its rows), one per environment
    for env, rows in frame.groupby("env_key", sort=True):
        runtime, llm_runtime = str(rows["runtime"].iloc[0]), str(rows["llm_runtime"].iloc[0] or "")
        name = runtime if llm_runtime in ("", "transformers", "nan") else f"{runtime} + {llm_runtime}"
        groups.append((name if name not in {n for n, _ in groups} else f"{name} ({env})", rows))
    out = []
    for name, rows in groups:
        table = headline_table(rows, headlines)
        if len(table):
            table.insert(1, "runtime", name)
            table["fast_runtime"] = table["other_runtime"] = name
            out.append(table)
    for h in headlines:
        best: list[tuple[Optional[pd.Series], str]] = []
        for side in (h.fast, h.other):
            found = [(r, name) for name, rows in groups for r in [_one(rows, side)] if r is not None]
            best.append(min(found, key=lambda t: float(t[0]["ttft_ms"])) if found else (None, ""))
        if best[0][0] is None or best[1][0] is None:
            continue
        pair = pd.DataFrame([best[0][0], best[1][0]])
        table = headline_table(pair, (h,))
        table.insert(1, "runtime", "fastest")
        table["fast_runtime"], table["other_runtime"] = best[0][1], best[1][1]
        out.append(table)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def headline_sentence(row: Mapping[str, Any]) -> str:
    """``85x claimed, 23.1x here: prefill 40.9x (7403 vs 356 tokens), encoder 6.7x``."""
    enc_share_other = row["other_encoder_ms"] / row["other_ttft_ms"] if row["other_ttft_ms"] else math.nan
    runtime = f", {row['runtime']}" if row.get("runtime") else ""
    if row.get("runtime") == "fastest":
        runtime += f": FastVLM under {row['fast_runtime']}, the other under {row['other_runtime']}"
    return (f"{row['comparison']}: the paper says {row['paper_ratio']:g}x, this table {row['ratio']:.1f}x "
            f"({row['latency_source']}{runtime}). Prefill {row['prefill_ratio']:.1f}x ({row['tokens_other']} against "
            f"{row['tokens_fast']} visual tokens), encoder {row['encoder_ratio']:.1f}x; the encoder is "
            f"{enc_share_other:.0%} of the other side's TTFT.")


def equal_token_resolution(num_tokens: Callable[[int], int], target: int, lo: int = 28, hi: int = 4096) -> int:
    """The input size whose token count (``num_tokens(R)``, non-decreasing in R) is closest to
    ``target``: the plain-downsampling baseline of a token strategy (ties: the smaller R)."""
    if num_tokens(hi) <= target:
        return hi
    a, b = lo, hi
    while b - a > 1:  # smallest R with num_tokens(R) >= target
        mid = (a + b) // 2
        if num_tokens(mid) >= target:
            b = mid
        else:
            a = mid
    below, above = a, b
    return below if abs(num_tokens(below) - target) <= abs(num_tokens(above) - target) else above
