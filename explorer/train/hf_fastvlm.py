"""Trained VLMs out in the Hugging Face FastVLM layout (transformers' ``FastVlmForConditionalGeneration``).

transformers' FastVLM is a timm vision tower (``TimmWrapperModel`` over timm's
``fastvit_mci3``, built with ``inference_mode=True``), ``FastVlmMultiModalProjector``
(``linear_1 -> GELU -> linear_2``) and any transformers language model, whose input embeddings
at the ``image_token_index`` placeholders are replaced by the projected visual tokens, in the
encoder's row-major order. That is the explorer's VLM exactly: the encoder's tokens are
``features.flatten(2).transpose(1, 2)`` and come before the text.

:func:`save_fastvlm` writes ``config.json`` (a :class:`~transformers.FastVlmConfig`),
``model.safetensors``, ``generation_config.json`` and, with the run's tokenizer, a
``LlavaProcessor`` (tokenizer with an ``<image>`` token, an image processor that resizes and
crops, or pads, as training did, with FastVLM's identity normalisation: pixels in [0, 1]), so that::

    model = FastVlmForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)

work with nothing of the explorer installed. Knob variants export too: timm's ``fastvit_mci3``
takes ``layers`` and ``embed_dims`` from the config's ``model_args``. What the timm model cannot
express (other attention stages, MLP ratio, head size, multiscale pools, a CLIP head) is refused
by name. Loading needs ``timm`` (and so torchvision) on the reader's side; writing needs neither.

Key mapping, ours -> timm (the encoder is folded first, as every released FastVLM tower is)::

    stem.{i}.reparam            -> stem.{i}.reparam_conv
    downs.{i}.down|pw.reparam   -> stages.{i+1}.downsample.proj.{0|1}.reparam_conv
    cpes.{i}.reparam            -> stages.{i}.pos_emb.reparam_conv
    stages.{i}.{j}.ffn.dw.*     -> stages.{i}.blocks.{j}.mlp.conv.*   (ffn.* -> mlp.*)
    stages.{i}.{j}.token_mixer.reparam -> ...token_mixer.reparam_conv (attention: qkv, proj as is)
    stages.{i}.{j}.layer_scale[_1|_2]  -> ...layer_scale[_1|_2].gamma
    conv_exp.reparam / se.reduce|expand -> final_conv.reparam_conv / se.fc1|fc2
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from ..checks import is_int
from ..models.fastvithd import FastViT
from .llava_data import IMAGE_MODES
from .pretrained import fold_like_fastvlm

TIMM_ARCHITECTURE = "fastvit_mci3"
IMAGE_TOKEN = "<image>"
VISION_PREFIX = "model.vision_tower.timm_model."
PROJECTOR_PREFIX = "model.multi_modal_projector."
LANGUAGE_PREFIX = "model.language_model."

#: What timm's fastvit_mci3 fixes; a FastViT with anything else has no timm counterpart.
_TIMM_FIXED = {"attention_stages": 2, "mlp_ratio": 4.0, "head_dim": 32, "attention_norm": "layernorm",
               "stem_scale_branch": False, "cpe_kernel": 7, "down_kernel": 7, "multiscale_stages": (),
               "se_down_stages": ()}
_SUB = {"reparam": "reparam_conv", "reduce": "fc1", "expand": "fc2"}


class HFExportError(ValueError):
    """A model the Hugging Face FastVLM layout cannot hold; the message says what and why."""


@dataclass(frozen=True)
class FastVlmExport:
    """What :func:`save_fastvlm` wrote."""

    path: str
    image_size: int
    image_token_id: int
    visual_tokens: int  # image_seq_length: placeholders per image
    vocab_size: int  # the LM's embedding rows after adding <image> where it had no free row
    added_rows: int  # embedding rows added for <image> (0 when the LM had a padding row free)
    tensors: int


# --------------------------------------------------------------------------------------------
# the vision tower


def timm_model_args(encoder: FastViT) -> dict[str, Any]:
    """``model_args`` that make timm's ``fastvit_mci3`` this encoder's architecture."""
    if not isinstance(encoder, FastViT):
        raise HFExportError(f"the Hugging Face FastVLM layout holds FastViTHD encoders, not {type(encoder).__name__}")
    cfg = encoder.config
    for name, fixed in _TIMM_FIXED.items():
        value = getattr(cfg, name)
        if (tuple(value) if isinstance(value, (list, tuple)) else value) != fixed:
            raise HFExportError(f"cannot export {name}={value!r}: timm's {TIMM_ARCHITECTURE} fixes it to {fixed!r}")
    if cfg.num_stages != 5:
        raise HFExportError(f"cannot export depths={list(cfg.depths)}: timm's {TIMM_ARCHITECTURE} has 5 stages")
    if cfg.out_channels != 2 * cfg.widths[-1]:
        raise HFExportError(f"cannot export out_channels={cfg.out_channels}: timm's {TIMM_ARCHITECTURE} "
                            f"expands to twice the last width ({2 * cfg.widths[-1]})")
    if cfg.clip_head_dim is not None:
        raise HFExportError("cannot export a CLIP head (clip_head_dim): the FastVLM tower ends at the final conv")
    return {"inference_mode": True, "layers": list(cfg.depths), "embed_dims": list(cfg.widths)}


def timm_names(encoder: FastViT) -> dict[str, str]:
    """Our state-dict key -> timm ``fastvit_mci3`` key, for every tensor of a folded encoder."""
    timm_model_args(encoder)  # refuses what timm cannot hold
    names: dict[str, str] = {}
    for key in encoder.state_dict():
        parts = key.split(".")
        top = parts[0]
        if top == "stem":
            new = ["stem", parts[1]] + [_SUB.get(p, p) for p in parts[2:]]
        elif top == "downs":
            new = ["stages", str(int(parts[1]) + 1), "downsample", "proj",
                   {"down": "0", "pw": "1"}[parts[2]]] + [_SUB.get(p, p) for p in parts[3:]]
        elif top == "cpes":
            new = ["stages", parts[1], "pos_emb"] + [_SUB.get(p, p) for p in parts[2:]]
        elif top == "conv_exp":
            new = ["final_conv"] + [_SUB.get(p, p) for p in parts[1:]]
        elif top == "stages":
            new = ["stages", parts[1], "blocks", parts[2]] + _block(parts[3:], key)
        else:
            raise HFExportError(f"{key}: no counterpart in timm's {TIMM_ARCHITECTURE}")
        names[key] = ".".join(new)
    if len(set(names.values())) != len(names):  # pragma: no cover - guards the mapping itself
        raise AssertionError("timm key mapping is not one to one")
    return names


def _block(parts: list[str], key: str) -> list[str]:
    head = parts[0]
    if head.startswith("layer_scale"):
        return [head, "gamma"]
    if head == "ffn":
        if parts[1] == "dw_reparam":
            raise HFExportError(f"{key}: a folded ConvFFN has no timm counterpart (timm keeps its conv + BN)")
        return ["mlp", "conv"] + parts[2:] if parts[1] == "dw" else ["mlp"] + parts[1:]
    if head == "token_mixer" and parts[1] == "reparam":
        return ["token_mixer", "reparam_conv"] + parts[2:]
    if head == "token_mixer" and parts[1] in ("norm", "mixer"):
        raise HFExportError(f"{key}: an unfolded RepMixer; fold the encoder first")
    return parts


def timm_state_dict(encoder: FastViT) -> dict[str, torch.Tensor]:
    """The encoder folded (on a copy) and renamed to timm's ``fastvit_mci3`` keys."""
    folded = fold_like_fastvlm(copy.deepcopy(encoder).cpu()).eval()
    names = timm_names(folded)
    return {names[k]: v.detach().clone().contiguous() for k, v in folded.state_dict().items()}


# --------------------------------------------------------------------------------------------
# the whole VLM


def save_fastvlm(model: Any, out_dir: Union[str, Path], image_size: int, image_mode: str = "crop") -> FastVlmExport:
    """Write ``model`` (an :class:`~explorer.train.vlm.VLM` with a FastViTHD encoder and a
    transformers language model) as a Hugging Face FastVLM directory for ``image_size`` inputs,
    its processor preparing images as training did (``image_mode``: ``crop`` | ``pad``)."""
    from safetensors.torch import save_file
    try:
        from transformers import FastVlmConfig, GenerationConfig, TimmWrapperConfig
    except ImportError as err:
        raise HFExportError("the Hugging Face FastVLM layout needs a transformers with FastVLM (5.0 or newer); "
                            f"this one has no FastVlmConfig ({err})") from None

    from .vlm import HFCausalLM

    if not isinstance(model.lm, HFCausalLM):
        raise HFExportError("cannot export lm='scratch': the Hugging Face FastVLM layout needs a transformers "
                            "language model (train with lm=hf)")
    encoder = model.encoder
    model_args = timm_model_args(encoder)
    stride = encoder.config.downsample
    if image_mode not in IMAGE_MODES:
        raise HFExportError(f"invalid image_mode={image_mode!r}: one of {list(IMAGE_MODES)}")
    if not is_int(image_size) or image_size <= 0 or image_size % stride:
        raise HFExportError(f"invalid image_size={image_size!r}: a positive multiple of the encoder's stride {stride}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    lm = model.lm.model
    tokenizer = copy.deepcopy(model.codec.tokenizer)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        # a special token of its own; the tokenizer's other special tokens stay as they are
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))

    tensors: dict[str, torch.Tensor] = {VISION_PREFIX + k: v for k, v in timm_state_dict(encoder).items()}
    for ours, theirs in (("fc1", "linear_1"), ("fc2", "linear_2")):
        layer = getattr(model.projector, ours)
        tensors[f"{PROJECTOR_PREFIX}{theirs}.weight"] = layer.weight.detach().float().cpu().clone()
        tensors[f"{PROJECTOR_PREFIX}{theirs}.bias"] = layer.bias.detach().float().cpu().clone()

    text_config = copy.deepcopy(lm.config)
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    embed_key = _weight_name(lm, lm.get_input_embeddings())
    head_key = _weight_name(lm, lm.get_output_embeddings())
    rows = lm.get_input_embeddings().weight.shape[0]
    added = max(0, image_token_id + 1 - rows)
    for key, value in lm.state_dict().items():
        if tied and key == head_key:
            continue  # transformers ties it back to the embedding on load
        value = value.detach().cpu().clone()
        if added and key in (embed_key, head_key):
            # a row for <image>: its input embedding is always replaced by a visual token; the
            # mean row keeps its logit ordinary, and generation_config suppresses it anyway
            value = torch.cat([value, value.mean(0, keepdim=True).expand(added, -1)], 0)
        if key.startswith("model."):
            tensors[LANGUAGE_PREFIX + key[len("model."):]] = value
        else:
            tensors[key] = value  # lm_head.weight sits at the top, as in any *ForCausalLM
    text_config.vocab_size = rows + added

    visual_tokens = encoder.num_tokens(image_size)
    vision_config = TimmWrapperConfig(architecture=TIMM_ARCHITECTURE, hidden_size=encoder.out_channels,
                                      do_pooling=False, model_args=model_args, num_labels=0)
    config = FastVlmConfig(vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
                           image_seq_length=visual_tokens, projector_hidden_act="gelu",
                           multimodal_projector_bias=True, tie_word_embeddings=tied)
    config.architectures = ["FastVlmForConditionalGeneration"]
    config.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    GenerationConfig(eos_token_id=model.codec.eos_id, pad_token_id=model.codec.pad_id, suppress_tokens=[image_token_id],
                     bos_token_id=getattr(tokenizer, "bos_token_id", None)).save_pretrained(out)
    _save_processor(tokenizer, out, image_size, stride, image_mode)
    (out / "explorer_export.json").write_text(json.dumps({
        "image_size": image_size, "image_mode": image_mode, "visual_tokens": visual_tokens, "image_token": IMAGE_TOKEN,
        "image_token_id": image_token_id, "pixel_range": [0.0, 1.0], "added_embedding_rows": added,
        "encoder": dict(model_args, out_channels=encoder.out_channels)}, indent=2))
    return FastVlmExport(str(out), image_size, image_token_id, visual_tokens, rows + added, added, len(tensors))


def _weight_name(model: torch.nn.Module, layer: torch.nn.Module) -> str:
    for name, module in model.named_modules(remove_duplicate=False):
        if module is layer:
            return f"{name}.weight"
    raise HFExportError("the language model's embedding is not among its modules")  # pragma: no cover


def _save_processor(tokenizer: Any, out: Path, image_size: int, stride: int, image_mode: str) -> None:
    """A LlavaProcessor: one ``<image>`` in the text becomes ``(size / stride)^2`` placeholders, and
    images are prepared as the trainer prepared them (:func:`~explorer.train.llava_data.preprocess`):
    ``crop`` resizes the shortest side (bicubic) and centre-crops, ``pad`` pads to a black square
    first (LLaVA's pad, with FastVLM's zero mean as the fill)."""
    from transformers import CLIPImageProcessor, LlavaImageProcessor, LlavaProcessor

    common = dict(do_resize=True, size={"shortest_edge": image_size}, resample=3, do_center_crop=True,
                  crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255,
                  do_normalize=False, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], do_convert_rgb=True)
    images = LlavaImageProcessor(do_pad=True, **common) if image_mode == "pad" else CLIPImageProcessor(**common)
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=stride, image_token=IMAGE_TOKEN,
                   num_additional_image_tokens=0, vision_feature_select_strategy="full").save_pretrained(out)
