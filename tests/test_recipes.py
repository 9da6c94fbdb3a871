"""LLaVA-1.5 / FastVLM recipes: stages, freezing (papers), chaining and LLaVA-1.5's hyperparameters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from explorer.train.recipes import RecipeData, recipe_configs
from explorer.train.build import trainable_flags
from explorer.train.config import TrainConfig


def _data(tmp_path: Path) -> RecipeData:
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    entry = [{"id": "1", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                             {"from": "gpt", "value": "A black square."}]}]
    for name in ("caps.json", "dense.json", "inst.json"):
        (tmp_path / name).write_text(json.dumps(entry))
    return RecipeData(image_folder=str(tmp_path), captions=str(tmp_path / "caps.json"),
                      dense_captions=str(tmp_path / "dense.json"), instructions=str(tmp_path / "inst.json"))


def test_fastvlm_recipe_stages_and_freezing(tmp_path: Path) -> None:
    base = TrainConfig(resolution=256)
    steps = {"stage1_projector": 100, "stage1.5_resolution": 50, "stage2_instructions": 200}
    configs = recipe_configs("fastvlm", base, _data(tmp_path), str(tmp_path / "runs"), steps, high_resolution=512)
    assert [Path(c.output_dir).name for c in configs] == list(steps)
    # encoder, projector, LM trainable: stage 1 projector only; stages 1.5 and 2 everything
    assert [trainable_flags(c) for c in configs] == [(False, True, False), (True, True, True), (True, True, True)]
    assert [c.resolution for c in configs] == [256, 512, 512]
    assert configs[0].init_from is None
    assert configs[1].init_from == configs[0].output_dir and configs[2].init_from == configs[1].output_dir
    assert [(c.lr, c.batch_size) for c in configs] == [(1e-3, 256), (2e-5, 128), (2e-5, 128)]
    assert [c.warmup_steps for c in configs] == [3, 2, 6]  # 3 % of each stage
    assert all(c.lm_chat_template and c.data == "llava" and c.weight_decay == 0.0 for c in configs)


def test_llava15_recipe_keeps_the_vision_encoder_frozen(tmp_path: Path) -> None:
    configs = recipe_configs("llava15", TrainConfig(), _data(tmp_path), str(tmp_path / "runs"),
                             {"stage1_projector": 10, "stage2_instructions": 10})
    assert [trainable_flags(c) for c in configs] == [(False, True, False), (False, True, True)]
    with pytest.raises(ValueError, match="stage2_instructions"):
        recipe_configs("llava15", TrainConfig(), _data(tmp_path), str(tmp_path / "r"), {"stage1_projector": 10})
    with pytest.raises(ValueError, match="recipe"):
        recipe_configs("llava2", TrainConfig(), _data(tmp_path), str(tmp_path / "r"), {})
