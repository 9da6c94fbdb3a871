"""In-LLM pruning as an axis of a space: points, keys, the sweep's prefill jobs, prediction, search.

Oracles: design-point keys of points without pruning are sha256 digests of JSON written out by
hand (what every store so far holds); the prefill FLOPs of a pruned point are counted by torch's
FlopCounterMode over the two segments of transformers' own model (K layers over V + T tokens, then
L - K layers over T + kept(V)); the predicted FLOPs equal the analytic two-segment count.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from explorer.checks import OptionError
from explorer.data import results
from explorer.data.space import DesignPoint, SpaceError, admits, enumerate_points, load_space
from explorer.data.store import PointRecord, Store
from explorer.engine.backend import MeasureBackend, llm_info
from explorer.measure.costs import PrefillCost
from explorer.measure.pruned_prefill import PrunedPrompt, Pruning

sys.path.insert(0, str(Path(__file__).parent))
import sweep_fakes as sf  # noqa: E402

PRUNE = {"after_layer": 2, "ratio": 0.5}


def _hand_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ points and keys


def test_points_without_pruning_keep_their_keys():
    """The keys every existing store holds: the digest of the five fields' JSON, written by hand."""
    plain = DesignPoint.make("fastvithd", {}, 256, "qwen2-0.5b", 32)
    assert plain.key == _hand_key('{"encoder":"fastvithd","knobs":{},"llm":"qwen2-0.5b","resolution":256,'
                                  '"text_tokens":32}') == "be6a1b6ece5ac94c"
    knobbed = DesignPoint.make("fastvithd", {"depths": [2, 12, 24, 4, 2], "width_mult": 1.0}, 1024, "qwen2-7b", 0)
    assert knobbed.key == _hand_key('{"encoder":"fastvithd","knobs":{"depths":[2,12,24,4,2],"width_mult":1},'
                                    '"llm":"qwen2-7b","resolution":1024,"text_tokens":0}')
    assert DesignPoint.make("fastvithd", {}, 256, "qwen2-0.5b", 32, None) == plain
    assert "pruning" not in plain.to_dict()


def test_pruned_points_have_their_own_key_and_round_trip():
    pruned = DesignPoint.make("fastvithd", {}, 256, "qwen2-0.5b", 32, PRUNE)
    assert pruned.pruning == Pruning(2, 0.5)
    assert pruned.key == _hand_key('{"encoder":"fastvithd","knobs":{},"llm":"qwen2-0.5b","pruning":'
                                   '{"after_layer":2,"ratio":0.5},"resolution":256,"text_tokens":32}')
    assert pruned.key != DesignPoint.make("fastvithd", {}, 256, "qwen2-0.5b", 32).key
    assert DesignPoint.from_dict(json.loads(json.dumps(pruned.to_dict()))) == pruned
    assert pruned.label().endswith("/prune2:0.5")
    with pytest.raises(OptionError, match=r"invalid pruning\.after=2: unknown key"):
        DesignPoint.make("fastvithd", {}, 256, "qwen2-0.5b", 32, {"after": 2, "ratio": 0.5})
    with pytest.raises(OptionError, match=r"invalid pruning=\{'after_layer': 2, 'ratio': 0\.5\}: None or a Pruning"):
        DesignPoint("fastvithd", (), 256, "qwen2-0.5b", 32, PRUNE)  # the constructor takes a Pruning only


def test_pruning_is_validated_on_construction():
    with pytest.raises(OptionError, match=r"invalid after_layer=0: an integer >= 1"):
        Pruning(0, 0.5)
    with pytest.raises(OptionError, match=r"invalid ratio=1\.0: a fraction in \[0, 1\)"):
        Pruning(2, 1.0)
    with pytest.raises(OptionError, match=r"invalid ratio=True"):
        Pruning(2, True)
    with pytest.raises(OptionError, match=r"invalid visual=-1"):
        PrunedPrompt(-1, 8, Pruning(2, 0.5))
    assert PrunedPrompt(100, 8, Pruning(2, 0.5)).tokens == 108


def test_the_store_keeps_old_and_pruned_points(tmp_path):
    store = Store(tmp_path / "store.db")
    old = DesignPoint.make("toy", {"width": 1}, 64, "llm-a", 8)
    new = DesignPoint.make("toy", {"width": 1}, 64, "llm-a", 8, PRUNE)
    store.save_points([PointRecord(space="s", point=p, encoder_key="e", projector_key="p", prefill_key=f"f{i}",
                                   visual_tokens=4) for i, p in enumerate((old, new))])
    back = {r.key: r.point for r in store.points("s")}
    assert back == {old.key: old, new.key: new}
    assert back[old.key].pruning is None and back[new.key].pruning == Pruning(2, 0.5)
    # a point row written before pruning existed (no "pruning" in its JSON) reads back as unpruned
    assert DesignPoint.from_dict({"encoder": "toy", "knobs": {"width": 1}, "resolution": 64, "llm": "llm-a",
                                  "text_tokens": 8}) == old
    store.close()


# ------------------------------------------------------------------------------ the space


def _space(pruning: Any = None, **extra: Any) -> dict[str, Any]:
    raw = {"name": "pr", "encoders": {"toy": {"knobs": {"width": [1]}, "resolutions": [64, 128]}},
           "llms": ["llm-a"], "text_tokens": [8], **extra}
    if pruning is not None:
        raw["pruning"] = pruning
    return raw


def _load(raw: dict[str, Any]):
    return load_space(raw, check_models=False, shape_fn=sf.shape)


def test_a_space_names_pruning_as_an_axis():
    space = _load(_space([None, PRUNE, {"after_layer": 1, "ratio": 0.75}]))
    assert space.pruning == (None, Pruning(2, 0.5), Pruning(1, 0.75))
    assert space.product_size() == 2 * 3
    points = enumerate_points(space, shape_fn=sf.shape)
    assert len(points) == 6 and {p.pruning for p in points} == set(space.pruning)
    assert all(admits(space, p, shape_fn=sf.shape) for p in points)
    assert not admits(space, DesignPoint.make("toy", {"width": 1}, 64, "llm-a", 8, {"after_layer": 3, "ratio": 0.5}),
                      shape_fn=sf.shape)
    # no `pruning:` key: one option, no pruning, the same points as before the axis existed
    plain = _load(_space())
    assert plain.pruning == (None,)
    assert [p.key for p in enumerate_points(plain, shape_fn=sf.shape)] == [p.key for p in points if p.pruning is None]
    assert _load(_space(PRUNE)).pruning == (Pruning(2, 0.5),)  # one mapping is a list of one


def test_exclude_names_pruning():
    """`exclude` takes `pruning` as a key: a {after_layer, ratio} entry of the axis, or null for the
    unpruned points; together with other keys it drops only the points matching all of them."""
    raw = _space([None, PRUNE, {"after_layer": 1, "ratio": 0.75}])
    full = enumerate_points(_load(raw), shape_fn=sf.shape)
    assert len(full) == 6
    space = _load({**raw, "exclude": [{"pruning": PRUNE, "resolution": 64}, {"pruning": None, "resolution": 128}]})
    points = enumerate_points(space, shape_fn=sf.shape)
    dropped = {(p.resolution, p.pruning) for p in full} - {(p.resolution, p.pruning) for p in points}
    assert dropped == {(64, Pruning(2, 0.5)), (128, None)}
    assert len(points) == 4
    assert not admits(space, DesignPoint.make("toy", {"width": 1}, 64, "llm-a", 8, PRUNE), shape_fn=sf.shape)
    assert admits(space, DesignPoint.make("toy", {"width": 1}, 128, "llm-a", 8, PRUNE), shape_fn=sf.shape)
    assert admits(space, DesignPoint.make("toy", {"width": 1}, 64, "llm-a", 8), shape_fn=sf.shape)
    # the search's fingerprint reads the exclusions back as plain JSON
    assert space.exclusions() == [{"pruning": PRUNE, "resolution": 64}, {"pruning": None, "resolution": 128}]
    json.dumps(space.exclusions())


@pytest.mark.parametrize("entry,message", [
    ({"pruning": {"after_layer": 3, "ratio": 0.5}}, r"exclude\[0\]\.pruning=\{'after_layer': 3, 'ratio': 0\.5\}: "
                                                    r"a value the space's pruning axis lists.*listed: null, "
                                                    r'\{"after_layer":2,"ratio":0\.5\}'),
    ({"pruning": {"after_layer": 2, "keep": 0.5}}, r"exclude\[0\]\.pruning\.keep=0\.5: unknown key; allowed: after_layer, ratio"),
    ({"pruning": {"after_layer": 2, "ratio": 2}}, r"exclude\[0\]\.pruning\.ratio=2: a fraction in \[0, 1\)"),
])
def test_a_bad_pruning_exclusion_names_the_field(entry, message):
    with pytest.raises(SpaceError, match=message):
        _load({**_space([None, PRUNE]), "exclude": [entry]})


@pytest.mark.parametrize("value,message", [
    ([{"after_layer": 0, "ratio": 0.5}], r"pruning\[0\]\.after_layer=0: an integer >= 1"),
    ([None, {"after_layer": 2, "ratio": 1.5}], r"pruning\[1\]\.ratio=1\.5: a fraction in \[0, 1\)"),
    ([{"after_layer": 2, "ratio": 0.5, "keep": "attention"}], r"pruning\[0\]\.keep='attention': unknown key"),
    ([{"after_layer": 2}], r"pruning\[0\]\.ratio=None: missing"),
    ([], r"pruning=\[\]: a non-empty list"),
    ("fastv", r"pruning='fastv': a non-empty list"),
])
def test_bad_pruning_entries_name_the_field(value, message):
    with pytest.raises(SpaceError, match=message):
        _load(_space(value))


def test_after_layer_beyond_the_llm_is_refused_when_loading():
    raw = {"encoders": {"fastvithd": {"knobs": {"depths": [[1, 1, 1, 1, 1]]}, "resolutions": [256]}},
           "llms": ["qwen2-0.5b"], "pruning": [None, {"after_layer": 24, "ratio": 0.5}]}
    with pytest.raises(SpaceError, match=r"pruning\[1\]\.after_layer=24: an integer 1\.\.23: llms\[0\] qwen2-0\.5b "
                                         r"has 24 decoder layers"):
        load_space(raw)


# ------------------------------------------------------------------------------ the sweep (fakes)

LAYERS = 4


def fake_llm_info(llm: str) -> tuple[int, dict[str, Any], float]:
    hidden, spec, params = sf.llm_info(llm)
    return hidden, {**spec, "layers": LAYERS}, params


def fake_prefill(llm: str, tokens: Any, settings: Any, time: bool = True) -> PrefillCost:
    """Cost = layers x tokens per layer: for a pruned prompt, K layers over V + T and L - K over T + kept."""
    sf.CALLS["prefill"] += 1
    if isinstance(tokens, PrunedPrompt):
        pr = tokens.pruning
        work = pr.after_layer * tokens.tokens + (LAYERS - pr.after_layer) * (tokens.text + pr.kept(tokens.visual))
        return PrefillCost(llm=llm, tokens=tokens.tokens, params_m=100.0, gflops=work * 0.05,
                           latency=sf.timing(work * 0.25), method=f"pruned {pr.after_layer}:{pr.ratio}")
    return PrefillCost(llm=llm, tokens=tokens, params_m=100.0, gflops=LAYERS * tokens * 0.05,
                       latency=sf.timing(LAYERS * tokens * 0.25), method="whole-model")


def _run(raw: dict[str, Any], store: Any, **kw: Any):
    return sf.run(raw, None, store, measure_prefill=fake_prefill, llm_info=fake_llm_info, **kw)


def test_pruned_prefills_are_jobs_of_their_own_and_unpruned_ones_stay_shared(tmp_path):
    store = Store(tmp_path / "store.db")
    first = _run(_space(), store)
    assert first.measured == {"encoder": 2, "projector": 2, "prefill": 2}
    second = _run(_space([None, PRUNE], name="pr2"), store)  # the same points plus their pruned twins
    assert second.skipped == 6 and second.measured == {"encoder": 0, "projector": 0, "prefill": 2}
    pruned_jobs = [m for m in store.measurements() if m.kind == "prefill" and "pruning" in m.inputs]
    # toy: (res/32)^2 visual tokens; 64 px -> 4, 128 px -> 16; text 8
    assert sorted((m.inputs["visual"], m.inputs["text"], m.inputs["tokens"]) for m in pruned_jobs) == [(4, 8, 12),
                                                                                                      (16, 8, 24)]
    assert all(m.inputs["pruning"] == PRUNE for m in pruned_jobs)
    df = results.load(store, space="pr2", accuracy_metric=None)
    assert len(df) == 4 and set(df.pruning.dropna()) == {'{"after_layer":2,"ratio":0.5}'}
    for res, visual in ((64, 4), (128, 16)):
        plain = df[(df.resolution == res) & df.pruning.isna()].iloc[0]
        pruned = df[(df.resolution == res) & df.pruning.notna()].iloc[0]
        kept = visual - math.floor(0.5 * visual)
        assert plain.prefill_latency_ms == pytest.approx(LAYERS * (visual + 8) * 0.25)
        assert pruned.prefill_latency_ms == pytest.approx((2 * (visual + 8) + 2 * (8 + kept)) * 0.25)
        assert pruned.prefill_tokens == plain.prefill_tokens == visual + 8  # the prompt, before pruning
        assert pruned.encoder_latency_ms == plain.encoder_latency_ms  # shared encoder measurement
        assert pruned.ttft_ms < plain.ttft_ms
    # the sweep's summary names the pruning of the fastest point at each resolution (pruned here)
    table, _ = results.summary_table(df)
    assert table.count('{"after_layer":2,"ratio":0.5}') == 2
    assert list(results.fastest_per_resolution(df).pruning) == ['{"after_layer":2,"ratio":0.5}'] * 2
    assert "pruning" not in results.summary_table(df[df.pruning.isna()])[0]
    # the first space's rows are the unpruned rows of the second: same keys, same numbers
    first_rows = results.load(store, space="pr", accuracy_metric=None).set_index("point_key")
    unpruned = df[df.pruning.isna()].set_index("point_key")
    assert len(first_rows) == 2 and sorted(first_rows.index) == sorted(unpruned.index)
    assert (first_rows.ttft_ms == unpruned.ttft_ms[first_rows.index]).all()
    store.close()


def test_an_accuracy_stored_by_fields_is_not_a_pruned_points(tmp_path):
    """A trained or user accuracy stored for (encoder, knobs, resolution, llm) is the unpruned
    model's: its pruned twin gets only a value stored for its own key."""
    store = Store(tmp_path / "store.db")
    _run(_space([None, PRUNE]), store)
    store.add_accuracy(61.0, "trained:proxy", encoder="toy", knobs={"width": 1}, resolution=64, llm="llm-a")
    pruned_128 = DesignPoint.make("toy", {"width": 1}, 128, "llm-a", 8, PRUNE)
    store.add_accuracy(47.0, "trained:proxy-pruned", point=pruned_128)
    frame = results.load(store, predict_accuracy=False)
    got = {(int(r.resolution), r.pruning if isinstance(r.pruning, str) else None): r.accuracy
           for r in frame.itertuples()}
    assert len(got) == 4
    assert got[(64, None)] == 61.0
    assert math.isnan(got[(64, '{"after_layer":2,"ratio":0.5}')])
    assert math.isnan(got[(128, None)])
    assert got[(128, '{"after_layer":2,"ratio":0.5}')] == 47.0
    store.close()


def test_after_layer_beyond_the_llm_is_refused_when_planning(tmp_path):
    with pytest.raises(SpaceError, match=r"pruning after_layer=4 with llm llm-a: an integer 1\.\.3"):
        _run(_space([{"after_layer": 4, "ratio": 0.5}]), Store(tmp_path / "s.db"))


# ------------------------------------------------------------------------------ real prefill, tiny LLM

TINY_LM = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 512, "tie_word_embeddings": True,
           "rope_theta": 1e6, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6}


def _tiny_lm(tmp_path: Path) -> str:
    path = tmp_path / "tiny-lm" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY_LM))
    return str(path)


def test_a_real_sweep_counts_the_two_segments_as_torch_does(tmp_path):
    """Fake encoder and projector, transformers' own prefill: the stored pruned prefill's FLOPs equal
    FlopCounterMode's count of the two segments (on meta)."""
    from explorer.measure.prefill import count_prefill_flops
    from explorer.models.llm import get_llm_spec

    lm = _tiny_lm(tmp_path)
    spec = get_llm_spec(lm)
    raw = {"name": "real", "encoders": {"toy": {"resolutions": [128]}}, "llms": [lm], "text_tokens": [8],
           "pruning": [None, {"after_layer": 1, "ratio": 0.75}],
           "measure": {"device": "cpu", "threads": 1, "min_iters": 2, "max_iters": 3, "warmup_iters": 1,
                       "max_time_s": 2.0}}
    store = Store(tmp_path / "store.db")
    report = sf.run(raw, None, store, measure_prefill=MeasureBackend().measure_prefill, llm_info=llm_info)
    assert report.failures == [] and report.measured["prefill"] == 2
    df = results.load(store, space="real", accuracy_metric=None).set_index("pruning", drop=False)
    visual, text = 16, 8
    kept = visual - math.floor(0.75 * visual)
    first = count_prefill_flops(spec.with_layers(1), visual + text).gflops
    layer = (count_prefill_flops(spec.with_layers(2), text + kept).gflops
             - count_prefill_flops(spec.with_layers(1), text + kept).gflops)
    pruned = df[df.pruning.notna()].iloc[0]
    plain = df[df.pruning.isna()].iloc[0]
    assert pruned.prefill_gflops == pytest.approx(first + 2 * layer, rel=1e-3)
    assert plain.prefill_gflops == pytest.approx(count_prefill_flops(spec, visual + text).gflops, rel=1e-3)
    assert pruned.prefill_method.startswith("pruned: 1 layers over 24 tokens") and "2 over 12" in pruned.prefill_method
    assert pruned.prefill_latency_ms > 0 and pruned.prefill_gflops < plain.prefill_gflops
    store.close()


# ------------------------------------------------------------------------------ prediction


def test_predict_traces_the_two_segments(tmp_path, monkeypatch):
    from explorer.measure.prefill import prefill_flops
    from explorer.measure.pruned_prefill import pruned_prefill_flops
    from explorer.models.llm import get_llm_spec
    from explorer.predict import load_profile, predict_space

    monkeypatch.setenv("EXPLORER_TRACE_CACHE", str(tmp_path / "traces"))
    lm = _tiny_lm(tmp_path)
    spec = get_llm_spec(lm)
    encoder = {"fastvithd": {"knobs": {"depths": [[1, 1, 1, 1, 1]], "widths": [[16, 32, 64, 64, 128]]},
                             "resolutions": [256]}}
    raw = {"name": "pp", "encoders": encoder, "llms": [lm], "text_tokens": [8],
           "pruning": [None, {"after_layer": 1, "ratio": 0.5}, {"after_layer": 2, "ratio": 0.5}]}
    profile = load_profile("apple-m1-gpu")
    df = predict_space(raw, profile, accuracy_metric=None)
    assert len(df) == 3 and df.pruning.isna()[0]
    assert list(df.pruning[1:]) == ['{"after_layer":1,"ratio":0.5}', '{"after_layer":2,"ratio":0.5}']
    visual = 16  # (256 / 64)^2
    assert list(df.visual_tokens) == [visual] * 3 and list(df.prefill_tokens) == [visual + 8] * 3
    assert df.prefill_gflops[0] == pytest.approx(prefill_flops(spec, visual + 8), rel=1e-6)
    for i, k in ((1, 1), (2, 2)):
        assert df.prefill_gflops[i] == pytest.approx(pruned_prefill_flops(spec, visual, 8, Pruning(k, 0.5)), rel=1e-6)
        assert df.prefill_method[i] == "predicted: pruned"
    # dropping tokens earlier leaves fewer layers over the long prompt
    assert df.prefill_latency_ms[1] < df.prefill_latency_ms[2] < df.prefill_latency_ms[0]
    assert df.encoder_latency_ms.nunique() == 1
    keys = [p.key for p in enumerate_points(load_space(raw))]
    assert list(df.point_key) == keys
    # the unpruned row is the row of the same space without the axis: same key, same prediction
    plain = predict_space({k: v for k, v in raw.items() if k != "pruning"}, profile, accuracy_metric=None)
    assert plain.point_key[0] == df.point_key[0] and plain.ttft_ms[0] == df.ttft_ms[0]
    assert plain.pruning.isna().all()


# ------------------------------------------------------------------------------ search


def test_search_samples_the_pruning_axis():
    from optuna.trial import FixedTrial

    from explorer.engine.search.params import ParamSpace

    space = _load(_space([None, PRUNE]))
    params = ParamSpace.from_space(space)
    dim = next(d for d in params.dimensions() if d.name == "pruning")
    assert dim.kind == "categorical" and params.grid_size() == 4
    seen = set()
    for choice in dim.choices():
        point = params.suggest(FixedTrial({"resolution": 64, "pruning": choice}))
        assert admits(space, point, shape_fn=sf.shape)
        seen.add(point.pruning)
    assert seen == {None, Pruning(2, 0.5)}
    assert params.fingerprint()["pruning"] == [None, PRUNE]
    # a space without the axis: no parameter, and the study digest's definition as before
    plain = ParamSpace.from_space(_load(_space()))
    assert "pruning" not in {d.name for d in plain.dimensions()} and "pruning" not in plain.fingerprint()


def test_explorer_predict_reads_the_axis_from_a_space_file(tmp_path, monkeypatch, capsys):
    import pandas as pd
    import yaml

    from explorer.cli import main

    monkeypatch.setenv("EXPLORER_TRACE_CACHE", str(tmp_path / "traces"))
    raw = {"name": "cli_pruning", "llms": [_tiny_lm(tmp_path)], "text_tokens": [8],
           "encoders": {"fastvithd": {"knobs": {"depths": [[1, 1, 1, 1, 1]], "widths": [[16, 32, 64, 64, 128]]},
                                      "resolutions": [256]}},
           "pruning": [None, {"after_layer": 1, "ratio": 0.5}]}
    space_file = tmp_path / "cli_pruning.yaml"
    space_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["predict", f"space_file={space_file}", "device=apple-m1-gpu", f"out={out}", "report=false"]) == 0
    df = pd.read_csv(out / "predicted.csv")
    assert len(df) == 2 and df.pruning.isna().sum() == 1
    assert set(df.pruning.dropna()) == {'{"after_layer":1,"ratio":0.5}'}
    assert df.prefill_latency_ms[df.pruning.notna()].iloc[0] < df.prefill_latency_ms[df.pruning.isna()].iloc[0]
    raw["pruning"] = [{"after_layer": 1, "ratio": 2}]
    space_file.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["predict", f"space_file={space_file}", "device=apple-m1-gpu", f"out={out}", "report=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pruning[0].ratio=2: a fraction in [0, 1)" in err and "Traceback" not in err


def test_a_search_over_the_axis_measures_pruned_points_and_shows_them(tmp_path):
    store = Store(tmp_path / "s.db")
    report = sf.search(_space([None, PRUNE]), None, store, trials=12, measure_prefill=fake_prefill,
                       llm_info=fake_llm_info)
    text = report.format(store)
    assert "unique design points evaluated: 4 of 4" in text and '{"after_layer":2,"ratio":0.5}' in text
    df = results.load(store, space="pr", accuracy_metric=None)
    assert len(df) == 4 and df.pruning.notna().sum() == 2 and (df.status == "ok").all()
    store.close()
