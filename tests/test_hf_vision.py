"""transformers VLM vision towers as design points (explorer.models.hf_vision, token_rules).

Oracles: transformers' own image processors run on synthetic images, with the token count
taken by the processor class's own ``replace_image_token`` (the code that writes the image
tokens into the prompt); torch's FlopCounterMode on meta and a hand count for FLOPs. Models
are tiny configs, or real sizes on the meta device only.
"""
import json
import math

import numpy as np
import pytest
import torch

from explorer.checks import OptionError
from explorer.measure.flops import count_flops, count_flops_torch
from explorer.models import build_encoder
from explorer.models import token_rules as tr
from explorer.models.hf_vision import CATALOG, load_spec

pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

SIZES = [(1152, 1152), (768, 1152), (1080, 1920), (1920, 1080), (500, 300), (384, 384), (336, 1000), (2304, 700)]


def _image(h, w):
    return Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8))


def _bare(cls, **attrs):
    """A processor instance holding only what its token-writing method reads (no tokenizer)."""
    obj = cls.__new__(cls)
    for k, v in attrs.items():
        setattr(obj, k, v)
    return obj


def oracle_llava_onevision(h, w):
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import \
        LlavaOnevisionImageProcessorPil
    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

    ip = LlavaOnevisionImageProcessorPil()  # its defaults are the released model's: 384, 6x6 pinpoints
    out = ip(_image(h, w), return_tensors="np")
    proc = _bare(LlavaOnevisionProcessor, image_processor=ip, num_image_tokens=729, vision_aspect_ratio="anyres_max_9",
                 vision_feature_select_strategy="full", image_token="<image>")
    return proc.replace_image_token({"batch_num_images": [1], **out}, 0).count("<image>")


def oracle_qwen2_vl(h, w):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

    ip = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)
    out = ip(_image(h, w), return_tensors="np")
    return _bare(Qwen2VLProcessor, image_processor=ip, image_token="<|image_pad|>").replace_image_token(out, 0).count("<|image_pad|>")


def oracle_smolvlm(h, w):
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    from transformers.models.smolvlm.processing_smolvlm import SmolVLMProcessor

    ip = SmolVLMImageProcessorPil(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512})
    out = ip(_image(h, w), return_tensors="np", return_row_col_info=True)
    proc = _bare(SmolVLMProcessor, image_seq_len=64, fake_image_token="<fake_token_around_image>", image_token="<image>",
                 global_image_token="<global-img>")
    return proc.replace_image_token(out, 0).count("<image>")


def oracle_internvl(h, w):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.internvl.processing_internvl import InternVLProcessor

    ip = GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=12, size={"height": 448, "width": 448})
    out = ip(_image(h, w), return_tensors="np")
    proc = _bare(InternVLProcessor, image_seq_length=256, start_image_token="<img>", end_image_token="</img>",
                 image_token="<IMG_CONTEXT>")
    return proc.replace_image_token(out, 0).count("<IMG_CONTEXT>")


ORACLES = {"llava-onevision-0.5b": oracle_llava_onevision, "qwen2-vl-2b": oracle_qwen2_vl,
           "smolvlm-256m": oracle_smolvlm, "internvl3-1b": oracle_internvl}


def _meta(**knobs):
    with torch.device("meta"):
        return build_encoder("hf_vlm", **knobs)


@pytest.mark.parametrize("model", sorted(ORACLES))
def test_catalog_token_counts_equal_the_processors(model):
    """The design point's count (resolution = longest side, aspect = width / height) equals the
    processor's for the same image, square and not, 1152x1152 included."""
    oracle = ORACLES[model]
    seen = set()
    for h, w in SIZES:
        res, aspect = max(h, w), w / h
        enc = _meta(model=model, aspect=aspect)
        hw = enc.image_hw(res)
        assert hw == (h, w)
        want = oracle(h, w)
        assert enc.num_tokens(res) == want, (model, h, w)
        seen.add(want)
    assert len(seen) >= 3  # the sizes exercise different grids


def test_rules_alone_match_the_processors_off_catalog_sizes():
    for h, w in [(200, 900), (1000, 1000), (3000, 500), (448, 449)]:
        assert tr.anyres_layout((h, w)).tokens == oracle_llava_onevision(h, w)
        assert tr.qwen2vl_tokens((h, w), max_pixels=12845056) == oracle_qwen2_vl(h, w)
        assert tr.idefics3_tokens((h, w), 2048, 512, 64) == oracle_smolvlm(h, w)
        assert tr.internvl_tokens((h, w)) == oracle_internvl(h, w)


def test_llava_onevision_at_1152_has_the_anyres_max_9_layout():
    lay = tr.anyres_layout((1152, 1152))
    assert (lay.rows, lay.cols, lay.views) == (3, 3, 10)
    assert lay.tokens == 27 * 27 + 81 * 81 + 81  # base view + 3x3 tiles of 27x27 + one newline per row
    big = tr.anyres_layout((2304, 2304))  # 6x6 tiles: above the 9-tile cap, shrunk bilinearly
    assert big.pooled[0] < big.unpadded[0] and big.pooled[0] * big.pooled[1] <= 9 * 729 * 1.1 ** 2


# --------------------------------------------------------------------------------------------
# Tiny towers: forward shapes equal num_tokens for every kind and strategy

TINY = {
    "llava_onevision": {"model_type": "llava_onevision", "vision_config": {
        "model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "patch_size": 14, "image_size": 84, "vision_use_head": False}},
    "qwen2_vl": {"model_type": "qwen2_vl", "vision_config": {
        "model_type": "qwen2_vl_vision", "depth": 2, "embed_dim": 32, "mlp_ratio": 2, "num_heads": 2, "patch_size": 14,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "hidden_size": 48}},
    "internvl": {"model_type": "internvl", "downsample_ratio": 0.5, "vision_config": {
        "model_type": "internvl_vision", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "patch_size": [14, 14], "image_size": [112, 112]}},
    "smolvlm": {"model_type": "smolvlm", "scale_factor": 4, "processor": {"longest_edge": 512}, "vision_config": {
        "model_type": "smolvlm_vision", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "patch_size": 16, "image_size": 128}},
    "siglip_vision_only": {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                           "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 14, "image_size": 56},
}


@pytest.fixture(scope="module")
def tiny_configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_configs")
    paths = {}
    for name, cfg in TINY.items():
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(cfg))
        paths[name] = str(folder / "config.json")
    return paths


@pytest.mark.parametrize("kind", sorted(TINY))
def test_tiny_towers_forward_gives_num_tokens(kind, tiny_configs):
    torch.manual_seed(0)
    for res, aspect in [(168, 1.0), (300, 1.5), (250, 0.6)]:
        for knobs in ({}, {"tiling": "none"}, {"pool": 2}, {"pool": 2, "pool_mode": "bilinear"}, {"pixel_shuffle": 1}):
            if kind == "qwen2_vl" and "pixel_shuffle" in knobs:
                continue
            try:
                enc = build_encoder("hf_vlm", model=tiny_configs[kind], aspect=aspect, **knobs)
                want = enc.num_tokens(res)
            except OptionError as err:  # a grid the factor does not divide: refused, and said why
                assert err.field == "pixel_shuffle"
                continue
            with torch.no_grad():
                out = enc(torch.randn(1, 3, res, res))
            assert tuple(out.shape) == (1, want, enc.out_channels), (kind, res, aspect, knobs)
            assert torch.isfinite(out).all()


def test_strategies_change_tokens_by_their_rules(tiny_configs):
    base = build_encoder("hf_vlm", model=tiny_configs["internvl"], tiling="none")
    n = base.num_tokens(224)  # 224/14 = 16 patches a side, shuffle 2 -> 8x8
    assert n == 64 and base.out_channels == 32 * 4
    assert build_encoder("hf_vlm", model=tiny_configs["internvl"], tiling="none", pixel_shuffle=1).num_tokens(224) == 256
    assert build_encoder("hf_vlm", model=tiny_configs["internvl"], tiling="none", pool=2).num_tokens(224) == 16
    assert build_encoder("hf_vlm", model=tiny_configs["internvl"], tiling="none", pixel_shuffle=4).num_tokens(224) == 16


# --------------------------------------------------------------------------------------------
# FLOPs


@pytest.mark.parametrize("kind", ["llava_onevision", "qwen2_vl", "internvl", "smolvlm", "siglip_vision_only"])
def test_fvcore_count_equals_flop_counter_mode_on_meta(kind, tiny_configs):
    enc = build_encoder("hf_vlm", model=tiny_configs[kind]).eval()
    ours = count_flops(enc, torch.randn(1, 3, 224, 224))
    with torch.device("meta"):
        meta = build_encoder("hf_vlm", model=tiny_configs[kind]).eval()
    ref = count_flops_torch(meta, torch.empty(1, 3, 224, 224, device="meta"))
    assert ours.gflops == pytest.approx(ref.gflops, rel=0.01)


def test_siglip_so400m_tower_flops_equal_a_hand_count():
    """LLaVA-OneVision's tower at 1152: 10 views of 384 through 26 SigLIP layers, FlopCounterMode on
    meta against a hand count of the matmuls (patch conv, qkv/o, MLP, attention)."""
    enc = _meta(model="llava-onevision-0.5b")
    got = count_flops_torch(enc, torch.empty(1, 3, 1152, 1152, device="meta")).gflops
    views, n, c, mlp, layers = 10, 729, 1152, 4304, 26
    per_view = n * 3 * 14 * 14 * c + layers * (n * 4 * c * c + 2 * n * c * mlp + 2 * n * n * c)
    hand = 2 * views * per_view / 1e9
    assert got == pytest.approx(hand, rel=0.01)


# --------------------------------------------------------------------------------------------
# A user's config.json in a space; errors name the field


def test_users_tiny_config_works_in_a_space(tiny_configs):
    from explorer.data.space import encoder_shape, enumerate_points, load_space
    from explorer.measure.encoder import measure_encoder
    from explorer.measure.settings import MeasureSettings

    space = load_space({"name": "mine", "encoders": {"hf_vlm": {"knobs": {"model": [tiny_configs["siglip_vision_only"]],
                                                                         "pool": [1, 2]}}},
                        "resolutions": [112, 224], "llms": ["qwen2-0.5b"], "text_tokens": [8]})
    points = enumerate_points(space)
    assert len(points) == 4
    shape = encoder_shape("hf_vlm", points[0].knob_dict(), 224)
    assert shape.visual_tokens == 256 and shape.out_channels == 32
    cost = measure_encoder("hf_vlm", {"model": tiny_configs["siglip_vision_only"], "pool": 2}, 112,
                           MeasureSettings(device="cpu", threads=1), time=False)
    assert cost.visual_tokens == 16 and cost.gflops > 0 and not cost.skipped_ops.get("aten::linear")


def test_bad_inputs_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="model"):
        build_encoder("hf_vlm", model="no-such-vlm")
    with pytest.raises(ValueError, match="tiling"):
        _meta(model="qwen2-vl-2b", tiling="grid")
    with pytest.raises(ValueError, match="aspect"):
        _meta(model="qwen2-vl-2b", aspect=0)
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type"):
        build_encoder("hf_vlm", model=str(bad))
    from explorer.data.space import SpaceError, load_space

    with pytest.raises(SpaceError, match="pool"):
        load_space({"encoders": {"hf_vlm": {"knobs": {"model": ["qwen2-vl-2b"], "pool": [0]}}},
                    "resolutions": [448], "llms": ["qwen2-1.5b"]})


def test_catalog_entries_name_their_llm_and_load():
    from explorer.models.llm import get_llm_spec

    for name in CATALOG:
        spec = load_spec(name)
        assert get_llm_spec(spec.llm).hidden > 0
    assert math.isclose(_meta(model="llava-onevision-0.5b").num_params() / 1e6, 397.75, rel_tol=1e-3)


@pytest.mark.parametrize("kind", ["llava_onevision", "internvl", "smolvlm"])
def test_tiles_through_our_path_equal_the_towers_own_forward(kind, tiny_configs):
    """The tower features the encoder hands on are the transformers tower's own output for each view."""
    torch.manual_seed(0)
    enc = build_encoder("hf_vlm", model=tiny_configs[kind], pixel_shuffle=1).eval()
    t = enc.spec.tile
    views = torch.randn(3, 3, t, t)
    with torch.no_grad():
        ours = enc._tower_grid(views).reshape(3, -1, enc.tower_width)
        own = enc.tower(pixel_values=views).last_hidden_state
    if kind == "internvl":
        own = own[:, 1:]
    torch.testing.assert_close(ours, own, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("runtime,kind", [("eager", "llava_onevision"), ("onnxruntime", "smolvlm")])
def test_timed_like_the_registry_encoders(runtime, kind, tiny_configs):
    """Same timer and runtimes as the registry encoders: exported per shape, checked against eager."""
    pytest.importorskip("onnxruntime") if runtime == "onnxruntime" else None
    from explorer.measure.encoder import measure_encoder
    from explorer.measure.settings import MeasureSettings

    settings = MeasureSettings(device="cpu", threads=1, runtime=runtime, min_iters=2, max_iters=3, warmup_iters=1,
                               warmup_s=0.0, max_time_s=2.0, preprocess="none", probe=False)
    cost = measure_encoder("hf_vlm", {"model": tiny_configs[kind]}, 300, settings)
    assert cost.latency is not None and cost.latency.median_ms > 0 and cost.runtime_error < 1e-3
