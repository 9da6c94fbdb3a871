"""explorer.analysis.findings: the notebooks' shares, crossings, budgets and ratio sentences, against hand counts."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from explorer.analysis.findings import (Crossing, budget_answer, closest_runtime, compare_ratios, runtime_ratios, environment_text, nice_ceil, point_name,
                               ratio_text, share_crossings, share_sentence, split_complete, ttft_budgets)


def test_point_name_uses_the_paper_names():
    assert point_name("fastvithd", 1024) == "FastViTHD@1024"
    assert point_name("vit_l14_clip", 336.0) == "ViT-L/14@336"
    assert point_name("my_encoder", 512) == "my_encoder@512"


def test_environment_text_and_split_complete():
    rows = pd.DataFrame({"device": ["cpu", "cpu"], "dtype": ["float32"] * 2, "threads": [1, 2],
                         "torch_version": ["2.13.0"] * 2, "status": ["ok", "timeout"]})
    assert environment_text(rows) == "cpu, float32, 1 thread, torch 2.13.0"
    assert environment_text(rows.iloc[1:]) == "cpu, float32, 2 threads, torch 2.13.0"
    ok, failed = split_complete(rows)
    assert list(ok["threads"]) == [1] and list(failed["status"]) == ["timeout"]
    assert list(failed.index) == [0]
    with pytest.raises(ValueError, match="at least one row"):
        environment_text(rows.iloc[:0])


def test_crossing_is_interpolated_in_log_resolution():
    # 25% at 256 px and 75% at 1024 px: halfway in log space is the geometric mean, sqrt(256 * 1024) = 512
    (c,) = share_crossings([256, 1024], [0.25, 0.75])
    assert c == Crossing(256, 1024, pytest.approx(512.0), True)
    # 0.8 -> 0.4 falls through 0.5 three quarters of the way (t = 0.3 / 0.4): 256 * 4 ** 0.75 = 724.08 px
    (c,) = share_crossings([256, 1024], [0.8, 0.4])
    assert c.rising is False and c.at == pytest.approx(724.0773, rel=1e-6)
    # rising then falling: two crossings; touching 0.5 exactly is not a crossing
    assert [x.low for x in share_crossings([256, 512, 768, 1024], [0.4, 0.6, 0.3, 0.3])] == [256, 512]
    assert share_crossings([256, 512, 768], [0.4, 0.5, 0.6]) == []
    with pytest.raises(ValueError, match="increasing"):
        share_crossings([512, 256], [0.4, 0.6])
    with pytest.raises(ValueError, match="length"):
        share_crossings([256, 512], [0.4])


def test_share_sentence_says_dominates_everywhere_nowhere_or_where():
    always = share_sentence("qwen2-0.5b", [256, 512], [0.6, 0.9], "FLOPs")
    assert "dominates at every measured resolution (60% at 256 px to 90% at 512 px)" in always
    never = share_sentence("qwen2-7b", [256, 512], [0.05, 0.2], "measured latency")
    assert never.startswith("**qwen2-7b** (measured latency): the LLM prefill dominates") and "(5% at 256 px" in never
    crossing = share_sentence("qwen2-1.5b", [256, 1024], [0.25, 0.75], "FLOPs")
    assert "rises through 50% between 256 and 1024 px (about 512 px)" in crossing


def test_nice_ceil_rounds_up_to_two_significant_digits():
    assert nice_ceil(1234) == 1300
    assert nice_ceil(1300) == 1300  # already round: not pushed up by float error
    assert nice_ceil(99.1) == 100
    assert nice_ceil(0.0123) == pytest.approx(0.013)
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="invalid x"):
            nice_ceil(bad)


def test_ttft_budgets_span_the_range_and_the_largest_fits_everything():
    # 100 .. 1000 ms, 3 budgets: geomspace(120, 1000, 3) = 120, 346.4, 1000 -> rounded up 120, 350, 1000
    assert ttft_budgets([100.0, 400.0, 1000.0], 3) == [120, 350, 1000]
    assert ttft_budgets([250.0], 4) == [250]
    with pytest.raises(ValueError, match="invalid n"):
        ttft_budgets([1.0], 0)
    with pytest.raises(ValueError, match="finite, positive"):
        ttft_budgets([1.0, math.nan], 2)


def _scored() -> pd.DataFrame:
    return pd.DataFrame({"llm": ["a", "b", "c"], "resolution": [256, 512, 1024], "ttft_ms": [100.0, 300.0, 50.0],
                         "accuracy": [40.0, 55.0, float("nan")], "accuracy_source": ["published:x", "published:y", ""],
                         "status": ["ok"] * 3})


def test_budget_answer_picks_the_most_accurate_scored_row_that_fits():
    table = _scored()
    assert budget_answer(table, 500, "avg5") == "b @ 512 px: avg5 55.0 [published:y], TTFT 300 ms"
    assert budget_answer(table, 200, "avg5") == "a @ 256 px: avg5 40.0 [published:x], TTFT 100 ms"
    # c is fastest but has no accuracy: it never wins, and "cheapest scored" names a (100 ms)
    assert budget_answer(table, 60, "avg5") == "none fits (cheapest scored pair: 100 ms)"


def _ours() -> pd.DataFrame:
    # Two encoders; FLOPs and times chosen so the ratios are easy to check by hand.
    rows = pd.DataFrame([
        {"encoder": "vit_l14_clip", "resolution": 336, "ttft_ms": 400.0, "ttft_gflops": 400.0,
         "encoder_gflops": 300.0, "encoder_latency_ms": 300.0, "prefill_latency_ms": 90.0, "visual_tokens": 576},
        {"encoder": "fastvithd", "resolution": 256, "ttft_ms": 100.0, "ttft_gflops": 40.0,
         "encoder_gflops": 30.0, "encoder_latency_ms": 60.0, "prefill_latency_ms": 30.0, "visual_tokens": 16},
    ])
    return rows.set_index(["encoder", "resolution"])


def test_compare_ratios_by_hand():
    ours = _ours()
    paper = {("vit_l14_clip", 336): 255.0, ("fastvithd", 256): 30.0, ("fastvithd", 1024): 165.0}
    pairs = [(("vit_l14_clip", 336), ("fastvithd", 256)), (("fastvithd", 1024), ("fastvithd", 256))]
    table, notes = compare_ratios(ours, paper, pairs, dtype="float32", quick=True)
    first = table.iloc[0]
    assert first["paper TTFT ratio"] == pytest.approx(8.5)       # 255 / 30
    assert first["our TTFT ratio"] == pytest.approx(4.0)         # 400 / 100
    assert first["TTFT GFLOP ratio"] == pytest.approx(10.0)      # 400 / 40
    assert first["our encoder ratio"] == pytest.approx(5.0)      # 300 / 60
    assert first["ours / paper"] == pytest.approx(4 / 8.5)
    assert first["visual tokens"] == "576 vs 16" and first["encoder GFLOP/s"] == "1000 vs 500"
    # ours (4x) is below the FLOP ratio (10x) by more than 1.3x, so the second point runs at fewer GFLOP/s:
    # TTFT 400 GFLOP / 400 ms = 1000 GFLOP/s against 40 / 100 ms = 400; the paper's 8.5x is within 1.3x of 10x
    assert notes[0].startswith("- **ViT-L/14@336 vs FastViTHD@256**: paper 8.5x, here 4.0x (smaller here): ")
    assert "below the FLOP ratio (10x) because FastViTHD@256 runs at fewer GFLOP/s" in notes[0]
    assert "TTFT at 1000 vs 400 GFLOP/s, encoders at 1000 vs 500 GFLOP/s, float32 eager PyTorch" in notes[0]
    assert "the paper's 8.5x follows the FLOP ratio" in notes[0]
    assert "hands the LLM 576 visual tokens against 16, so its prefill takes 90 ms against 30 ms" in notes[0]
    assert "ViT-L/14@336 attends over all 576 patches" in notes[0] and "FastViTHD@256 attends" not in notes[0]
    # a pair with an unmeasured point: the paper's ratio only
    assert math.isnan(table.iloc[1]["our TTFT ratio"]) and table.iloc[1]["paper TTFT ratio"] == pytest.approx(5.5)
    assert notes[1] == "- **FastViTHD@1024 vs FastViTHD@256**: paper 5.5x; not measured here (dropped in QUICK mode)."


def test_compare_ratios_agreement_within_noise():
    ours = _ours()
    paper = {("vit_l14_clip", 336): 110.0, ("fastvithd", 256): 30.0}  # 3.67x vs our 4.0x: within 25%
    _, notes = compare_ratios(ours, paper, [(("vit_l14_clip", 336), ("fastvithd", 256))], dtype="float32")
    assert notes == ["- **ViT-L/14@336 vs FastViTHD@256**: paper 3.7x, here 4.0x: the same within this machine's "
                     "noise (FLOPs: 10x)."]
    with pytest.raises(ValueError, match="noise"):
        compare_ratios(ours, paper, [], dtype="float32", noise=1.0)


def test_ratio_text():
    assert ratio_text(2.345) == "2.3x" and ratio_text(12.6) == "13x"


def _runtime_rows(siglip_enc: float, fast_enc: float) -> pd.DataFrame:
    # SigLIP@384 and FastViTHD@1024 with a 100 ms and a 40 ms prefill and a 1 ms projector each
    return pd.DataFrame([
        {"encoder": "siglip_so400m", "resolution": 384, "encoder_latency_ms": siglip_enc,
         "prefill_latency_ms": 100.0, "ttft_ms": siglip_enc + 101.0},
        {"encoder": "fastvithd", "resolution": 1024, "encoder_latency_ms": fast_enc,
         "prefill_latency_ms": 40.0, "ttft_ms": fast_enc + 41.0},
    ]).set_index(["encoder", "resolution"])


def test_runtime_ratios_and_the_closest_runtime_by_hand():
    pair = (("siglip_so400m", 384), ("fastvithd", 1024))
    paper = {("siglip_so400m", 384): 535.0, ("fastvithd", 1024): 165.0, ("vit_l14_clip", 336): 255.0}
    by_runtime = {"eager": _runtime_rows(399.0, 259.0),        # TTFT 500 / 300
                  "onnxruntime": _runtime_rows(499.0, 159.0)}  # TTFT 600 / 200
    table = runtime_ratios(by_runtime, paper, [pair, (("vit_l14_clip", 336), ("fastvithd", 1024))])
    assert list(table.columns) == ["pair", "paper", "eager", "onnxruntime", "closest"]
    first = table.iloc[0]
    assert first["paper"] == pytest.approx(535 / 165)
    assert first["eager"] == pytest.approx(500 / 300) and first["onnxruntime"] == pytest.approx(3.0)
    assert first["closest"] == "onnxruntime"  # 3.0 is nearer 3.24 than 1.67
    second = table.iloc[1]  # ViT-L/14 measured by neither runtime
    assert math.isnan(second["eager"]) and math.isnan(second["onnxruntime"]) and second["closest"] == ""

    text = closest_runtime(by_runtime, paper, pair)
    # listed nearest first; encoder ratios 499/159 = 3.1x and 399/259 = 1.5x; prefills 100/40 = 2.5x in
    # both; prefill share (100 + 40) / (600 + 200) = 17.5% and (100 + 40) / (500 + 300) = 17.5%
    assert text.startswith("**SigLIP-SO400M@384 vs FastViTHD@1024**: the paper has 3.2x; here onnxruntime 3.0x "
                           "(encoders 3.1x, prefills 2.5x, prefill 18% of the two TTFTs); eager 1.7x (encoders 1.5x")
    assert "**onnxruntime** comes closest (3.0x, 7% below the paper)" in text
    assert "because it runs FastViTHD@1024's encoder faster relative to SigLIP-SO400M@384's" in text
    assert "the prefills take 18% of the two TTFTs here" in text

    # a runtime ahead through its prefills only (compile compiles the prefill): said so
    slow_prefill = _runtime_rows(399.0, 259.0)
    slow_prefill.loc[("siglip_so400m", 384), ["prefill_latency_ms", "ttft_ms"]] = [300.0, 399.0 + 301.0]
    why = closest_runtime({"eager": by_runtime["eager"], "compile": slow_prefill}, paper, pair)
    assert "**compile** comes closest" in why  # 700 / 300 = 2.3x against eager's 1.7x
    assert "because of its prefills, not its encoders (prefill ratio 7.5x against 2.5x under eager: compile " \
           "compiles the prefill too; its encoder ratio is 1.5x)" in why

    only = closest_runtime({"eager": by_runtime["eager"]}, paper, pair)
    assert only.endswith("the only runtime measured for this pair.")
    none = closest_runtime({"eager": by_runtime["eager"].iloc[:1]}, paper, pair)
    assert none == "**SigLIP-SO400M@384 vs FastViTHD@1024** (paper 3.2x): not measured under any runtime here (eager ran)."
    with pytest.raises(ValueError, match="at least one runtime"):
        runtime_ratios({}, paper, [pair])
