"""Token strategies beside their equal-token baselines: pairing, the shipped space, the report section."""
import json

import pandas as pd
import pytest

from explorer.analysis.equal_tokens import equal_token_pairs, is_baseline, is_strategy


def _row(knobs, res, tokens, enc_ms, ttft, llm="qwen2-0.5b"):
    return {"encoder": "hf_vlm", "knobs": json.dumps(knobs), "resolution": res, "llm": llm, "text_tokens": 32,
            "visual_tokens": tokens, "encoder_gflops": enc_ms * 2.0, "encoder_latency_ms": enc_ms, "ttft_ms": ttft,
            "status": "ok"}


def test_pairs_by_hand():
    ov = "llava-onevision-0.5b"
    df = pd.DataFrame([
        _row({"model": ov}, 1152, 7371, 100.0, 500.0),
        _row({"model": ov, "pool": 2}, 1152, 2002, 100.0, 200.0),
        _row({"model": ov, "tiling": "none"}, 1204, 7396, 150.0, 560.0),
        _row({"model": ov, "tiling": "none"}, 630, 2025, 30.0, 100.0),
        _row({"model": ov, "tiling": "none"}, 630, 2025, 30.0, 100.0, llm="qwen2-7b"),  # another LLM: no pair
        _row({"model": ov, "max_tiles": 1}, 1152, 1485, 20.0, 80.0),  # nothing within 15% of 1485 tokens
    ])
    pairs = equal_token_pairs(df).set_index("strategy")
    assert list(pairs.index) == ["tiling=model", "pool=2"]
    assert pairs.loc["tiling=model", "baseline_resolution"] == 1204
    assert pairs.loc["pool=2", "ttft_ratio"] == pytest.approx(2.0)
    assert pairs.loc["pool=2", "encoder_ratio"] == pytest.approx(100.0 / 30.0)
    assert is_baseline({"model": ov, "tiling": "none", "pool": 1}) and not is_baseline({"model": ov, "tiling": "none", "pool": 2})
    assert is_strategy({"model": ov}) and not is_strategy({"model": ov, "tiling": "none"})


def test_shipped_space_pairs_every_strategy_and_the_report_shows_them(tmp_path):
    from explorer.analysis.report import render_report
    from explorer.predict import load_profile, predict_space

    df = predict_space("token_strategies", load_profile("xeon-avx512-2t"))
    pairs = equal_token_pairs(df)
    strategies = df["knobs"].map(lambda k: json.loads(k).get("tiling") != "none").sum()
    assert len(pairs) == strategies == 7
    assert ((pairs["tokens"] - pairs["baseline_tokens"]).abs() <= 0.15 * pairs["tokens"]).all()
    page = render_report(df, title="t")
    assert "Token strategies and equal-token baselines" in page and 'id="equal-token-table"' in page
