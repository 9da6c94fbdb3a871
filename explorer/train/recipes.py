"""LLaVA-1.5 and FastVLM training recipes as chains of :class:`~explorer.train.config.TrainConfig`.

A recipe is a list of stages; each stage is one ``train()`` run whose ``init_from`` is the
previous stage's run. Freezing follows the papers: stage 1 trains the projector only (vision
encoder and LLM frozen); every later stage trains everything (FastVLM's stages 1.5 and 2, and
LLaVA-1.5's stage 2 with the vision encoder frozen, as LLaVA-1.5 keeps CLIP frozen).
Hyperparameters are LLaVA-1.5's published ones (stage 1: lr 1e-3, global batch 256; stage 2:
lr 2e-5, global batch 128; cosine schedule, 3 % warmup, no weight decay), which FastVLM's paper
says it follows; conversations use the LM tokenizer's chat template.

Data are the user's LLaVA-format files (nothing is downloaded): ``captions`` for stage 1
(LLaVA-558K-style image-caption pairs), ``dense_captions`` for FastVLM stage 1.5 (run at the
higher ``high_resolution``), ``instructions`` for the instruction-tuning stage (LLaVA-665K-style).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from .config import TrainConfig

RECIPES = ("llava15", "fastvlm")


@dataclass(frozen=True)
class RecipeData:
    """LLaVA-format JSON/JSONL files and their image folder."""

    image_folder: str
    captions: str
    instructions: str
    dense_captions: Optional[str] = None  # FastVLM stage 1.5
    val: Optional[str] = None  # evaluation set (LLaVA or lmms-eval-like records with answers)
    test: Optional[str] = None


def _stage(name: str, **values: Any) -> tuple[str, dict[str, Any]]:
    return name, values


def recipe_stages(recipe: str, data: RecipeData, high_resolution: Optional[int] = None) -> list[tuple[str, dict[str, Any]]]:
    """(stage name, TrainConfig overrides) of a recipe, in order."""
    if recipe not in RECIPES:
        raise ValueError(f"invalid recipe={recipe!r}: one of {list(RECIPES)}")
    common = dict(data="llava", image_folder=data.image_folder, llava_val=data.val, llava_test=data.test,
                  lm_chat_template=True, weight_decay=0.0, min_lr_ratio=0.0)
    stage1 = _stage("stage1_projector", stage="projector", llava_train=data.captions, lr=1e-3, batch_size=256,
                    **common)
    if recipe == "llava15":
        return [stage1, _stage("stage2_instructions", stage="full", freeze_encoder=True,
                               llava_train=data.instructions, lr=2e-5, batch_size=128, **common)]
    if data.dense_captions is None:
        raise ValueError("invalid data.dense_captions=None: the fastvlm recipe's stage 1.5 needs dense captions")
    stage15 = dict(stage="full", llava_train=data.dense_captions, lr=2e-5, batch_size=128, **common)
    if high_resolution is not None:
        stage15["resolution"] = high_resolution
    stages = [stage1, _stage("stage1.5_resolution", **stage15),
              _stage("stage2_instructions", stage="full", llava_train=data.instructions, lr=2e-5, batch_size=128,
                     **common, **({"resolution": high_resolution} if high_resolution else {}))]
    return stages


def recipe_configs(recipe: str, base: TrainConfig, data: RecipeData, output_root: str,
                   steps: Mapping[str, int], high_resolution: Optional[int] = None) -> list[TrainConfig]:
    """The validated configs of a recipe: ``base`` (encoder, LM, device, ...) with each stage's
    fields, ``max_steps`` from ``steps[stage name]`` (3 % warmup), chained by ``init_from``."""
    configs: list[TrainConfig] = []
    previous: Optional[str] = None
    for name, values in recipe_stages(recipe, data, high_resolution):
        if name not in steps:
            raise ValueError(f"invalid steps: give max_steps for stage {name!r} (stages: "
                             f"{[n for n, _ in recipe_stages(recipe, data, high_resolution)]})")
        max_steps = int(steps[name])
        out = str(Path(output_root) / name)
        config = dataclasses.replace(base, **values, output_dir=out, max_steps=max_steps,
                                     warmup_steps=max(0, min(max_steps - 1, round(0.03 * max_steps))),
                                     init_from=previous, inherit_from=None)
        configs.append(config)
        previous = out
    for c in configs[:1]:
        c.check_runnable()  # later stages' init_from exists only once the previous stage has run
    return configs
