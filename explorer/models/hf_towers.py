"""transformers' own vision towers for an :class:`~explorer.models.hf_catalog.HFVisionSpec`, random weights.

:func:`build_tower` builds ``SiglipVisionModel``'s transformer, ``Qwen2VisionTransformerPretrainedModel``
(its merger's MLP left to the sweep's projector), ``InternVLVisionModel``, ``SmolVLMVisionTransformer``,
``Idefics3VisionTransformer`` or FastVLM's ``TimmWrapperModel`` (timm's ``fastvit_mci3``; needs timm)
from the config on the current default device (``meta``: nothing
allocated); :func:`pixel_shuffle` is InternVL's / Idefics3's token shuffle.
"""
from __future__ import annotations

import torch
from torch import nn

from .hf_catalog import HFVisionSpec

__all__ = ["build_tower", "pixel_shuffle"]


def build_tower(spec: HFVisionSpec) -> nn.Module:
    """transformers' vision class for ``spec`` with random weights (on the current default device)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    vision = dict(spec.vision)
    mt = vision.pop("model_type")
    if mt == "timm_wrapper":
        return _timm_tower(spec, vision)
    if spec.kind in ("smolvlm", "idefics3") and not spec.vision_only:
        mt = f"{spec.kind}_vision"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.for_model(mt, **vision)
        config._attn_implementation = "sdpa"
        if mt == "siglip_vision_model":
            from transformers import SiglipVisionModel

            tower = SiglipVisionModel(config)
            tower = getattr(tower, "vision_model", tower)
            tower.post_layernorm = nn.Identity()  # VLMs read hidden_states[-1], before the post-LN
            tower.use_head = False  # nor the attention-pool head (a vision-only config may have one)
            if hasattr(tower, "head"):
                del tower.head
        elif mt == "qwen2_vl_vision":
            from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

            tower = Qwen2VisionTransformerPretrainedModel(config)
            tower.merger = _MergeGroup(tower.merger)
        elif mt == "internvl_vision":
            from transformers.models.internvl.modeling_internvl import InternVLVisionModel

            tower = InternVLVisionModel(config)
        elif mt == "smolvlm_vision":
            from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionTransformer

            tower = SmolVLMVisionTransformer(config)
        elif mt == "idefics3_vision":
            from transformers.models.idefics3.modeling_idefics3 import Idefics3VisionTransformer

            tower = Idefics3VisionTransformer(config)
        else:  # pragma: no cover - _spec_from_dict admits only the above
            raise ValueError(f"invalid model_type={mt!r}")
    except TypeError as err:
        raise ValueError(f"invalid model={spec.name!r}: transformers cannot build its vision config ({err})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return tower.eval()


def _timm_tower(spec: HFVisionSpec, vision: dict) -> nn.Module:
    """FastVLM's tower: transformers' ``TimmWrapperModel`` over timm's model (timm imports torchvision)."""
    try:
        import timm  # noqa: F401
    except Exception as err:  # ImportError, or a torchvision that does not load beside this torch
        raise ValueError(f"invalid model={spec.name!r}: its tower is timm's {vision.get('architecture')} "
                         f"(transformers' TimmWrapperModel), and timm does not import here ({type(err).__name__}: "
                         f"{err}); install timm with a torchvision that loads beside this torch") from None
    from transformers import TimmWrapperConfig, TimmWrapperModel

    config = TimmWrapperConfig(**{k: v for k, v in vision.items() if k != "num_labels"}, num_labels=0)
    return TimmWrapperModel(config).eval()


class _MergeGroup(nn.Module):
    """Qwen2-VL's PatchMerger without its MLP: LayerNorm, then each 2x2 window's four tokens
    concatenated (the connector's input; the sweep's projector plays the MLP)."""

    def __init__(self, merger: nn.Module) -> None:
        super().__init__()
        self.ln_q = merger.ln_q
        self.width = merger.hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_q(x).view(-1, self.width)


def pixel_shuffle(grid: torch.Tensor, factor: int) -> torch.Tensor:
    """``[B, H, W, C] -> [B, H/f, W/f, C f^2]``: each f x f window's tokens concatenated."""
    b, h, w, c = grid.shape
    x = grid.reshape(b, h // factor, factor, w // factor, factor, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // factor, w // factor, c * factor * factor)
