"""Plain pre-LN Vision Transformers: the ViT baselines of the FastVLM paper.

Two registered towers, both patch-14 ViTs as the VLMs that use them run them:

``vit_l14_clip``
    CLIP ViT-L/14 at 336 px as LLaVA-1.5 uses it: patch 14, 24 layers, width 1024, 16 heads,
    MLP 4096, quick-GELU, a class token, CLIP's ``ln_pre`` before the blocks, bias-free patch
    conv. LLaVA asks for ``output_hidden_states`` and keeps the penultimate layer's hidden
    states (``mm_vision_select_layer = -2``) minus the class token, so all 24 layers run and
    the encoder yields 576 tokens x 1024 channels at 336 px. Parameters built here:
    303,505,408 (hand count in ``tests/test_baselines.py``); the "304M" usually quoted for
    ViT-L/14 adds CLIP's post-LN and 1024x768 projection, which LLaVA never uses.

``siglip_so400m``
    SigLIP-SO400M/14 at 384 px as LLaVA-OneVision uses it: patch 14, width 1152, 16 heads,
    MLP 4304, tanh-GELU, no class token, no pre-LN, biased patch conv, 27 x 27 = 729 tokens.
    The SO400M tower has 27 layers; LLaVA-OneVision deletes the last one and drops the
    attention-pool head (``LLaVA-VL/LLaVA-NeXT``, ``llava/model/multimodal_encoder/
    siglip_encoder.py``: ``del ...encoder.layers[-1:]``, ``head = nn.Identity()``, features =
    ``hidden_states[-1]``; the converted ``llava-hf/llava-onevision-*`` configs say
    ``num_hidden_layers: 26``, ``vision_use_head: false``, ``vision_feature_layer: -1``). Here
    that is ``depth=27, select_layer=-2, prune_unused=True``: 26 layers are built and run,
    397,745,440 parameters. The full 27-layer tower (``prune_unused=False``) has 412,984,944;
    adding the post-LN (2,304) and attention-pool head (15,238,352) that no VLM token passes
    through gives 428,225,600, the "428M" of HF's ``SiglipVisionModel`` for this checkpoint.

Neither tower builds its final LayerNorm or pooling/projection head: the VLM reads raw
hidden states, so those weights never touch the visual tokens.

``select_layer`` indexes the ``depth + 1`` hidden states as HF's ``hidden_states`` tuple does
(index 0 = the embeddings after the optional pre-LN, index ``i`` = output of block ``i``;
negative indices count from the end). ``prune_unused`` decides whether blocks after the
selected one are built and run (LLaVA-1.5 runs them, LLaVA-OneVision does not); it changes
latency and parameters, never the tokens.

Position embeddings are learned for the native grid (``native_resolution // patch`` per
side) and bicubically resized when another resolution comes in, so any ``R >= patch`` works;
the stride-``patch`` conv floors, hence ``num_tokens(R) = (R // patch) ** 2``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from explorer.checks import is_int

from .base import VisionEncoder, check_knob
from .registry import register_encoder

__all__ = ["ViTEncoder", "Attention", "Block", "vit_l14_clip", "siglip_so400m"]


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    # OpenAI CLIP's sigmoid approximation of GELU.
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": _quick_gelu,  # CLIP
    "gelu_tanh": _gelu_tanh,  # SigLIP (gelu_pytorch_tanh)
    "gelu": _gelu,  # exact erf GELU
}


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, computed by SDPA.

    Written out (not ``nn.MultiheadAttention``) so FLOP counters see plain Linear layers plus
    one ``scaled_dot_product_attention`` call, whatever the eval-mode fast paths do.
    """

    def __init__(self, width: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, N, head_dim]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MLP(nn.Module):
    """Linear -> activation -> Linear, the transformer feed-forward."""

    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act_name = act
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_dim: int, act: str, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_dim, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def resize_pos_embed(grid_embed: torch.Tensor, side: int) -> torch.Tensor:
    """Bicubically resize ``[G*G, C]`` grid position embeddings to ``[side*side, C]``.

    Same recipe as HF's ``interpolate_pos_encoding`` and timm's ``resample_abs_pos_embed``
    (bicubic, ``align_corners=False``); at the native size it returns the input unchanged.
    """
    n, c = grid_embed.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"position embeddings hold {n} entries, not a square grid")
    if side == g:
        return grid_embed
    grid = grid_embed.reshape(1, g, g, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(side, side), mode="bicubic", align_corners=False)
    return grid.to(grid_embed.dtype).permute(0, 2, 3, 1).reshape(side * side, c)


class ViTEncoder(VisionEncoder):
    """A plain ViT returning the patch tokens of one hidden layer, ``[B, (R//patch)^2, width]``.

    ``knobs`` are the user-settable, validated values (``describe()['knobs']`` rebuilds the same
    model through the registry); ``arch`` holds what defines the family (class token, pre-LN,
    bias of the patch conv, LayerNorm eps) and is fixed per registered name.
    """

    def __init__(
        self,
        *,
        name: str,
        depth: int,
        width: int,
        heads: int,
        mlp_dim: int,
        patch: int,
        select_layer: int,
        native_resolution: int,
        act: str,
        prune_unused: bool,
        class_token: bool,
        pre_norm: bool,
        patch_bias: bool,
        eps: float,
    ) -> None:
        super().__init__()
        check_knob("depth", depth, is_int(depth) and depth >= 1, "a positive integer number of blocks")
        check_knob("width", width, is_int(width) and width >= 1, "a positive integer")
        check_knob("heads", heads, is_int(heads) and heads >= 1, "a positive integer")
        check_knob("width", width, width % heads == 0, f"a multiple of heads={heads}")
        check_knob("mlp_dim", mlp_dim, is_int(mlp_dim) and mlp_dim >= 1, "a positive integer")
        check_knob("patch", patch, is_int(patch) and patch >= 1, "a positive integer number of pixels")
        check_knob(
            "native_resolution", native_resolution,
            is_int(native_resolution) and native_resolution >= patch,
            f"an integer number of pixels >= patch={patch}",
        )
        check_knob(
            "select_layer", select_layer,
            is_int(select_layer) and -(depth + 1) <= select_layer <= depth,
            f"an index into the {depth + 1} hidden states (embeddings + {depth} blocks): "
            f"{-(depth + 1)} .. {depth}",
        )
        check_knob("act", act, act in ACTIVATIONS, f"one of {sorted(ACTIVATIONS)}")
        check_knob("prune_unused", prune_unused, isinstance(prune_unused, bool), "True or False")

        self.name = name
        self.depth = depth
        self.width = width
        self.heads = heads
        self.mlp_dim = mlp_dim
        self.patch = patch
        self.select_layer = select_layer
        self.native_resolution = native_resolution
        self.act = act
        self.prune_unused = prune_unused
        self.class_token = class_token
        self.pre_norm = pre_norm
        self.patch_bias = patch_bias
        self.eps = eps

        self.out_channels = width
        self.downsample = patch
        # Hidden-state index the tokens come from (0 = embeddings, i = after block i).
        self.selected = select_layer % (depth + 1)
        built = self.selected if prune_unused else depth

        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=patch_bias)
        self.native_side = native_resolution // patch
        extra = 1 if class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, extra + self.native_side**2, width))
        self.norm_pre = nn.LayerNorm(width, eps=eps) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_dim, act, eps) for _ in range(built))
        self._init_embeddings()

    def _init_embeddings(self) -> None:
        # Random weights (nothing is downloaded); small normals as in CLIP/timm so activations
        # stay in a realistic range for timing and the training loop.
        nn.init.normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def num_tokens(self, resolution: int) -> int:
        """``(R // patch)^2``: the stride-``patch`` conv floors; the class token is dropped."""
        check_knob(
            "resolution", resolution, is_int(resolution) and resolution >= self.patch,
            f"an integer number of pixels >= patch={self.patch}",
        )
        side = resolution // self.patch
        return side * side

    def _pos_embed_for(self, side: int) -> torch.Tensor:
        pe = self.pos_embed[0]
        if self.class_token:
            cls_pe, grid_pe = pe[:1], pe[1:]
            return torch.cat([cls_pe, resize_pos_embed(grid_pe, side)], dim=0)
        return resize_pos_embed(pe, side)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"expected square images [B, 3, R, R], got {tuple(images.shape)}")
        if images.shape[-1] < self.patch:
            raise ValueError(f"resolution {images.shape[-1]} is smaller than patch={self.patch}")
        x = self.patch_embed(images)  # [B, C, s, s]
        side = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)  # [B, s*s, C]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self._pos_embed_for(side).unsqueeze(0).to(x.dtype)
        x = self.norm_pre(x)
        selected = x if self.selected == 0 else None
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i == self.selected:
                selected = x
        assert selected is not None
        return selected[:, 1:] if self.class_token else selected

    def reparameterize(self) -> "ViTEncoder":
        """Nothing folds in a plain ViT; kept for the shared interface."""
        return self

    @property
    def layers_built(self) -> int:
        return len(self.blocks)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": "vit",
            "knobs": {
                "depth": self.depth,
                "width": self.width,
                "heads": self.heads,
                "mlp_dim": self.mlp_dim,
                "patch": self.patch,
                "select_layer": self.select_layer,
                "native_resolution": self.native_resolution,
                "act": self.act,
                "prune_unused": self.prune_unused,
            },
            "arch": {
                "class_token": self.class_token,
                "pre_norm": self.pre_norm,
                "patch_bias": self.patch_bias,
                "layer_norm_eps": self.eps,
                "layers_built": self.layers_built,
                "selected_hidden_state": self.selected,
            },
            "out_channels": self.out_channels,
            "downsample": self.downsample,
        }


@register_encoder("vit_l14_clip")
def vit_l14_clip(
    depth: int = 24,
    width: int = 1024,
    heads: int = 16,
    mlp_dim: int = 4096,
    patch: int = 14,
    select_layer: int = -2,
    native_resolution: int = 336,
    act: str = "quick_gelu",
    prune_unused: bool = False,
) -> ViTEncoder:
    """CLIP ViT-L/14-336 as LLaVA-1.5 runs it (penultimate layer, CLS dropped, all layers run)."""
    return ViTEncoder(
        name="vit_l14_clip", depth=depth, width=width, heads=heads, mlp_dim=mlp_dim, patch=patch,
        select_layer=select_layer, native_resolution=native_resolution, act=act,
        prune_unused=prune_unused, class_token=True, pre_norm=True, patch_bias=False, eps=1e-5,
    )


@register_encoder("siglip_so400m")
def siglip_so400m(
    depth: int = 27,
    width: int = 1152,
    heads: int = 16,
    mlp_dim: int = 4304,
    patch: int = 14,
    select_layer: int = -2,
    native_resolution: int = 384,
    act: str = "gelu_tanh",
    prune_unused: bool = True,
) -> ViTEncoder:
    """SigLIP-SO400M/14-384 as LLaVA-OneVision runs it (last layer and head removed)."""
    return ViTEncoder(
        name="siglip_so400m", depth=depth, width=width, heads=heads, mlp_dim=mlp_dim, patch=patch,
        select_layer=select_layer, native_resolution=native_resolution, act=act,
        prune_unused=prune_unused, class_token=False, pre_norm=False, patch_bias=True, eps=1e-6,
    )
