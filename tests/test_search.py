"""The optuna search (explorer/search.py, explorer/commands/search.py) with fake measurements.

Also the issue's claim, on a 60-point grid that is measured exhaustively too: a search recovers
at least 90 % of the exhaustive frontier's hypervolume with at most half the measurements.
``python tests/test_search.py`` prints the benchmark table quoted in docs/search.md.
"""
from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

import sweep_fakes as F
from explorer.analysis import pareto
from explorer.data import results
from explorer.measure.costs import EncoderCost, PrefillCost
from explorer.engine.backend import FixedEnvironment, MeasureBackend
from explorer.engine.search import Dimension, ParamSpace, SearchError
from explorer.data.space import DesignPoint, enumerate_points, load_space
from explorer.data.store import Store

# --------------------------------------------------------------------------------------------
# Fakes with structure: TTFT and accuracy both rise with resolution, width and the LLM

LLM_MS_PER_TOKEN = {"llm-a": 0.1, "llm-b": 0.3, "llm-c": 0.9}
LLM_BONUS = {"llm-a": 0.0, "llm-b": 4.0, "llm-c": 7.0}


def llm_info(llm: str) -> tuple[int, dict[str, Any], float]:
    if llm not in LLM_MS_PER_TOKEN:
        raise ValueError(f"invalid llm={llm!r}: one of {', '.join(LLM_MS_PER_TOKEN)}")
    hidden = {"llm-a": 32, "llm-b": 64, "llm-c": 128}[llm]
    return hidden, {"name": llm, "hidden": hidden}, 100.0


def encoder_ms(knobs: Mapping[str, Any], resolution: int) -> float:
    """FLOP-like: width^2 x depth x pixels."""
    return 2.0 + 0.5 * knobs["width"] ** 2 * knobs.get("depth", 1.0) * (resolution / 64) ** 2


def measure_encoder(name: str, knobs: dict[str, Any], resolution: int, settings: Any, time: bool = True) -> EncoderCost:
    F.CALLS["encoder"] += 1
    s = F.shape(name, knobs, resolution)
    ms = encoder_ms(knobs, resolution)
    return EncoderCost(encoder=name, knobs=dict(knobs), resolution=resolution, visual_tokens=s.visual_tokens,
                       out_channels=s.out_channels, params_m=s.params_m, gflops=ms, latency=F.timing(ms),
                       peak_mem_mb=1.0, peak_mem_method="fake")


def measure_prefill(llm: str, tokens: int, settings: Any, time: bool = True) -> PrefillCost:
    F.CALLS["prefill"] += 1
    ms = 5.0 + LLM_MS_PER_TOKEN[llm] * tokens
    return PrefillCost(llm=llm, tokens=tokens, params_m=100.0, gflops=tokens * 0.2, latency=F.timing(ms),
                       method="whole-model")


def accuracy(point: DesignPoint) -> float:
    """Diminishing returns in resolution, width and depth, a bonus per LLM and a little wiggle."""
    k = point.knob_dict()
    w, d, r = k["width"], k.get("depth", 1.0), point.resolution
    return (40 + 9 * math.log2(r / 256) ** 0.8 + 7 * math.log2(w / 0.5) + 5 * math.log2(d / 0.5) ** 0.5
            + LLM_BONUS[point.llm] + 0.7 * math.sin(7 * w + r / 97 + d))


STRUCTURED = dict(measure_encoder=measure_encoder, measure_prefill=measure_prefill, llm_info=llm_info)
SIMPLE: dict[str, Any] = {}


def grid_space(big: bool = False) -> Any:
    """60 points (5 widths x 6 resolutions x 2 LLMs), or 360 with depth and a third LLM."""
    if big:
        raw = {"name": "grid_big", "encoders": {"toy": {"knobs": {"width": [0.5, 0.625, 0.75, 0.875, 1.0],
                                                                    "depth": [0.5, 0.75, 1.0]}}},
               "resolutions": {"start": 256, "stop": 1152, "step": 128}, "llms": list(LLM_MS_PER_TOKEN),
               "text_tokens": [16]}
    else:
        raw = {"name": "grid", "encoders": {"toy": {"knobs": {"width": [0.5, 0.625, 0.75, 0.875, 1.0]}}},
               "resolutions": [256, 384, 512, 640, 768, 896], "llms": ["llm-a", "llm-b"], "text_tokens": [16]}
    return load_space(raw, check_models=False, shape_fn=F.shape)


def toy_space(**extra: Any) -> Any:
    raw = {"name": "toyspace", "encoders": {"toy": {"knobs": {"width": [0.5, 0.75, 1.0, 1.25]}}},
           "resolutions": [256, 384, 512, 640], "llms": ["llm-a", "llm-b"], "text_tokens": [16]}
    raw.update(extra)
    return load_space(raw, check_models=False, shape_fn=F.shape)


def add_accuracy(store: Store, space: Any) -> None:
    for p in enumerate_points(space, shape_fn=F.shape):
        store.add_accuracy(accuracy(p), "fake", point=p)


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


# --------------------------------------------------------------------------------------------
# Space -> parameters


def test_dimensions_ordinal_categorical_fixed_and_list_knobs() -> None:
    res = Dimension.build("resolution", (256, 512, 768, 1024))
    assert (res.kind, res.low, res.high, res.step) == ("int", 256, 1024, 256)
    width = Dimension.build("width_mult", (0.5, 0.625, 0.75, 0.875, 1.0))
    assert width.kind == "float" and width.step == 0.125
    assert width.decode(0.7500000001) == 0.75
    assert Dimension.build("x", (256, 512, 1024)).kind == "categorical"  # not evenly spaced
    assert Dimension.build("x", (256, 512, 768), ordinal=False).kind == "categorical"
    assert Dimension.build("llm", ("a",)).kind == "fixed"
    depths = Dimension.build("depths", ((2, 2, 6, 2), (2, 4, 8, 2)))
    assert depths.kind == "categorical" and depths.choices() == ("[2,2,6,2]", "[2,4,8,2]")
    assert depths.decode("[2,4,8,2]") == (2, 4, 8, 2)


def test_param_space_single_and_multi_entry() -> None:
    one = ParamSpace.from_space(toy_space())
    assert set(one.distributions()) == {"width", "resolution", "llm"}  # text_tokens is fixed
    assert one.grid_size() == 32
    multi = load_space({"name": "m", "encoders": {"toy": {"knobs": {"width": [0.5, 1.0]}, "resolutions": [256, 512]},
                                                  "toy2": {"knobs": {"depth": [1, 2]}, "resolutions": [256]}},
                        "llms": ["llm-a"], "text_tokens": [8, 16]}, check_models=False, shape_fn=F.shape)
    ps = ParamSpace.from_space(multi)
    assert set(ps.distributions()) == {"encoder", "toy.width", "toy.resolution", "toy2.depth", "text_tokens"}
    assert ps.grid_size() == (2 * 2 + 2 * 1) * 2
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    grid = set(enumerate_points(multi, shape_fn=F.shape))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        point = ps.suggest(trial)
        assert point in grid  # decoded points are grid points with the sweep's keys
        seen.add(point.encoder)
        study.tell(trial, 0.0)
    assert seen == {"toy", "toy2"}


# --------------------------------------------------------------------------------------------
# The loop


def test_runs_n_trials_and_keeps_the_study_in_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    report = F.search(toy_space(), None, url, trials=8, seed=0, **SIMPLE)
    assert report.trials_run == 8 and report.states == {"COMPLETE": 8}
    assert optuna.get_all_study_names(url) == [report.study_name]
    assert report.study_name.startswith("toyspace-tpe-")
    study = load(url, report.study_name)
    assert len(study.trials) == 8 and len(study.directions) == 2
    t = study.trials[0]
    assert {"point_key", "label", "point", "status", "metrics", "worker"} <= set(t.user_attrs)
    assert t.values[0] == pytest.approx(t.user_attrs["metrics"]["ttft_ms"])
    # the store holds the measured points and the report's frame and frontier come from it
    with Store(url) as st:
        keys = {r.key for r in st.points("toyspace")}
    assert set(report.point_keys) <= keys and 1 <= report.unique_points <= 8
    frame = report.frame()
    assert len(frame) == report.unique_points and frame["status"].eq("ok").all()
    assert report.objectives == (pareto.Objective("ttft_ms", "min"), pareto.Objective("resolution", "max"))
    assert any("stand-in for accuracy" in n for n in report.notes)
    text = report.format()
    assert "frontier" in text and "unique design points evaluated" in text


def test_resume_adds_only_the_missing_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    space = toy_space()
    first = F.search(space, None, url, trials=5, **SIMPLE)
    second = F.search(space, None, url, trials=9, **SIMPLE)
    assert (second.trials_before, second.trials_run) == (5, 4)
    assert second.study_name == first.study_name
    assert len(load(url, first.study_name).trials) == 9
    F.CALLS.clear()
    third = F.search(space, None, url, trials=9, **SIMPLE)
    assert third.trials_run == 0 and sum(F.CALLS.values()) == 0
    # another sampler is another study in the same database
    other = F.search(space, None, url, trials=3, sampler="random", **SIMPLE)
    assert other.study_name != first.study_name and other.trials_run == 3
    assert len(optuna.get_all_study_names(url)) == 2


def test_abandoned_running_trials_are_failed_and_redone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    space = toy_space()
    first = F.search(space, None, url, trials=3, **SIMPLE)
    study = load(url, first.study_name)
    zombie = study.ask()  # a search killed with SIGKILL leaves a RUNNING trial behind
    zombie.set_user_attr("worker", {"host": __import__("socket").gethostname(), "pid": 2 ** 22 + 12345})
    again = F.search(space, None, url, trials=5, **SIMPLE)
    assert again.trials_run == 2
    states = [t.state for t in load(url, first.study_name).trials]
    assert TrialState.RUNNING not in states and states.count(TrialState.FAIL) == 1
    assert any("marked FAIL" in n for n in again.notes)


def test_ctrl_c_fails_the_trial_in_flight_and_resume_redoes_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    space = toy_space()
    calls = {"n": 0}

    def interrupt_third(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return F.measure_encoder(*args, **kwargs)

    stopped = F.search(space, None, url, trials=8, **{**SIMPLE, "measure_encoder": interrupt_third})
    assert stopped.interrupted and stopped.trials_run < 8
    trials = load(url, stopped.study_name).trials
    assert trials[-1].state == TrialState.FAIL and "interrupted" in trials[-1].user_attrs
    again = F.search(space, None, url, trials=8, **SIMPLE)
    assert again.trials_before == stopped.trials_run and again.trials_before + again.trials_run == 8
    assert not again.interrupted


def test_cached_measurements_cost_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    space = toy_space()
    F.CALLS.clear()
    report = F.search(space, None, url, trials=25, seed=3, **SIMPLE)
    trial_keys = [t.user_attrs["point_key"] for t in load(url, report.study_name).trials]
    assert len(set(trial_keys)) < len(trial_keys)  # TPE proposed some points twice ...
    assert report.cached_trials >= len(trial_keys) - len(set(trial_keys))  # ... which were free
    points = [DesignPoint.from_dict(t.user_attrs["point"]) for t in load(url, report.study_name).trials]
    encoders = {(p.encoder, p.knobs, p.resolution) for p in points}
    assert F.CALLS["encoder"] == len(encoders) == report.measured["encoder"]  # factorised, each once
    # after a full sweep, a new search measures nothing at all
    F.run(space, None, Store(url))
    F.CALLS.clear()
    fresh = F.search(space, None, url, trials=10, sampler="random", **SIMPLE)
    assert sum(F.CALLS.values()) == 0 and sum(fresh.measured.values()) == 0
    assert fresh.cached_trials == 10


def optuna_constraint(t: optuna.trial.FrozenTrial) -> float:
    """The constraint value optuna itself keeps (optuna 5: Trial.set_constraint; 4: constraints_func)."""
    if hasattr(t, "constraints"):
        return float(t.constraints["max_ttft_ms"])
    return float(t.system_attrs["constraints"][0])


def test_constraints_mark_infeasible_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    limit = 250.0
    report = F.search(toy_space(), None, url, trials=16, seed=1, constraints={"max_ttft_ms": limit}, **SIMPLE)
    study = load(url, report.study_name)
    slow = [t for t in study.trials if t.user_attrs["metrics"]["ttft_ms"] > limit]
    fast = [t for t in study.trials if t.user_attrs["metrics"]["ttft_ms"] <= limit]
    assert slow and fast
    for t in slow:
        assert optuna_constraint(t) > 0 and t.user_attrs["constraint:max_ttft_ms"] > 0
    for t in fast:
        assert optuna_constraint(t) <= 0
    assert report.infeasible == len(slow)
    assert all(t.values[0] <= limit for t in study.best_trials)  # optuna's frontier is feasible only
    front = report.frontier().front
    assert len(front) and (front["ttft_ms"] <= limit).all()
    # a changed constraint is a different search: a new default study, the old one untouched
    other = F.search(toy_space(), None, url, trials=2, constraints={"max_ttft_ms": 500.0}, **SIMPLE)
    assert other.study_name != report.study_name


def test_failed_measurements_become_fail_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    space = toy_space(encoders={"toy": {"knobs": {"width": [0.5, 1.0], "fail": [False, True]}}})
    F.CALLS.clear()
    report = F.search(space, None, url, trials=14, sampler="random", seed=0, **SIMPLE)
    study = load(url, report.study_name)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert failed and done
    for t in failed:
        assert t.params["fail"] is True and t.user_attrs["status"] == "failed"
        assert "boom" in t.user_attrs["error"]
    assert report.states["FAIL"] == len(failed)
    # failed points count as evaluated, and a stored failure is not measured again
    assert {t.user_attrs["point_key"] for t in failed} <= set(report.point_keys)
    failed_keys = {t.user_attrs["point_key"] for t in failed}
    again = F.search(space, None, url, trials=20, sampler="random", seed=0, **SIMPLE)
    assert again.trials_run == 6
    repeats = [t for t in load(url, report.study_name).trials[14:] if t.user_attrs["point_key"] in failed_keys]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("cached") for t in repeats)


def test_excluded_points_are_pruned_without_measuring(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    space = toy_space(exclude=[{"resolution": 640}, {"width": 1.25}])
    report = F.search(space, None, url, trials=20, sampler="random", seed=2, **SIMPLE)
    study = load(url, report.study_name)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all("not in the space" in t.user_attrs["skip_reason"] for t in pruned)
    assert all(t.params["resolution"] == 640 or t.params["width"] == 1.25 for t in pruned)
    assert report.frame()["resolution"].max() < 640
    assert report.grid_size == 2 * 3 * 3


def test_accuracy_objective_and_points_without_accuracy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    space = toy_space()
    with Store(url) as st:  # accuracy known only at 256 and 384 px
        for p in enumerate_points(space, shape_fn=F.shape):
            if p.resolution <= 384:
                st.add_accuracy(50 + p.resolution / 100 + p.knob_dict()["width"], "fake", point=p)
    report = F.search(space, None, url, trials=12, sampler="random", seed=0, **SIMPLE)
    assert [str(o) for o in report.objectives] == ["ttft_ms:min", "accuracy:max"]
    study = load(url, report.study_name)
    for t in study.trials:
        if t.params["resolution"] <= 384:
            assert t.state == TrialState.COMPLETE and t.values[1] == pytest.approx(t.user_attrs["metrics"]["accuracy"])
        else:
            assert t.state == TrialState.PRUNED and "accuracy" in t.user_attrs["skip_reason"]


def test_pure_latency_objectives_visual_tokens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    report = F.search(toy_space(), None, url, trials=10, sampler="nsga2", population_size=4,
                        objectives="ttft_ms:min,visual_tokens:max", **SIMPLE)
    assert report.states == {"COMPLETE": 10} and report.notes == []
    front = report.frontier().front
    assert list(report.frontier().objectives) == [pareto.Objective("ttft_ms"), pareto.Objective("visual_tokens", "max")]
    assert front["visual_tokens"].is_monotonic_increasing or len(front) == 1


@pytest.mark.parametrize("kwargs, key", [
    (dict(sampler="cmaes"), "search.sampler"),
    (dict(trials=0), "search.trials"),
    (dict(trials=True), "search.trials"),
    (dict(trials=2.5), "search.trials"),
    (dict(seed="zero"), "search.seed"),
    (dict(objectives="ttft_ms:min,speed:max"), "search.objectives"),
    (dict(objectives="ttft_ms:fastest"), "search.objectives"),
    (dict(constraints={"max_ttft_ms": -1}), "search.max_ttft_ms"),
    (dict(constraints={"max_latency": 3}), "search.max_latency"),
    (dict(study_name=" "), "search.study"),
    (dict(population_size=1), "search.population_size"),
    (dict(isolation="thread"), "sweep.isolation"),
])
def test_bad_input_is_rejected_before_any_work(tmp_path: Path, kwargs: dict[str, Any], key: str) -> None:
    db = tmp_path / "sub" / "store.db"
    F.CALLS.clear()
    args = {**SIMPLE, **kwargs}
    with pytest.raises(ValueError, match=f"invalid {key}="):
        F.search(toy_space(), None, str(db), **args)
    assert not db.exists() and sum(F.CALLS.values()) == 0


def test_a_study_made_for_another_search_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    F.search(toy_space(), None, url, trials=2, study_name="mine", **SIMPLE)
    with pytest.raises(SearchError, match="invalid search.study='mine'.*objectives"):
        F.search(toy_space(), None, url, trials=2, study_name="mine", objectives="ttft_ms:min,visual_tokens:max",
                   **SIMPLE)
    optuna.create_study(study_name="foreign", storage=url).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(SearchError, match="not created by explorer search"):
        F.search(toy_space(), None, url, trials=2, study_name="foreign", objectives="ttft_ms", **SIMPLE)


# --------------------------------------------------------------------------------------------
# The command line (a real space, fake measurements)


def any_encoder(name: str, knobs: dict[str, Any], resolution: int, settings: Any, time: bool = True) -> EncoderCost:
    from explorer.data.space import encoder_shape

    s = encoder_shape(name, knobs, resolution)
    ms = 0.01 * s.params_m * s.visual_tokens
    return EncoderCost(encoder=name, knobs=dict(knobs), resolution=resolution, visual_tokens=s.visual_tokens,
                       out_channels=s.out_channels, params_m=s.params_m, gflops=ms, latency=F.timing(ms),
                       peak_mem_mb=1.0, peak_mem_method="fake")


def any_prefill(llm: str, tokens: int, settings: Any, time: bool = True) -> PrefillCost:
    ms = tokens * (0.1 if "0.5b" in llm else 0.3)
    return PrefillCost(llm=llm, tokens=tokens, params_m=100.0, gflops=tokens * 0.2, latency=F.timing(ms),
                       method="whole-model")


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> Any:
    import explorer.engine.search as search_mod

    real = search_mod.run_search
    backend = MeasureBackend(measure_encoder=any_encoder, measure_projector=F.measure_projector,
                             measure_prefill=any_prefill, environment=FixedEnvironment(F.FakeEnv()))

    def run(space: Any, settings: Any, store: Any, options: Any, sweep: Any) -> Any:
        return real(space, settings, store, options, sweep, backend)

    monkeypatch.setattr(search_mod, "run_search", run)
    from explorer.commands.search import main

    return main


def test_cli_runs_resumes_and_prints_the_frontier(tmp_path: Path, fake_cli: Any, capsys: pytest.CaptureFixture) -> None:
    common = ["+space=fastvithd", f"out={tmp_path}", "sweep.isolation=inline", "sweep.progress=false"]
    assert fake_cli([*common, "search.trials=3"]) == 0
    out = capsys.readouterr().out
    assert "frontier" in out and "unique design points evaluated" in out and "optuna-dashboard" in out
    assert fake_cli([*common, "search.trials=5", "search.max_ttft_ms=300"]) == 0  # another search: new study
    assert fake_cli([*common, "search.trials=5"]) == 0  # the first study again, 2 more trials
    url = f"sqlite:///{tmp_path}/store.db"
    names = optuna.get_all_study_names(url)
    assert len(names) == 2
    counts = sorted(len(optuna.load_study(study_name=n, storage=url).trials) for n in names)
    assert counts == [5, 5]


def test_cli_dry_run_measures_nothing(tmp_path: Path, fake_cli: Any, capsys: pytest.CaptureFixture) -> None:
    code = fake_cli(["+space=fastvithd", f"out={tmp_path / 'r'}", "search.dry_run=true", "search.sampler=nsga2",
                     "search.objectives=[ttft_ms:min,visual_tokens:max]"])
    out = capsys.readouterr().out
    assert code == 0 and "optuna parameters" in out and "resolution: int 256..768 step 256" in out
    assert "fastvithd-nsga2-" in out and "visual_tokens:max" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("arg, code, text", [
    ("search.sampler=cmaes", 2, "error: invalid search.sampler='cmaes': one of tpe, nsga2, random"),
    ("search.trials=0", 2, "error: invalid search.trials=0"),
    ("search.max_params_m=-5", 2, "error: invalid search.max_params_m=-5"),
    ("search.objectives=[ttft_ms:min,speed:max]", 2, "column 'speed' is not a numeric results column"),
    ("search.trials=many", 2, "error: invalid search.trials='many': an integer"),  # Hydra's type check, reworded
])
def test_cli_bad_options_exit_without_traceback(tmp_path: Path, fake_cli: Any, capsys: pytest.CaptureFixture,
                                               arg: str, code: int, text: str) -> None:
    assert fake_cli(["+space=fastvithd", f"out={tmp_path / 'r'}", arg]) == code
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------
# The claim: >= 90 % of the exhaustive frontier's hypervolume from <= half the measurements


def recovery(sampler: str, trials: int, seed: int, workdir: Path, big: bool = False,
             population_size: Optional[int] = None) -> dict[str, Any]:
    """Exhaustive sweep vs a search on the same structured fakes; hypervolumes share the reference
    point (the exhaustive table's nadir + 10 %)."""
    space = grid_space(big)
    full_store = workdir / f"full-{space.name}.db"
    fresh = not full_store.exists()
    with Store(str(full_store)) as st:
        if fresh:
            add_accuracy(st, space)
            F.run(space, None, st, **STRUCTURED)
        full = results.frame_from_store(st, space=space.name, env="fake-env")
    objectives = pareto.DEFAULT_OBJECTIVES
    reference = pareto.reference_point_from(full, objectives)
    exhaustive = pareto.pareto_front(full, objectives).front
    hv_full = pareto.hypervolume(exhaustive, objectives, reference)
    with Store(str(workdir / f"{space.name}-{sampler}-{seed}-{trials}-{population_size}.db")) as st:
        add_accuracy(st, space)
        report = F.search(space, None, st, trials=trials, sampler=sampler, seed=seed,
                            population_size=population_size, **STRUCTURED)
        front = report.frontier(st).front
    hv = pareto.hypervolume(front, objectives, reference)
    return {"space": space.name, "grid": len(full), "sampler": sampler, "seed": seed, "trials": trials,
            "unique_points": report.unique_points, "hv_ratio": hv / hv_full,
            "front_found": len(set(exhaustive["point_key"]) & set(report.point_keys)), "front_size": len(exhaustive)}


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_search_recovers_the_frontier_with_half_the_measurements(tmp_path: Path, sampler: str) -> None:
    r = recovery(sampler, trials=30, seed=0, workdir=tmp_path)
    assert r["grid"] == 60
    assert r["unique_points"] <= r["grid"] // 2
    assert r["hv_ratio"] >= 0.9, r


def _benchmark() -> None:  # pragma: no cover - `python tests/test_search.py`
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for big, budgets in ((False, (15, 30)), (True, (60,))):
            for trials in budgets:
                for sampler in ("tpe", "nsga2", "random"):
                    for seed in range(5):
                        rows.append(recovery(sampler, trials, seed, Path(tmp), big=big))
    df = pd.DataFrame(rows)
    summary = df.groupby(["space", "grid", "trials", "sampler"], sort=False).agg(
        hv_ratio_mean=("hv_ratio", "mean"), hv_ratio_min=("hv_ratio", "min"),
        unique_points_mean=("unique_points", "mean"), front_found_mean=("front_found", "mean"),
        front_size=("front_size", "first")).reset_index()
    print(summary.round(3).to_string(index=False))
    print()
    print(df[df["seed"] == 0].round(3).to_string(index=False))


if __name__ == "__main__":  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).parent))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _benchmark()


def test_search_optimises_predicted_accuracy(tmp_path: Path) -> None:
    """search.accuracy=predicted: every trial has an accuracy (none is stored), from the accuracy model."""
    url = f"sqlite:///{tmp_path}/store.db"
    report = F.search(toy_space(), None, url, trials=5, sampler="random", seed=0, accuracy="predicted", **SIMPLE)
    assert [str(o) for o in report.objectives] == ["ttft_ms:min", "accuracy:max"]
    study = load(url, report.study_name)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 5
    for t in done:
        assert 0 < t.values[1] < 100 and t.values[1] == pytest.approx(t.user_attrs["metrics"]["accuracy"])
