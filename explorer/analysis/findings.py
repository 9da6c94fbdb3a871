"""The notebooks' findings, computed from result rows: names, shares, crossings, budgets, ratios.

Pure functions over numbers and data frames (the analysis layer: nothing is measured or written
here). ``notebooks/*.py`` call them; each returns values or sentences that the notebook displays.

- :func:`share_crossings` / :func:`share_sentence`: where the vision encoder's share of TTFT
  crosses 50% between measured resolutions (interpolated linearly in log-resolution).
- :func:`ttft_budgets` / :func:`budget_answer`: round TTFT budgets over a measured range and the
  best row under each, as a sentence that names the accuracy's source.
- :func:`compare_ratios`: the paper's TTFT ratios next to ours, with the reasons computed from the
  FLOPs, the achieved GFLOP/s and the visual tokens.
- :func:`runtime_ratios` / :func:`closest_runtime`: the same ratios once per runtime that ran the
  encoder and projector (eager, torch.compile, ONNX Runtime), and which runtime comes closest to
  the paper's ratio for one pair, with the reason computed from the encoder and prefill times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from explorer.analysis.pareto import best_under_budget
from explorer.checks import check_number, is_int, require

__all__ = ["ENCODER_NAMES", "GLOBAL_ATTENTION", "Crossing", "point_name", "environment_text", "split_complete",
           "share_crossings", "share_sentence", "nice_ceil", "ttft_budgets", "budget_answer", "ratio_text",
           "compare_ratios", "runtime_ratios", "closest_runtime"]

ENCODER_NAMES: dict[str, str] = {"fastvithd": "FastViTHD", "fastvit_mci2": "MCi2", "convnext_l": "ConvNeXt-L",
                                 "convnext_xxl": "ConvNeXt-XXL", "vit_l14_clip": "ViT-L/14",
                                 "siglip_so400m": "SigLIP-SO400M"}
# ViTs: self-attention over every patch in every layer.
GLOBAL_ATTENTION = frozenset({"vit_l14_clip", "siglip_so400m"})


def point_name(encoder: str, resolution: int) -> str:
    """``FastViTHD@1024``: the paper's name of an encoder at a resolution (the registry name if unknown)."""
    return f"{ENCODER_NAMES.get(encoder, encoder)}@{int(resolution)}"


def environment_text(rows: pd.DataFrame) -> str:
    """``cpu, float32, 2 threads, torch 2.13.0`` from the first row's environment columns."""
    if len(rows) == 0:
        raise ValueError("environment_text needs at least one row")
    r = rows.iloc[0]
    n = int(r["threads"])
    return f"{r['device']}, {r['dtype']}, {n} thread{'s' if n != 1 else ''}, torch {r['torch_version']}"


def split_complete(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(complete, failed)``: rows whose status is ``ok``, and the others (each re-indexed)."""
    ok = rows["status"].eq("ok")
    return rows[ok].reset_index(drop=True), rows[~ok].reset_index(drop=True)


@dataclass(frozen=True)
class Crossing:
    """The share passes 50% between measured resolutions ``low`` and ``high``, at about ``at`` px."""

    low: int
    high: int
    at: float
    rising: bool


def share_crossings(resolutions: Sequence[int], shares: Sequence[float]) -> list[Crossing]:
    """Every strict crossing of 0.5 between consecutive points, interpolated linearly in log(resolution).

    A share that touches 0.5 exactly without passing it is not a crossing.
    """
    if len(resolutions) != len(shares):
        raise ValueError(f"resolutions ({len(resolutions)}) and shares ({len(shares)}) differ in length")
    if any(r <= 0 for r in resolutions) or list(resolutions) != sorted(resolutions):
        raise ValueError(f"invalid resolutions={list(resolutions)}: positive and increasing")
    out = []
    for (r0, s0), (r1, s1) in zip(zip(resolutions, shares), zip(resolutions[1:], shares[1:])):
        if (s0 - 0.5) * (s1 - 0.5) < 0:
            t = (0.5 - s0) / (s1 - s0)
            at = math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0)))
            out.append(Crossing(int(r0), int(r1), at, s1 > s0))
    return out


def share_sentence(llm: str, resolutions: Sequence[int], shares: Sequence[float], basis: str) -> str:
    """One Markdown sentence: whether the encoder's share dominates everywhere, nowhere, or where it crosses."""
    if not shares:
        raise ValueError("share_sentence needs at least one measured resolution")
    lo, hi = int(np.argmin(shares)), int(np.argmax(shares))
    span = f"{shares[lo]:.0%} at {resolutions[lo]} px to {shares[hi]:.0%} at {resolutions[hi]} px"
    if all(s >= 0.5 for s in shares):
        return (f"**{llm}** ({basis}): the vision encoder dominates at every measured resolution "
                f"({span}); its share never falls below 50% here.")
    if all(s < 0.5 for s in shares):
        return (f"**{llm}** ({basis}): the LLM prefill dominates at every measured resolution; the encoder's "
                f"share stays below 50% ({span}).")
    parts = [f"{'rises' if c.rising else 'falls'} through 50% between {c.low} and {c.high} px (about {c.at:.0f} px)"
             for c in share_crossings(resolutions, shares)]
    return f"**{llm}** ({basis}): the encoder's share ({span}) " + "; then ".join(parts) + "."


def nice_ceil(x: float) -> float:
    """Round ``x > 0`` up to two significant digits (1234 -> 1300, 0.0123 -> 0.013)."""
    check_number("x", x, low=0, low_open=True)
    step = 10.0 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(round(x / step, 9)) * step


def ttft_budgets(ttft_ms: Sequence[float], n: int) -> list[float]:
    """Up to ``n`` distinct round budgets spread geometrically from 1.2x the fastest to the slowest TTFT.

    The largest budget is at least the slowest TTFT, so every row fits under it.
    """
    require(is_int(n) and n >= 1, "n", n, "a positive integer number of budgets")
    values = [float(v) for v in ttft_ms]
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError("ttft_budgets needs finite, positive TTFTs")
    lo, hi = min(values), max(values)
    return sorted({nice_ceil(float(b)) for b in np.geomspace(min(lo * 1.2, hi), hi, n)})


def budget_answer(table: pd.DataFrame, budget: float, label: str) -> str:
    """The most accurate row of ``table`` within ``budget`` ms of TTFT, as text; rows without accuracy never win."""
    best = best_under_budget(table, "ttft_ms", budget, "accuracy")
    r = best.iloc[0]
    if pd.isna(r["row"]):
        cheapest = r["cheapest_ttft_ms"]
        return "none fits" + (f" (cheapest scored pair: {cheapest:.0f} ms)" if pd.notna(cheapest) else "")
    text = (f"{r['llm']} @ {int(r['resolution'])} px: {label} {r['accuracy']:.1f} "
            f"[{r['accuracy_source']}], TTFT {r['ttft_ms']:.0f} ms")
    if r.get("n_tied", 0):  # explorer.intervals: overlapping accuracy intervals order nothing
        text += f", tied on {label} with {int(r['n_tied'])} other(s) under the budget"
    if r.get("within_budget") == "possibly not":
        text += ", its TTFT interval reaches past the budget"
    return text


def ratio_text(x: float) -> str:
    """``2.5x`` below ten, ``12x`` from ten."""
    return f"{x:.1f}x" if x < 10 else f"{x:.0f}x"


def _rate(gflops: float, ms: float) -> float:
    return gflops / ms * 1e3


def compare_ratios(ours: pd.DataFrame, paper_ttft_ms: Mapping[tuple[str, int], float],
                   pairs: Sequence[tuple[tuple[str, int], tuple[str, int]]], *, dtype: str,
                   quick: bool = False, noise: float = 1.25, flop_band: float = 1.3) -> tuple[pd.DataFrame, list[str]]:
    """The paper's TTFT ratios next to ours, pair by pair, with the reasons they differ.

    ``ours``: rows indexed by ``(encoder, resolution)`` with ``ttft_ms``, ``ttft_gflops``,
    ``encoder_gflops``, ``encoder_latency_ms``, ``prefill_latency_ms``, ``visual_tokens``.
    ``paper_ttft_ms``: the paper's TTFT per ``(encoder, resolution)``. Each ratio is
    TTFT(first) / TTFT(second) on one device. Ratios within ``noise`` of the paper's agree; ours
    "follows the FLOP ratio" within ``flop_band``. Returns the table and one Markdown line per pair.
    """
    if not (noise > 1 and flop_band > 1):
        raise ValueError(f"invalid noise={noise!r} / flop_band={flop_band!r}: factors > 1")
    ratios: list[dict] = []
    notes: list[str] = []
    for a, b in pairs:
        pa = paper_ttft_ms.get(a, math.nan) / paper_ttft_ms.get(b, math.nan)
        pair = f"{point_name(*a)} vs {point_name(*b)}"
        row = {"pair": pair, "paper TTFT ratio": pa}
        if a not in ours.index or b not in ours.index:
            ratios.append({**row, "our TTFT ratio": math.nan})
            notes.append(f"- **{pair}**: paper {ratio_text(pa)}; not measured here"
                         + (" (dropped in QUICK mode)" if quick else "") + ".")
            continue
        A, B = ours.loc[a], ours.loc[b]
        o = A["ttft_ms"] / B["ttft_ms"]
        g = A["ttft_gflops"] / B["ttft_gflops"]
        rate_a = _rate(A["encoder_gflops"], A["encoder_latency_ms"])
        rate_b = _rate(B["encoder_gflops"], B["encoder_latency_ms"])
        ratios.append({**row, "our TTFT ratio": o, "our encoder ratio": A["encoder_latency_ms"] / B["encoder_latency_ms"],
                       "TTFT GFLOP ratio": g, "visual tokens": f"{int(A['visual_tokens'])} vs {int(B['visual_tokens'])}",
                       "encoder GFLOP/s": f"{rate_a:.0f} vs {rate_b:.0f}", "ours / paper": o / pa})
        text = f"- **{pair}**: paper {ratio_text(pa)}, here {ratio_text(o)}"
        if abs(math.log(o / pa)) < math.log(noise):
            notes.append(text + f": the same within this machine's noise (FLOPs: {ratio_text(g)}).")
            continue
        why = []
        ra, rb = _rate(A["ttft_gflops"], A["ttft_ms"]), _rate(B["ttft_gflops"], B["ttft_ms"])
        rates = (f"TTFT at {ra:.0f} vs {rb:.0f} GFLOP/s, encoders at {rate_a:.0f} vs {rate_b:.0f} GFLOP/s, "
                 f"{dtype} eager PyTorch")
        if abs(math.log(o / g)) < math.log(flop_band):
            why.append(f"here TTFT follows the FLOP ratio ({ratio_text(g)}; {rates})")
        else:
            slow = point_name(*b) if o < g else point_name(*a)
            why.append(f"here it is {'below' if o < g else 'above'} the FLOP ratio ({ratio_text(g)}) because {slow} "
                       f"runs at fewer GFLOP/s on this machine ({rates})")
        if pa > g * flop_band:
            why.append(f"the paper's {ratio_text(pa)} is above the FLOP ratio: on Apple silicon (CoreML for vision, "
                       f"MLX for the LLM) {point_name(*b)} ran at more GFLOP/s than {point_name(*a)}")
        elif pa < g / flop_band:
            why.append(f"the paper's {ratio_text(pa)} is below the FLOP ratio: on Apple silicon {point_name(*a)} ran "
                       f"at more GFLOP/s than {point_name(*b)}")
        else:
            why.append(f"the paper's {ratio_text(pa)} follows the FLOP ratio")
        ta, tb = int(A["visual_tokens"]), int(B["visual_tokens"])
        if max(ta, tb) > 2 * min(ta, tb):
            why.append(f"{point_name(*a)} hands the LLM {ta} visual tokens against {tb}, so its prefill takes "
                       f"{A['prefill_latency_ms']:.0f} ms against {B['prefill_latency_ms']:.0f} ms here (prefill "
                       "FLOPs grow linearly with the tokens, its attention quadratically)")
        for enc, tokens in ((a, ta), (b, tb)):
            if enc[0] in GLOBAL_ATTENTION:
                why.append(f"{point_name(*enc)} attends over all {tokens} patches in every layer, a cost that grows "
                           "with the square of the token count")
        notes.append(text + f" ({'smaller' if o < pa else 'larger'} here): " + "; ".join(why) + ".")
    return pd.DataFrame(ratios), notes


def _ttft_ratio(rows: pd.DataFrame, a: tuple[str, int], b: tuple[str, int]) -> float:
    if a not in rows.index or b not in rows.index:
        return math.nan
    return float(rows.loc[a, "ttft_ms"] / rows.loc[b, "ttft_ms"])


def runtime_ratios(by_runtime: Mapping[str, pd.DataFrame], paper_ttft_ms: Mapping[tuple[str, int], float],
                   pairs: Sequence[tuple[tuple[str, int], tuple[str, int]]]) -> pd.DataFrame:
    """One row per pair: the paper's TTFT ratio, then our TTFT ratio under each runtime.

    ``by_runtime``: runtime name -> rows indexed by ``(encoder, resolution)`` with ``ttft_ms``
    (one environment each: the runtime that ran the encoder and projector). A pair with a point a
    runtime did not measure is NaN in that runtime's column. Columns: ``pair``, ``paper``, then
    one per runtime in the order given, then ``closest`` (the runtime whose ratio is nearest the
    paper's in log terms; empty where none measured the pair).
    """
    if not by_runtime:
        raise ValueError("runtime_ratios needs rows of at least one runtime")
    out = []
    for a, b in pairs:
        row: dict = {"pair": f"{point_name(*a)} vs {point_name(*b)}",
                     "paper": paper_ttft_ms.get(a, math.nan) / paper_ttft_ms.get(b, math.nan)}
        for runtime, rows in by_runtime.items():
            row[runtime] = _ttft_ratio(rows, a, b)
        measured = {rt: row[rt] for rt in by_runtime if math.isfinite(row[rt]) and row[rt] > 0}
        pa = row["paper"]
        row["closest"] = (min(measured, key=lambda rt: abs(math.log(measured[rt] / pa)))
                          if measured and math.isfinite(pa) and pa > 0 else "")
        out.append(row)
    return pd.DataFrame(out, columns=["pair", "paper", *by_runtime, "closest"])


def closest_runtime(by_runtime: Mapping[str, pd.DataFrame], paper_ttft_ms: Mapping[tuple[str, int], float],
                    pair: tuple[tuple[str, int], tuple[str, int]]) -> str:
    """A Markdown sentence: which runtime's TTFT ratio for ``pair`` comes closest to the paper's, and why.

    The reason is read off the parts. TTFT(a) / TTFT(b) moves through the encoder (the
    runtime's part) and through the prefill (transformers in every environment; compiled too
    under ``compile``), so the sentence names each runtime's encoder ratio and prefill ratio,
    says which of the two put the closest runtime ahead, and how much of the two TTFTs the
    prefills take (what no encoder runtime can change).
    """
    a, b = pair
    name = f"{point_name(*a)} vs {point_name(*b)}"
    pa = paper_ttft_ms.get(a, math.nan) / paper_ttft_ms.get(b, math.nan)
    have = {rt: rows for rt, rows in by_runtime.items() if a in rows.index and b in rows.index}
    if not have:
        return (f"**{name}** (paper {ratio_text(pa)}): not measured under any runtime here "
                f"({', '.join(by_runtime) or 'none'} ran).")
    parts = []
    for rt, rows in have.items():
        A, B = rows.loc[a], rows.loc[b]
        parts.append({"rt": rt, "o": float(A["ttft_ms"] / B["ttft_ms"]),
                      "enc": float(A["encoder_latency_ms"] / B["encoder_latency_ms"]),
                      "pre": float(A["prefill_latency_ms"] / B["prefill_latency_ms"]),
                      "share": float((A["prefill_latency_ms"] + B["prefill_latency_ms"]) / (A["ttft_ms"] + B["ttft_ms"]))})
    parts.sort(key=lambda p: abs(math.log(p["o"] / pa)))
    best, others = parts[0], parts[1:]
    listed = "; ".join(f"{p['rt']} {ratio_text(p['o'])} (encoders {ratio_text(p['enc'])}, prefills "
                       f"{ratio_text(p['pre'])}, prefill {p['share']:.0%} of the two TTFTs)" for p in parts)
    o = best["o"]
    text = (f"**{name}**: the paper has {ratio_text(pa)}; here {listed}. **{best['rt']}** comes closest "
            f"({ratio_text(o)}, {abs(o / pa - 1):.0%} {'below' if o < pa else 'above'} the paper)")
    if not others:
        return text + ": the only runtime measured for this pair."
    up = o < pa  # a larger ratio is closer
    ahead = {k: all((best[k] > p[k]) if up else (best[k] < p[k]) for p in others) for k in ("enc", "pre")}
    if ahead["enc"]:
        why = (f"because it runs {point_name(*b)}'s encoder {'faster' if up else 'slower'} relative to "
               f"{point_name(*a)}'s than the others do (encoder ratio {ratio_text(best['enc'])})")
    elif ahead["pre"]:
        why = (f"because of its prefills, not its encoders (prefill ratio {ratio_text(best['pre'])} against "
               + ", ".join(f"{ratio_text(p['pre'])} under {p['rt']}" for p in others)
               + (": compile compiles the prefill too" if best["rt"] == "compile" else "")
               + f"; its encoder ratio is {ratio_text(best['enc'])})")
    else:
        why = f"with an encoder ratio of {ratio_text(best['enc'])} and a prefill ratio of {ratio_text(best['pre'])}"
    gap = (f"the prefills take {best['share']:.0%} of the two TTFTs here, and an encoder runtime does not "
           "change them, so closing the rest of the gap needs a faster prefill (the paper's MLX) as much as a "
           "faster encoder runtime")
    return text + f", {why}; {gap}."
