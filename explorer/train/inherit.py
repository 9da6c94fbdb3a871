"""Weight inheritance: a narrower or shallower FastViT variant starts from the full model's weights.

Once-for-All (Cai et al. 2020) and BigNAS (Yu et al. 2020) initialise a sub-network from its
parent instead of from random weights. Here a knob variant of an encoder (``width_mult``,
``depth_mult``, explicit ``widths`` / ``depths``, fewer heads through narrower attention
stages) takes the parent's tensors by two rules:

- **Channels: the first k.** Every tensor is cut to the child's shape by keeping the leading
  channels of every axis (output and input channels of convs and linears, BatchNorm and
  LayerNorm entries, layer scales). First-k is the only choice that stays *consistent along
  the residual stream* without bookkeeping: every block of a stage adds into the same channels,
  so channel c of one block must be channel c of the next. An importance ranking (L1 norm, as
  in OFA's channel sorting) would need one permutation per stage, applied to every tensor that
  reads or writes that stage's stream, and re-deriving it for grouped convs and SE; that is a
  refinement for a parent trained with elastic width, which ours is not. Grouped convs stay
  right: a depthwise kernel's first k outputs are the first k groups, and ``conv_exp`` (groups
  = last width, two outputs per group) keeps groups 0..k-1 with their outputs 0..2k-1. The
  attention ``qkv`` projection is cut per q, k, v block, so the child keeps the parent's first
  heads whole.
- **Depth: evenly spaced blocks.** A stage of D blocks kept at d blocks takes parent blocks
  ``floor((j + 1/2) * D / d)`` for j < d, the centre of each of d equal segments. With layer
  scales every block is a small residual step, so a stage is a discretised path from its input
  to its output; evenly spaced blocks follow that whole path at a coarser step, whereas the
  first d blocks (OFA's rule, right for a parent trained with elastic depth) would stop part
  way.

A tensor the parent lacks, or that is larger in the child on some axis, keeps its fresh
initialisation and is listed in the report. Full knobs inherit every tensor unchanged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

_BLOCK = re.compile(r"^(?P<head>(?:.*\.)?stages\.(?P<stage>\d+)\.)(?P<block>\d+)(?P<tail>\..*)$")


@dataclass(frozen=True)
class InheritReport:
    inherited: int  # tensors copied (sliced or whole)
    exact: int  # of which copied whole
    fresh: tuple[str, ...]  # child tensors left at their initialisation


def kept_blocks(parent_depth: int, child_depth: int) -> list[int]:
    """Parent block indices a stage of ``child_depth`` blocks keeps (evenly spaced centres)."""
    if child_depth >= parent_depth:
        return list(range(child_depth))  # extra child blocks (beyond the parent's) stay fresh
    return [int((j + 0.5) * parent_depth / child_depth) for j in range(child_depth)]


def _stage_depths(state: Mapping[str, torch.Tensor]) -> dict[tuple[str, int], int]:
    depths: dict[tuple[str, int], int] = {}
    for key in state:
        m = _BLOCK.match(key)
        if m:
            where = (m.group("head"), int(m.group("stage")))
            depths[where] = max(depths.get(where, 0), int(m.group("block")) + 1)
    return depths


def _slice(value: torch.Tensor, shape: torch.Size, key: str) -> torch.Tensor | None:
    """The leading part of ``value`` with ``shape``, or None when the child is larger somewhere."""
    if value.dim() != len(shape):
        return None
    if key.endswith("qkv.weight") or key.endswith("qkv.bias"):
        if shape[0] % 3 or value.shape[0] % 3:
            return None
        c_child, c_parent = shape[0] // 3, value.shape[0] // 3
        if c_child > c_parent:
            return None
        chunks = value.reshape(3, c_parent, *value.shape[1:])[:, :c_child]
        chunks = chunks[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape[1:])]
        if any(a > b for a, b in zip(shape[1:], value.shape[1:])):
            return None
        return chunks.reshape(shape)
    if any(a > b for a, b in zip(shape, value.shape)):
        return None
    return value[tuple(slice(0, s) for s in shape)]


def inherit_state(child: nn.Module, parent_state: Mapping[str, torch.Tensor]) -> InheritReport:
    """Copy ``parent_state`` into ``child`` (in place) by first-k channels and evenly spaced blocks."""
    child_state = child.state_dict()
    parent_depths = _stage_depths(parent_state)
    child_depths = _stage_depths(child_state)
    block_map = {where: kept_blocks(parent_depths[where], d)
                 for where, d in child_depths.items() if where in parent_depths}
    new: dict[str, torch.Tensor] = {}
    fresh: list[str] = []
    exact = 0
    for key, target in child_state.items():
        source_key = key
        m = _BLOCK.match(key)
        if m:
            where = (m.group("head"), int(m.group("stage")))
            blocks = block_map.get(where)
            j = int(m.group("block"))
            if blocks is None or j >= parent_depths[where]:
                fresh.append(key)
                continue
            source_key = f"{m.group('head')}{blocks[j]}{m.group('tail')}"
        value = parent_state.get(source_key)
        if value is None:
            fresh.append(key)
            continue
        piece = _slice(value, target.shape, key)
        if piece is None:
            fresh.append(key)
            continue
        exact += tuple(piece.shape) == tuple(value.shape)
        new[key] = piece.to(target.dtype).clone()
    child.load_state_dict(new, strict=False)
    return InheritReport(inherited=len(new), exact=exact, fresh=tuple(fresh))


def inherit_encoder(child: nn.Module, parent: nn.Module) -> InheritReport:
    """:func:`inherit_state` from a parent module; both must be in the same form (trained or folded)."""
    folded = [any(k.endswith("reparam.weight") for k in m.state_dict()) for m in (child, parent)]
    if folded[0] != folded[1]:
        raise ValueError("parent and child must both be in training form or both folded; "
                         f"child folded={folded[0]}, parent folded={folded[1]}")
    return inherit_state(child, parent.state_dict())
