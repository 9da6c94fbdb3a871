#!/usr/bin/env python
"""Build the notebooks in ``notebooks/`` from the cell sources below (nbformat, no outputs).

The notebooks are generated so that a review reads Python, not JSON: edit the cells here, then

    python tools/make_notebooks.py            # (re)write notebooks/*.ipynb
    python tools/make_notebooks.py --check    # exit 1 if a committed notebook differs from this file

Cell ids are derived from the notebook and cell position, so the output is byte-for-byte
reproducible. Both notebooks call the same public functions as the CLI (``run_sweep``,
``results.load``, ``attach_accuracy``, ``best_under_budget``, ``explorer.analysis.plots``); what they add is
presentation. docs/notebooks.md describes them.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def md(text: str) -> tuple[str, str, list[str]]:
    return ("markdown", textwrap.dedent(text).strip("\n"), [])


def code(text: str, tags: list[str] | None = None) -> tuple[str, str, list[str]]:
    return ("code", textwrap.dedent(text).strip("\n"), list(tags or []))


# ------------------------------------------------------------------------------------------------
# Cells shared by both notebooks

SETUP = code(r'''
# Setup: imports, paths and environment overrides (EXPLORER_QUICK, EXPLORER_RESULTS_DIR, EXPLORER_WRITE_FIGURES).
import dataclasses
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import Markdown, display

import explorer
from explorer.analysis import plots
from explorer.analysis.pareto import best_under_budget, pareto_front
from explorer.data.reference import attach_accuracy, load_references
from explorer.data.results import load
from explorer.data.space import encoder_shape, enumerate_points, load_space
from explorer.data.store import Store
from explorer.engine.sweep import default_settings, plan_sweep, run_sweep


def env_flag(name, default):
    value = os.environ.get(name, "").strip().lower()
    return default if value == "" else value not in ("0", "false", "no", "off")


ROOT = Path(explorer.__file__).resolve().parents[1]  # the checkout (editable install)
if not (ROOT / "search_spaces").is_dir():
    ROOT = Path.cwd()
QUICK = env_flag("EXPLORER_QUICK", QUICK)
RESULTS_DIR = Path(RESULTS_DIR or os.environ.get("EXPLORER_RESULTS_DIR") or ROOT / "results")
RESULTS_DB = Path(RESULTS_DB) if RESULTS_DB else RESULTS_DIR / SPACE / "store.db"
QUICK_DB = RESULTS_DIR / "quick" / "store.db"  # QUICK measurements never go into RESULTS_DB
WRITE_FIGURES = env_flag("EXPLORER_WRITE_FIGURES", False) if WRITE_FIGURES is None else bool(WRITE_FIGURES)
FIGURES_DIR = ROOT / "docs" / "figures"
pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 40)
print(f"QUICK={QUICK}; results database {RESULTS_DB} ({'present' if RESULTS_DB.is_file() else 'absent'}); "
      f"figures {'written to ' + str(FIGURES_DIR) if WRITE_FIGURES else 'not written'}")
''')

HELPERS = code(r'''
# Helpers: where the rows come from (accuracy is joined later, explicitly, per metric), the optional
# static export of a figure, and presentation.

def measured_rows(full, quick, full_settings, quick_settings):
    """Results rows of the design points of `full` (QUICK without a database: of `quick`) and their source.

    QUICK: read RESULTS_DB if it holds any of these points, else sweep `quick` into QUICK_DB
    (short timing caps; a separate database, so QUICK numbers never mix with a full sweep's).
    Not QUICK: run_sweep(full) into RESULTS_DB, which measures only what it lacks (resumable).
    """
    if QUICK and RESULTS_DB.is_file():
        keys = {p.key for p in enumerate_points(full)}
        frame = load(RESULTS_DB, accuracy_metric=None)
        rows = frame[frame["point_key"].isin(keys)]
        if rows["status"].eq("ok").any():
            print(f"read {len(rows)} of the {len(keys)} design points from {RESULTS_DB}; nothing measured")
            return rows.reset_index(drop=True), f"{RESULTS_DB} (read)"
        print(f"{RESULTS_DB} holds none of these design points: measuring the QUICK subset instead")
    space, settings, db = (quick, quick_settings, QUICK_DB) if QUICK else (full, full_settings, RESULTS_DB)
    store = Store(db)
    try:
        plan = plan_sweep(space, settings, store)
        print(plan.describe())
        report = run_sweep(space, settings, store, plan=plan, timeout_s=900, progress=not QUICK)
        print(report.format(store))
        keys = {p.key for p in plan.points}
        frame = load(store, accuracy_metric=None)
    finally:
        store.close()
    rows = frame[frame["point_key"].isin(keys)].reset_index(drop=True)
    mode = "QUICK timing caps" if QUICK else "the space's timing protocol"
    return rows, f"{db} (measured here with {mode})"


def export_figure(fig, name, width=1100, height=None, scale=2):
    """Write docs/figures/<name> when WRITE_FIGURES (static export needs kaleido and a Chrome/Chromium)."""
    if not WRITE_FIGURES:
        print(f"{name}: not exported (set WRITE_FIGURES = True or EXPLORER_WRITE_FIGURES=1 to write docs/figures/)")
        return None
    path = FIGURES_DIR / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.write_image(str(path), width=width, height=height or fig.layout.height or 600, scale=scale)
    except Exception as exc:  # no kaleido, or no Chrome for it: say so and go on
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"NOTE: static export of {name} skipped ({type(exc).__name__}: {first}). "
              "It needs `pip install kaleido` (>= 1) and a Chrome/Chromium on the machine.")
        return None
    print(f"wrote {path}")
    return path


def environment_text(rows):
    r = rows.iloc[0]
    n = int(r["threads"])
    return f"{r['device']}, {r['dtype']}, {n} thread{'s' if n != 1 else ''}, torch {r['torch_version']}"


def show_failures(rows):
    bad = rows[rows["status"].ne("ok")]
    if len(bad):
        print(f"{len(bad)} design point(s) without a complete measurement (left out below):")
        display(bad[["encoder", "resolution", "llm", "status", "error"]])
    return rows[rows["status"].eq("ok")].reset_index(drop=True)
''')


# ------------------------------------------------------------------------------------------------
# notebooks/encoder_vs_llm_size.ipynb

ENCODER_VS_LLM = [
    md('''
    # Vision encoder vs LLM size: where does the time to first token go?

    FastVLM's time to first token is **TTFT = vision encoder + projector + LLM prefill** of the visual
    plus text tokens. This notebook puts the released FastViTHD (no knob overrides) in front of
    Qwen2-0.5B, -1.5B and -7B at input resolutions from 256 to 1536 px and answers:

    1. how TTFT splits into vision encoder, projector and prefill, per LLM;
    2. where vision stops dominating: the resolution at which the encoder's share of TTFT crosses 50%
       (or that it never does), per LLM, in measured latency and in hardware-independent FLOPs;
    3. FLOPs beside latency: GFLOP next to measured ms, and the GFLOP/s each part reaches here;
    4. which (resolution, LLM) pair is best under a TTFT budget, with the source of its accuracy.

    The numbers come from the same public functions as the CLI (`plan_sweep`, `run_sweep`,
    `results.load`, `attach_accuracy`, `best_under_budget`, `plots.ttft_breakdown`); the notebook adds
    only presentation. Published accuracy exists only for the released configurations: FastViTHD at
    1024 px with each Qwen2 size (model cards) and FastViTHD with Qwen2-0.5B at 256-1024 px (the
    README figure's average of 5 benchmarks).

    **QUICK** (the default) measures FastViTHD at three resolutions with short timing caps (about 1-2
    minutes on 2 CPU cores) unless a results database for the space already exists. `QUICK = False`
    sweeps all resolutions into `results/fastvithd_full/store.db` (about an hour on 2 CPU cores; a
    few minutes on a GPU), the same as
    `python -m explorer sweep +space=fastvithd_full '~space.encoders.fastvithd.knobs'`.
    See `docs/notebooks.md`.
    '''),
    code('''
    # Parameters
    QUICK = True                 # True: QUICK_RESOLUTIONS only, short timing caps (about 1-2 min on 2 CPU cores)
    SPACE = "fastvithd_full"     # resolutions, LLMs, prompt length and measurement settings come from this space
    LLMS = ["qwen2-0.5b", "qwen2-1.5b", "qwen2-7b"]
    QUICK_RESOLUTIONS = [256, 512, 1024]
    RESULTS_DIR = None           # None: $EXPLORER_RESULTS_DIR, else <checkout>/results
    RESULTS_DB = None            # None: RESULTS_DIR/<SPACE>/store.db (what `python -m explorer sweep +space=<SPACE>` writes)
    WRITE_FIGURES = None         # None: only if $EXPLORER_WRITE_FIGURES=1; writes docs/figures/ttft_breakdown.png
    CARD_METRIC = "textvqa"      # model-card benchmark that ranks (resolution, LLM) pairs
    N_BUDGETS = 5                # TTFT budgets, spread geometrically over the measured range
    ''', tags=["parameters"]),
    SETUP,
    HELPERS,
    md('''
    ## The design points

    FastViTHD as released (no knob overrides: published accuracy joins only there) at the space's
    resolutions, in front of each LLM, with the space's text prompt. In QUICK mode the measurement
    protocol is cut to one untimed calibration call and 1-3 timed calls per measurement (medians of
    few samples, flagged noisy in the store); the LLM prefill is timed on the whole model when it
    fits in half the free memory, otherwise layer-sampled (the 7B in fp32 on a small machine: see the
    `prefill_method` column). Nothing is estimated where it could be measured.
    '''),
    code(r'''
    space = load_space(SPACE)
    entry = next(e for e in space.encoders if e.family == "fastvithd")
    released = dataclasses.replace(entry, knobs=())  # FastViTHD as released
    full = dataclasses.replace(space, encoders=(released,), llms=tuple(LLMS), exclude=())
    quick = dataclasses.replace(full, encoders=(dataclasses.replace(released, resolutions=tuple(QUICK_RESOLUTIONS)),))
    full_settings = default_settings(full)
    quick_settings = default_settings(full, warmup_s=0.0, warmup_iters=0, min_iters=1, max_iters=3, max_time_s=1.0)
    print(f"{len(enumerate_points(full))} design points: FastViTHD at {list(released.resolutions)} px x {LLMS} "
          f"x {list(full.text_tokens)} text tokens")
    if QUICK and not RESULTS_DB.is_file():
        print(f"QUICK: {len(enumerate_points(quick))} of them (FastViTHD at {QUICK_RESOLUTIONS} px), timing caps "
              f"min_iters={quick_settings.min_iters}, max_iters={quick_settings.max_iters}, "
              f"max_time_s={quick_settings.max_time_s} (the space's own: max_time_s={full_settings.max_time_s})")
    ''', ),
    code(r'''
    rows, SOURCE = measured_rows(full, quick, full_settings, quick_settings)
    df = show_failures(rows)
    df = df.sort_values(["llm", "resolution"]).reset_index(drop=True)
    env = df[["device", "dtype", "threads", "torch_version"]].drop_duplicates()
    print(f"{len(df)} complete design points from {SOURCE}")
    display(env)
    ''', ),
    md('''
    ## 1. The TTFT breakdown

    Medians of each part; TTFT is their sum. The `encoder share` column is the vision encoder's part of
    TTFT.
    '''),
    code(r'''
    PARTS = ["encoder_latency_ms", "projector_latency_ms", "prefill_latency_ms"]
    breakdown = df[["llm", "resolution", "visual_tokens", "prefill_tokens", *PARTS, "ttft_ms", "prefill_method"]].copy()
    breakdown["encoder share %"] = 100 * df["encoder_latency_ms"] / df["ttft_ms"]
    breakdown["encoder p10-p90 ms"] = [f"{a:.0f}-{b:.0f}" for a, b in
                                       zip(df["encoder_latency_p10_ms"], df["encoder_latency_p90_ms"])]
    display(breakdown.round({"encoder_latency_ms": 1, "projector_latency_ms": 2, "prefill_latency_ms": 1,
                             "ttft_ms": 1, "encoder share %": 1}))
    sampled = sorted(df.loc[df["prefill_method"].astype(str).str.startswith("layer-sampled"), "llm"].unique())
    fig_breakdown = plots.ttft_breakdown(df)
    fig_breakdown.update_layout(title=dict(subtitle=dict(
        text=f"FastViTHD as released; measured on {environment_text(df)}"
             + (" (QUICK timing caps)" if "QUICK" in SOURCE else "")
             + (f"; {', '.join(sampled)} prefill timed layer-sampled" if sampled else ""))))
    fig_breakdown.show()
    _ = export_figure(fig_breakdown, "ttft_breakdown.png", width=1000)
    ''', ),
    md('''
    ## 2. Where vision stops dominating

    The encoder's share of TTFT at each resolution, per LLM: measured (latency) and hardware-independent
    (FLOPs: encoder GFLOP / TTFT GFLOP). Where the share crosses 50% between two measured resolutions
    the crossing is interpolated linearly in log(resolution).
    '''),
    code(r'''
    def crossings(res, share):
        out = []
        for (r0, s0), (r1, s1) in zip(zip(res, share), zip(res[1:], share[1:])):
            if (s0 - 0.5) * (s1 - 0.5) < 0:
                t = (0.5 - s0) / (s1 - s0)
                out.append((r0, r1, float(np.exp(np.log(r0) + t * (np.log(r1) - np.log(r0)))), s1 > s0))
        return out


    def share_sentence(llm, res, share, basis):
        lo, hi = int(np.argmin(share)), int(np.argmax(share))
        span = f"{share[lo]:.0%} at {res[lo]} px to {share[hi]:.0%} at {res[hi]} px"
        cross = crossings(res, share)
        if all(s >= 0.5 for s in share):
            return (f"**{llm}** ({basis}): the vision encoder dominates at every measured resolution "
                    f"({span}); its share never falls below 50% here.")
        if all(s < 0.5 for s in share):
            return (f"**{llm}** ({basis}): the LLM prefill dominates at every measured resolution; the encoder's "
                    f"share stays below 50% ({span}).")
        parts = [f"{'rises' if up else 'falls'} through 50% between {r0} and {r1} px (about {r:.0f} px)"
                 for r0, r1, r, up in cross]
        return f"**{llm}** ({basis}): the encoder's share ({span}) " + "; then ".join(parts) + "."


    shares = df.assign(latency_share=df["encoder_latency_ms"] / df["ttft_ms"],
                       flop_share=df["encoder_gflops"] / df["ttft_gflops"])
    sentences, crossover = [], {}
    for llm, part in shares.groupby("llm", sort=True):
        res = [int(r) for r in part["resolution"]]
        for column, basis in (("latency_share", "measured latency"), ("flop_share", "FLOPs")):
            values = [float(v) for v in part[column]]
            sentences.append(share_sentence(llm, res, values, basis))
            crossover[(llm, basis)] = crossings(res, values)
    display(shares.pivot_table(index="resolution", columns="llm", values=["latency_share", "flop_share"]).round(3))
    display(Markdown("\n\n".join(sentences)))

    fig_share = go.Figure()
    for i, (llm, part) in enumerate(shares.groupby("llm", sort=True)):
        colour = plots.PALETTE[i]
        fig_share.add_trace(go.Scatter(x=part["resolution"], y=100 * part["latency_share"], mode="lines+markers",
                                       name=f"{llm}: measured latency", line=dict(color=colour)))
        fig_share.add_trace(go.Scatter(x=part["resolution"], y=100 * part["flop_share"], mode="lines+markers",
                                       name=f"{llm}: FLOPs", line=dict(color=colour, dash="dot")))
    fig_share.add_hline(y=50, line=dict(color="grey", dash="dash"), annotation_text="50% of TTFT")
    fig_share.update_layout(template="plotly_white", title="Vision encoder's share of TTFT",
                            xaxis_title="input resolution (px)", yaxis_title="encoder share of TTFT (%)",
                            yaxis_range=[0, 100])
    fig_share.show()
    ''', ),
    md('''
    ## 3. FLOPs beside latency

    GFLOP (2 x multiply-accumulates, the same on every machine) next to the measured median, and the
    rate each part reaches on this machine. The encoder is measured once per resolution and the
    prefill once per (LLM, prompt length), whatever the other half of the point is.
    '''),
    code(r'''
    enc = df.drop_duplicates("resolution")[["resolution", "visual_tokens", "encoder_gflops", "encoder_latency_ms"]]
    proj = df.drop_duplicates(["llm", "resolution"])[["llm", "resolution", "projector_gflops", "projector_latency_ms"]]
    pre = df.drop_duplicates(["llm", "prefill_tokens"])[["llm", "resolution", "prefill_tokens", "prefill_gflops",
                                                          "prefill_latency_ms", "prefill_method"]]
    flops = pd.concat([
        pd.DataFrame({"part": "vision encoder", "llm": "-", "resolution": enc["resolution"],
                      "tokens": enc["visual_tokens"], "GFLOP": enc["encoder_gflops"], "ms": enc["encoder_latency_ms"],
                      "method": "-"}),
        pd.DataFrame({"part": "projector", "llm": proj["llm"], "resolution": proj["resolution"], "tokens": pd.NA,
                      "GFLOP": proj["projector_gflops"], "ms": proj["projector_latency_ms"], "method": "-"}),
        pd.DataFrame({"part": "LLM prefill", "llm": pre["llm"], "resolution": pre["resolution"],
                      "tokens": pre["prefill_tokens"], "GFLOP": pre["prefill_gflops"], "ms": pre["prefill_latency_ms"],
                      "method": pre["prefill_method"]}),
    ], ignore_index=True)
    flops["GFLOP/s"] = flops["GFLOP"] / flops["ms"] * 1e3
    display(flops.round({"GFLOP": 2, "ms": 2, "GFLOP/s": 1}))

    rate = flops.groupby(["part", "llm"], sort=False)["GFLOP/s"].median()
    lines = [f"- {part}{'' if llm == '-' else ' (' + llm + ')'}: median **{value:.0f} GFLOP/s**"
             for (part, llm), value in rate.items()]
    display(Markdown("Achieved rate on this machine (GFLOP / median latency):\n\n" + "\n".join(lines)
                     + "\n\nWhere two parts run at different rates, the latency split differs from the FLOP split "
                       "of section 2: that difference is the hardware's, not the model's."))

    fig_flops = go.Figure()
    for i, (part, sub) in enumerate(flops.groupby("part", sort=False)):
        fig_flops.add_trace(go.Scatter(x=sub["GFLOP"], y=sub["ms"], mode="markers", name=part,
                                       marker=dict(size=10, color=plots.PALETTE[i]),
                                       text=[f"{l} @ {r} px" for l, r in zip(sub["llm"], sub["resolution"])],
                                       hovertemplate="%{text}<br>%{x:.3g} GFLOP, %{y:.3g} ms<extra></extra>"))
    fig_flops.update_layout(template="plotly_white", title="Measured latency against FLOPs (log-log)",
                            xaxis_title="GFLOP", yaxis_title="median latency (ms)")
    fig_flops.update_xaxes(type="log")
    fig_flops.update_yaxes(type="log")
    fig_flops.show()
    ''', ),
    md('''
    ## 4. Best (resolution, LLM) pair under a TTFT budget

    `best_under_budget` per budget, three ways: by the model-card benchmark `CARD_METRIC` (published
    for FastViTHD at 1024 px only, all three LLMs), by the README figure's 5-benchmark average
    (published for Qwen2-0.5B only), and the largest resolution that fits per LLM (no accuracy
    needed). Rows without a published score take no part in the accuracy rankings; the
    `accuracy_source` column says where each score comes from.
    '''),
    code(r'''
    def nice_ceil(x):
        step = 10 ** (math.floor(math.log10(x)) - 1)
        return math.ceil(x / step) * step


    with_card = attach_accuracy(df, metric=CARD_METRIC)
    with_avg5 = attach_accuracy(df, metric="avg5")
    joined = pd.concat([with_card.assign(metric=CARD_METRIC), with_avg5.assign(metric="avg5")])
    joined = joined[joined["accuracy"].notna()]
    print("published accuracy joined on:")
    display(joined[["metric", "llm", "resolution", "ttft_ms", "accuracy", "accuracy_source"]].round(1))

    lo, hi = df["ttft_ms"].min(), df["ttft_ms"].max()
    budgets = sorted({nice_ceil(b) for b in np.geomspace(lo * 1.2, hi, N_BUDGETS)})


    def pick(table, budget, label):
        best = best_under_budget(table, "ttft_ms", budget, "accuracy")
        r = best.iloc[0]
        if pd.isna(r["row"]):
            cheapest = r["cheapest_ttft_ms"]
            return "none fits" + (f" (cheapest scored pair: {cheapest:.0f} ms)" if pd.notna(cheapest) else "")
        return (f"{r['llm']} @ {int(r['resolution'])} px: {label} {r['accuracy']:.1f} "
                f"[{r['accuracy_source']}], TTFT {r['ttft_ms']:.0f} ms")


    answers = []
    for b in budgets:
        per_llm = best_under_budget(df, "ttft_ms", b, "resolution", group_by="llm")
        largest = ", ".join(f"{r.llm}: {'-' if pd.isna(r.row) else str(int(r.resolution)) + ' px'}"
                            for r in per_llm.itertuples())
        answers.append({"TTFT budget (ms)": b, f"best by {CARD_METRIC}": pick(with_card, b, CARD_METRIC),
                        "best by avg5 (Qwen2-0.5B only)": pick(with_avg5, b, "avg5"),
                        "largest resolution per LLM": largest})
    with pd.option_context("display.max_colwidth", 90):
        display(pd.DataFrame(answers))
    print("best_under_budget's own answer at the largest budget:")
    display(best_under_budget(with_card, "ttft_ms", budgets[-1], "accuracy")[
        ["llm", "resolution", "accuracy", "accuracy_source", "ttft_ms", "n_under_budget", "cheapest_ttft_ms", "budget"]])
    ''', ),
    md('''
    ## Checks

    What this notebook shows, asserted: the breakdown adds up, every LLM and resolution was measured,
    FLOPs agree with the analytic prefill count and the FastViTHD token rule, a bigger LLM costs more,
    published accuracy joined only at the released configurations, and the budget queries answered.
    '''),
    code(r'''
    from explorer.measure import prefill_flops

    parts_sum = df[PARTS].sum(axis=1)
    assert np.allclose(parts_sum, df["ttft_ms"], rtol=1e-6, atol=0), "TTFT != encoder + projector + prefill"
    assert set(df["llm"]) == set(LLMS), f"missing LLMs: {set(LLMS) - set(df['llm'])}"
    per_llm = df.groupby("llm")["resolution"].nunique()
    assert (per_llm >= 2).all(), "each LLM needs at least two measured resolutions"
    # FLOPs are hardware-independent: the prefill's equal the analytic count, the tokens follow ceil(R/64)^2
    for r in df.itertuples():
        assert math.isclose(r.prefill_gflops, prefill_flops(r.llm, int(r.prefill_tokens)), rel_tol=1e-9)
        assert int(r.visual_tokens) == math.ceil(int(r.resolution) / 64) ** 2
        assert int(r.prefill_tokens) == int(r.visual_tokens) + int(r.text_tokens)
    # at every resolution, TTFT FLOPs grow with the LLM, and the 7B's prefill is slower than the 0.5B's
    for res, part in df.groupby("resolution"):
        g = part.set_index("llm")
        if not set(LLMS) <= set(g.index):
            continue  # a failed measurement (listed above) left this resolution incomplete
        assert g.loc["qwen2-0.5b", "ttft_gflops"] < g.loc["qwen2-1.5b", "ttft_gflops"] < g.loc["qwen2-7b", "ttft_gflops"]
        assert g.loc["qwen2-7b", "prefill_latency_ms"] > g.loc["qwen2-0.5b", "prefill_latency_ms"]
    # the encoder's FLOPs are the same whatever LLM follows (measured once per resolution)
    assert (df.groupby("resolution")["encoder_gflops"].nunique() == 1).all()
    # published accuracy: model cards at 1024 px only, the README figure for Qwen2-0.5B only
    card = with_card[with_card["accuracy"].notna()]
    assert (card["resolution"] == 1024).all() and card["accuracy_source"].eq("published:fastvlm-model-card").all()
    assert set(card["llm"]) == set(df.loc[df["resolution"] == 1024, "llm"])
    avg5 = with_avg5[with_avg5["accuracy"].notna()]
    assert (avg5["llm"] == "qwen2-0.5b").all() and avg5["resolution"].le(1024).all()
    # the largest budget fits every point, so every LLM gets its largest measured resolution
    top = best_under_budget(df, "ttft_ms", budgets[-1], "resolution", group_by="llm").set_index("llm")
    assert (top["resolution"] == df.groupby("llm")["resolution"].max()).all()
    print(f"all checks passed ({len(df)} design points; QUICK={QUICK})")
    ''', ),
]


# ------------------------------------------------------------------------------------------------
# notebooks/reproduce_fastvlm_figure.ipynb

REPRODUCE = [
    md('''
    # Reproducing FastVLM's accuracy-vs-TTFT figure on this machine

    The FastVLM README plots the average of 5 VLM benchmarks against TTFT for FastViTHD and the
    encoders it is compared with (ConvNeXt-L and -XXL as in ConvLLaVA, CLIP ViT-L/14, SigLIP-SO400M),
    all with Qwen2-0.5B. The `paper_baselines` space holds exactly those points. This notebook measures
    their TTFT here, joins the published accuracy (`results/reference/fastvlm_readme_figure.csv`) and
    plots them next to the paper's own TTFT readings (`paper_ttft_ms`), then compares the paper's
    ratios with ours and says, computed from the numbers, why they differ where they do.

    The paper timed on Apple silicon (vision encoder through CoreML, the LLM through MLX); here every
    part runs in eager PyTorch on whatever device this is. Absolute times do not carry over; ratios
    measured on one device do, up to how each architecture suits each runtime.

    **QUICK** (the default) drops the heaviest encoders and cuts the timing protocol (about 1-2 minutes
    on 2 CPU cores) unless a results database for the space exists; the notebook prints what it drops.
    `QUICK = False` sweeps the whole space into `results/paper_baselines/store.db` (about 15-30 minutes
    on 2 CPU cores; ConvNeXt-XXL needs about 11 GB of memory), the same as
    `python -m explorer sweep +space=paper_baselines`. See `docs/notebooks.md`.
    '''),
    code('''
    # Parameters
    QUICK = True                 # True: only QUICK_POINTS, short timing caps (about 1-2 min on 2 CPU cores)
    SPACE = "paper_baselines"
    QUICK_POINTS = {"fastvithd": [256, 512, 1024], "vit_l14_clip": [336], "siglip_so400m": [384],
                    "convnext_l": [320, 512]}  # QUICK: encoder -> resolutions kept (the rest is dropped, and said so)
    RESULTS_DIR = None           # None: $EXPLORER_RESULTS_DIR, else <checkout>/results
    RESULTS_DB = None            # None: RESULTS_DIR/<SPACE>/store.db (what `python -m explorer sweep +space=<SPACE>` writes)
    WRITE_FIGURES = None         # None: only if $EXPLORER_WRITE_FIGURES=1; writes docs/figures/fastvlm_figure_reproduced.png
    METRIC = "avg5"              # the README figure's metric
    BASE = ("fastvithd", 256)    # TTFTs are also shown relative to this point, on each device
    ''', tags=["parameters"]),
    SETUP,
    HELPERS,
    md('''
    ## The design points, and what QUICK mode leaves out
    '''),
    code(r'''
    NAMES = {"fastvithd": "FastViTHD", "convnext_l": "ConvNeXt-L", "convnext_xxl": "ConvNeXt-XXL",
             "vit_l14_clip": "ViT-L/14", "siglip_so400m": "SigLIP-SO400M"}


    def name(encoder, resolution):
        return f"{NAMES.get(encoder, encoder)}@{int(resolution)}"


    full = load_space(SPACE)
    kept = [dataclasses.replace(e, resolutions=tuple(r for r in e.resolutions if r in QUICK_POINTS.get(e.family, ())))
            for e in full.encoders]
    quick = dataclasses.replace(full, encoders=tuple(e for e in kept if e.resolutions))
    full_settings = default_settings(full)
    quick_settings = default_settings(full, warmup_s=0.0, warmup_iters=0, min_iters=1, max_iters=3, max_time_s=1.0)
    print(f"{SPACE}: {len(enumerate_points(full))} design points, LLM {list(full.llms)}, "
          f"{list(full.text_tokens)} text tokens")
    if QUICK and not RESULTS_DB.is_file():
        # The planner's own numbers (meta-device FLOPs, parameters, time model): nothing is measured here.
        plan = plan_sweep(full, quick_settings)
        kept_points = {(p.encoder, p.resolution) for p in enumerate_points(quick)}
        lines = []
        for job in plan.jobs:
            enc, res = job.inputs.get("encoder"), job.inputs.get("resolution")
            if job.kind != "encoder" or (enc, res) in kept_points:
                continue
            params = encoder_shape(enc, job.inputs["knobs"], res).params_m
            lines.append(f"- **{name(enc, res)}**: about {job.gflops_est:.0f} GFLOP per image, {params:.0f} M "
                         f"parameters ({params * 4 / 1024:.1f} GB in fp32); the planner's time model gives about "
                         f"{plan.estimates_s[job.key]:.0f} s to measure it even with QUICK caps")
        display(Markdown(
            "**QUICK mode leaves out** these encoder points (set `QUICK = False` to measure them):\n\n"
            + ("\n".join(lines) if lines else "- nothing") +
            f"\n\nThe rest is measured with one untimed calibration call and 1-3 timed calls per measurement "
            f"(max_time_s={quick_settings.max_time_s}); its medians are noisy, and flagged so in the store. "
            "Ratios that involve a dropped point are reported as not measured."))
    ''', ),
    code(r'''
    rows, SOURCE = measured_rows(full, quick, full_settings, quick_settings)
    df = show_failures(rows)
    df = df.sort_values(["encoder", "resolution"]).reset_index(drop=True)
    print(f"{len(df)} complete design points from {SOURCE}")
    display(df[["device", "dtype", "threads", "torch_version"]].drop_duplicates())
    ''', ),
    md('''
    ## Our TTFT next to the paper's

    `attach_accuracy` joins the README figure's accuracy (read off the plot, so approximate) onto our
    rows; `paper_ttft_ms` is the paper's TTFT for the same point on its own device.
    '''),
    code(r'''
    refs = load_references()
    readme = refs[(refs["metric"] == METRIC) & refs["paper_ttft_ms"].notna()].copy()
    acc = attach_accuracy(df, metric=METRIC)
    side = acc.merge(readme[["encoder", "resolution", "llm", "paper_ttft_ms"]], on=["encoder", "resolution", "llm"],
                     how="left")
    side["point"] = [name(e, r) for e, r in zip(side["encoder"], side["resolution"])]
    side["ours / paper"] = side["ttft_ms"] / side["paper_ttft_ms"]
    table = side[["point", "visual_tokens", "encoder_gflops", "encoder_latency_ms", "projector_latency_ms",
                  "prefill_latency_ms", "ttft_ms", "paper_ttft_ms", "ours / paper", "accuracy", "accuracy_source"]]
    display(table.round({"encoder_gflops": 1, "encoder_latency_ms": 1, "projector_latency_ms": 2,
                         "prefill_latency_ms": 1, "ttft_ms": 1, "ours / paper": 1}))
    missing = readme[~readme.set_index(["encoder", "resolution"]).index.isin(
        side.set_index(["encoder", "resolution"]).index)]
    if len(missing):
        print("published points not measured here:", ", ".join(name(e, r) for e, r in
                                                               zip(missing["encoder"], missing["resolution"])))
    ''', ),
    md('''
    ## The figure

    Left: accuracy against TTFT in ms, ours (solid, this machine) and the paper's (open diamonds, dotted;
    Apple silicon). Right: the same points with each device's TTFT divided by its own FastViTHD@256
    TTFT, so both sets sit on one scale and every horizontal gap is a ratio measured on one device.
    '''),
    code(r'''
    fig_abs = plots.accuracy_vs_ttft(acc, reference=readme)
    fig_abs.show()

    base_ours = float(df.loc[(df["encoder"] == BASE[0]) & (df["resolution"] == BASE[1]), "ttft_ms"].iloc[0])
    base_paper = float(readme.loc[(readme["encoder"] == BASE[0]) & (readme["resolution"] == BASE[1]),
                                  "paper_ttft_ms"].iloc[0])
    base = name(*BASE)
    fig = go.Figure().set_subplots(
        rows=1, cols=2, horizontal_spacing=0.08,
        subplot_titles=["TTFT in ms: here and in the paper",
                        f"TTFT relative to {base} on the same device"])
    for col, relative in ((1, False), (2, True)):
        for trace in plots.accuracy_vs_ttft(acc, reference=readme).data:
            published = trace.name.endswith("(published)")
            if relative:
                trace.x = np.asarray(trace.x, dtype=float) / (base_paper if published else base_ours)
            trace.showlegend = col == 1
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(type="log", row=1, col=col,
                         title_text=f"TTFT / TTFT of {base}" if relative else "TTFT (ms), log scale")
        fig.update_yaxes(title_text="average of 5 benchmarks (%)" if col == 1 else None, row=1, col=col)
    fig.update_layout(template="plotly_white", height=560,
                      title=dict(text="FastVLM's accuracy-vs-TTFT figure (Qwen2-0.5B): measured here vs published",
                                 subtitle=dict(text=f"solid: TTFT measured here ({environment_text(df)}"
                                               + (", QUICK timing caps" if "QUICK" in SOURCE else "")
                                               + "); dotted diamonds: the paper's readings (Apple silicon); "
                                                 "accuracy: published")),
                      legend=dict(orientation="h", yanchor="top", y=-0.15, x=0))
    fig.show()
    _ = export_figure(fig, "fastvlm_figure_reproduced.png", width=1400, height=620)
    ''', ),
    md('''
    ## The paper's ratios next to ours

    Each ratio is TTFT(first) / TTFT(second), on one device. The GFLOP ratio (whole TTFT) is
    hardware-independent; the encoder GFLOP/s say how fast each encoder runs here. The sentences below
    are generated from these numbers.
    '''),
    code(r'''
    PAIRS = [(("siglip_so400m", 384), ("fastvithd", 1024)),
             (("convnext_l", 1024), ("fastvithd", 1024)),
             (("vit_l14_clip", 336), ("fastvithd", 256)),
             (("vit_l14_clip", 336), ("fastvithd", 512)),
             (("convnext_l", 512), ("fastvithd", 512)),
             (("convnext_l", 768), ("fastvithd", 768)),
             (("convnext_l", 320), ("fastvithd", 256)),
             (("convnext_xxl", 256), ("fastvithd", 256)),
             (("fastvithd", 1024), ("fastvithd", 256))]
    GLOBAL_ATTENTION = {"vit_l14_clip", "siglip_so400m"}  # ViTs: self-attention over every patch in every layer
    NOISE = 1.25  # ratios within 25% count as agreeing (run-to-run noise on a shared 2-core machine)

    ours = side.set_index(["encoder", "resolution"])
    paper = readme.set_index(["encoder", "resolution"])["paper_ttft_ms"]


    def fmt(x):
        return f"{x:.1f}x" if x < 10 else f"{x:.0f}x"


    ratios, notes = [], []
    for a, b in PAIRS:
        pa = paper.get(a, np.nan) / paper.get(b, np.nan)
        row = {"pair": f"{name(*a)} vs {name(*b)}", "paper TTFT ratio": pa}
        if a not in ours.index or b not in ours.index:
            ratios.append({**row, "our TTFT ratio": np.nan})
            notes.append(f"- **{row['pair']}**: paper {fmt(pa)}; not measured here"
                         + (" (dropped in QUICK mode)" if "QUICK" in SOURCE else "") + ".")
            continue
        A, B = ours.loc[a], ours.loc[b]
        o = A["ttft_ms"] / B["ttft_ms"]
        g = A["ttft_gflops"] / B["ttft_gflops"]
        rate_a = A["encoder_gflops"] / A["encoder_latency_ms"] * 1e3
        rate_b = B["encoder_gflops"] / B["encoder_latency_ms"] * 1e3
        ratios.append({**row, "our TTFT ratio": o, "our encoder ratio": A["encoder_latency_ms"] / B["encoder_latency_ms"],
                       "TTFT GFLOP ratio": g, "visual tokens": f"{int(A['visual_tokens'])} vs {int(B['visual_tokens'])}",
                       "encoder GFLOP/s": f"{rate_a:.0f} vs {rate_b:.0f}", "ours / paper": o / pa})
        text = f"- **{row['pair']}**: paper {fmt(pa)}, here {fmt(o)}"
        if abs(math.log(o / pa)) < math.log(NOISE):
            notes.append(text + f": the same within this machine's noise (FLOPs: {fmt(g)}).")
            continue
        why = []
        ra, rb = A["ttft_gflops"] / A["ttft_ms"] * 1e3, B["ttft_gflops"] / B["ttft_ms"] * 1e3
        rates = (f"TTFT at {ra:.0f} vs {rb:.0f} GFLOP/s, encoders at {rate_a:.0f} vs {rate_b:.0f} GFLOP/s, "
                 f"{df['dtype'].iloc[0]} eager PyTorch")
        if abs(math.log(o / g)) < math.log(1.3):
            why.append(f"here TTFT follows the FLOP ratio ({fmt(g)}; {rates})")
        else:
            slow = name(*b) if o < g else name(*a)
            why.append(f"here it is {'below' if o < g else 'above'} the FLOP ratio ({fmt(g)}) because {slow} runs "
                       f"at fewer GFLOP/s on this machine ({rates})")
        if pa > g * 1.3:
            why.append(f"the paper's {fmt(pa)} is above the FLOP ratio: on Apple silicon (CoreML for vision, MLX "
                       f"for the LLM) {name(*b)} ran at more GFLOP/s than {name(*a)}")
        elif pa < g / 1.3:
            why.append(f"the paper's {fmt(pa)} is below the FLOP ratio: on Apple silicon {name(*a)} ran at more "
                       f"GFLOP/s than {name(*b)}")
        else:
            why.append(f"the paper's {fmt(pa)} follows the FLOP ratio")
        ta, tb = int(A["visual_tokens"]), int(B["visual_tokens"])
        if max(ta, tb) > 2 * min(ta, tb):
            why.append(f"{name(*a)} hands the LLM {ta} visual tokens against {tb}, so its prefill takes "
                       f"{A['prefill_latency_ms']:.0f} ms against {B['prefill_latency_ms']:.0f} ms here (prefill FLOPs "
                       "grow linearly with the tokens, its attention quadratically)")
        for enc, tokens in ((a, ta), (b, tb)):
            if enc[0] in GLOBAL_ATTENTION:
                why.append(f"{name(*enc)} attends over all {tokens} patches in every layer, a cost that grows with "
                           "the square of the token count")
        notes.append(text + f" ({'smaller' if o < pa else 'larger'} here): " + "; ".join(why) + ".")

    ratio_table = pd.DataFrame(ratios)
    display(ratio_table.round(2))
    speed = base_ours / base_paper
    enc_rate = df["encoder_gflops"] / df["encoder_latency_ms"] * 1e3
    lo_i, hi_i = enc_rate.idxmin(), enc_rate.idxmax()
    spread = (f"Encoders run here at {enc_rate[lo_i]:.0f} GFLOP/s ({name(df.at[lo_i, 'encoder'], df.at[lo_i, 'resolution'])}, "
              f"{df.at[lo_i, 'encoder_gflops']:.0f} GFLOP per image) to {enc_rate[hi_i]:.0f} GFLOP/s "
              f"({name(df.at[hi_i, 'encoder'], df.at[hi_i, 'resolution'])}, {df.at[hi_i, 'encoder_gflops']:.0f} GFLOP): "
              "a ratio measured here departs from the FLOP ratio by about as much as the two rates differ.")
    display(Markdown(
        f"**Why the ratios differ.** Absolute TTFTs differ by about {speed:.0f}x ({base}: {base_ours:.0f} ms here on "
        f"{environment_text(df)} (eager PyTorch) against "
        f"{base_paper:.0f} ms in the paper on Apple silicon with CoreML and MLX). {spread} Pair by pair:\n\n"
        + "\n".join(notes)))
    ''', ),
    md('''
    ## Checks
    '''),
    code(r'''
    PARTS = ["encoder_latency_ms", "projector_latency_ms", "prefill_latency_ms"]
    assert np.allclose(df[PARTS].sum(axis=1), df["ttft_ms"], rtol=1e-6, atol=0), "TTFT != encoder + projector + prefill"
    # every measured point is one of the README figure's, and got its published accuracy
    assert acc["accuracy"].notna().all() and acc["accuracy_source"].eq("published:fastvlm-readme-figure").all()
    assert side["paper_ttft_ms"].notna().all()
    # the accuracy-vs-TTFT frontier exists and uses the published accuracy (not a proxy)
    front = pareto_front(acc, [("ttft_ms", "min"), ("accuracy", "max")])
    assert len(front.front) > 0 and not front.fallback
    display(front.front[["encoder", "resolution", "ttft_ms", "accuracy"]].round(1))
    # FastViTHD hands the LLM fewer visual tokens than ViT-L/14 at equal resolution (64x vs 14x downsampling)
    for res in sorted({336, *(int(r) for r in df.loc[df["encoder"] == "fastvithd", "resolution"])}):
        assert encoder_shape("fastvithd", {}, res).visual_tokens < encoder_shape("vit_l14_clip", {}, res).visual_tokens
    fast = ours.loc[("fastvithd", 256)]
    assert ours.loc[("vit_l14_clip", 336), "visual_tokens"] > 10 * fast["visual_tokens"]
    # ViT-L/14@336 costs ~12x the FLOPs of FastViTHD@256 (hardware-independent), and the paper times it slower.
    # Our timing is reported, not asserted: QUICK medians of 1-3 calls on a busy machine can invert it.
    assert ours.loc[("vit_l14_clip", 336), "ttft_gflops"] > 5 * fast["ttft_gflops"]
    assert paper[("vit_l14_clip", 336)] > paper[("fastvithd", 256)]
    if not ours.loc[("vit_l14_clip", 336), "ttft_ms"] > fast["ttft_ms"]:
        print("note: in this run ViT-L/14@336 timed faster than FastViTHD@256 despite ~12x the FLOPs: "
              "the timings are too noisy to compare (re-run with QUICK = False on an idle machine)")
    # the paper's ratios were computed from its readings, and ours from this run, for every measured pair
    measured_pairs = ratio_table[ratio_table["our TTFT ratio"].notna()]
    assert len(measured_pairs) >= 3 and ratio_table["paper TTFT ratio"].gt(0).all()
    print(f"all checks passed ({len(df)} design points; QUICK={QUICK})")
    ''', ),
]


NOTEBOOK_CELLS = {
    "encoder_vs_llm_size": ENCODER_VS_LLM,
    "reproduce_fastvlm_figure": REPRODUCE,
}


def build(stem: str) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source, tags) in enumerate(NOTEBOOK_CELLS[stem]):
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell.id = f"{stem.replace('_', '-')}-{i:02d}"
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(stem: str) -> str:
    return nbformat.writes(build(stem)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if notebooks/*.ipynb differ from this script")
    parser.add_argument("--out", type=Path, default=NOTEBOOKS, help="folder to write into (default notebooks/)")
    args = parser.parse_args(argv)
    stale = []
    for stem in NOTEBOOK_CELLS:
        path = args.out / f"{stem}.ipynb"
        text = render(stem)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python tools/make_notebooks.py): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
