"""The contract every registered vision encoder keeps (as timm tests every model it registers).

Parametrized over ``explorer.models.list_encoders()``, so a newly registered family is checked
without editing this file, except for one entry in ``TINY``: its smallest knobs (the test fails
and says so when the entry is missing). For each encoder:

- ``num_tokens(R)`` equals the token count of a real forward pass at tiny size, at resolutions
  that are and are not multiples of the downsampling, and raises on a bad resolution;
- the default (released) configuration at its native resolution, built and run on the meta
  device (no memory, no arithmetic), gives the published token count and channel width;
- ``describe()`` survives ``json.dumps``/``json.loads`` unchanged (no tuples, numpy scalars or
  tensors), names the encoder, matches the model's ``out_channels`` / ``downsample``, and its
  ``knobs`` rebuild the same architecture through the registry;
- ``reparameterize()`` returns ``self``, keeps outputs within ``REPARAM_RTOL`` in float64 (with
  every weight and BatchNorm statistic randomised, so no branch is negligible), and a second call
  changes no tensor;
- the batch dimension is independent: the forward of two images equals the two forwards.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from explorer.models import build_encoder, list_encoders

# The smallest knobs each family accepts: one block per stage, narrow widths, head_dim 8.
TINY: dict[str, dict] = {
    "fastvithd": dict(depths=[1, 1, 1, 1, 1], widths=[8, 16, 16, 32, 32], head_dim=8),
    "fastvit_mci2": dict(depths=[1, 1, 1, 1], widths=[8, 16, 16, 16], head_dim=8),
    "vit_l14_clip": dict(depth=2, width=16, heads=2, mlp_dim=32, native_resolution=28),
    "siglip_so400m": dict(depth=2, width=16, heads=2, mlp_dim=32, native_resolution=28),
    "convnext_l": dict(depths=[1, 1, 1, 1, 1], widths=[8, 8, 8, 8, 8]),
    "convnext_xxl": dict(depths=[1, 1, 1, 1, 1], widths=[8, 8, 8, 8, 8]),
    # a tiny LLaVA-OneVision config (AnyRes over 42-px tiles of a 2-layer SigLIP): a user's config.json
    "hf_vlm": dict(model=str(Path(__file__).parent / "data" / "tiny_llava_onevision" / "config.json")),
    "cambrian1": dict(scale=0.02, width=8, heads=2, tower_resolutions=[28, 28, 64, 28]),
}

# Released configurations at their native resolution: (resolution, visual tokens, channels), from
# the papers and configs (not from this code): FastViTHD 64x -> 16x16 at 1024 px, 3072 channels
# (FastVLM, Table 1 and the released mm_hidden_size); MobileCLIP MCi2 32x -> 8x8 at 256 px, 1280
# channels (2 x 640); CLIP ViT-L/14 at 336 px -> 24x24 = 576 tokens of 1024 (LLaVA-1.5);
# SigLIP-SO400M/14 at 384 px -> 27x27 = 729 tokens of 1152 (LLaVA-OneVision); ConvNeXt-L with
# ConvLLaVA's fifth stage at 1024 px -> 16x16 of 3072 (ConvLLaVA-ConvNeXt-1024 config); ConvNeXt-XXL
# with a fifth stage at twice its last width (6144) at 256 px -> 4x4.
RELEASED: dict[str, tuple[int, int, int]] = {
    "fastvithd": (1024, 256, 3072),
    "fastvit_mci2": (256, 64, 1280),
    "vit_l14_clip": (336, 576, 1024),
    "siglip_so400m": (384, 729, 1152),
    "convnext_l": (1024, 256, 3072),
    "convnext_xxl": (256, 16, 6144),
    # LLaVA-OneVision-0.5B on a 384 x 384 image: base view + 1x1 AnyRes grid, 729 + 729 + 27 newline
    # tokens of SigLIP's 1152 (LlavaOnevisionProcessor's count, tests/test_hf_vision.py)
    "hf_vlm": (384, 1485, 1152),
    # Cambrian-1: the SVA's 24 x 24 queries of width 1024 (Cambrian-1 paper, section 3)
    "cambrian1": (1024, 576, 1024),
}

# Folding BatchNorm and parallel branches into one conv is exact algebra: in float64 the only
# difference is rounding, a few ulps times the depth.
REPARAM_RTOL = 1e-9

RESOLUTIONS = (64, 100, 130)  # a multiple of 32 and 64, and two that are not (ceil vs floor matters)

ENCODERS = list_encoders()


def _tiny(name: str) -> nn.Module:
    if name not in TINY:
        pytest.fail(f"encoder {name!r} is registered but has no entry in TINY (tests/test_encoder_contract.py): "
                    "add the smallest knobs it accepts")
    torch.manual_seed(0)
    return build_encoder(name, **TINY[name])


def _randomise(model: nn.Module) -> None:
    """Every weight, bias, layer scale and BatchNorm statistic random and of order one (fan-in scaled)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen, dtype=p.dtype))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype))


def test_every_family_has_tiny_knobs_and_a_released_shape():
    assert set(TINY) == set(ENCODERS) == set(RELEASED)


@pytest.mark.parametrize("name", ENCODERS)
def test_num_tokens_matches_the_forward_shape(name):
    model = _tiny(name).eval()
    with torch.no_grad():
        for r in RESOLUTIONS:
            out = model(torch.randn(1, 3, r, r))
            assert out.dim() == 3, f"{name}: tokens [B, N, C] expected, got {tuple(out.shape)}"
            assert tuple(out.shape) == (1, model.num_tokens(r), model.out_channels), (name, r)
    for bad in (0, -64, 64.0, "64"):
        with pytest.raises(ValueError, match="resolution"):
            model.num_tokens(bad)


@pytest.mark.parametrize("name", ENCODERS)
def test_released_configuration_on_the_meta_device(name):
    resolution, tokens, channels = RELEASED[name]
    with torch.device("meta"):
        model = build_encoder(name)
    model.eval()
    assert model.num_tokens(resolution) == tokens and model.out_channels == channels
    with torch.no_grad():
        out = model(torch.empty(1, 3, resolution, resolution, device="meta"))
    assert out.is_meta and tuple(out.shape) == (1, tokens, channels)


@pytest.mark.parametrize("name", ENCODERS)
def test_describe_is_json_and_rebuilds_the_model(name):
    model = _tiny(name)
    d = model.describe()
    assert json.loads(json.dumps(d)) == d, f"{name}: describe() does not survive a JSON round trip"
    assert d["name"] == name
    assert d["out_channels"] == model.out_channels and d["downsample"] == model.downsample
    rebuilt = build_encoder(name, **d["knobs"])
    assert rebuilt.describe() == d
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes


@pytest.mark.parametrize("name", ENCODERS)
def test_reparameterize_returns_self_is_idempotent_and_keeps_outputs(name):
    model = _tiny(name).double().eval()
    _randomise(model)
    x = torch.randn(2, 3, 100, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    described = model.describe()
    with torch.no_grad():
        before = model(x)
        assert model.reparameterize() is model
        after = model(x)
        once = {k: v.clone() for k, v in model.state_dict().items()}
        assert model.reparameterize() is model
        twice = model.state_dict()
        again = model(x)
    scale = before.abs().max().item()
    assert scale > 1e-3, f"{name}: outputs too small for the comparison to mean anything"
    torch.testing.assert_close(after, before, rtol=REPARAM_RTOL, atol=REPARAM_RTOL * scale)
    assert once.keys() == twice.keys() and all(torch.equal(once[k], twice[k]) for k in once)
    assert torch.equal(again, after)
    # the architecture it describes is unchanged (a parameter count may drop: folded BatchNorms)
    assert {k: v for k, v in model.describe().items() if k != "params"} == \
        {k: v for k, v in described.items() if k != "params"}


@pytest.mark.parametrize("name", ENCODERS)
def test_batch_items_are_independent(name):
    model = _tiny(name).double().eval()
    _randomise(model)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        both = model(x)
        one = torch.cat([model(x[:1]), model(x[1:])])
    torch.testing.assert_close(both, one, rtol=1e-12, atol=1e-12 * both.abs().max().item())
