"""Reparameterizable building blocks of the FastViT family (FastViTHD, MCi2).

Every multi-branch block trains with parallel conv/BatchNorm branches and folds into one conv for
inference (``reparameterize()``, in place and idempotent), as in MobileOne, RepLKNet and FastViT.
Folding is exact up to float rounding because each branch is linear once BatchNorm uses its
running statistics (eval mode).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def fuse_conv_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x))`` for a bias-free conv with ``weight``."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def identity_kernel(channels: int, groups: int, kernel_size: int, like: torch.Tensor) -> torch.Tensor:
    """A grouped conv kernel that maps x to x (a 1 at each channel's own centre tap)."""
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kernel_size, kernel_size, dtype=like.dtype, device=like.device)
    centre = kernel_size // 2
    channel = torch.arange(channels, device=like.device)
    kernel[channel, channel % per_group, centre, centre] = 1.0  # one indexed write (fast on meta too)
    return kernel


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a square kernel to ``size`` x ``size`` around its centre."""
    pad = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, [pad, pad, pad, pad]) if pad else kernel


def folded_conv(cin: int, cout: int, kernel_size: int, stride: int, padding: int, groups: int,
                fold: Callable[[], tuple[torch.Tensor, torch.Tensor]], like: torch.Tensor) -> nn.Conv2d:
    """The inference conv of a folded block, with kernel and bias from ``fold()``.

    On the ``meta`` device there are no values to fold, so ``fold`` is not called: the conv has the
    right shapes at once (this keeps reparameterizing a meta model, for FLOP counts and cost
    models, as cheap as building it).
    """
    conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=True,
                     device=like.device, dtype=like.dtype)
    if not like.is_meta:
        kernel, bias = fold()
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
    return conv


class ConvBN(nn.Sequential):
    """Bias-free conv followed by BatchNorm: the unit every foldable branch is made of."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        return fuse_conv_bn(self.conv.weight, self.bn)


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features (reduction 1/16, ReLU, sigmoid)."""

    def __init__(self, channels: int, rd_ratio: float = 0.0625):
        super().__init__()
        reduced = max(1, int(channels * rd_ratio))
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s


class MobileOneBlock(nn.Module):
    """k x k conv branch(es) + 1 x 1 scale branch + BatchNorm skip, folded to one conv."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        use_se: bool = False,
        use_act: bool = True,
        scale_branch: bool = True,
        conv_branches: int = 1,
    ):
        super().__init__()
        self.cin, self.cout, self.kernel_size = cin, cout, kernel_size
        self.stride, self.padding, self.groups = stride, padding, groups
        self.se = SqueezeExcite(cout) if use_se else nn.Identity()
        self.act = nn.GELU() if use_act else nn.Identity()
        self.skip = nn.BatchNorm2d(cin) if (cin == cout and stride == 1) else None
        self.convs = nn.ModuleList(
            ConvBN(cin, cout, kernel_size, stride, padding, groups) for _ in range(conv_branches)
        )
        self.scale = (
            ConvBN(cin, cout, 1, stride, 0, groups) if (scale_branch and kernel_size > 1) else None
        )
        self.reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.act(self.se(self.reparam(x)))
        out = 0
        if self.skip is not None:
            out = self.skip(x)
        if self.scale is not None:
            out = out + self.scale(x)
        for branch in self.convs:
            out = out + branch(x)
        return self.act(self.se(out))

    def folded_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reparam is not None:
            return self.reparam.weight, self.reparam.bias
        like = next(iter(self.parameters()))
        kernel = torch.zeros(self.cout, self.cin // self.groups, self.kernel_size, self.kernel_size,
                             dtype=like.dtype, device=like.device)
        bias = torch.zeros(self.cout, dtype=like.dtype, device=like.device)
        for branch in self.convs:
            k, b = branch.fused()
            kernel, bias = kernel + k, bias + b
        if self.scale is not None:
            k, b = self.scale.fused()
            kernel, bias = kernel + pad_kernel(k, self.kernel_size), bias + b
        if self.skip is not None:
            ident = identity_kernel(self.cin, self.groups, self.kernel_size, like)
            k, b = fuse_conv_bn(ident, self.skip)
            kernel, bias = kernel + k, bias + b
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam is not None:
            return
        self.reparam = folded_conv(self.cin, self.cout, self.kernel_size, self.stride, self.padding, self.groups,
                                   self.folded_kernel_bias, next(iter(self.parameters())))
        self.skip, self.scale = None, None
        self.convs = nn.ModuleList()


class LargeKernelConv(nn.Module):
    """RepLKNet-style large grouped kernel with a parallel small kernel, then GELU."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 7, stride: int = 2, small_kernel: int = 3,
                 groups: int | None = None, use_se: bool = False):
        super().__init__()
        self.se = SqueezeExcite(cout, rd_ratio=0.25) if use_se else nn.Identity()
        groups = math.gcd(cin, cout) if groups is None else groups
        self.cin, self.cout, self.kernel_size, self.stride, self.groups = cin, cout, kernel_size, stride, groups
        self.large = ConvBN(cin, cout, kernel_size, stride, kernel_size // 2, groups)
        self.small = ConvBN(cin, cout, small_kernel, stride, small_kernel // 2, groups) if small_kernel else None
        self.act = nn.GELU()
        self.reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.act(self.se(self.reparam(x)))
        out = self.large(x)
        if self.small is not None:
            out = out + self.small(x)
        return self.act(self.se(out))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam is not None:
            return
        def fold() -> tuple[torch.Tensor, torch.Tensor]:
            kernel, bias = self.large.fused()
            if self.small is not None:
                k, b = self.small.fused()
                kernel, bias = kernel + pad_kernel(k, self.kernel_size), bias + b
            return kernel, bias

        self.reparam = folded_conv(self.cin, self.cout, self.kernel_size, self.stride, self.kernel_size // 2,
                                   self.groups, fold, self.large.conv.weight)
        self.large, self.small = None, None


class RepMixer(nn.Module):
    """Token mixer x + ls * (mixer(x) - norm(x)), folded into a single depthwise conv."""

    def __init__(self, dim: int, kernel_size: int = 3, layer_scale_init: float = 1e-5):
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        pad = kernel_size // 2
        self.norm = MobileOneBlock(dim, dim, kernel_size, padding=pad, groups=dim, use_act=False,
                                   scale_branch=False, conv_branches=0)
        self.mixer = MobileOneBlock(dim, dim, kernel_size, padding=pad, groups=dim, use_act=False)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))
        self.reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.reparam(x)
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam is not None:
            return
        def fold() -> tuple[torch.Tensor, torch.Tensor]:
            k_mix, b_mix = self.mixer.folded_kernel_bias()
            k_norm, b_norm = self.norm.folded_kernel_bias()
            ls = self.layer_scale.reshape(-1)
            kernel = identity_kernel(self.dim, self.dim, self.kernel_size, k_mix) + ls.reshape(-1, 1, 1, 1) * (k_mix - k_norm)
            return kernel, ls * (b_mix - b_norm)

        self.reparam = folded_conv(self.dim, self.dim, self.kernel_size, 1, self.kernel_size // 2, self.dim, fold,
                                   self.layer_scale)
        self.norm, self.mixer, self.layer_scale = None, None, None


class RepCPE(nn.Module):
    """Conditional positional encoding x + dwconv7x7(x), folded by adding the identity tap."""

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.pe = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=True)
        self.reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.reparam(x)
        return x + self.pe(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam is not None:
            return
        pe = self.pe
        self.reparam = folded_conv(
            self.dim, self.dim, self.kernel_size, 1, self.kernel_size // 2, self.dim,
            lambda: (pe.weight + identity_kernel(self.dim, self.dim, self.kernel_size, pe.weight), pe.bias), pe.weight)
        self.pe = None


class ConvFFN(nn.Module):
    """7x7 depthwise conv + BN, then a 1x1 MLP (dim -> hidden -> dim) with GELU.

    ``reparameterize()`` folds the BN into the depthwise conv (a plain conv+BN fusion).
    """

    def __init__(self, dim: int, hidden: int, kernel_size: int = 7):
        super().__init__()
        self.dw = ConvBN(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.dw_reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw_reparam(x) if self.dw_reparam is not None else self.dw(x)
        return self.fc2(self.act(self.fc1(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.dw_reparam is not None:
            return
        src = self.dw.conv
        self.dw_reparam = folded_conv(src.in_channels, src.out_channels, src.kernel_size[0], 1, src.padding[0],
                                      src.groups, self.dw.fused, src.weight)
        self.dw = None


class LayerNormChannel(nn.Module):
    """LayerNorm over the channel axis of a [B, C, H, W] map."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class MHSA(nn.Module):
    """Multi-head self-attention over the positions of a [B, C, H, W] map (SDPA kernel)."""

    def __init__(self, dim: int, head_dim: int = 32, qkv_bias: bool = False):
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return out.transpose(1, 2).reshape(b, c, h, w)


class RepMixerBlock(nn.Module):
    """Conv stage block: RepMixer token mixing, then a layer-scaled ConvFFN residual."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, kernel_size: int = 3, layer_scale_init: float = 1e-5):
        super().__init__()
        self.token_mixer = RepMixer(dim, kernel_size, layer_scale_init)
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x)
        return x + self.layer_scale * self.ffn(x)


class AttentionBlock(nn.Module):
    """Attention stage block: norm -> MHSA and ConvFFN residuals, each layer-scaled."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, head_dim: int = 32, norm: str = "layernorm",
                 layer_scale_init: float = 1e-5):
        super().__init__()
        self.norm = LayerNormChannel(dim) if norm == "layernorm" else nn.BatchNorm2d(dim)
        self.token_mixer = MHSA(dim, head_dim)
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1 * self.token_mixer(self.norm(x))
        return x + self.layer_scale_2 * self.ffn(x)


class PatchEmbed(nn.Module):
    """Stride-2 downsampling between stages: large-kernel grouped conv, then a 1x1 MobileOne."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 7, use_se: bool = False):
        super().__init__()
        self.down = LargeKernelConv(cin, cout, kernel_size, stride=2, small_kernel=3, use_se=use_se)
        self.pw = MobileOneBlock(cout, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.down(x))


class ConvStem(nn.Sequential):
    """Three MobileOne blocks: 3x3 s2 conv, 3x3 s2 depthwise, 1x1 — a 4x downsampling stem."""

    def __init__(self, cin: int, cout: int, scale_branch: bool = True):
        super().__init__(
            MobileOneBlock(cin, cout, 3, stride=2, padding=1, scale_branch=scale_branch),
            MobileOneBlock(cout, cout, 3, stride=2, padding=1, groups=cout, scale_branch=scale_branch),
            MobileOneBlock(cout, cout, 1, scale_branch=scale_branch),
        )
