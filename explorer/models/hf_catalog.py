"""Deployed VLMs' vision configurations: the catalog and users' config.json files.

:data:`CATALOG` holds, per released model, the subset of its ``config.json`` that decides the cost
of its vision side, plus the processor facts (``"processor"``) from its preprocessor / processor
config, each number with its source in a comment. :func:`load_spec` reads a catalog name or a
user's ``config.json`` (a whole VLM config with ``vision_config``, or a vision-tower config) into
an :class:`HFVisionSpec`. Built into towers by :mod:`explorer.models.hf_towers`, wrapped as an
encoder by :mod:`explorer.models.hf_vision`.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .base import check_knob

__all__ = ["KINDS", "VISION_ONLY", "CATALOG", "HFVisionSpec", "load_spec"]

KINDS = ("llava_onevision", "qwen2_vl", "internvl", "smolvlm", "idefics3", "fast_vlm")
VISION_ONLY = {"siglip_vision_model": "siglip", "internvl_vision": "internvl", "smolvlm_vision": "smolvlm",
               "idefics3_vision": "idefics3", "qwen2_vl_vision": "qwen2_vl"}

# The catalog: each entry is the subset of the released model's config.json that decides cost,
# plus the processor facts ("processor") from its preprocessor/processor config. Every number
# carries its source.
CATALOG: dict[str, dict[str, Any]] = {
    # llava-hf/llava-onevision-qwen2-0.5b-ov-hf, config.json and processor_config.json (the HF
    # conversion of lmms-lab/llava-onevision-qwen2-0.5b-ov): SigLIP-SO400M/14-384 with its last
    # layer removed (num_hidden_layers 26, vision_use_head false), image_grid_pinpoints
    # [384..2304]^2 in steps of 384, vision_aspect_ratio anyres_max_9, vision_feature_layer -1,
    # select strategy "full", num_image_tokens 729; LLM Qwen2-0.5B (hidden 896).
    "llava-onevision-0.5b": {
        "model_type": "llava_onevision",
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                          "num_hidden_layers": 26, "num_attention_heads": 16, "patch_size": 14,
                          "image_size": 384, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
                          "vision_use_head": False},
        "processor": {"max_tiles": 9, "grid": 6},
        "llm": "qwen2-0.5b",
        "connector": "mlp2x_gelu 1152 -> 896 -> 896 (LLaVA-OneVision's own projector)",
    },
    # Qwen/Qwen2-VL-2B-Instruct, config.json: vision_config depth 32, embed_dim 1280, mlp_ratio 4,
    # num_heads 16, patch_size 14, spatial_merge_size 2, temporal_patch_size 2, hidden_size 1536
    # (the merger's output = the LLM width); preprocessor_config.json: min_pixels 3136,
    # max_pixels 12845056. LLM: Qwen2-1.5B's shape (hidden 1536, 28 layers).
    "qwen2-vl-2b": {
        "model_type": "qwen2_vl",
        "vision_config": {"model_type": "qwen2_vl_vision", "depth": 32, "embed_dim": 1280, "mlp_ratio": 4,
                          "num_heads": 16, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                          "hidden_size": 1536, "hidden_act": "quick_gelu"},
        "processor": {"min_pixels": 3136, "max_pixels": 12845056},
        "llm": "qwen2-1.5b",
        "connector": "PatchMerger MLP 5120 -> 5120 -> 1536 (measured as mlp2x_gelu 5120 -> 1536: fewer FLOPs)",
    },
    # OpenGVLab/InternVL3-1B-hf, config.json (the checkpoint transformers' InternVLConfig documents):
    # InternViT-300M-448px: hidden 1024, 24 layers, 16 heads, intermediate 4096, patch 14, image 448,
    # layer-norm, no qk-norm; downsample_ratio 0.5 (pixel shuffle 2: 1024 -> 256 tokens per tile).
    # Tiling as InternVL's dynamic_preprocess (max_num 12, thumbnail) = transformers'
    # GotOcr2ImageProcessor with crop_to_patches=True, max_patches 12. LLM: Qwen2.5-0.5B, the
    # shape of qwen2-0.5b up to its vocabulary (151674 against 151936; only the last position's
    # head differs).
    "internvl3-1b": {
        "model_type": "internvl",
        "vision_config": {"model_type": "internvl_vision", "hidden_size": 1024, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "intermediate_size": 4096, "patch_size": [14, 14],
                          "image_size": [448, 448], "hidden_act": "gelu", "norm_type": "layer_norm",
                          "use_qk_norm": False, "layer_norm_eps": 1e-6},
        "downsample_ratio": 0.5,
        "processor": {"max_tiles": 12, "min_tiles": 1},
        "llm": "qwen2-0.5b",
        "connector": "LayerNorm + mlp2x_gelu 4096 -> 896 -> 896 (measured without the LayerNorm)",
    },
    # HuggingFaceTB/SmolVLM-256M-Instruct, config.json: vision_config hidden 768, 12 layers,
    # 12 heads, intermediate 3072, patch 16, image 512; scale_factor 4 (pixel shuffle: 1024 -> 64
    # tokens per tile); preprocessor_config.json: size longest_edge 2048, max_image_size
    # longest_edge 512, do_image_splitting true; processor_config.json image_seq_len 64.
    # LLM: SmolLM2-135M (llm catalog "smollm2-135m").
    "smolvlm-256m": {
        "model_type": "smolvlm",
        "vision_config": {"model_type": "smolvlm_vision", "hidden_size": 768, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "intermediate_size": 3072, "patch_size": 16,
                          "image_size": 512, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
        "scale_factor": 4,
        "processor": {"longest_edge": 2048},
        "llm": "smollm2-135m",
        "connector": "bias-free linear 12288 -> 576 (measured as mlp2x_gelu 12288 -> 576 -> 576)",
    },
    # FastVLM-0.5B as transformers ships it (FastVlmForConditionalGeneration): apple/FastVLM-0.5B's
    # config.json (llava_qwen2): mm_vision_tower mobileclip_l_1024 (FastViTHD at 1024 px),
    # mm_hidden_size 3072, mm_projector_type mlp2x_gelu, LLM Qwen2-0.5B (hidden 896, 24 layers);
    # transformers' FastVlmConfig: vision_config timm_wrapper, architecture fastvit_mci3,
    # model_args {inference_mode: true}, hidden_size 3072 (the tower's features, before pooling),
    # image_seq_length 256 = (1024 / 64)^2: one 1024 px view at fastvit_mci3's 64x stride (the
    # stride, "processor": {"stride": ...}, defaults to 64). The tower is timm's: building it needs timm.
    "fastvlm-0.5b": {
        "model_type": "fast_vlm",
        "vision_config": {"model_type": "timm_wrapper", "architecture": "fastvit_mci3", "hidden_size": 3072,
                          "do_pooling": False, "model_args": {"inference_mode": True}},
        "image_seq_length": 256,
        "llm": "qwen2-0.5b",
        "connector": "mlp2x_gelu 3072 -> 896 -> 896 (FastVLM's own projector)",
    },
}


@dataclass(frozen=True)
class HFVisionSpec:
    """What a VLM config says about its vision side: tower config, tiling rule, own reduction."""

    name: str
    kind: str  # one of KINDS, or the tower family of a vision-only config
    vision: dict[str, Any] = field(hash=False)
    tile: int  # the tower's native input side (pixels)
    patch: int
    shuffle: int  # the model's own pixel-shuffle / merge factor (1: none)
    processor: dict[str, Any] = field(hash=False, default_factory=dict)
    vision_only: bool = False
    llm: Optional[str] = None
    connector: str = "mlp2x_gelu at the tokens' width"
    source: str = "catalog"


def _side(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def _spec_from_dict(cfg: dict[str, Any], name: str, source: str) -> HFVisionSpec:
    mt = cfg.get("model_type")
    if mt in VISION_ONLY:
        vision, kind, vision_only, top = dict(cfg), VISION_ONLY[mt], True, {}
    else:
        check_knob("model_type", mt, mt in KINDS, f"one of {', '.join(KINDS + tuple(VISION_ONLY))} "
                   "(a VLM config with vision_config, or a vision-tower config)")
        vision = dict(cfg.get("vision_config") or {})
        kind, vision_only, top = mt, False, cfg
    if kind == "llava_onevision":
        vision.setdefault("model_type", "siglip_vision_model")
    if kind == "fast_vlm":
        vision.setdefault("model_type", "timm_wrapper")
    if kind == "fast_vlm":  # one square view whose side gives image_seq_length tokens at the tower's stride
        patch, shuffle = int((cfg.get("processor") or {}).get("stride", 64)), 1
        tile = patch * math.isqrt(int(top.get("image_seq_length", 256)))
    elif kind == "qwen2_vl":
        patch = int(vision.get("patch_size", 14))
        tile = patch * int(vision.get("spatial_merge_size", 2))
        shuffle = int(vision.get("spatial_merge_size", 2))
    else:
        patch = _side(vision.get("patch_size", 14 if kind in ("internvl", "llava_onevision", "siglip") else 16))
        tile = _side(vision.get("image_size", 448 if kind == "internvl" else 384 if kind in ("llava_onevision", "siglip") else 512))
        if kind == "internvl":
            shuffle = round(1 / float(top.get("downsample_ratio", 0.5)))
        elif kind in ("smolvlm", "idefics3"):
            shuffle = int(top.get("scale_factor", 2 if kind == "idefics3" else 4))
        else:
            shuffle = 1
    proc = dict(cfg.get("processor") or {})
    if kind == "llava_onevision" and "image_grid_pinpoints" in top:
        proc["pinpoints"] = [tuple(int(v) for v in p) for p in top["image_grid_pinpoints"]]
    if kind == "llava_onevision" and "vision_aspect_ratio" in top:
        proc.setdefault("max_tiles", int(str(top["vision_aspect_ratio"]).replace("anyres_max_", "")))
    return HFVisionSpec(name=name, kind=kind, vision=vision, tile=tile, patch=patch, shuffle=shuffle,
                        processor=proc, vision_only=vision_only, llm=cfg.get("llm"),
                        connector=str(cfg.get("connector", "mlp2x_gelu at the tokens' width")), source=source)


def load_spec(model: Any) -> HFVisionSpec:
    """A catalog name (case-insensitive) or a ``config.json`` path (or its folder)."""
    check_knob("model", model, isinstance(model, str) and bool(model.strip()),
               f"one of {', '.join(CATALOG)} or the path of a transformers config.json")
    key = model.strip().lower()
    if key in CATALOG:
        return _spec_from_dict(copy.deepcopy(CATALOG[key]), key, "catalog")
    path = Path(model.strip()).expanduser()
    if path.is_dir():
        path = path / "config.json"
    check_knob("model", model, path.is_file(), f"one of {', '.join(CATALOG)} or the path of a transformers config.json")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"invalid model={model!r}: {path} is not a readable JSON config ({err})") from None
    check_knob("model", model, isinstance(cfg, dict), "a config.json holding a JSON object")
    return _spec_from_dict(cfg, path.parent.name or path.stem, str(path))
