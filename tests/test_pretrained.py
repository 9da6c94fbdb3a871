"""Official checkpoint layouts (ml-fastvlm's vision tower, MobileCLIP's image encoder) load strictly.

Published facts used as oracles, read from the official code (apple/ml-fastvlm
``llava/model/multimodal_encoder/mobileclip/mci.py`` and ``mobileclip_encoder.py``,
apple/ml-mobileclip ``mobileclip/models/mci.py``): the module tree ``patch_embed`` (stem),
``network`` (stages, patch embeddings and RepCPEs interleaved: for FastViTHD indices 0, 2, 4, 7,
10 are the stages and 6, 9 the RepCPEs), ``conv_exp``, ``head.proj`` (GlobalPool2D, 3072 x 768
for FastVLM's ``projection_dim`` 768); branch names ``rbr_conv``/``rbr_scale``/``rbr_skip``/
``reparam_conv`` (MobileOne), ``lkb_origin``/``small_conv``/``lkb_reparam`` (large kernel),
``convffn.conv.conv``/``convffn.conv.bn``; timm ``SqueezeExcite`` (``fc1``/``fc2``) in MCi2's
patch embeddings into stages 3 and 4; the FastVLM wrapper prefix ``model.vision_tower.vision_tower.model.``
(LlavaMetaModel.vision_tower -> MobileCLIPVisionTower.vision_tower (MCi) -> .model).
The 1,529-tensor count of training-form FastViTHD is from ../shared/reference/tooling.md.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from explorer.models import build_encoder
from explorer.train.pretrained import (PretrainedLoadError, fold_like_fastvlm, load_pretrained, official_names,
                                       read_state_dict, save_official, to_official_state_dict)

# Five stages like FastViTHD (so ``network`` indices are the official ones), tiny widths.
TINY_HD = {"depths": [2, 1, 1, 1, 2], "widths": [8, 16, 16, 32, 32], "head_dim": 16}
TINY_MCI2 = {"depths": [1, 1, 1, 2], "widths": [8, 16, 32, 32], "head_dim": 16}
FASTVLM_PREFIX = "model.vision_tower.vision_tower.model."


pytestmark = pytest.mark.usefixtures("one_thread")  # bit-exact comparisons on shared CI cores


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and layer scales so that a wrong copy changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                noise = torch.rand(t.shape, generator=gen)
                t.copy_(0.5 + noise if name.endswith("running_var") else t + 0.1 * (noise - 0.5))


def test_full_fastvithd_names_are_the_official_ones() -> None:
    with torch.device("meta"):
        with_head = build_encoder("fastvithd", clip_head=True)
    head_names = official_names(with_head)
    names = {k: v for k, v in head_names.items() if not k.startswith("clip_head")}
    assert len(names) == 1529 and len(set(names.values())) == 1529
    theirs = set(names.values())
    for key in ("patch_embed.0.rbr_conv.0.conv.weight", "patch_embed.2.rbr_skip.running_var",
                "network.0.1.token_mixer.mixer.rbr_scale.bn.weight", "network.0.0.token_mixer.norm.rbr_skip.weight",
                "network.1.proj.0.lkb_origin.conv.weight", "network.1.proj.0.small_conv.bn.running_mean",
                "network.1.proj.1.rbr_conv.0.bn.num_batches_tracked", "network.6.pe.weight", "network.9.pe.bias",
                "network.7.3.token_mixer.qkv.weight", "network.10.1.layer_scale_2", "network.4.23.convffn.fc2.bias",
                "conv_exp.rbr_conv.0.conv.weight", "conv_exp.se.expand.weight"):
        assert key in theirs, key
    shapes = {head_names[k]: tuple(v.shape) for k, v in with_head.state_dict().items()}
    assert shapes["head.proj"] == (3072, 768)
    assert shapes["conv_exp.rbr_conv.0.conv.weight"] == (3072, 1, 3, 3)
    assert shapes["network.7.0.token_mixer.qkv.weight"] == (3 * 768, 768)
    assert shapes["network.8.proj.0.lkb_origin.conv.weight"] == (1536, 1, 7, 7)
    assert shapes["patch_embed.0.rbr_conv.0.conv.weight"] == (96, 3, 3, 3)


def test_inference_form_names_are_the_official_ones() -> None:
    folded = fold_like_fastvlm(build_encoder("fastvithd", **TINY_HD, clip_head=True))
    names = set(official_names(folded).values())
    for key in ("patch_embed.0.reparam_conv.weight", "patch_embed.2.reparam_conv.bias",
                "network.0.0.token_mixer.reparam_conv.weight", "network.0.0.convffn.conv.conv.weight",
                "network.0.0.convffn.conv.bn.running_mean", "network.1.proj.0.lkb_reparam.weight",
                "network.1.proj.1.reparam_conv.weight", "network.6.reparam_conv.weight",
                "network.9.reparam_conv.bias", "network.10.1.layer_scale_1", "network.7.0.norm.weight",
                "conv_exp.reparam_conv.weight", "conv_exp.se.reduce.weight", "head.proj"):
        assert key in names, key
    assert not any("rbr_" in k or "lkb_origin" in k or k.endswith(".pe.weight") for k in names)


def test_mci2_names_are_the_official_ones() -> None:
    with torch.device("meta"):
        mci2 = build_encoder("fastvit_mci2", clip_head=True)
    names = official_names(mci2)
    shapes = {names[k]: tuple(v.shape) for k, v in mci2.state_dict().items()}
    # MCi2 network: 0 stage1, 1 down, 2 stage2, 3 down (SE), 4 stage3, 5 down (SE), 6 RepCPE, 7 stage4
    assert shapes["network.3.proj.0.se.fc1.weight"] == (80, 320, 1, 1)
    assert shapes["network.5.proj.0.se.fc2.weight"] == (640, 160, 1, 1)
    assert "network.1.proj.0.se.fc1.weight" not in shapes
    assert shapes["network.6.pe.weight"] == (640, 1, 7, 7)
    assert shapes["network.7.0.norm.running_mean"] == (640,)  # BatchNorm attention norm in MCi2
    assert shapes["patch_embed.0.rbr_scale.conv.weight"] == (80, 3, 1, 1)  # MCi2 stem keeps its scale branch
    assert shapes["head.proj"] == (1280, 512)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_inference_layout_checkpoint_loads_strictly(tmp_path: Path, suffix: str) -> None:
    source = build_encoder("fastvithd", **TINY_HD, clip_head=True)
    _randomise(source, 1)
    source.eval()
    fold_like_fastvlm(source)
    path = save_official(source, tmp_path / f"fastvlm{suffix}", prefix=FASTVLM_PREFIX)
    assert any(k == FASTVLM_PREFIX + "network.6.reparam_conv.weight" for k in read_state_dict(path))

    target = build_encoder("fastvithd", **TINY_HD, clip_head=True)  # training form: folded by the loader
    report = load_pretrained(target, path)
    assert report.layout == "inference" and report.prefix == FASTVLM_PREFIX
    assert report.loaded == len(source.state_dict()) == len(read_state_dict(path))
    assert not (report.missing or report.unexpected or report.mismatched or report.skipped)
    target.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(images), source(images))
        assert torch.equal(target.forward_clip(images), source.forward_clip(images))


def test_training_layout_mci2_loads_and_head_is_skipped(tmp_path: Path) -> None:
    source = build_encoder("fastvit_mci2", **TINY_MCI2, clip_head=True)
    _randomise(source, 2)
    path = save_official(source, tmp_path / "mobileclip.pt", prefix="image_encoder.model.")
    target = build_encoder("fastvit_mci2", **TINY_MCI2)  # no CLIP head: the VLM does not use it
    report = load_pretrained(target, path)
    assert report.layout == "training" and report.prefix == "image_encoder.model."
    assert report.skipped == ("image_encoder.model.head.proj",)
    assert report.loaded == len(target.state_dict())
    source.eval()
    target.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(images), source(images))
    with pytest.raises(PretrainedLoadError, match="load_clip_head"):
        load_pretrained(build_encoder("fastvit_mci2", **TINY_MCI2), path, load_clip_head=True)


def test_renamed_missing_and_misshapen_keys_are_named(tmp_path: Path) -> None:
    source = fold_like_fastvlm(build_encoder("fastvithd", **TINY_HD))
    state = to_official_state_dict(source)
    state["network.7.0.token_mixer.qkv_renamed.weight"] = state.pop("network.7.0.token_mixer.qkv.weight")
    del state["conv_exp.se.reduce.bias"]
    state["network.6.reparam_conv.weight"] = torch.zeros(32, 1, 5, 5)
    target = build_encoder("fastvithd", **TINY_HD)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(PretrainedLoadError) as err:
        load_pretrained(target, state)
    message = str(err.value)
    assert "2 missing: conv_exp.se.reduce.bias (ours conv_exp.se.reduce.bias), " \
        "network.7.0.token_mixer.qkv.weight (ours stages.3.0.token_mixer.qkv.weight)" in message
    assert "1 unexpected: network.7.0.token_mixer.qkv_renamed.weight" in message
    assert "network.6.reparam_conv.weight (ours cpes.3.reparam.weight): ours [32, 1, 7, 7] vs file [32, 1, 5, 5]" \
        in message
    # strict: nothing was copied
    after = target.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if k in before)
    report = load_pretrained(build_encoder("fastvithd", **TINY_HD), state, strict=False)
    assert len(report.missing) == 2 and len(report.unexpected) == 1 and len(report.mismatched) == 1


def test_training_checkpoint_into_folded_encoder_is_refused() -> None:
    state = to_official_state_dict(build_encoder("fastvithd", **TINY_HD))
    folded = fold_like_fastvlm(build_encoder("fastvithd", **TINY_HD))
    with pytest.raises(PretrainedLoadError, match="training form"):
        load_pretrained(folded, state)


def test_trainer_takes_an_official_checkpoint(tmp_path: Path) -> None:
    from explorer.train.build import build_vlm
    from explorer.train.config import TrainConfig

    source = fold_like_fastvlm(build_encoder("fastvithd", **TINY_HD))
    _randomise(source, 3)
    path = save_official(source, tmp_path / "model.safetensors", prefix=FASTVLM_PREFIX)
    config = TrainConfig(output_dir=str(tmp_path / "run"), resolution=64, encoder_knobs=dict(TINY_HD),
                         encoder_weights=str(path), lm_hidden=32, lm_layers=1, lm_heads=2)
    model = build_vlm(config)
    ours = model.encoder.state_dict()
    assert set(ours) == set(source.state_dict())
    assert all(torch.equal(ours[k], v) for k, v in source.state_dict().items())
