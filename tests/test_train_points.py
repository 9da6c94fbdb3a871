"""`explorer train`: chosen sweep points are trained once per encoder config and their accuracy lands in the store."""
from __future__ import annotations

import dataclasses

import pytest

import sweep_fakes as F
from explorer.data import results
from explorer.measure.settings import MeasureSettings
from explorer.analysis.pareto import pareto_front
from explorer.data.space import load_space
from explorer.data.store import Store
from explorer.train.points import base_config, plan_targets, select_points, train_targets
from explorer.train.config import TrainConfig
from explorer.train.trainer import TrainResult


def _swept(tmp_path):
    raw = {"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2]}}}, "resolutions": [64, 128],
           "llms": ["llm-a", "llm-b"], "text_tokens": [0]}
    sp = load_space(raw, shape_fn=F.shape, check_models=False)
    store = Store(tmp_path / "r")
    F.run(sp, MeasureSettings(device="cpu"), store)
    return store


def fake_run(calls):
    def run(config: TrainConfig) -> TrainResult:
        calls.append(config)
        acc = 0.2 + config.resolution / 400 + 0.05 * config.encoder_knobs.get("width", 1)  # rises with R and width
        return TrainResult(steps=config.max_steps, samples_seen=0, stopped_early=False, train_loss=1.0,
                           val_accuracy=acc, test_accuracy=acc, val_by_task={}, test_by_task={}, wall_time_s=1.0,
                           train_time_s=1.0, steps_per_minute=60.0, resumed_from_step=None, checkpoint_path=None,
                           log_path="log", output_dir=config.output_dir, visual_tokens=4, params={}, device="cpu",
                           precision="fp32", test_metrics={"exact_match": acc, "vqa_accuracy": acc / 2, "anls": 0.9})
    return run


def test_one_run_per_encoder_config_and_accuracy_reaches_the_frontier(tmp_path):
    store = _swept(tmp_path)
    df = results.load(store, accuracy_metric=None)
    assert len(df) == 8 and df.accuracy.isna().all()
    rows = select_points(df, "all")
    targets = plan_targets(rows)
    assert len(targets) == 4  # 2 widths x 2 resolutions; the two LLMs share each run
    assert all(len(t.point_keys) == 2 for t in targets)
    calls: list[TrainConfig] = []
    train_targets(targets, base_config({"max_steps": 7, "warmup_steps": 2}), store, tmp_path / "runs", log=lambda *_: None,
                  run=fake_run(calls))
    assert len(calls) == 4 and {c.max_steps for c in calls} == {7}
    assert {(c.resolution, c.encoder_knobs["width"]) for c in calls} == {(64, 1), (64, 2), (128, 1), (128, 2)}
    assert len({c.output_dir for c in calls}) == 4
    trained = results.load(store, accuracy_metric=None)
    assert trained.accuracy.notna().all()
    assert trained.accuracy_source.str.startswith("trained:proxy:").all()
    assert trained.accuracy_source.str.endswith(":exact_match").all()  # the frontier shows the primary metric
    stored = {(a.source.rsplit(":", 1)[1], a.metric, round(a.value, 6)) for a in store.accuracy()
              if a.resolution == 128 and (a.knobs or {}) in ({"width": 2}, '{"width":2}')}
    acc = 100 * (0.2 + 128 / 400 + 0.1)
    assert stored == {("exact_match", "exact_match", round(acc, 6)), ("vqa_accuracy", "vqa_accuracy", round(acc / 2, 6)),
                      ("anls", "anls", 90.0)}
    hi = trained[(trained.resolution == 128) & (trained.knobs == '{"width":2}')].accuracy
    assert hi.tolist() == pytest.approx([100 * (0.2 + 128 / 400 + 0.1)] * 2)
    front = pareto_front(trained)
    assert not front.fallback  # accuracy is now an objective, not the resolution fallback
    assert front.front.accuracy.notna().all()


def test_selection_by_frontier_and_keys(tmp_path):
    store = _swept(tmp_path)
    df = results.load(store, accuracy_metric=None)
    # equal TTFTs (the fakes time by resolution only); width 2 reads worse, so it is dominated
    df["accuracy"] = [(50.0 if k == '{"width":1}' else 40.0) + r / 10 for k, r in zip(df.knobs, df.resolution)]
    front = select_points(df, "pareto")
    assert len(front) == 4 and set(front.knobs) == {'{"width":1}'}
    key = df.point_key.iloc[3]
    assert select_points(df, key).point_key.tolist() == [key]
    with pytest.raises(ValueError, match="train.points"):
        select_points(df, "nope")


def test_per_llm_targets_store_by_point_key(tmp_path):
    store = _swept(tmp_path)
    df = results.load(store, accuracy_metric=None)
    targets = plan_targets(select_points(df, "all").head(2), per_llm=True)
    assert len(targets) == 2 and all(t.llm for t in targets)
    train_targets(targets, base_config({}), store, tmp_path / "runs", log=lambda *_: None, run=fake_run([]))
    out = results.load(store, accuracy_metric=None)
    assert out.accuracy.notna().sum() == 2


def test_bad_train_config_is_named_before_training(tmp_path):
    with pytest.raises(ValueError, match="max_stepz"):
        base_config({"max_stepz": 3})
    with pytest.raises(ValueError, match="proxy"):
        base_config({"proxy": {"colour": 1}})
    store = _swept(tmp_path)
    targets = plan_targets(select_points(results.load(store, accuracy_metric=None), "all"))
    with pytest.raises(ValueError, match="lr"):
        dataclasses.replace(base_config({}), lr=5.0)  # a bad value: the config cannot be built
    calls: list = []
    missing = dataclasses.replace(base_config({}), init_from=str(tmp_path / "no-such-run"))
    with pytest.raises(ValueError, match="init_from"):
        train_targets(targets, missing, store, tmp_path / "runs", log=lambda *_: None, run=fake_run(calls))
    assert calls == []  # every run's inputs checked before the first run


def test_train_command_errors_are_clear(tmp_path):
    import subprocess
    import sys

    space = tmp_path / "tinyproxy.yaml"
    space.write_text("name: tinyproxy\nencoders:\n  fastvithd:\n    knobs: {width_mult: [0.25], depth_mult: [0.25]}\n"
                     "resolutions: [64]\nllms: [qwen2-0.5b]\ntext_tokens: [4]\n")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "explorer", "train", f"space_file={space}", f"out={tmp_path / 'r'}",
                               *args], capture_output=True, text=True, timeout=120)

    missing = run()
    assert missing.returncode == 2 and "run `explorer sweep" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = run("+train.config.max_stepz=3")
    assert bad.returncode == 2 and "max_stepz" in bad.stderr and "Traceback" not in bad.stderr
