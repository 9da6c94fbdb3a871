"""Image preprocessing as a measured part of TTFT, and a sweep that stores runtime and preprocessing."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from explorer.data import results
from explorer.measure.costs import EncoderCost, PrefillCost, ProjectorCost, Timing
from explorer.measure.encoder import measure_encoder, measure_preprocess
from explorer.measure.preprocess import NORMALISATION, preprocess_pil, preprocess_torch
from explorer.measure.settings import MeasureSettings
from explorer.measure.ttft import TTFTBreakdown

TINY = {"depths": [1, 1, 1, 1, 1], "widths": [16, 32, 64, 64, 128]}
QUICK = MeasureSettings(device="cpu", threads=1, warmup_s=0.0, warmup_iters=1, min_iters=2, max_iters=2)


def halves(width: int = 1920, height: int = 1080) -> np.ndarray:
    """Left half black, right half white."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[:, width // 2:] = 255
    return img


@pytest.mark.parametrize("impl", [preprocess_pil, preprocess_torch])
def test_resize_shortest_side_then_centre_crop(impl):
    img = halves()
    x = impl(img if impl is preprocess_pil else torch.from_numpy(img).permute(2, 0, 1), 256, "crop")
    assert x.shape == (1, 3, 256, 256) and x.dtype == torch.float32
    # 1920x1080 -> 455x256 (shortest side 256); the crop keeps columns 99..354 of 455, so the
    # black/white edge (column 227.5) lands at 128.5 of the crop.
    assert float(x[0, :, :, :120].max()) < 0.01 and float(x[0, :, :, 137:].min()) > 0.99


@pytest.mark.parametrize("impl", [preprocess_pil, preprocess_torch])
def test_pad_to_square_with_the_mean_colour_then_normalise(impl):
    mean, std = NORMALISATION["vit_l14_clip"]
    img = halves()
    x = impl(img if impl is preprocess_pil else torch.from_numpy(img).permute(2, 0, 1), 224, "pad", mean, std)
    assert x.shape == (1, 3, 224, 224)
    # 1920x1080 padded to 1920x1920: 420 rows of mean colour above -> 49 of 224 rows; normalised ~0.
    assert float(x[0, :, :45, :].abs().max()) < 0.01
    # a white pixel normalises to (1 - mean) / std per channel
    white = (1 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(x[0, :, 112, 200], white, atol=0.01)


def test_pil_and_torch_agree_on_a_smooth_image():
    yy, xx = np.mgrid[0:1080, 0:1920]
    img = np.stack([xx * 255 // 1919, yy * 255 // 1079, (xx + yy) * 255 // 2998], -1).astype(np.uint8)
    a = preprocess_pil(img, 256, "crop")
    b = preprocess_torch(torch.from_numpy(img).permute(2, 0, 1), 256, "crop")
    assert float((a - b).abs().max()) <= 2 / 255


def test_measured_with_the_encoder_and_switchable_in_ttft():
    enc = measure_encoder("fastvithd", TINY, 64, QUICK.replace(source_image="640x480"))
    assert enc.preprocess == "pil:640x480->crop->64"
    assert enc.preprocess_latency is not None and enc.preprocess_latency.median_ms > 0
    assert EncoderCost.from_dict(json.loads(json.dumps(enc.to_dict()))) == enc
    t = Timing(10.0, 9.0, 11.0, 10.0, 0.0, 5, 9.0, 11.0, False)
    proj = ProjectorCost(enc.out_channels, 32, enc.visual_tokens, 0.1, 0.01, t)
    pre = PrefillCost("x", 5, 1.0, 1.0, t, "whole-model")
    with_prep = TTFTBreakdown.from_costs(enc, proj, pre)
    paper = TTFTBreakdown.from_costs(enc, proj, pre, include_preprocess=False)
    assert with_prep.includes_preprocess and not paper.includes_preprocess
    assert with_prep.ttft_ms - paper.ttft_ms == pytest.approx(enc.preprocess_latency.median_ms)
    assert measure_preprocess("fastvithd", 64, QUICK.replace(preprocess="none")) == (None, "none")
    timing, what = measure_preprocess("vit_l14_clip", 224, QUICK.replace(preprocess="torch", preprocess_fit="pad",
                                                                          source_image="320x200"))
    assert what == "torch:320x200->pad->224" and timing.median_ms > 0


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_a_sweep_with_onnxruntime_stores_runtime_and_preprocessing(tmp_path):
    from explorer.data.store import Store
    from explorer.engine.options import SweepOptions
    from explorer.engine.sweep import run_sweep

    llm = tmp_path / "tiny_llm.json"
    llm.write_text(json.dumps({"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
                               "vocab_size": 500, "tie_word_embeddings": True, "max_position_embeddings": 512}))
    space = tmp_path / "tiny.yaml"
    space.write_text(f"name: tiny\nencoders:\n  fastvithd:\n    knobs: {{depths: [[1, 1, 1, 1, 1]], widths: [[16, 32, 64, 64, 128]]}}\n"
                     f"resolutions: [64]\nllms: ['{llm}']\ntext_tokens: [4]\n")
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    settings = QUICK.replace(runtime="onnxruntime", source_image="640x480")
    run_sweep(str(space), settings, store, SweepOptions(isolation="inline", progress=False))
    envs = {m.environment.get("runtime") for m in store.measurements()}
    assert envs == {"onnxruntime"}
    df = results.load(store, accuracy_metric=None)
    row = df.iloc[0]
    assert row.status == "ok" and row.runtime == "onnxruntime" and row.lm_head == "last"
    assert row.preprocess_ms > 0 and bool(row.ttft_includes_preprocess)
    parts = row.encoder_latency_ms + row.projector_latency_ms + row.prefill_latency_ms
    assert row.ttft_ms == pytest.approx(parts + row.preprocess_ms)
    paper = results.load(store, accuracy_metric=None, ttft_includes_preprocess=False).iloc[0]
    assert paper.ttft_ms == pytest.approx(parts) and not bool(paper.ttft_includes_preprocess)
