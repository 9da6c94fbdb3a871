"""The VLM and its trainer: sequence layout, learning, exact resume, stages, HF and LLaVA paths."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from explorer.models import build_encoder
from explorer.train.data import CharTokenizer, ProxyTaskConfig, make_sample
from explorer.train.build import lr_factor
from explorer.train.checkpoints import latest_checkpoint
from explorer.train.config import TrainConfig
from explorer.train.points import base_config
from explorer.train.trainer import train
from explorer.train.vlm import IGNORE_INDEX, VLM, CharCodec, DecoderConfig, TinyDecoder
from tiny_lm import tiny_hf_lm

# A FastViTHD with every stage one block deep and narrow: ~50k parameters, 64x downsampling.
TINY_KNOBS: dict[str, Any] = {"depths": [1, 1, 1, 1, 1], "widths": [8, 16, 16, 32, 32], "head_dim": 16}


pytestmark = pytest.mark.usefixtures("one_thread")  # bit-exact comparisons on shared CI cores


def tiny(tmp_path: Path, name: str = "run", **overrides: Any) -> TrainConfig:
    base = TrainConfig(
        output_dir=str(tmp_path / name), resolution=64,
        proxy=ProxyTaskConfig(canvas=256, val_size=16, test_size=16),
        encoder_knobs=dict(TINY_KNOBS), lm_hidden=64, lm_layers=2, lm_heads=4,
        batch_size=8, max_steps=12, warmup_steps=2, lr=2e-3, log_every=1, checkpoint_every=5,
        eval_batch_size=16, max_new_tokens=6, progress=False)
    return dataclasses.replace(base, **overrides)


def _records(run_dir: str) -> list[dict[str, Any]]:
    out = []
    for line in Path(run_dir, "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("train_time_s", None)
        out.append(record)
    return out


def _model_state(run_dir: str) -> dict[str, torch.Tensor]:
    path = latest_checkpoint(run_dir)
    assert path is not None
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("field,value,match", [
    ("data", "coco", "data"),
    ("stage", "1.5", "stage"),
    ("precision", "bf16", "precision"),  # mixed precision is CUDA-only
    ("precision", "fp8", "precision"),
    ("lm", "gpt", "lm"),
    ("batch_size", 0, "batch_size"),
    ("lr", 2.0, "lr"),
    ("warmup_steps", 12, "warmup_steps"),
    ("resolution", 8, "resolution"),
    ("lm_heads", 5, "lm_heads"),
    ("device", "tpu", "device"),
    ("freeze_lm", "yes", "freeze_lm"),
    ("init_from", "/no/such/ckpt.pt", "init_from"),
])
def test_bad_config_names_the_field(tmp_path: Path, field: str, value: Any, match: str) -> None:
    if field == "precision" and value == "bf16" and torch.cuda.is_available():
        pytest.skip("bf16 is allowed on CUDA")
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(tiny(tmp_path), **{field: value}).check_runnable()


def test_missing_paths_for_llava_and_hf(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="llava_train"):
        tiny(tmp_path, data="llava")
    with pytest.raises(ValueError, match="lm_path"):
        tiny(tmp_path, lm="hf")
    with pytest.raises(ValueError, match=r"code_length=9"):  # the nested config: invalid cannot exist
        ProxyTaskConfig(code_length=9)
    with pytest.raises(ValueError, match=r"invalid proxy\.code_length=9"):  # named by its section
        base_config({"output_dir": str(tmp_path / "run"), "proxy": {"code_length": 9}})


def test_lr_schedule_warms_up_then_decays() -> None:
    factors = [lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:9], factors[1:10]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


# ------------------------------------------------------------------------------------------ model


def _tiny_vlm(seed: int = 0) -> VLM:
    torch.manual_seed(seed)
    tok = CharTokenizer()
    lm = TinyDecoder(DecoderConfig(vocab_size=tok.vocab_size, hidden=32, layers=2, heads=2, max_len=128))
    return VLM(build_encoder("fastvithd", **TINY_KNOBS), lm, CharCodec(tok)).eval()


def test_loss_covers_answer_tokens_only_and_rows_are_left_padded() -> None:
    model = _tiny_vlm()
    tok = model.codec.tokenizer
    ids, labels = model.encode_turns([("q one?", "ab"), ("q2?", "c")], final_answer=True)
    prompt1 = [tok.bos_id] + tok.encode("q one?") + [tok.sep_id]
    prompt2 = tok.encode("q2?") + [tok.sep_id]
    assert ids == prompt1 + tok.encode("ab") + [tok.eos_id] + prompt2 + tok.encode("c") + [tok.eos_id]
    assert labels == ([IGNORE_INDEX] * len(prompt1) + tok.encode("ab") + [tok.eos_id]
                      + [IGNORE_INDEX] * len(prompt2) + tok.encode("c") + [tok.eos_id])

    visual = torch.randn(2, 4, 32)
    short, long = [5, 6, 7], [5, 6, 7, 8, 9, 10]
    batch = model._assemble(visual, [short, long], [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX] * 5 + [10]])
    assert batch.mask.tolist() == [[False] * 3 + [True] * 7, [True] * 10]
    assert batch.positions[0].tolist() == [0, 0, 0] + list(range(7))
    assert torch.equal(batch.embeds[0, 3:7], visual[0]) and torch.equal(batch.embeds[1, :4], visual[1])
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * 8 + [6, 7]
    assert batch.labels[1].tolist() == [IGNORE_INDEX] * 9 + [10]


def test_batched_greedy_decoding_matches_one_by_one() -> None:
    model = _tiny_vlm(seed=3)
    cfg = ProxyTaskConfig(resolution=64, canvas=256)
    samples = [make_sample(cfg, "val", i) for i in range(4)]  # questions of different lengths
    images = torch.stack([s.image for s in samples])
    together = model.generate(images, [s.turns for s in samples], max_new_tokens=5)
    alone = [model.generate(s.image[None], [s.turns], max_new_tokens=5)[0] for s in samples]
    assert together == alone


# ------------------------------------------------------------------------------------------ training


def test_training_loss_falls(tmp_path: Path) -> None:
    result = train(tiny(tmp_path, max_steps=60, batch_size=16, warmup_steps=5, lr=3e-3,
                        checkpoint_every=100))
    losses = [r["loss"] for r in _records(result.output_dir) if r.get("kind") == "train"]
    assert len(losses) == 60
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.8, (first, last)  # from ~3.8 (uniform over 48 ids) to the answer format
    assert result.steps == 60 and result.samples_seen == 960 and not result.stopped_early
    # the reported accuracy is the share of correct predictions written for the whole val split
    val = [json.loads(x) for x in Path(result.output_dir, "predictions_val.jsonl").read_text().splitlines()]
    assert len(val) == 16 and result.val_accuracy == sum(r["correct"] for r in val) / 16
    assert result.val_metrics["exact_match"] == pytest.approx(sum(r["exact_match"] for r in val) / 16)
    assert set(result.val_by_task) <= {"box_code", "larger_number", "word_on_line", "table"}
    assert result.checkpoint_path and Path(result.checkpoint_path).is_file()
    assert result.visual_tokens == 1 and result.steps_per_minute and result.steps_per_minute > 0
    saved = json.loads(Path(result.output_dir, "result.json").read_text())
    assert saved["steps"] == 60 and saved["val_accuracy"] == result.val_accuracy
    assert len(Path(result.output_dir, "predictions_test.jsonl").read_text().splitlines()) == 16


def test_resume_after_stop_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Stop after 7 steps (a checkpoint off the every-5 grid), resume, finish at 12.

    Tolerance: none. On one machine and thread count the resumed run is bit-identical: same
    per-step losses, learning rates and gradient norms, same weights, same accuracies.
    """
    cfg = tiny(tmp_path, "straight", lm_dropout=0.1, eval_every=4, eval_samples=8)  # dropout uses the RNG
    straight = train(cfg)
    killed_cfg = dataclasses.replace(cfg, output_dir=str(tmp_path / "killed"))
    first = train(dataclasses.replace(killed_cfg, stop_after_steps=7))
    assert first.stopped_early and first.steps == 7 and first.val_accuracy is None
    assert Path(first.checkpoint_path).name == "step_0000007.pt"
    resumed = train(killed_cfg)
    assert resumed.resumed_from_step == 7 and resumed.steps == straight.steps == 12
    assert _records(straight.output_dir) == _records(resumed.output_dir)
    assert (resumed.val_accuracy, resumed.test_accuracy, resumed.train_loss) == \
        (straight.val_accuracy, straight.test_accuracy, straight.train_loss)
    a, b = _model_state(straight.output_dir), _model_state(resumed.output_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished run resumed again only re-evaluates
    again = train(killed_cfg)
    assert again.steps == 12 and again.val_accuracy == straight.val_accuracy


def test_stop_hook_and_changed_config_is_refused(tmp_path: Path) -> None:
    cfg = tiny(tmp_path)
    result = train(cfg, stop=lambda step, record: step == 3)
    assert result.stopped_early and result.steps == 3
    with pytest.raises(ValueError, match=r"\['lr'\]"):
        train(dataclasses.replace(cfg, lr=1e-4))
    fresh = train(dataclasses.replace(cfg, lr=1e-4, resume=False, max_steps=4))
    assert fresh.resumed_from_step is None and fresh.steps == 4


def test_the_thread_setting_is_restored_after_training(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    try:
        train(tiny(tmp_path, threads=1, max_steps=2, warmup_steps=1, checkpoint_every=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(2)


def test_stages_freeze_what_they_should(tmp_path: Path) -> None:
    base = train(tiny(tmp_path, "stage2", max_steps=3))
    before = _model_state(base.output_dir)

    def changed(after: dict[str, torch.Tensor], prefix: str) -> bool:
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    proj = train(tiny(tmp_path, "stage1", stage="projector", max_steps=3, init_from=base.output_dir))
    after = _model_state(proj.output_dir)
    assert changed(after, "projector.") and not changed(after, "encoder.") and not changed(after, "lm.")
    assert proj.params["trainable"] == proj.params["projector"]

    frozen_enc = train(tiny(tmp_path, "noenc", freeze_encoder=True, max_steps=3, init_from=base.output_dir))
    after = _model_state(frozen_enc.output_dir)  # BatchNorm running stats included: encoder kept in eval
    assert not changed(after, "encoder.") and changed(after, "lm.") and changed(after, "projector.")


# ------------------------------------------------------------------------------------------ other data / LMs


def test_transformers_lm_path(tmp_path: Path) -> None:
    lm_dir = tmp_path / "tiny-qwen2"
    tiny_hf_lm(lm_dir)  # a 2-layer Qwen2 with random weights and a byte-level BPE tokenizer, built offline
    result = train(tiny(tmp_path, lm="hf", lm_path=str(lm_dir), max_steps=4, checkpoint_every=2))
    assert result.steps == 4 and result.train_loss is not None and math.isfinite(result.train_loss)
    assert result.val_accuracy is not None
    losses = [r["loss"] for r in _records(result.output_dir) if r.get("kind") == "train"]
    assert losses[-1] < losses[0]
    state = _model_state(result.output_dir)
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(lm_dir, local_files_only=True).state_dict()
    moved = [k for k, v in original.items() if not torch.equal(v, state[f"lm.model.{k}"])]
    assert moved, "the LM's weights were not trained"
    prediction = json.loads(Path(result.output_dir, "predictions_val.jsonl").read_text().splitlines()[0])
    assert isinstance(prediction["prediction"], str)


def test_llava_data_trains_on_gpt_turns(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    entries = []
    for i, (colour, name) in enumerate([((255, 0, 0), "red"), ((0, 0, 255), "blue")] * 3):
        Image.new("RGB", (80, 60), colour).save(images / f"{i}.png")
        entries.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": name},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]})
    data = tmp_path / "train.json"
    data.write_text(json.dumps(entries))
    cfg = tiny(tmp_path, data="llava", llava_train=str(data), llava_val=str(data), image_folder=str(images),
               max_steps=3, batch_size=4)
    result = train(cfg)
    assert result.steps == 3 and result.test_accuracy is None and result.val_accuracy is not None
    lines = Path(result.output_dir, "predictions_val.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["answer"] == "Yes."  # scored on the last gpt turn


# ------------------------------------------------------------------------------------------ a real kill


_CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from explorer.train.config import TrainConfig
from explorer.train.trainer import train
from explorer.train.data import ProxyTaskConfig
cfg = json.loads(sys.argv[1])
cfg["proxy"] = ProxyTaskConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["proxy"].items()})
cfg["betas"] = tuple(cfg["betas"])
print(json.dumps(train(TrainConfig(**cfg)).to_dict()))
"""


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    """SIGKILL a training process after its second checkpoint, resume it, compare with a clean run."""
    cfg = tiny(tmp_path, "straight", max_steps=40, checkpoint_every=10)
    straight = train(cfg)
    victim = dataclasses.replace(cfg, output_dir=str(tmp_path / "victim"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(victim.to_dict())], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = Path(victim.output_dir, "checkpoints")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (ckpts / "step_0000020.pt").exists():
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not Path(victim.output_dir, "result.json").exists(), "the child finished before the kill"
    killed_at = latest_checkpoint(victim.output_dir)
    assert killed_at is not None and killed_at.name in {"step_0000020.pt", "step_0000030.pt"}
    resumed = train(victim)
    assert resumed.resumed_from_step in (20, 30) and resumed.steps == 40
    assert _records(straight.output_dir) == _records(resumed.output_dir)
    assert (resumed.val_accuracy, resumed.test_accuracy) == (straight.val_accuracy, straight.test_accuracy)
