"""Pretrained FastViTHD / MCi2 weights from the official checkpoint key layouts.

The official code (apple/ml-fastvlm ``llava/model/multimodal_encoder/mobileclip/mci.py`` and
apple/ml-mobileclip ``mobileclip/models/mci.py``, the same timm-style FastViT) names the same
tensors as the explorer's :class:`~explorer.models.fastvithd.FastViT`, in one of two forms:

- ``"inference"``: built with ``inference_mode=True``, as ml-fastvlm's ``fastvithd`` always is
  (so every released FastVLM vision tower): each MobileOne block, large-kernel conv, RepMixer
  and RepCPE is a single ``reparam_conv`` / ``lkb_reparam``, while the ConvFFN keeps its
  depthwise conv + BatchNorm. In a FastVLM (LLaVA-Qwen2) checkpoint the keys sit under
  ``model.vision_tower.vision_tower.model.``.
- ``"training"``: the multi-branch form (``rbr_conv.0.conv``, ``rbr_scale``, ``rbr_skip``,
  ``lkb_origin``, ``small_conv``, ``pe``), in which MobileCLIP releases its image encoders
  (e.g. MCi2, under ``image_encoder.model.``) and in which ml-fastvlm's FastViTHD trains before
  folding: 1,529 tensors for FastViTHD without the CLIP head, one to one with ours.

Both share the module tree ``patch_embed.{0,1,2}`` (stem), ``network.{k}`` (stages, patch
embeddings and positional encodings interleaved in one list), ``conv_exp`` and ``head.proj``
(the CLIP projection). :func:`official_names` maps each of our state-dict keys to its official
name, one to one; :func:`load_pretrained` reads a safetensors or torch file, strips the wrapper
prefix, and copies every tensor, strictly by default: missing, unexpected and shape-mismatched
keys are named in the error before anything is copied.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from ..models.blocks import LargeKernelConv, MobileOneBlock, RepCPE, RepMixer
from ..models.fastvithd import FastViT

LAYOUTS = ("inference", "training")
#: Wrapper prefixes tried (longest first) when a checkpoint holds more than the encoder.
KNOWN_PREFIXES = (
    "model.vision_tower.vision_tower.model.",  # FastVLM / LLaVA-Qwen2 checkpoint
    "vision_tower.vision_tower.model.",
    "image_encoder.model.",  # MobileCLIP CLIP checkpoint
    "vision_tower.model.",
    "model.",
    "",
)
CLIP_HEAD_KEYS = ("head.proj",)

_MOBILEONE = {"convs": "rbr_conv", "scale": "rbr_scale", "skip": "rbr_skip", "reparam": "reparam_conv"}
_LARGE_KERNEL = {"large": "lkb_origin", "small": "small_conv", "reparam": "lkb_reparam"}
_LK_SE = {"reduce": "fc1", "expand": "fc2"}  # timm's SqueezeExcite in the official patch embeddings


class PretrainedLoadError(ValueError):
    """A checkpoint that does not fit the encoder; the message names every offending key."""


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did."""

    layout: str
    prefix: str
    loaded: int  # tensors copied
    skipped: tuple[str, ...] = ()  # checkpoint keys deliberately left out (the CLIP head)
    missing: tuple[str, ...] = ()  # ours without a checkpoint tensor (strict=False only)
    unexpected: tuple[str, ...] = ()  # checkpoint keys without a counterpart (strict=False only)
    mismatched: tuple[str, ...] = field(default_factory=tuple)  # "name: ours [..] vs file [..]"


# --------------------------------------------------------------------------------------------
# the form of the model


def fold_like_fastvlm(encoder: FastViT) -> FastViT:
    """Fold every block the released FastViTHD has folded (all but the ConvFFN's conv + BN)."""
    for module in list(encoder.modules()):
        if isinstance(module, (MobileOneBlock, LargeKernelConv, RepMixer, RepCPE)):
            module.reparameterize()
    return encoder


def is_folded(encoder: FastViT) -> bool:
    return all(getattr(m, "reparam", None) is not None
               for m in encoder.modules() if isinstance(m, (MobileOneBlock, LargeKernelConv, RepMixer, RepCPE)))


# --------------------------------------------------------------------------------------------
# key names


def _network_indices(encoder: FastViT) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """Positions of stage i, of the patch embedding into stage i, and of stage i's RepCPE in ``network``."""
    stage, down, cpe = {}, {}, {}
    k = 0
    n = encoder.config.num_stages
    first_attention = n - encoder.config.attention_stages
    for i in range(n):
        if i >= first_attention:
            cpe[i] = k
            k += 1
        stage[i] = k
        k += 1
        if i < n - 1:
            down[i + 1] = k
            k += 1
    return stage, down, cpe


def _mobileone(parts: list[str]) -> list[str]:
    return [_MOBILEONE.get(parts[0], parts[0])] + parts[1:]


def _large_kernel(parts: list[str]) -> list[str]:
    if parts[0] == "se":
        return ["se", _LK_SE.get(parts[1], parts[1])] + parts[2:]
    return [_LARGE_KERNEL.get(parts[0], parts[0])] + parts[1:]


def _block(parts: list[str]) -> list[str]:
    head = parts[0]
    if head == "token_mixer" and parts[1] in ("norm", "mixer"):
        return ["token_mixer", parts[1]] + _mobileone(parts[2:])
    if head == "token_mixer" and parts[1] == "reparam":
        return ["token_mixer", "reparam_conv"] + parts[2:]
    if head == "ffn":
        if parts[1] == "dw":
            return ["convffn", "conv"] + parts[2:]
        if parts[1] == "dw_reparam":
            raise KeyError("a folded ConvFFN has no official counterpart (the released weights keep conv + BN)")
        return ["convffn"] + parts[1:]
    return parts


def official_names(encoder: FastViT) -> dict[str, str]:
    """Our state-dict key -> the official (ml-fastvlm / ml-mobileclip) key, for every tensor.

    The layout follows the model's form: a folded encoder (:func:`fold_like_fastvlm`) gets the
    inference names (ml-fastvlm's release), a training-form one the training names (MobileCLIP's).
    """
    if not isinstance(encoder, FastViT):
        raise TypeError(f"official layouts exist for FastViT encoders (fastvithd, fastvit_mci2), not {type(encoder)}")
    if encoder.config.multiscale_stages:
        raise PretrainedLoadError("multiscale_stages pools have no official counterpart; build without them")
    stage, down, cpe = _network_indices(encoder)
    names: dict[str, str] = {}
    for key in encoder.state_dict():
        parts = key.split(".")
        top = parts[0]
        try:
            if top == "stem":
                new = ["patch_embed", parts[1]] + _mobileone(parts[2:])
            elif top == "stages":
                new = ["network", str(stage[int(parts[1])]), parts[2]] + _block(parts[3:])
            elif top == "downs":
                k = down[int(parts[1]) + 1]
                sub = parts[2]
                inner = _large_kernel(parts[3:]) if sub == "down" else _mobileone(parts[3:])
                new = ["network", str(k), "proj", "0" if sub == "down" else "1"] + inner
            elif top == "cpes":
                new = ["network", str(cpe[int(parts[1])]), "reparam_conv" if parts[2] == "reparam" else parts[2]] \
                    + parts[3:]
            elif top == "conv_exp":
                new = ["conv_exp"] + _mobileone(parts[1:])
            elif top == "clip_head":
                new = ["head"] + parts[1:]
            else:
                raise KeyError(f"no official counterpart for {key!r}")
        except KeyError as err:
            raise PretrainedLoadError(f"{key}: {err.args[0]}") from None
        names[key] = ".".join(new)
    if len(set(names.values())) != len(names):  # pragma: no cover - guards the mapping itself
        raise AssertionError("official key mapping is not one to one")
    return names


def to_official_state_dict(encoder: FastViT) -> dict[str, torch.Tensor]:
    """Our weights under the official names (what an official checkpoint of this model holds)."""
    names = official_names(encoder)
    return {names[k]: v.detach().clone() for k, v in encoder.state_dict().items()}


# --------------------------------------------------------------------------------------------
# files


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, a sharded safetensors index, or a torch file."""
    path = Path(path)
    if not path.exists():
        raise PretrainedLoadError(f"invalid encoder_weights={str(path)!r}: no such file")
    if path.name.endswith(".safetensors.index.json"):
        from safetensors.torch import load_file

        index = json.loads(path.read_text())
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            out.update(load_file(str(path.parent / shard)))
        return out
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "encoder"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedLoadError(f"{path}: not a state dict of tensors")
    return state


def detect_prefix(keys: list[str], expected: set[str]) -> str:
    """The wrapper prefix under which the most expected names occur."""
    best, hits = "", -1
    for prefix in KNOWN_PREFIXES:
        found = sum(1 for k in keys if k.startswith(prefix) and k[len(prefix):] in expected)
        if found > hits:
            best, hits = prefix, found
    return best


def load_pretrained(
    encoder: FastViT,
    source: Union[str, Path, Mapping[str, torch.Tensor]],
    strict: bool = True,
    prefix: Optional[str] = None,
    load_clip_head: Optional[bool] = None,
) -> LoadReport:
    """Copy an official checkpoint into ``encoder`` (in place).

    The layout is detected from the keys: ``reparam_conv`` names mean the inference form, and a
    training-form encoder is folded first (:func:`fold_like_fastvlm`) so that it can take them;
    otherwise the training form is expected and the encoder must be in training form. ``prefix`` (detected when None) is the wrapper prefix to strip. The CLIP head
    (``head.proj``) is loaded when the encoder has one and skipped (and reported) when not;
    ``load_clip_head=True`` makes its absence an error. ``strict`` refuses missing, unexpected or
    shape-mismatched keys, naming them all; nothing is copied unless everything fits.
    """
    state = dict(read_state_dict(source) if isinstance(source, (str, Path)) else source)
    folded_file = any(k.endswith(("reparam_conv.weight", "lkb_reparam.weight")) for k in state)
    layout = "inference" if folded_file else "training"
    if folded_file and not is_folded(encoder):
        fold_like_fastvlm(encoder)
    elif not folded_file and is_folded(encoder):
        raise PretrainedLoadError("the checkpoint is in training form but the encoder is "
                                  "folded; build a fresh encoder")
    names = official_names(encoder)
    expected = set(names.values())
    if prefix is None:
        prefix = detect_prefix(list(state), expected)
    theirs = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    skipped: list[str] = []
    if encoder.clip_head is None:
        if load_clip_head:
            raise PretrainedLoadError("load_clip_head=True but the encoder was built without clip_head")
        for key in CLIP_HEAD_KEYS:
            if key in theirs:
                theirs.pop(key)
                skipped.append(prefix + key)
    ours = encoder.state_dict()
    missing = sorted(k_ours for k_ours, k in names.items() if k not in theirs)
    unexpected = sorted(prefix + k for k in theirs if k not in expected)
    mismatched = sorted(
        f"{prefix}{names[k]} (ours {k}): ours {list(ours[k].shape)} vs file {list(theirs[names[k]].shape)}"
        for k in names if names[k] in theirs and tuple(theirs[names[k]].shape) != tuple(ours[k].shape))
    if strict and (missing or unexpected or mismatched):
        lines = [f"checkpoint does not fit {encoder.name} (layout {layout}, prefix {prefix!r}):"]
        for title, items in (("missing", [f"{names[k]} (ours {k})" for k in missing]),
                             ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                lines.append(f"  {len(items)} {title}: " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        raise PretrainedLoadError("\n".join(lines))
    bad = {m.split(" (ours ")[1].split(")")[0] for m in mismatched}
    new_state = {k: theirs[names[k]].to(ours[k].dtype) for k in names if names[k] in theirs and k not in bad}
    result = encoder.load_state_dict(new_state, strict=False)
    assert not result.unexpected_keys
    return LoadReport(layout=layout, prefix=prefix, loaded=len(new_state), skipped=tuple(skipped),
                      missing=tuple(missing), unexpected=tuple(unexpected), mismatched=tuple(mismatched))


def save_official(encoder: FastViT, path: Union[str, Path], prefix: str = "") -> Path:
    """Write ``encoder`` in the official layout of its form (safetensors or torch by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {prefix + k: v.contiguous() for k, v in to_official_state_dict(encoder).items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
