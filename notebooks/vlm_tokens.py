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
# # Deployed VLMs: token strategies, equal-token baselines and the paper's headline comparisons
#
# Deployed VLMs tile the image, shuffle and pool features before the LLM sees them. This notebook
# uses `hf_vlm` (transformers' own vision towers, the processors' token rules: `docs/vlms.md`) to
# answer:
#
# 1. how many visual tokens each deployed VLM hands its LLM for an image of a given size and shape;
# 2. for every token strategy (AnyRes tiling, pixel shuffle, pooling, a tile cap), what it costs
#    beside the **equal-token baseline**: the same encoder on one view of the image, downsampled to
#    the size that gives the same token count;
# 3. the FastVLM paper's three headline TTFT comparisons (85x LLaVA-OneVision-0.5B, 7.9x
#    Cambrian-1-8B, 3.2x LLaVA-1.5) as predicted for the paper's device (Apple M1 profiles) beside
#    the paper's numbers, with both TTFTs in parts; measured ones when a results database of
#    `headline_comparisons` exists.
#
# Everything here runs on the `meta` device or through the prediction model (seconds, nothing
# allocated); **QUICK** (the default) and `QUICK = False` differ only in how many image sizes are
# listed. Measuring the comparisons is `python -m explorer sweep +space=headline_comparisons`
# (hours on 2 CPU cores); this notebook then reads `RESULTS_DB`.

# %% tags=["parameters"]
# Parameters
QUICK = True                 # True: three image sizes in section 1; False: eight
RESULTS_DIR = None           # None: $EXPLORER_RESULTS_DIR, else <checkout>/results
RESULTS_DB = None            # None: RESULTS_DIR/headline_comparisons/store.db (measured comparisons, if present)
DEVICE = "apple-m1-ane"      # the paper's device: vision on the neural engine (CoreML) ...
LLM_DEVICE = "apple-m1-gpu"  # ... and the LLM on the GPU (MLX)
DTYPE = "float16"
TEXT_TOKENS = 32

# %%
# Setup
import json

import pandas as pd
import torch
from IPython.display import Markdown, display

from explorer.analysis.headline import equal_token_resolution, headline_sentence, headline_table
from explorer.engine.notebook_run import env_flag, resolve_paths
from explorer.models import build_encoder
from explorer.predict import PredictOptions, load_profile, predict_space

QUICK = env_flag("EXPLORER_QUICK", QUICK)
PATHS = resolve_paths("headline_comparisons", RESULTS_DIR, RESULTS_DB)
pd.set_option("display.width", 220)
pd.set_option("display.max_columns", 30)
PROFILE, LLM_PROFILE = load_profile(DEVICE), load_profile(LLM_DEVICE) if LLM_DEVICE else None
OPTIONS = PredictOptions(dtype=DTYPE)
print(f"QUICK={QUICK}; predictions for {DEVICE}" + (f" + {LLM_DEVICE}" if LLM_DEVICE else "") + f" ({DTYPE}); "
      f"measured comparisons from {PATHS.results_db} ({'present' if PATHS.results_db.is_file() else 'absent'}); "
      "figures not exported")


def meta_encoder(**knobs):
    with torch.device("meta"):
        return build_encoder("hf_vlm", **knobs)


# %% [markdown]
# ## 1. Visual tokens per deployed VLM and image
#
# `resolution` is the image's longest side, `aspect` its width / height. The counts follow each
# model's processor (tested equal to transformers' own processors on synthetic images,
# `tests/test_hf_vision.py`).

# %%
MODELS = ["llava-onevision-0.5b", "qwen2-vl-2b", "internvl3-1b", "smolvlm-256m"]
IMAGES = [(1152, 1.0), (1920, 16 / 9), (768, 0.75)] if QUICK else \
    [(384, 1.0), (768, 1.0), (1152, 1.0), (1536, 1.0), (1920, 16 / 9), (1080, 9 / 16), (768, 0.75), (2304, 3.3)]
rows = []
for res, aspect in IMAGES:
    row = {}
    for model in MODELS:
        enc = meta_encoder(model=model, aspect=aspect)
        row["image (h x w)"] = "x".join(map(str, enc.image_hw(res)))
        row[model] = enc.num_tokens(res)
    rows.append(row)
tokens = pd.DataFrame(rows).set_index("image (h x w)")
display(tokens)
assert tokens.loc["1152x1152", "llava-onevision-0.5b"] == 729 + 81 * 81 + 81

# %% [markdown]
# ## 2. Token strategies beside their equal-token baselines
#
# Each strategy of one encoder at a 1152 x 1152 image, and beside it the same tower on one view of
# the image downsampled to the size whose plain token count is closest
# (`equal_token_resolution`). Tokens and GFLOPs are exact (counted from the forward each runs);
# latency is predicted for the profiles above (projector and prefill with Qwen2-0.5B).

# %%
RES = 1152
STRATEGIES = [
    ("llava-onevision-0.5b", {}, "AnyRes-Max-9 (the model's own)"),
    ("llava-onevision-0.5b", {"max_tiles": 4}, "AnyRes, tile cap 4"),
    ("llava-onevision-0.5b", {"pool": 2}, "AnyRes + 2x2 average pooling"),
    ("llava-onevision-0.5b", {"pool": 3, "pool_mode": "bilinear"}, "AnyRes + bilinear pooling to 1/3"),
    ("llava-onevision-0.5b", {"pixel_shuffle": 3}, "AnyRes + pixel shuffle 3"),
    ("internvl3-1b", {}, "InternVL tiles + thumbnail, pixel shuffle 2 (own)"),
    ("internvl3-1b", {"max_tiles": 4}, "InternVL, tile cap 4"),
    ("smolvlm-256m", {}, "SmolVLM tiles + global, pixel shuffle 4 (own)"),
    ("qwen2-vl-2b", {"pool": 2}, "Qwen2-VL dynamic resolution + 2x2 pooling"),
]
entries, pairs = [], []
for model, knobs, label in STRATEGIES:
    strat = meta_encoder(model=model, **knobs)
    target = strat.num_tokens(RES)
    plain = meta_encoder(model=model, tiling="none")
    base_res = equal_token_resolution(plain.num_tokens, target)
    entries.append({"family": "hf_vlm", "knobs": {"model": [model], **{k: [v] for k, v in knobs.items()}},
                    "resolutions": [RES]})
    entries.append({"family": "hf_vlm", "knobs": {"model": [model], "tiling": ["none"]}, "resolutions": [base_res]})
    pairs.append((label, model, knobs, base_res))
space = {"name": "equal_tokens", "encoders": entries, "llms": ["qwen2-0.5b"], "text_tokens": [TEXT_TOKENS]}
pred = predict_space(space, PROFILE, llm_profile=LLM_PROFILE, options=OPTIONS)


def pick(model, knobs, res):
    want = json.dumps({"model": model, **knobs}, sort_keys=True)
    hit = pred[(pred.resolution == res) & (pred.knobs.map(lambda k: json.dumps(json.loads(k), sort_keys=True)) == want)]
    return hit.iloc[0]


table = []
for label, model, knobs, base_res in pairs:
    s, b = pick(model, knobs, RES), pick(model, {"tiling": "none"}, base_res)
    table.append({"strategy": label, "tokens": s.visual_tokens, "GFLOPs enc": round(s.encoder_gflops, 1),
                  "TTFT ms": round(s.ttft_ms, 1), "baseline input": f"{base_res} px",
                  "baseline tokens": b.visual_tokens, "baseline GFLOPs enc": round(b.encoder_gflops, 1),
                  "baseline TTFT ms": round(b.ttft_ms, 1), "TTFT / baseline": round(s.ttft_ms / b.ttft_ms, 2)})
equal = pd.DataFrame(table)
display(equal)
assert (abs(equal["tokens"] - equal["baseline tokens"]) <= 0.15 * equal["tokens"]).all()

# %% [markdown]
# At equal tokens the prefill is the same, so the difference is the encoder: tiling runs the tower
# over every view (10 for LLaVA-OneVision at 1152), where the baseline runs it once on a larger
# image. Whether the extra views buy accuracy is the question these latencies price.

# %% [markdown]
# ### In-LLM pruning (FastV-style): the prefill as two segments
#
# LLaVA-OneVision-0.5B at 1152 with a fraction `r` of its 7371 visual tokens dropped after LLM layer
# `K`: K layers over all tokens, the other layers over the kept ones (`explorer.measure.pruned_prefill`,
# predicted with `explorer.predict.pruned`). Not yet an axis of a space (see `docs/vlms.md`).

# %%
from explorer.measure.pruned_prefill import Pruning, pruned_prefill_flops
from explorer.measure.prefill import prefill_flops
from explorer.predict.model import predict_trace
from explorer.predict.pruned import predict_pruned_prefill
from explorer.predict.trace import trace_prefill

V = meta_encoder(model="llava-onevision-0.5b").num_tokens(1152)
llm_prof = LLM_PROFILE or PROFILE
prune_rows = [{"pruning": "none", "prefill GFLOPs": round(prefill_flops("qwen2-0.5b", V + TEXT_TOKENS), 1),
               "prefill ms": round(predict_trace(trace_prefill("qwen2-0.5b", V + TEXT_TOKENS, dtype=DTYPE), llm_prof,
                                                 DTYPE).ms, 1)}]
for k, r in [(2, 0.5), (2, 0.75), (12, 0.75)]:
    pr = Pruning(after_layer=k, ratio=r)
    prune_rows.append({"pruning": f"K={k}, r={r}", "prefill GFLOPs": round(pruned_prefill_flops("qwen2-0.5b", V, TEXT_TOKENS, pr), 1),
                       "prefill ms": round(predict_pruned_prefill("qwen2-0.5b", V, TEXT_TOKENS, pr, llm_prof, DTYPE).ms, 1)})
display(pd.DataFrame(prune_rows))

# %% [markdown]
# ## 3. The paper's headline comparisons
#
# `search_spaces/headline_comparisons.yaml`, predicted for the paper's device. Ratios are the
# other side's TTFT over FastVLM's; parts are median milliseconds.

# %%
predicted = predict_space("headline_comparisons", PROFILE, llm_profile=LLM_PROFILE, options=OPTIONS)
head = headline_table(predicted)
cols = ["comparison", "paper_ratio", "ratio", "encoder_ratio", "prefill_ratio", "tokens_fast", "tokens_other",
        "fast_encoder_ms", "fast_projector_ms", "fast_prefill_ms", "fast_ttft_ms",
        "other_encoder_ms", "other_projector_ms", "other_prefill_ms", "other_ttft_ms"]
display(head[cols].round(2))
for _, r in head.iterrows():
    display(Markdown("- " + headline_sentence(r) + f" ({r['note']})"))
assert len(head) == 3

# %% [markdown]
# Measured on this machine, per runtime, when a results database of the space exists: one sweep
# per runtime into the same database (docs/vlms.md has the commands and a run's figures), then
# each side at its own fastest runtime (`runtime = fastest`).

# %%
if PATHS.results_db.is_file():
    from explorer.analysis.headline import headline_by_runtime
    from explorer.data import results

    measured = results.load(PATHS.results_db, env="all").assign(latency_source="measured")
    mh = headline_by_runtime(measured)
    print(f"{len(mh)} measured comparison row(s) over {measured['env_key'].nunique()} environment(s)")
    if len(mh):
        display(mh[["runtime", "fast_runtime", "other_runtime", "fast_preprocess_ms", "other_preprocess_ms"] + cols].round(2))
        for _, r in mh.iterrows():
            display(Markdown("- " + headline_sentence(r)))
else:
    print("No measured comparisons yet: python -m explorer sweep +space=headline_comparisons")
print("all checks passed")
