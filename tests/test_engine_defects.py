"""Regression tests for the defects the engine review found (issue 10): each failed before the redesign."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sweep_fakes as F
from explorer.analysis.pareto import pareto_front
from explorer.checks import OptionError
from explorer.commands import sweep as sweep_cmd
from explorer.data import results
from explorer.data.space import SpaceError, load_space
from explorer.data.store import Store
from explorer.engine.options import SearchOptions, SweepOptions
from explorer.engine.sweep import MAX_SWEEP_POINTS, plan_sweep
from explorer.measure.settings import MeasureSettings

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("changes, field", [
    (dict(warmup_s=INF), "measure.warmup_s"), (dict(warmup_s=NAN), "measure.warmup_s"),
    (dict(max_time_s=NAN), "measure.max_time_s"), (dict(max_time_s=INF), "measure.max_time_s"),
    (dict(target_rel_ci=NAN), "measure.target_rel_ci"), (dict(threads=10_000), "measure.threads"),
    (dict(threads=True), "measure.threads"), (dict(batch_size=10**9), "measure.batch_size"),
    (dict(max_iters=10**12), "measure.max_iters"),
])
def test_non_finite_and_absurd_settings_are_refused(changes, field):
    with pytest.raises(OptionError, match=f"invalid {field}="):
        MeasureSettings(**changes).check_on_machine()


@pytest.mark.parametrize("cls, changes, field", [
    (SweepOptions, dict(timeout_s=-5), "sweep.timeout_s"), (SweepOptions, dict(timeout_s=INF), "sweep.timeout_s"),
    (SweepOptions, dict(timeout_s=0), "sweep.timeout_s"), (SweepOptions, dict(isolation="bogus"), "sweep.isolation"),
    (SweepOptions, dict(max_measurements=-1), "sweep.max_measurements"),
    (SweepOptions, dict(resume="yes"), "sweep.resume"),
    (SearchOptions, dict(trials=0), "search.trials"), (SearchOptions, dict(max_ttft_ms=NAN), "search.max_ttft_ms"),
    (SearchOptions, dict(objectives={"ttft_ms": "fastest"}), "search.objectives"),
])
def test_options_are_validated_when_made(cls, changes, field):
    with pytest.raises(OptionError, match=f"invalid {field}="):
        cls(**changes)


@pytest.mark.timeout(120)  # before: the warm-up loop never ended (a hang, not a slow run)
def test_warmup_inf_on_the_command_line_exits_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep_cmd.main(["+space=fastvithd", "measure.warmup_s=inf", "sweep.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "warmup_s" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_objectives_as_a_mapping_keep_their_directions():
    # Oracle by hand: maximising accuracy keeps a (fast, poor) and c (slow, best); b is dominated by
    # neither when accuracy is minimised wrongly, so the two readings give different frontiers.
    df = pd.DataFrame({"ttft_ms": [10.0, 20.0, 30.0], "accuracy": [50.0, 40.0, 70.0]})
    got = pareto_front(df, {"ttft_ms": "minimize", "accuracy": "maximize"}).front
    assert sorted(got["ttft_ms"]) == [10.0, 30.0]
    same = pareto_front(df, "ttft_ms:min,accuracy:max").front
    assert sorted(same["ttft_ms"]) == [10.0, 30.0]


def test_a_user_csv_joins_whatever_the_knob_spelling(tmp_path):
    sp = load_space({"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2]}}}, "resolutions": [64],
                     "llms": ["llm-a"], "text_tokens": [0]}, shape_fn=F.shape, check_models=False)
    F.run(sp, MeasureSettings(device="cpu"), Store(tmp_path / "r"))
    csv = tmp_path / "acc.csv"
    csv.write_text('encoder,resolution,llm,value,knobs\ntoy,64,llm-a,61.5,"{""width"": 2.0}"\n'
                   'toy,64.0,llm-a,55.0,"{""width"":1}"\n')
    df = results.load(tmp_path / "r", accuracy_csv=csv, accuracy_metric="avg5")
    by_width = {int(__import__("json").loads(k)["width"]): a for k, a in zip(df["knobs"], df["accuracy"])}
    assert by_width == {1: 55.0, 2: 61.5}


def test_a_huge_space_is_refused_fast_with_its_size_named(monkeypatch):
    width = list(np.round(np.linspace(0.5, 2.0, 40), 4))
    sp = load_space({"name": "huge", "encoders": {"toy": {"knobs": {"width": width, "depth": list(range(1, 41))}}},
                     "resolutions": [32 * i for i in range(1, 41)], "llms": ["llm-a", "llm-b"],
                     "text_tokens": [0, 8]}, shape_fn=F.shape, check_models=False)
    assert sp.product_size() == 40 * 40 * 40 * 2 * 2 > MAX_SWEEP_POINTS

    def no_enumeration(*args, **kwargs):
        raise AssertionError("the space was enumerated before it was refused")

    import explorer.engine.sweep.plan as plan_module

    monkeypatch.setattr(plan_module, "enumerate_points", no_enumeration)
    with pytest.raises(SpaceError, match="256,000 design points"):
        plan_sweep(sp, MeasureSettings(device="cpu"), None, SweepOptions(), F.BACKEND)


def test_loading_checks_each_knob_value_once_not_the_product():
    """The zoo check used to build every knob combination (the 9-minute dry run); now each listed
    value is built once: 1 + 39 + 39 combinations for 40 x 40 values, plus the resolutions."""
    calls = []

    def counting_shape(family, knobs, resolution):
        calls.append((family, tuple(sorted(knobs.items())), resolution))
        return F.shape(family, knobs, resolution)

    width = [round(0.5 + 0.05 * i, 2) for i in range(40)]
    load_space({"name": "wide", "encoders": {"toy": {"knobs": {"width": width, "depth": list(range(1, 41))}}},
                "resolutions": [64, 128, 256], "llms": ["qwen2-0.5b"], "text_tokens": [0]}, shape_fn=counting_shape)
    assert len(calls) == 1 + 39 + 39 + 3  # each value once, then every resolution with one good combination


def test_planning_counts_flops_for_a_bounded_number_of_configs():
    counted = []

    def gflops(family, knobs, resolution):
        counted.append(knobs)
        return F.gflops(family, knobs, resolution)

    sp = load_space({"name": "wide", "encoders": {"toy": {"knobs": {"width": [1, 2, 3, 4, 5, 6], "depth": [1, 2, 3, 4, 5]}}},
                     "resolutions": [64, 128], "llms": ["llm-a"], "text_tokens": [0]}, shape_fn=F.shape, check_models=False)
    plan = plan_sweep(sp, MeasureSettings(device="cpu"), None, SweepOptions(), F.backend(encoder_gflops=gflops))
    from explorer.engine.sweep.plan import MAX_COUNTED_CONFIGS

    assert len(counted) == MAX_COUNTED_CONFIGS < 30 and len(plan.jobs) == 60 + 12 + 2  # encoders; projectors (6 widths x 2 token counts); prefills
    enc = [j for j in plan.jobs if j.kind == "encoder"]
    assert all(j.gflops_est > 0 for j in enc)


def test_search_over_a_space_too_large_to_list(tmp_path, monkeypatch):
    width = [round(0.5 + 0.01 * i, 2) for i in range(100)]
    sp = load_space({"name": "huge", "encoders": {"toy": {"knobs": {"width": width, "depth": list(range(1, 101))}}},
                     "resolutions": [32 * i for i in range(1, 11)], "llms": ["llm-a", "llm-b"], "text_tokens": [0],
                     "exclude": [{"depth": 1}]}, shape_fn=F.shape, check_models=False)
    assert sp.product_size() == 200_000

    def no_enumeration(*args, **kwargs):
        raise AssertionError("the search listed the whole space")

    import explorer.engine.search.loop as search_loop

    monkeypatch.setattr(search_loop, "enumerate_points", no_enumeration)
    report = F.search(sp, MeasureSettings(device="cpu"), f"sqlite:///{tmp_path}/s.db", trials=4, sampler="random")
    assert report.grid_size == 200_000 and report.trials_run == 4
    assert report.states.get("COMPLETE", 0) + report.states.get("PRUNED", 0) == 4
