# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Vision encoder vs LLM size: where does the time to first token go?
#
# FastVLM's time to first token is **TTFT = vision encoder + projector + LLM prefill** of the visual
# plus text tokens. This notebook puts the released FastViTHD (no knob overrides) in front of
# Qwen2-0.5B, -1.5B and -7B at input resolutions from 256 to 1536 px and answers:
#
# 1. how TTFT splits into vision encoder, projector and prefill, per LLM;
# 2. where vision stops dominating: the resolution at which the encoder's share of TTFT crosses 50%
#    (or that it never does), per LLM, in measured latency and in hardware-independent FLOPs;
# 3. FLOPs beside latency: GFLOP next to measured ms, and the GFLOP/s each part reaches here;
# 4. which (resolution, LLM) pair is best under a TTFT budget, with the source of its accuracy;
# 5. the inference-optimal question: more LLM or more visual tokens, for text-rich and reasoning
#    tasks, with predicted accuracy (and its interval) where nothing was published.
#
# The numbers come from the same public functions as the CLI (`plan_sweep`, `run_sweep`,
# `results.load`, `attach_accuracy`, `best_under_budget`, `plots.ttft_breakdown`), through
# `explorer.engine.notebook_run` (read the database or measure) and `explorer.analysis.findings` (shares, crossings,
# budgets); the notebook adds only presentation. Published accuracy exists only for the released configurations: FastViTHD at
# 1024 px with each Qwen2 size (model cards) and FastViTHD with Qwen2-0.5B at 256-1024 px (the
# README figure's average of 5 benchmarks).
#
# **QUICK** (the default) measures FastViTHD at two resolutions with one timed call per measurement
# (about a minute on 2 CPU cores) unless a results database for the space already exists. `QUICK = False`
# sweeps all resolutions into `results/fastvithd_full/store.db` (about an hour on 2 CPU cores; a
# few minutes on a GPU), the same as
# `python -m explorer sweep +space=fastvithd_full '~space.encoders.fastvithd.knobs'`.
# See `docs/notebooks.md`.

# %% tags=["parameters"]
# Parameters
QUICK = True                 # True: QUICK_RESOLUTIONS only, one timed call per measurement (about 1 min on 2 CPU cores)
SPACE = "fastvithd_full"     # resolutions, LLMs, prompt length and measurement settings come from this space
LLMS = ["qwen2-0.5b", "qwen2-1.5b", "qwen2-7b"]  # smallest first
QUICK_RESOLUTIONS = [256, 512]  # QUICK: two resolutions (the model cards' 1024 px needs QUICK = False)
RESULTS_DIR = None           # None: $EXPLORER_RESULTS_DIR, else <checkout>/results
RESULTS_DB = None            # None: RESULTS_DIR/<SPACE>/store.db (what `python -m explorer sweep +space=<SPACE>` writes)
WRITE_FIGURES = None         # None: only if $EXPLORER_WRITE_FIGURES=1; writes docs/figures/ttft_breakdown.png
CARD_METRIC = "textvqa"      # model-card benchmark that ranks (resolution, LLM) pairs
N_BUDGETS = 5                # TTFT budgets, spread geometrically over the measured range

# %%
# Setup: imports, paths and environment overrides (EXPLORER_QUICK, EXPLORER_RESULTS_DIR, EXPLORER_WRITE_FIGURES).
import dataclasses
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import Markdown, display

from explorer.analysis import plots
from explorer.analysis.findings import environment_text, share_crossings, share_sentence, split_complete, ttft_budgets, \
    budget_answer
from explorer.engine.notebook_run import export_figure, notebook_setup, quick_settings, read_or_measure
from explorer.analysis.pareto import best_under_budget
from explorer.data.reference import attach_accuracy
from explorer.data.space import enumerate_points, load_space
from explorer.engine.sweep import default_settings

QUICK, PATHS, WRITE_FIGURES = notebook_setup(SPACE, QUICK, RESULTS_DIR, RESULTS_DB, WRITE_FIGURES)

# %% [markdown]
# ## The design points
#
# FastViTHD as released (no knob overrides: published accuracy joins only there) at the space's
# resolutions, in front of each LLM, with the space's text prompt. In QUICK mode the measurement
# protocol is cut to one untimed calibration call and one timed call per measurement
# (`explorer.engine.notebook_run.QUICK_TIMING`; flagged noisy in the store); the LLM prefill is timed on the whole model when it
# fits in half the free memory, otherwise layer-sampled (the 7B in fp32 on a small machine: see the
# `prefill_method` column). Nothing is estimated where it could be measured.

# %%
space = load_space(SPACE)
entry = next(e for e in space.encoders if e.family == "fastvithd")
released = dataclasses.replace(entry, knobs=())  # FastViTHD as released
full = dataclasses.replace(space, encoders=(released,), llms=tuple(LLMS), exclude=())
quick = dataclasses.replace(full, encoders=(dataclasses.replace(released, resolutions=tuple(QUICK_RESOLUTIONS)),))
full_settings = default_settings(full)
quick_caps = quick_settings(full)
print(f"{len(enumerate_points(full))} design points: FastViTHD at {list(released.resolutions)} px x {LLMS} "
      f"x {list(full.text_tokens)} text tokens")
if QUICK and not PATHS.results_db.is_file():
    print(f"QUICK: {len(enumerate_points(quick))} of them (FastViTHD at {QUICK_RESOLUTIONS} px), timing caps "
          f"min_iters={quick_caps.min_iters}, max_iters={quick_caps.max_iters}, "
          f"max_time_s={quick_caps.max_time_s} (the space's own: max_time_s={full_settings.max_time_s})")

# %%
rows, SOURCE = read_or_measure(full, quick, PATHS, quick_mode=QUICK)
df, failed = split_complete(rows)
if len(failed):
    print(f"{len(failed)} design point(s) without a complete measurement (left out below):")
    display(failed[["encoder", "resolution", "llm", "status", "error"]])
df = df.sort_values(["llm", "resolution"]).reset_index(drop=True)
env = df[["device", "dtype", "threads", "torch_version"]].drop_duplicates()
print(f"{len(df)} complete design points from {SOURCE}")
display(env)

# %% [markdown]
# ## 1. The TTFT breakdown
#
# Medians of each part; TTFT is their sum. The `encoder share` column is the vision encoder's part of
# TTFT.

# %%
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
_ = export_figure(fig_breakdown, PATHS.figures_dir / "ttft_breakdown.png" if WRITE_FIGURES else None, width=1000)


# %% [markdown]
# ## 2. Where vision stops dominating
#
# The encoder's share of TTFT at each resolution, per LLM: measured (latency) and hardware-independent
# (FLOPs: encoder GFLOP / TTFT GFLOP). Where the share crosses 50% between two measured resolutions
# the crossing is interpolated linearly in log(resolution).

# %%
shares = df.assign(latency_share=df["encoder_latency_ms"] / df["ttft_ms"],
                   flop_share=df["encoder_gflops"] / df["ttft_gflops"])
sentences, crossover = [], {}
for llm, part in shares.groupby("llm", sort=True):
    res = [int(r) for r in part["resolution"]]
    for column, basis in (("latency_share", "measured latency"), ("flop_share", "FLOPs")):
        values = [float(v) for v in part[column]]
        sentences.append(share_sentence(llm, res, values, basis))
        crossover[(llm, basis)] = share_crossings(res, values)
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

# %% [markdown]
# ## 3. FLOPs beside latency
#
# GFLOP (2 x multiply-accumulates, the same on every machine) next to the measured median, and the
# rate each part reaches on this machine. The encoder is measured once per resolution and the
# prefill once per (LLM, prompt length), whatever the other half of the point is.

# %%
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


# %% [markdown]
# ## 4. Best (resolution, LLM) pair under a TTFT budget
#
# `best_under_budget` per budget, three ways: by the model-card benchmark `CARD_METRIC` (published
# for FastViTHD at 1024 px only, all three LLMs), by the README figure's 5-benchmark average
# (published for Qwen2-0.5B only), and the largest resolution that fits per LLM (no accuracy
# needed). Rows without a published score take no part in the accuracy rankings; the
# `accuracy_source` column says where each score comes from.

# %%
with_card = attach_accuracy(df, metric=CARD_METRIC)
with_avg5 = attach_accuracy(df, metric="avg5")
joined = pd.concat([with_card.assign(metric=CARD_METRIC), with_avg5.assign(metric="avg5")])
joined = joined[joined["accuracy"].notna()]
print("published accuracy joined on:")
display(joined[["metric", "llm", "resolution", "ttft_ms", "accuracy", "accuracy_source"]].round(1))

budgets = ttft_budgets(df["ttft_ms"], N_BUDGETS)

answers = []
for b in budgets:
    per_llm = best_under_budget(df, "ttft_ms", b, "resolution", group_by="llm")
    largest = ", ".join(f"{r.llm}: {'-' if pd.isna(r.row) else str(int(r.resolution)) + ' px'}"
                        for r in per_llm.itertuples())
    answers.append({"TTFT budget (ms)": b, f"best by {CARD_METRIC}": budget_answer(with_card, b, CARD_METRIC),
                    "best by avg5 (Qwen2-0.5B only)": budget_answer(with_avg5, b, "avg5"),
                    "largest resolution per LLM": largest})
with pd.option_context("display.max_colwidth", 90):
    display(pd.DataFrame(answers))
print("best_under_budget's own answer at the largest budget:")
display(best_under_budget(with_card, "ttft_ms", budgets[-1], "accuracy")[
    ["llm", "resolution", "accuracy", "accuracy_source", "ttft_ms", "n_under_budget", "cheapest_ttft_ms", "budget"]])

# %% [markdown]
# ## 5. More LLM or more visual tokens? The inference-optimal question on this machine
#
# Li et al. (2024, arXiv 2411.03312) find that for a fixed inference budget, reasoning tasks want a
# larger LLM and fewer visual tokens while OCR-like tasks want more tokens. Published accuracy covers
# few of the points above, so this section takes every point's accuracy from the accuracy model
# (`explorer.accuracy`, docs/accuracy.md: fitted to the published results in
# `results/reference/literature/`, FastVLM's own recipe, an 80% interval on each prediction; a
# published number wins where there is one) and puts it on this machine's measured TTFT. What the
# fitted slopes say, and what the best pair under each budget is for a text-rich and a reasoning
# task:

# %%
from explorer.accuracy import default_model, fill_accuracy
from explorer.analysis.pareto import frontier_membership

model = default_model()
slopes = model.slopes().set_index(["group", "term"])["slope"]
TASKS = {"text-rich (TextVQA, DocVQA, ChartQA, OCRBench)": ("text_rich", "text"), "reasoning (MMMU)": ("mmmu", "knowledge")}
scored_by_task, best_rows = {}, []
for label, (metric, group) in TASKS.items():
    base = df.assign(accuracy=np.nan, accuracy_source=None)
    if metric == "mmmu":
        base = attach_accuracy(base, metric=metric)  # the model cards publish MMMU at 1024 px
    scored = fill_accuracy(base, metric=metric)
    scored["membership"] = frontier_membership(scored, group_by="llm")
    scored_by_task[label] = scored
    for b in budgets:
        best = best_under_budget(scored, "ttft_ms", b, "accuracy")
        if len(best) and pd.notna(best.iloc[0].get("accuracy")):
            r = best.iloc[0]
            best_rows.append({"task": label, "TTFT budget (ms)": b, "LLM": r["llm"], "resolution": int(r["resolution"]),
                              "accuracy": f"{r['accuracy']:.1f} [{r['accuracy_low']:.1f}, {r['accuracy_high']:.1f}]",
                              "source": r["accuracy_source"]})
doubling = math.log(2)
display(Markdown("\n".join(
    f"- **{label}**: a doubled LLM adds {slopes[(group, 'logN')] * doubling:.2f} to the logit of the score, "
    f"doubled visual tokens {slopes[(group, 'logT')] * doubling:.2f} (bootstrap ranges: `explorer accuracy fit`)"
    for label, (metric, group) in TASKS.items())))
with pd.option_context("display.max_colwidth", 60):
    display(pd.DataFrame(best_rows))
for label, scored in scored_by_task.items():
    print(label)
    display(scored[["llm", "resolution", "ttft_ms", "accuracy", "accuracy_low", "accuracy_high", "accuracy_source",
                    "membership"]].round(1))

# %% [markdown]
# ## Checks
#
# What this notebook shows, asserted: the breakdown adds up, every LLM and resolution was measured,
# FLOPs agree with the analytic prefill count and the FastViTHD token rule, a bigger LLM costs more,
# published accuracy joined only at the released configurations, and the budget queries answered.

# %%
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
# at every resolution, TTFT FLOPs grow with the LLM (LLMS is smallest first), and the largest LLM's
# prefill (Qwen2-7B) is slower than the smallest's (Qwen2-0.5B)
for res, part in df.groupby("resolution"):
    g = part.set_index("llm")
    if not set(LLMS) <= set(g.index):
        continue  # a failed measurement (listed above) left this resolution incomplete
    gflops = [g.loc[llm, "ttft_gflops"] for llm in LLMS]
    assert all(a < b for a, b in zip(gflops, gflops[1:])), f"TTFT GFLOP at {res} px not increasing: {gflops}"
    assert g.loc[LLMS[-1], "prefill_latency_ms"] > g.loc[LLMS[0], "prefill_latency_ms"]
# the encoder's FLOPs are the same whatever LLM follows (measured once per resolution)
assert (df.groupby("resolution")["encoder_gflops"].nunique() == 1).all()
# published accuracy: model cards at 1024 px only, the README figure for Qwen2-0.5B only
card = with_card[with_card["accuracy"].notna()]
assert (card["resolution"] == 1024).all() and card["accuracy_source"].eq("published:fastvlm-model-card").all()
assert set(card["llm"]) == set(df.loc[df["resolution"] == 1024, "llm"])
avg5 = with_avg5[with_avg5["accuracy"].notna()]
assert (avg5["llm"] == "qwen2-0.5b").all() and avg5["resolution"].le(1024).all()
# ... and it joins wherever it is published: Qwen2-0.5B at every measured resolution of 256-1024 px
published = df[(df["llm"] == "qwen2-0.5b") & df["resolution"].isin([256, 512, 768, 1024])]
assert sorted(avg5["resolution"]) == sorted(published["resolution"]) and len(avg5) > 0
# the largest budget fits every point, so every LLM gets its largest measured resolution
top = best_under_budget(df, "ttft_ms", budgets[-1], "resolution", group_by="llm").set_index("llm")
assert (top["resolution"] == df.groupby("llm")["resolution"].max()).all()
# every point has an accuracy for both tasks, inside its own interval, and says where it comes from
for scored in scored_by_task.values():
    assert scored["accuracy"].notna().all()
    assert (scored["accuracy_low"] <= scored["accuracy"]).all() and (scored["accuracy"] <= scored["accuracy_high"]).all()
    assert scored["accuracy_source"].str.match(r"^(predicted|published):").all()
    assert scored["membership"].isin(["certain", "possible", "dominated"]).all()
print(f"all checks passed ({len(df)} design points; QUICK={QUICK})")
