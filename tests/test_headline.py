"""The three headline comparisons: the space, Cambrian-1's assembly, the table, the M1 prediction."""
import json
import math

import pandas as pd
import pytest
import torch

from explorer.analysis.headline import HEADLINES, equal_token_resolution, headline_sentence, headline_table
from explorer.data.space import enumerate_points, load_space
from explorer.models import build_encoder


def test_space_holds_both_sides_of_every_comparison():
    space = load_space("headline_comparisons")
    points = enumerate_points(space)
    assert len(points) == 8
    have = {(p.encoder, p.resolution, p.llm, json.dumps(p.knob_dict(), sort_keys=True)) for p in points}
    for h in HEADLINES:
        for side in (h.fast, h.other):
            assert (side.encoder, side.resolution, side.llm, json.dumps(dict(side.knobs), sort_keys=True)) in have


def _row(encoder, res, llm, knobs, tokens, enc, proj, pre):
    return {"encoder": encoder, "resolution": res, "llm": llm, "knobs": json.dumps(knobs), "visual_tokens": tokens,
            "encoder_latency_ms": enc, "projector_latency_ms": proj, "prefill_latency_ms": pre,
            "ttft_ms": enc + proj + pre, "status": "ok", "latency_source": "measured"}


def test_table_ratios_and_parts_by_hand():
    df = pd.DataFrame([
        _row("fastvithd", 1152, "qwen2-0.5b", {}, 324, 100.0, 1.0, 49.0),
        _row("hf_vlm", 1152, "qwen2-0.5b", {"model": "llava-onevision-0.5b"}, 7371, 600.0, 10.0, 2390.0),
        _row("vit_l14_clip", 336, "vicuna-7b", {}, 576, 300.0, 5.0, 700.0),  # its pair is missing: left out
    ])
    t = headline_table(df)
    assert list(t["comparison"]) == ["LLaVA-OneVision-0.5B @1152"]
    r = t.iloc[0]
    assert r["ratio"] == pytest.approx(3000.0 / 150.0)
    assert r["encoder_ratio"] == pytest.approx(6.0) and r["prefill_ratio"] == pytest.approx(2390.0 / 49.0)
    assert r["fast_encoder_ms"] + r["fast_projector_ms"] + r["fast_prefill_ms"] == pytest.approx(r["fast_ttft_ms"])
    assert (r["paper_ratio"], r["tokens_other"], r["tokens_fast"]) == (85.0, 7371, 324)
    assert "85x" in headline_sentence(r) and "20.0x" in headline_sentence(r)


def test_by_runtime_and_fastest_by_hand():
    """Two environments (eager, compile): a table each, then each side at its own fastest one."""
    def both(env, runtime, fast_enc, other_enc, fast_pre, other_pre):
        rows = [_row("fastvithd", 1152, "qwen2-0.5b", {}, 324, fast_enc, 1.0, fast_pre),
                _row("hf_vlm", 1152, "qwen2-0.5b", {"model": "llava-onevision-0.5b"}, 7371, other_enc, 10.0, other_pre)]
        return [{**r, "env_key": env, "runtime": runtime, "llm_runtime": "transformers"} for r in rows]

    df = pd.DataFrame(both("e1", "eager", 400.0, 900.0, 99.0, 3000.0) + both("e2", "compile", 200.0, 1000.0, 99.0, 3100.0))
    from explorer.analysis.headline import headline_by_runtime

    t = headline_by_runtime(df).set_index("runtime", drop=False)
    assert list(t.index) == ["eager", "compile", "fastest"]
    assert t.loc["eager", "ratio"] == pytest.approx(3910.0 / 500.0)
    assert t.loc["compile", "ratio"] == pytest.approx(4110.0 / 300.0)
    # FastVLM is fastest compiled (300 ms), LLaVA-OneVision eager (3910 ms)
    assert (t.loc["fastest", "fast_runtime"], t.loc["fastest", "other_runtime"]) == ("compile", "eager")
    assert t.loc["fastest", "ratio"] == pytest.approx(3910.0 / 300.0)
    assert "FastVLM under compile, the other under eager" in headline_sentence(t.loc["fastest"].to_dict())
    # preprocessing counted in a row's TTFT is one of its parts
    pre = df.assign(preprocess_ms=5.0, ttft_includes_preprocess=True, ttft_ms=df["ttft_ms"] + 5.0)
    p = headline_by_runtime(pre).set_index("runtime")
    assert p.loc["eager", "fast_preprocess_ms"] == 5.0
    parts = sum(p.loc["eager", f"other_{k}_ms"] for k in ("preprocess", "encoder", "projector", "prefill"))
    assert parts == pytest.approx(p.loc["eager", "other_ttft_ms"])
    assert headline_by_runtime(df.iloc[:0]).empty


def test_cambrian_assembly_tokens_and_aggregator_share():
    from explorer.measure.flops import count_flops_torch

    with torch.device("meta"):
        enc = build_encoder("cambrian1")
    assert enc.num_tokens(1024) == 576 and enc.out_channels == 1024
    total = count_flops_torch(enc, torch.empty(1, 3, 1024, 1024, device="meta")).gflops
    towers = sum(count_flops_torch(t, torch.empty(1, 3, r, r, device="meta")).gflops
                 for t, r in zip(enc.towers, enc.tower_res))
    assert 0 < 1 - towers / total < 0.01  # the approximated aggregator is under 1% of the FLOPs
    with pytest.raises(ValueError, match="heads"):
        build_encoder("cambrian1", width=100, heads=16)


@pytest.mark.parametrize("devices", [("apple-m1-gpu", None), ("apple-m1-ane", "apple-m1-gpu")])
def test_85x_predicted_for_the_m1_with_both_ttfts_in_parts(devices):
    from explorer.predict import PredictOptions, load_profile, predict_space

    h = HEADLINES[0]
    space = {"name": "h85", "llms": ["qwen2-0.5b"], "text_tokens": [32], "encoders": {
        "fastvithd": {"resolutions": [1152]},
        "hf_vlm": {"knobs": {"model": ["llava-onevision-0.5b"]}, "resolutions": [1152]}}}
    enc_dev, llm_dev = devices
    df = predict_space(space, load_profile(enc_dev), llm_profile=load_profile(llm_dev) if llm_dev else None,
                       options=PredictOptions(dtype="float16"))
    t = headline_table(df, (h,))
    assert len(t) == 1
    r = t.iloc[0]
    assert r["latency_source"].startswith("predicted:")
    assert (r["tokens_fast"], r["tokens_other"]) == (324, 7371)
    for side in ("fast", "other"):
        parts = [r[f"{side}_{p}_ms"] for p in ("encoder", "projector", "prefill")]
        assert all(p > 0 for p in parts) and sum(parts) == pytest.approx(r[f"{side}_ttft_ms"])
    assert r["ratio"] > 1 and r["prefill_ratio"] > r["encoder_ratio"]  # tokens dominate the gap


def test_equal_token_resolution_is_plain_downsampling():
    with torch.device("meta"):
        tiled = build_encoder("hf_vlm", model="internvl3-1b")
        plain = build_encoder("hf_vlm", model="internvl3-1b", tiling="none")
    target = tiled.num_tokens(1152)  # 7 views x 256
    r = equal_token_resolution(plain.num_tokens, target)
    assert abs(plain.num_tokens(r) - target) <= min(abs(plain.num_tokens(x) - target) for x in (r - 28, r + 28))
    assert plain.num_tokens(r) == pytest.approx(target, rel=0.15)
    assert not math.isnan(r)
