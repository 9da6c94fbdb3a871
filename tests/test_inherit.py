"""Weight inheritance for knob variants: exact at full knobs, first-k channels, evenly spaced blocks."""
from __future__ import annotations

import pytest
import torch

from explorer.models import build_encoder
from explorer.train.inherit import inherit_encoder, kept_blocks

PARENT = {"depths": [2, 2, 4, 2, 2], "widths": [16, 32, 64, 64, 128], "head_dim": 16}


pytestmark = pytest.mark.usefixtures("one_thread")  # bit-exact comparisons on shared CI cores


def _parent() -> torch.nn.Module:
    torch.manual_seed(0)
    parent = build_encoder("fastvithd", **PARENT)
    with torch.no_grad():  # layer scales away from 1e-5 so that every block matters
        for name, p in parent.named_parameters():
            if "layer_scale" in name:
                p.uniform_(0.1, 0.5)
    return parent.eval()


def test_kept_blocks_are_evenly_spaced_centres() -> None:
    assert kept_blocks(4, 2) == [1, 3]  # centres of blocks {0,1} and {2,3}
    assert kept_blocks(12, 3) == [2, 6, 10]
    assert kept_blocks(24, 6) == [2, 6, 10, 14, 18, 22]
    assert kept_blocks(2, 1) == [1]
    assert kept_blocks(5, 5) == [0, 1, 2, 3, 4]


def test_full_knobs_inherit_exactly() -> None:
    parent = _parent()
    torch.manual_seed(1)
    child = build_encoder("fastvithd", **PARENT)
    report = inherit_encoder(child, parent)
    assert report.fresh == () and report.inherited == report.exact == len(parent.state_dict())
    child.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(child(images), parent(images))


@pytest.mark.parametrize("knobs", [
    {"width_mult": 0.5},
    {"depth_mult": 0.5},
    {"width_mult": 0.5, "depth_mult": 0.5},
])
def test_inherited_variants_are_finite_and_shaped(knobs: dict) -> None:
    parent = _parent()
    child_knobs = {**PARENT, **knobs}
    if "width_mult" in knobs:
        child_knobs["widths"] = [int(w * knobs["width_mult"]) for w in PARENT["widths"]]
        child_knobs.pop("width_mult")
    if "depth_mult" in knobs:
        child_knobs["depths"] = [max(1, d // 2) for d in PARENT["depths"]]
        child_knobs.pop("depth_mult")
    child = build_encoder("fastvithd", **child_knobs)
    report = inherit_encoder(child, parent)
    assert report.fresh == ()  # a smaller variant finds every tensor in its parent
    child.eval()
    with torch.no_grad():
        out = child(torch.rand(2, 3, 128, 128))
    assert out.shape == (2, 4, child.out_channels) and torch.isfinite(out).all()

    ours, theirs = child.state_dict(), parent.state_dict()
    widths = child.config.widths
    # first-k channels of the stem conv, of a depthwise kernel and of conv_exp's grouped outputs
    assert torch.equal(ours["stem.0.convs.0.conv.weight"], theirs["stem.0.convs.0.conv.weight"][:widths[0]])
    assert torch.equal(ours["conv_exp.convs.0.conv.weight"], theirs["conv_exp.convs.0.conv.weight"][:2 * widths[-1]])
    # qkv keeps whole heads: q, k and v blocks cut separately
    c, cp = widths[3], PARENT["widths"][3]
    q_child = ours["stages.3.0.token_mixer.qkv.weight"].reshape(3, c, c)
    source_block = 1 if child.config.depths[3] == 1 else 0  # 1 of 2 blocks kept: the centre of both, block 1
    q_parent = theirs[f"stages.3.{source_block}.token_mixer.qkv.weight"].reshape(3, cp, cp)
    assert torch.equal(q_child, q_parent[:, :c, :c])
    # depth: stage 3 (4 blocks in the parent) keeps blocks 1 and 3 when halved
    if child.config.depths[2] == 2:
        for j, k in enumerate([1, 3]):
            assert torch.equal(ours[f"stages.2.{j}.ffn.fc1.weight"],
                               theirs[f"stages.2.{k}.ffn.fc1.weight"][: 4 * widths[2], : widths[2]])


def test_larger_child_keeps_fresh_tensors_named() -> None:
    parent = _parent()
    child = build_encoder("fastvithd", **{**PARENT, "depths": [3, 2, 4, 2, 2]})
    report = inherit_encoder(child, parent)
    assert report.fresh and all(k.startswith("stages.0.2.") for k in report.fresh)
    with pytest.raises(ValueError, match="folded"):
        inherit_encoder(child, parent.reparameterize())
