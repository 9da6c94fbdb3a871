"""Baseline encoders of the FastVLM paper: CLIP ViT-L/14, SigLIP-SO400M, ConvNeXt-L/-XXL.

Full-size models are built on torch's meta device (shapes and parameter counts, no memory, no
arithmetic); real forward passes use small-knob variants so the file runs in seconds. Expected
parameter counts are hand counts, written out below so a reader can check them.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from explorer.models import build_encoder, list_encoders
from explorer.models.vit import resize_pos_embed


# ---------------------------------------------------------------- hand counts
def vit_layer_params(c: int, mlp: int) -> int:
    """Pre-LN block: 2 LayerNorms, qkv (3C x C + 3C), proj (C x C + C), fc1, fc2."""
    return 2 * 2 * c + (3 * c * c + 3 * c) + (c * c + c) + (c * mlp + mlp) + (mlp * c + c)


def vit_params(c: int, mlp: int, layers: int, patch: int, grid: int, cls: bool, patch_bias: bool,
               pre_ln: bool) -> int:
    embed = 3 * patch * patch * c + (c if patch_bias else 0)
    pos = (grid * grid + (1 if cls else 0)) * c
    return embed + pos + (c if cls else 0) + (2 * c if pre_ln else 0) + layers * vit_layer_params(c, mlp)


def convnext_block_params(c: int) -> int:
    """dwconv 7x7 (49C + C), LN (2C), Linear C->4C (4C^2 + 4C), Linear 4C->C (4C^2 + C), gamma (C)."""
    return 8 * c * c + 58 * c


def convnext_params(depths: list[int], widths: list[int]) -> int:
    total = 3 * 16 * widths[0] + widths[0] + 2 * widths[0]  # stem conv 4x4 + bias, LayerNorm
    for i, (d, w) in enumerate(zip(depths, widths)):
        if i:
            total += 2 * widths[i - 1] + 4 * widths[i - 1] * w + w  # LN + 2x2 conv + bias
        total += d * convnext_block_params(w)
    return total


CLIP_L14_336 = vit_params(1024, 4096, 24, 14, 24, cls=True, patch_bias=False, pre_ln=True)
SIGLIP_26 = vit_params(1152, 4304, 26, 14, 27, cls=False, patch_bias=True, pre_ln=False)
SIGLIP_27 = vit_params(1152, 4304, 27, 14, 27, cls=False, patch_bias=True, pre_ln=False)
CONVNEXT_L4 = convnext_params([3, 3, 27, 3], [192, 384, 768, 1536])
CONVNEXT_L5 = convnext_params([3, 3, 27, 3, 6], [192, 384, 768, 1536, 3072])
CONVNEXT_XXL4 = convnext_params([3, 4, 30, 3], [384, 768, 1536, 3072])
CONVNEXT_XXL5 = convnext_params([3, 4, 30, 3, 6], [384, 768, 1536, 3072, 6144])


def on_meta(name: str, **knobs):
    with torch.device("meta"):
        return build_encoder(name, **knobs)


def meta_forward(model, resolution: int) -> torch.Size:
    with torch.no_grad():
        return model(torch.empty(1, 3, resolution, resolution, device="meta")).shape


def test_registered():
    assert {"vit_l14_clip", "siglip_so400m", "convnext_l", "convnext_xxl"} <= set(list_encoders())


def test_hand_counts_written_out():
    # The figures quoted in docs/baselines.md and the module docstrings.
    assert CLIP_L14_336 == 303_505_408
    assert SIGLIP_26 == 397_745_440
    assert SIGLIP_27 == 412_984_944
    assert CONVNEXT_L4 == 196_227_264
    assert CONVNEXT_L5 == 669_161_664
    assert CONVNEXT_XXL4 == 843_391_872
    assert CONVNEXT_XXL5 == 2_732_979_072


# ---------------------------------------------------------------- CLIP ViT-L/14
def test_clip_vit_l14_336_tokens_channels_params():
    m = on_meta("vit_l14_clip")
    assert meta_forward(m, 336) == (1, 576, 1024)
    assert m.num_tokens(336) == 576 and m.out_channels == 1024 and m.downsample == 14
    assert m.num_params() == CLIP_L14_336
    assert m.layers_built == 24  # LLaVA-1.5 runs the whole tower (output_hidden_states)
    # Published: "about 304M" (CLIP ViT-L/14 image tower, /work/shared/reference/fastvlm.md; HF
    # CLIPVisionModelWithProjection = ours + post-LN 2,048 + projection 1024x768 = 304,293,888).
    assert abs(m.num_params() - 304e6) / 304e6 < 0.01
    assert m.num_params() + 2 * 1024 + 1024 * 768 == 304_293_888


def test_clip_token_count_floors():
    m = on_meta("vit_l14_clip")
    for r, side in [(224, 16), (336, 24), (448, 32), (350, 25), (343, 24)]:
        assert m.num_tokens(r) == side * side
    assert meta_forward(m, 350) == (1, 625, 1024)


# ---------------------------------------------------------------- SigLIP-SO400M
def test_siglip_so400m_384_tokens_channels_params():
    m = on_meta("siglip_so400m")
    assert meta_forward(m, 384) == (1, 729, 1152)
    assert m.num_tokens(384) == 729 and m.out_channels == 1152
    # LLaVA-OneVision drops the 27th layer: 26 built, same tokens as hidden_states[-2] of 27.
    assert m.layers_built == 26 and m.num_params() == SIGLIP_26
    assert abs(m.num_params() - 400e6) / 400e6 < 0.01  # "SO400M"
    full = on_meta("siglip_so400m", prune_unused=False)
    assert full.layers_built == 27 and full.num_params() == SIGLIP_27
    # + post-LN + attention-pool head = HF SiglipVisionModel (siglip-so400m-patch14-384), 428.2M
    head = 1152 + (3 * 1152 * 1152 + 3 * 1152) + (1152 * 1152 + 1152) + 2 * 1152 \
        + (1152 * 4304 + 4304) + (4304 * 1152 + 1152)
    assert full.num_params() + 2 * 1152 + head == 428_225_600


# ---------------------------------------------------------------- ViT behaviour on real tensors
SMALL_VIT = dict(depth=3, width=32, heads=4, mlp_dim=64, patch=14, native_resolution=56)


def test_small_vit_forward_native_and_other_resolutions():
    torch.manual_seed(0)
    for name in ("vit_l14_clip", "siglip_so400m"):
        m = build_encoder(name, **SMALL_VIT).eval()
        for r in (56, 84, 70, 100):  # native 4x4 grid; 6x6; 5x5; 7x7 (100 // 14 floors)
            with torch.no_grad():
                y = m(torch.randn(2, 3, r, r))
            assert y.shape == (2, m.num_tokens(r), 32)
            assert torch.isfinite(y).all()


def test_pos_embed_interpolation():
    g = torch.randn(16, 8)  # a 4x4 native grid of 8-dim embeddings
    assert resize_pos_embed(g, 4) is g  # native size: untouched
    # Bicubic resizing of a grid that is constant per channel stays constant.
    const = torch.arange(8.0).repeat(16, 1)
    out = resize_pos_embed(const, 7)
    assert out.shape == (49, 8) and torch.allclose(out, torch.arange(8.0).repeat(49, 1), atol=1e-5)
    # Doubling the grid and averaging 2x2 blocks recovers something close to the original.
    smooth = torch.linspace(0, 1, 4)[:, None] + torch.linspace(0, 1, 4)[None, :]
    up = resize_pos_embed(smooth.reshape(16, 1), 8).reshape(1, 1, 8, 8)
    assert torch.allclose(F.avg_pool2d(up, 2).reshape(4, 4), smooth, atol=0.05)


def test_vit_uses_interpolated_pos_embed_and_keeps_cls_pos():
    torch.manual_seed(0)
    m = build_encoder("vit_l14_clip", **SMALL_VIT)
    pe = m._pos_embed_for(6)  # 84 px -> 6x6 grid (+ cls)
    assert pe.shape == (37, 32)
    assert torch.equal(pe[0], m.pos_embed[0, 0])  # class-token position untouched
    assert torch.allclose(pe[1:], resize_pos_embed(m.pos_embed[0, 1:], 6))
    # the position embedding really enters the tokens: zeroing it changes the output
    x = torch.randn(1, 3, 84, 84)
    with torch.no_grad():
        a = m(x)
        m.pos_embed.zero_()
        b = m(x)
    assert not torch.allclose(a, b)


def test_select_layer_and_pruning_agree():
    torch.manual_seed(0)
    full = build_encoder("vit_l14_clip", **SMALL_VIT, select_layer=-2).eval()
    pruned = build_encoder("vit_l14_clip", **SMALL_VIT, select_layer=-2, prune_unused=True).eval()
    assert full.layers_built == 3 and pruned.layers_built == 2
    missing, unexpected = pruned.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(k.startswith("blocks.2.") for k in unexpected)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(full(x), pruned(x), atol=1e-6)
        # select_layer=1 == hidden state after block 1 == select_layer=-3 for depth 3
        a = build_encoder("vit_l14_clip", **SMALL_VIT, select_layer=1)
        a.load_state_dict(full.state_dict())
        b = build_encoder("vit_l14_clip", **SMALL_VIT, select_layer=-3)
        b.load_state_dict(full.state_dict())
        assert torch.allclose(a(x), b(x)) and not torch.allclose(a(x), full(x))


def test_vit_attention_matches_reference_softmax():
    """Our SDPA attention equals softmax(QK^T / sqrt(d)) V written out by hand."""
    torch.manual_seed(0)
    m = build_encoder("siglip_so400m", **SMALL_VIT)
    attn = m.blocks[0].attn
    x = torch.randn(2, 5, 32)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 4, 8).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    ref = attn.proj((w @ v).transpose(1, 2).reshape(2, 5, 32))
    with torch.no_grad():
        assert torch.allclose(attn(x), ref, atol=1e-5)


# ---------------------------------------------------------------- ConvNeXt
def test_convnext_l_params_and_output():
    m = on_meta("convnext_l")
    assert m.num_params() == CONVNEXT_L5
    assert m.out_channels == 3072 and m.downsample == 64
    assert meta_forward(m, 1024) == (1, 256, 3072)
    four = on_meta("convnext_l", extra_stage=False)
    assert four.num_params() == CONVNEXT_L4 and four.downsample == 32 and four.out_channels == 1536
    # Published ConvNeXt-L (ConvNeXt paper Table 1 / timm convnext_large): 198M, which includes
    # the classifier (final LN + 1536x1000 Linear): 197,767,336.
    head = 2 * 1536 + 1536 * 1000 + 1000
    assert four.num_params() + head == 197_767_336
    assert abs(four.num_params() + head - 198e6) / 198e6 < 0.01


def test_convnext_xxl_params_and_output():
    m = on_meta("convnext_xxl")
    assert m.num_params() == CONVNEXT_XXL5
    assert m.out_channels == 6144 and m.downsample == 64
    assert meta_forward(m, 256) == (1, 16, 6144)
    four = on_meta("convnext_xxl", extra_stage=False)
    assert four.num_params() == CONVNEXT_XXL4 and four.out_channels == 3072
    # timm convnext_xxlarge (LAION CLIP tower fine-tuned on IN-1k): 846.47M with the classifier.
    head = 2 * 3072 + 3072 * 1000 + 1000
    assert four.num_params() + head == 846_471_016


@pytest.mark.parametrize("r", [256, 320, 512, 768, 1024])
def test_convnext_token_counts_full_size(r):
    for name in ("convnext_l", "convnext_xxl"):
        m = on_meta(name)
        side = math.ceil(r / 64)
        assert m.num_tokens(r) == side * side
        assert meta_forward(m, r)[1] == side * side
    m = on_meta("convnext_l", extra_stage=False)
    assert meta_forward(m, r)[1] == math.ceil(r / 32) ** 2 == m.num_tokens(r)


SMALL_CONVNEXT = dict(depths=[1, 1, 1, 1, 1], widths=[8, 8, 16, 16, 24])


@pytest.mark.parametrize("r", [256, 320, 512, 768, 1024, 336, 100, 65])
def test_small_convnext_real_forward_shapes(r):
    torch.manual_seed(0)
    m = build_encoder("convnext_l", **SMALL_CONVNEXT).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, r, r))
    assert y.shape == (1, math.ceil(r / 64) ** 2, 24) == (1, m.num_tokens(r), m.out_channels)
    assert torch.isfinite(y).all()


def test_small_convnext_32x_and_layer_scale():
    m = build_encoder("convnext_xxl", depths=[1, 1, 1, 1], widths=[8, 8, 16, 16], extra_stage=False)
    with torch.no_grad():
        y = m(torch.randn(1, 3, 320, 320))
    assert y.shape == (1, 100, 16) and m.downsample == 32
    gammas = [blk.gamma for stage in m.stages for blk in stage]
    assert all(torch.all(g == 1e-6) for g in gammas)


# ---------------------------------------------------------------- knobs
@pytest.mark.parametrize("name, knobs, knob", [
    ("vit_l14_clip", {"width": 1000}, "width"),  # not divisible by 16 heads
    ("vit_l14_clip", {"heads": 0}, "heads"),
    ("vit_l14_clip", {"depth": 0}, "depth"),
    ("vit_l14_clip", {"select_layer": 25}, "select_layer"),
    ("vit_l14_clip", {"select_layer": -26}, "select_layer"),
    ("siglip_so400m", {"mlp_dim": -1}, "mlp_dim"),
    ("siglip_so400m", {"patch": 0}, "patch"),
    ("siglip_so400m", {"native_resolution": 10}, "native_resolution"),
    ("siglip_so400m", {"act": "relu"}, "act"),
    ("siglip_so400m", {"prune_unused": "yes"}, "prune_unused"),
    ("siglip_so400m", {"depth": 2.5}, "depth"),
    ("convnext_l", {"depths": [3, 3, 27, 3]}, "depths"),  # 4 stages but extra_stage=True
    ("convnext_l", {"widths": [192, 384, 768, 1536, 0]}, "widths"),
    ("convnext_xxl", {"extra_stage": "no"}, "extra_stage"),
    ("convnext_xxl", {"extra_stage": False, "depths": [3, 4, 30, 3, 6]}, "depths"),
])
def test_bad_knobs_raise_naming_the_knob(name, knobs, knob):
    with pytest.raises(ValueError, match=rf"invalid {knob}="):
        on_meta(name, **knobs)


def test_bad_resolution_raises():
    m = on_meta("vit_l14_clip")
    with pytest.raises(ValueError, match="resolution"):
        m.num_tokens(10)
    with pytest.raises(ValueError, match="resolution"):
        on_meta("convnext_l").num_tokens(0)


# ---------------------------------------------------------------- describe() round trip
@pytest.mark.parametrize("name, knobs", [
    ("vit_l14_clip", {}),
    ("vit_l14_clip", {"depth": 12, "width": 768, "heads": 12, "select_layer": -1}),
    ("siglip_so400m", {}),
    ("siglip_so400m", {"prune_unused": False, "act": "gelu"}),
    ("convnext_l", {}),
    ("convnext_l", {"extra_stage": False}),
    ("convnext_xxl", {}),
    ("convnext_xxl", {"depths": (3, 4, 30, 3, 3), "widths": (384, 768, 1536, 3072, 3072)}),
])
def test_describe_round_trips(name, knobs):
    m = on_meta(name, **knobs)
    d = json.loads(json.dumps(m.describe()))  # JSON-serialisable, unchanged by a round trip
    assert d == m.describe()
    assert d["name"] == name and d["family"] in ("vit", "convnext")
    assert d["out_channels"] == m.out_channels and d["downsample"] == m.downsample
    again = on_meta(name, **d["knobs"])
    assert again.num_params() == m.num_params()
    assert again.describe() == d


def test_reparameterize_is_a_noop():
    m = build_encoder("convnext_l", **SMALL_CONVNEXT)
    v = build_encoder("vit_l14_clip", **SMALL_VIT)
    before = {k: t.clone() for k, t in m.state_dict().items()}
    assert m.reparameterize() is m and v.reparameterize() is v
    assert all(torch.equal(before[k], t) for k, t in m.state_dict().items())


# ---------------------------------------------------------------- one real full-size forward
@pytest.mark.slow
def test_full_size_clip_forward_on_cpu():
    torch.manual_seed(0)
    m = build_encoder("vit_l14_clip").eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, 336, 336))
    assert y.shape == (1, 576, 1024) and torch.isfinite(y).all()


def test_clip_flops_match_hand_count():
    """torch's FLOP counter on the meta device agrees with a hand count for ViT-L/14 at 336.

    577 tokens (CLS + 576) x 24 layers x (4C^2 + 2 C mlp) linear MACs, 2 N^2 C attention MACs
    per layer (QK^T and AV), and the 576 x (3*14*14) x C patch conv; FLOPs = 2 x MACs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    m = on_meta("vit_l14_clip")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        m(torch.empty(1, 3, 336, 336, device="meta"))
    c, n, mlp = 1024, 577, 4096
    macs = 24 * n * (4 * c * c + 2 * c * mlp) + 24 * 2 * n * n * c + 576 * 3 * 14 * 14 * c
    assert counter.get_total_flops() == 2 * macs  # 381.9 GFLOP
