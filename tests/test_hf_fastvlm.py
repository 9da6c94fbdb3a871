"""Trained VLMs out in the Hugging Face FastVLM layout.

The oracle is the real reader: timm's ``fastvit_mci3`` and transformers'
``FastVlmForConditionalGeneration`` / ``LlavaProcessor`` loading the written directory, with
outputs compared to ours. timm needs torchvision, which does not load beside the CPU torch wheel
of the main environment; ``.ci/run`` runs this file a second time in an environment that has them
(torch 2.14.1 + torchvision 0.29.1 + timm) with ``EXPLORER_TEST_TIMM=1``, where a missing timm
fails instead of skipping. The layout tests without timm run everywhere.

The same step checks transformers' own FastVLM-0.5B (built on meta from published facts) equal in
cost to ours (tower parameters tensor for tensor, visual tokens, encoder FLOPs against torch's
FlopCounterMode, the projector's shapes) and the ``hf_vlm`` catalog entry ``fastvlm-0.5b``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from explorer.models import build_encoder
from explorer.train.hf_fastvlm import (HFExportError, IMAGE_TOKEN, save_fastvlm, timm_model_args, timm_names,
                                       timm_state_dict)
from explorer.train.vlm import VLM, CharCodec, DecoderConfig, HFCausalLM, TinyDecoder
from explorer.train.data import CharTokenizer
from tiny_lm import tiny_hf_lm

KNOBS = {"depths": [1, 1, 2, 1, 1], "widths": [16, 32, 64, 64, 128]}
SIZE = 128  # two visual tokens a side at the 64x stride


def _timm():
    if os.environ.get("EXPLORER_TEST_TIMM") == "1":
        import timm  # required here: an ImportError fails the run

        return timm
    return pytest.importorskip("timm", reason="timm (and a torchvision that loads) not installed")


def _vlm(tmp_path: Path, randomize, arch: str = "qwen2", tie: bool = True, spare_rows: int = 0) -> VLM:
    lm, codec = HFCausalLM.from_dir(tiny_hf_lm(tmp_path / f"lm-{arch}", arch=arch, tie=tie, spare_rows=spare_rows))
    torch.manual_seed(1)
    encoder = build_encoder("fastvithd", **KNOBS)
    randomize(encoder)  # BN statistics and layer scales far from init: folding and renaming must be right
    return VLM(encoder, lm, codec).eval()


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def _our_logits(vlm: VLM, pixels: torch.Tensor, prompt: list[int]) -> torch.Tensor:
    """Our VLM's logits over [visual tokens][prompt] for one image, assembled as training does."""
    batch = vlm._assemble(vlm.visual_tokens(pixels), [prompt], None)
    return vlm.lm(batch.embeds, batch.mask, batch.positions)[0]


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


# ------------------------------------------------------------------------------ layout (no timm)


def test_key_names_by_hand() -> None:
    encoder = build_encoder("fastvithd", **KNOBS)
    from explorer.train.pretrained import fold_like_fastvlm

    names = timm_names(fold_like_fastvlm(encoder))
    assert len(names) == len(encoder.state_dict()) == len(set(names.values()))
    # one of each kind, written out from timm's FastVit module tree
    assert names["stem.0.reparam.weight"] == "stem.0.reparam_conv.weight"
    assert names["downs.0.down.reparam.weight"] == "stages.1.downsample.proj.0.reparam_conv.weight"
    assert names["downs.3.pw.reparam.bias"] == "stages.4.downsample.proj.1.reparam_conv.bias"
    assert names["cpes.3.reparam.weight"] == "stages.3.pos_emb.reparam_conv.weight"
    assert names["stages.0.0.token_mixer.reparam.weight"] == "stages.0.blocks.0.token_mixer.reparam_conv.weight"
    assert names["stages.2.1.ffn.dw.bn.running_var"] == "stages.2.blocks.1.mlp.conv.bn.running_var"
    assert names["stages.2.1.ffn.fc2.weight"] == "stages.2.blocks.1.mlp.fc2.weight"
    assert names["stages.2.1.layer_scale"] == "stages.2.blocks.1.layer_scale.gamma"
    assert names["stages.4.0.layer_scale_2"] == "stages.4.blocks.0.layer_scale_2.gamma"
    assert names["stages.4.0.token_mixer.qkv.weight"] == "stages.4.blocks.0.token_mixer.qkv.weight"
    assert names["conv_exp.se.reduce.weight"] == "final_conv.se.fc1.weight"
    assert timm_model_args(encoder) == {"inference_mode": True, "layers": [1, 1, 2, 1, 1],
                                        "embed_dims": [16, 32, 64, 64, 128]}


def test_unfolded_and_unsupported_encoders_are_refused_by_name() -> None:
    with pytest.raises(HFExportError, match="unfolded RepMixer"):
        timm_names(build_encoder("fastvithd", **KNOBS))  # training form
    with pytest.raises(HFExportError, match=r"mlp_ratio=3\.0"):
        timm_model_args(build_encoder("fastvithd", mlp_ratio=3.0, **KNOBS))
    with pytest.raises(HFExportError, match="FastViTHD encoders, not"):
        with torch.device("meta"):
            convnext = build_encoder("convnext_l")
        timm_model_args(convnext)
    # folding happens on a copy: the caller's model keeps its training form
    encoder = build_encoder("fastvithd", **KNOBS)
    timm_state_dict(encoder)
    with pytest.raises(HFExportError, match="unfolded"):
        timm_names(encoder)


def test_scratch_lm_and_bad_size_are_refused(tmp_path: Path, randomize) -> None:
    tokenizer = CharTokenizer(chars="abc")
    scratch = VLM(build_encoder("fastvithd", **KNOBS),
                  TinyDecoder(DecoderConfig(vocab_size=tokenizer.vocab_size, hidden=16, layers=1, heads=2)),
                  CharCodec(tokenizer))
    with pytest.raises(HFExportError, match="lm='scratch'"):
        save_fastvlm(scratch, tmp_path / "x", SIZE)
    with pytest.raises(HFExportError, match=r"image_size=100.*stride 64"):
        save_fastvlm(_vlm(tmp_path, randomize), tmp_path / "y", 100)


def test_written_directory(tmp_path: Path, randomize) -> None:
    vlm = _vlm(tmp_path, randomize)
    out = save_fastvlm(vlm, tmp_path / "hf", SIZE)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "fast_vlm" and config["architectures"] == ["FastVlmForConditionalGeneration"]
    assert config["vision_config"]["architecture"] == "fastvit_mci3"
    assert config["vision_config"]["model_args"]["layers"] == KNOBS["depths"]
    assert config["vision_config"]["hidden_size"] == 256 == vlm.encoder.out_channels
    assert config["image_seq_length"] == (SIZE // 64) ** 2 == out.visual_tokens == 4
    # the embedding had no free row: <image> (the next id after the tokenizer's) got one, appended
    rows = vlm.lm.model.get_input_embeddings().weight.shape[0]
    assert out.image_token_id == len(vlm.codec.tokenizer) >= rows
    assert out.added_rows == out.image_token_id + 1 - rows
    assert config["text_config"]["vocab_size"] == out.vocab_size == out.image_token_id + 1
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    lm_keys = set(vlm.lm.model.state_dict()) - {"lm_head.weight"}  # tied: written once
    assert len(tensors) == len(timm_state_dict(vlm.encoder)) + 4 + len(lm_keys) == out.tensors
    embed = tensors["model.language_model.embed_tokens.weight"]
    assert torch.equal(embed[:rows], vlm.lm.model.get_input_embeddings().weight)
    assert torch.equal(tensors["model.multi_modal_projector.linear_2.bias"], vlm.projector.fc2.bias)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == [out.image_token_id]


def test_a_padded_vocabulary_takes_image_from_a_free_row(tmp_path: Path, randomize) -> None:
    vlm = _vlm(tmp_path, randomize, spare_rows=8)
    out = save_fastvlm(vlm, tmp_path / "hf", SIZE)
    rows = vlm.lm.model.get_input_embeddings().weight.shape[0]
    assert out.image_token_id == len(vlm.codec.tokenizer) < rows
    assert out.added_rows == 0 and out.vocab_size == rows


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_the_processor_prepares_images_as_training_did(tmp_path: Path, randomize, mode: str) -> None:
    from transformers import AutoProcessor

    from explorer.train.llava_data import preprocess

    save_fastvlm(_vlm(tmp_path, randomize), tmp_path / "hf", SIZE, image_mode=mode)
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (90, 200, 3), dtype=np.uint8)).filter(ImageFilter.SMOOTH)
    theirs = processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = preprocess(image, SIZE, mode)
    assert theirs.shape == ours.shape == (3, SIZE, SIZE)
    diff = (theirs - ours).abs()
    # the PIL backend is ours exactly; torchvision's bicubic is off by at most one level of 255
    assert float(diff.mean()) < 0.5 / 255 and float(diff.max()) < 1.5 / 255
    if mode == "pad":  # the black bands LLaVA's pad adds, top and bottom of a wide image
        assert float(theirs[:, :10].abs().max()) == 0.0 == float(ours[:, :10].abs().max())


# ------------------------------------------------------------------------------ the real readers


def test_timm_loads_the_tower_strictly_and_computes_our_features(tmp_path: Path, randomize) -> None:
    timm = _timm()
    encoder = build_encoder("fastvithd", **KNOBS)
    randomize(encoder)
    encoder.eval()
    model = timm.create_model("fastvit_mci3", pretrained=False, num_classes=0, **timm_model_args(encoder)).eval()
    model.load_state_dict(timm_state_dict(encoder), strict=True)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = model.forward_features(x).flatten(2).transpose(1, 2)
        ours = encoder(x)
    assert theirs.shape == ours.shape == (2, 4, 256)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch,tie", [("qwen2", True), ("llama", False)])
def test_transformers_loads_the_vlm_and_gives_our_logits(tmp_path: Path, randomize, arch: str, tie: bool) -> None:
    _timm()
    from transformers import AutoProcessor, FastVlmForConditionalGeneration

    vlm = _vlm(tmp_path, randomize, arch=arch, tie=tie)
    out = save_fastvlm(vlm, tmp_path / "hf", SIZE)
    hf, info = FastVlmForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]

    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    image = _image()
    question = "what is the code in the red box?"
    inputs = processor(images=image, text=IMAGE_TOKEN + question, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids[:4] == [out.image_token_id] * 4 and ids.count(out.image_token_id) == 4
    text_ids = ids[4:]
    assert text_ids == vlm.codec.tokenizer(question, add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(inputs["pixel_values"], _pixels(image), rtol=0, atol=1e-6)  # same pixels as ours

    with torch.no_grad():
        theirs = hf(**inputs).logits[0, 4:]
        ours = _our_logits(vlm, _pixels(image), text_ids)[4:]
    assert theirs.shape[-1] == out.vocab_size  # the <image> row (when added) is one more logit
    torch.testing.assert_close(theirs[:, : ours.shape[-1]], ours, rtol=1e-4, atol=1e-4)

    generated = hf.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.image_token_id not in generated[0, len(ids):].tolist()


def test_the_default_fastvithd_is_timms_fastvit_mci3_unchanged(randomize) -> None:
    timm = _timm()
    encoder = build_encoder("fastvithd")
    randomize(encoder)
    encoder.eval()
    args = timm_model_args(encoder)
    assert (args["layers"], args["embed_dims"]) == ([2, 12, 24, 4, 2], [96, 192, 384, 768, 1536])
    model = timm.create_model("fastvit_mci3", pretrained=False, num_classes=0, inference_mode=True).eval()
    model.load_state_dict(timm_state_dict(encoder), strict=True)  # timm's own architecture, no overrides
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, ours = model.forward_features(x).flatten(2).transpose(1, 2), encoder(x)
    # the random-statistics features reach a few hundred: fp32 rounding of two kernel orders then
    # differs by ~1e-6 of that scale (AVX2 kernels: up to 9e-4 absolute near zero), while a wrong
    # key mapping differs by the features' own spread (std ~10)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5 * float(ours.abs().max()))


# ------------------------------------------------------------------------------ from a training run


def _trained(tmp_path: Path, **overrides):
    from explorer.train.config import TrainConfig
    from explorer.train.data import ProxyTaskConfig
    from explorer.train.trainer import train

    config = TrainConfig(output_dir=str(tmp_path / "run"), resolution=SIZE,
                         proxy=ProxyTaskConfig(canvas=256, val_size=6, test_size=2), encoder_knobs=dict(KNOBS),
                         lm="hf", lm_path=str(tiny_hf_lm(tmp_path / "lm")), batch_size=4, max_steps=3,
                         warmup_steps=1, log_every=1, checkpoint_every=3, eval_batch_size=8, max_new_tokens=5,
                         progress=False, export_hf=True, **overrides)
    return config, train(config)


def test_export_hf_needs_a_transformers_lm() -> None:
    from explorer.train.config import TrainConfig

    with pytest.raises(ValueError, match=r"export_hf=True with lm='scratch'"):
        TrainConfig(export_hf=True)
    with pytest.raises(ValueError, match="invalid export_hf"):
        TrainConfig(export_hf="yes")  # type: ignore[arg-type]


def test_a_trained_run_exports_and_transformers_answers_as_we_do(tmp_path: Path) -> None:
    # a frozen encoder skips the BatchNorm recalibration before the final evaluation, so the
    # last checkpoint is the model that was evaluated and exported: "ours" can be rebuilt from it
    config, result = _trained(tmp_path, freeze_encoder=True)
    assert result.hf_export == str(tmp_path / "run" / "hf_fastvlm")
    assert (tmp_path / "run" / "hf_fastvlm" / "model.safetensors").is_file()
    _timm()
    from transformers import FastVlmForConditionalGeneration

    from explorer.train.build import build_vlm
    from explorer.train.checkpoints import load_checkpoint
    from explorer.train.loading import datasets

    hf = FastVlmForConditionalGeneration.from_pretrained(result.hf_export).eval()
    vlm = build_vlm(config)
    vlm.load_state_dict(load_checkpoint(Path(result.checkpoint_path))["model"])
    vlm.eval()
    exported = json.loads(Path(result.hf_export, "explorer_export.json").read_text())
    tokens, image_id = exported["visual_tokens"], exported["image_token_id"]
    _, val, _ = datasets(config)
    ours = [json.loads(x) for x in Path(result.output_dir, "predictions_val.jsonl").read_text().splitlines()]
    last_logits = []
    for index in range(len(ours)):
        sample = val[index]
        prompt = vlm.encode_turns(sample.turns, final_answer=False)[0]
        ids = torch.tensor([[image_id] * tokens + prompt])
        with torch.no_grad():
            theirs = hf(input_ids=ids, pixel_values=sample.image[None]).logits[0]
            mine = _our_logits(vlm, sample.image[None], prompt)
            out = hf.generate(input_ids=ids, pixel_values=sample.image[None], attention_mask=torch.ones_like(ids),
                              max_new_tokens=config.max_new_tokens, do_sample=False)
        torch.testing.assert_close(theirs[tokens:, : mine.shape[-1]], mine[tokens:], rtol=1e-4, atol=1e-4)
        last_logits.append(mine[-1])
        assert vlm.codec.decode(out[0, ids.shape[1]:].tolist()) == ours[index]["prediction"]
    spread = torch.stack(last_logits).std(0).max()
    assert spread > 1e-3, "the answer logits do not depend on the image: the comparison would be vacuous"


# ------------------------------------------------------------------------------ transformers' own FastVLM-0.5B


def _fastvlm_05b_config():
    """transformers' FastVlmConfig of FastVLM-0.5B, written from published facts (random weights).

    apple/FastVLM-0.5B's config.json (llava_qwen2): mm_vision_tower mobileclip_l_1024 (FastViTHD
    at 1024 px), mm_hidden_size 3072, mm_projector_type mlp2x_gelu; the LM Qwen2-0.5B: hidden 896,
    24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936, tied embeddings, rope_theta 1e6.
    transformers' FastVlmConfig: vision_config timm_wrapper, architecture fastvit_mci3, model_args
    {inference_mode: true}, hidden_size 3072; image_seq_length 256 = (1024 / 64)^2.
    """
    from transformers import FastVlmConfig, Qwen2Config, TimmWrapperConfig

    vision = TimmWrapperConfig(architecture="fastvit_mci3", hidden_size=3072, do_pooling=False,
                               model_args={"inference_mode": True}, num_labels=0)
    text = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6,
                       max_position_embeddings=32768, rms_norm_eps=1e-6)
    return FastVlmConfig(vision_config=vision, text_config=text, image_token_index=151646, image_seq_length=256,
                         projector_hidden_act="gelu", multimodal_projector_bias=True)


def test_transformers_fastvlm_05b_equals_ours_in_cost() -> None:
    """transformers' own FastVLM-0.5B (FastVlmForConditionalGeneration over timm's fastvit_mci3), built
    on meta, against our ``fastvithd`` + ``mlp2x_gelu`` + ``qwen2-0.5b``: the vision tower alone (no
    pooling head, no projector) has our folded encoder's parameters, tensor for tensor; 256 visual
    tokens at 1024 px; encoder FLOPs within 1%; the projector's shapes; the LM's parameters."""
    _timm()
    import copy

    from torch.utils.flop_counter import FlopCounterMode
    from transformers import FastVlmForConditionalGeneration

    from explorer.measure.flops import count_flops_torch
    from explorer.models.llm import get_llm_spec
    from explorer.models.projector import MLP2xGelu
    from explorer.models.registry import build_encoder_meta
    from explorer.train.pretrained import fold_like_fastvlm

    with torch.device("meta"):
        hf = FastVlmForConditionalGeneration(_fastvlm_05b_config()).eval()
    tower = hf.model.vision_tower
    ours = build_encoder_meta("fastvithd").eval()

    # parameters: the tower as transformers loads it (folded as every released FastViTHD is, the
    # ConvFFN's conv + BN kept) is ours folded the same way, every tensor under its timm name
    folded = fold_like_fastvlm(copy.deepcopy(ours))
    names = timm_names(folded)
    theirs_shapes = {k: tuple(v.shape) for k, v in tower.timm_model.state_dict().items()}
    assert {names[k]: tuple(v.shape) for k, v in folded.state_dict().items()} == theirs_shapes
    tower_params = sum(p.numel() for p in tower.parameters())
    assert tower_params == sum(p.numel() for p in folded.parameters())
    assert math.isclose(tower_params / 1e6, 122.714, abs_tol=1e-3)
    assert ours.num_params() > tower_params  # our training form adds the unfolded branches

    # visual tokens at 1024 px: transformers' image features are 256 tokens, as ours
    x = torch.empty(1, 3, 1024, 1024, device="meta")
    with torch.no_grad():
        features = hf.model.get_image_features(pixel_values=x)
        our_tokens = ours(x)
    assert tuple(features.last_hidden_state.shape) == (1, 3072, 16, 16)
    assert tuple(features.pooler_output.shape) == (1, 256, 896)
    assert ours.num_tokens(1024) == 256 and tuple(our_tokens.shape) == (1, 256, 3072)

    # FLOPs at 1024 px: our count of our encoder as the sweep measures it (reparameterized) against
    # torch's FlopCounterMode on transformers' tower, both on meta
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        tower(pixel_values=x)
    theirs_gflops = counter.get_total_flops() / 1e9
    # on meta, SDPA runs its math path: the attention of stages 4 and 5 is counted by torch's own bmm formula
    assert counter.get_flop_counts()["Global"][torch.ops.aten.bmm] / 1e9 > 10
    ours_gflops = count_flops_torch(copy.deepcopy(ours).reparameterize(), x).gflops
    assert theirs_gflops > 400
    assert ours_gflops == pytest.approx(theirs_gflops, rel=0.01)

    # the projector: FastVLM's linear_1 -> GELU -> linear_2 is our mlp2x_gelu 3072 -> 896 -> 896
    proj = hf.model.multi_modal_projector
    with torch.device("meta"):
        mine = MLP2xGelu(3072, 896)
    assert [tuple(t.shape) for t in (proj.linear_1.weight, proj.linear_1.bias, proj.linear_2.weight,
                                     proj.linear_2.bias)] == \
        [tuple(t.shape) for t in (mine.fc1.weight, mine.fc1.bias, mine.fc2.weight, mine.fc2.bias)]

    # the LM is our catalog's qwen2-0.5b (embeddings tied: counted once)
    assert sum(p.numel() for p in hf.model.language_model.parameters()) == get_llm_spec("qwen2-0.5b").num_params()


def test_fvcore_count_of_ours_equals_flop_counter_on_transformers_tower() -> None:
    """The counter the sweep stores by default (fvcore, real tensors: a small knob variant) against
    torch's FlopCounterMode on transformers' TimmWrapperModel built with the same model_args."""
    _timm()
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import TimmWrapperConfig, TimmWrapperModel

    from explorer.measure.flops import count_flops

    torch.manual_seed(0)
    ours = build_encoder("fastvithd", **KNOBS).eval()
    tower = TimmWrapperModel(TimmWrapperConfig(architecture="fastvit_mci3", hidden_size=ours.out_channels,
                                               do_pooling=False, model_args=timm_model_args(ours),
                                               num_labels=0)).eval()
    # timm's attention written out (q @ k^T, softmax, @ v): counted by torch's own bmm formula, where
    # FlopCounterMode has none for the CPU SDPA kernel
    explicit = [m for m in tower.modules() if hasattr(m, "fused_attn")]
    assert explicit
    for m in explicit:
        m.fused_attn = False
    x = torch.rand(1, 3, 256, 256)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        tower(pixel_values=x)
    ours.reparameterize()
    assert count_flops(ours, x).gflops == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-6)


def test_the_fastvlm_catalog_entry_runs_transformers_tower() -> None:
    """``hf_vlm model=fastvlm-0.5b``: a design point naming transformers' FastVLM; its tower is
    transformers' TimmWrapperModel, equal in cost to ``fastvithd``."""
    _timm()
    from explorer.data.space import encoder_shape, enumerate_points, load_space
    from explorer.measure.flops import count_flops_torch
    from explorer.models.registry import build_encoder_meta

    enc = build_encoder_meta("hf_vlm", model="fastvlm-0.5b")
    assert type(enc.tower).__name__ == "TimmWrapperModel" and enc.describe()["llm"] == "qwen2-0.5b"
    ours = build_encoder_meta("fastvithd").reparameterize()
    x = torch.empty(1, 3, 1024, 1024, device="meta")
    assert enc.num_tokens(1024) == 256 and tuple(enc(x).shape) == (1, 256, 3072)
    assert count_flops_torch(enc, x).gflops == pytest.approx(count_flops_torch(ours, x).gflops, rel=0.01)
    # one view resized to 1024 whatever the source size (the processor's crop / pad); tiling=none keeps it
    assert enc.num_tokens(768) == 256
    assert build_encoder_meta("hf_vlm", model="fastvlm-0.5b", tiling="none").num_tokens(768) == 144
    space = load_space({"encoders": {"hf_vlm": {"knobs": {"model": ["fastvlm-0.5b"]}, "resolutions": [1024]}},
                        "llms": ["qwen2-0.5b"], "text_tokens": [32]})
    (point,) = enumerate_points(space)
    shape = encoder_shape(point.encoder, point.knob_dict(), point.resolution)
    assert (shape.visual_tokens, shape.out_channels) == (256, 3072)


def test_the_fastvlm_catalog_entry_without_timm_is_refused_by_name() -> None:
    try:
        import timm  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("timm imports here: the refusal is for environments without it")
    from explorer.models.registry import build_encoder_meta

    with pytest.raises(ValueError, match=r"invalid model='fastvlm-0\.5b': its tower is timm's fastvit_mci3.*timm"):
        build_encoder_meta("hf_vlm", model="fastvlm-0.5b")


def test_an_exported_fastvlm_is_an_hf_vlm_model_with_our_features(tmp_path: Path, randomize) -> None:
    """``hf_vlm model=<a save_fastvlm directory>``: transformers' tower from the written config.json,
    the view size from its image_seq_length; with the exported weights its tokens are our encoder's."""
    _timm()
    vlm = _vlm(tmp_path, randomize)
    save_fastvlm(vlm, tmp_path / "hf", SIZE)
    enc = build_encoder("hf_vlm", model=str(tmp_path / "hf")).eval()
    assert enc.spec.kind == "fast_vlm" and enc.spec.tile == SIZE and enc.out_channels == 256
    assert enc.num_tokens(SIZE) == 4 and enc.num_tokens(3 * SIZE) == 4  # one view resized to SIZE
    enc.tower.timm_model.load_state_dict(timm_state_dict(vlm.encoder), strict=True)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(enc(x), vlm.encoder.eval()(x), rtol=1e-4, atol=1e-5)
