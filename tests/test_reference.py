"""Published accuracy tables and users' CSVs join onto result rows with their provenance."""
import json

import numpy as np
import pandas as pd
import pytest

from explorer.models import list_encoders
from explorer.data.reference import attach_accuracy, available_metrics, load_references


def rows(*specs):
    return pd.DataFrame([
        {"encoder": e, "knobs": json.dumps(k), "resolution": r, "llm": llm, "accuracy": np.nan, "accuracy_source": None}
        for e, k, r, llm in specs
    ])


def test_reference_tables_hold_the_published_figures():
    refs = load_references()
    assert set(refs["encoder"]) <= set(list_encoders())
    fig = refs[refs["source"] == "fastvlm-readme-figure"]
    assert len(fig) == 11 and fig["approximate"].all()
    fastvithd = fig[fig["encoder"] == "fastvithd"].sort_values("resolution")
    assert list(fastvithd["resolution"]) == [256, 512, 768, 1024]
    assert list(fastvithd["value"]) == [48.4, 52.5, 54.5, 55.9]
    cards = refs[refs["source"] == "fastvlm-model-card"]
    assert len(cards) == 11 * 3
    textvqa = cards[cards["metric"] == "textvqa"].set_index("llm")["value"]
    assert textvqa["qwen2-0.5b"] == 64.5 and textvqa["qwen2-7b"] == 74.9
    assert {"avg5", "docvqa", "textvqa"} <= set(available_metrics(refs))


def test_published_accuracy_joins_default_configs_only():
    df = rows(("fastvithd", {}, 1024, "qwen2-0.5b"), ("fastvithd", {"width_mult": 0.5}, 1024, "qwen2-0.5b"),
              ("fastvithd", {}, 1024, "qwen2-1.5b"), ("vit_l14_clip", {}, 336, "qwen2-0.5b"))
    out = attach_accuracy(df)
    assert out.loc[0, "accuracy"] == 55.9
    assert out.loc[0, "accuracy_source"] == "published:fastvlm-readme-figure"
    assert np.isnan(out.loc[1, "accuracy"])  # a scaled encoder has no published number
    assert np.isnan(out.loc[2, "accuracy"])  # the figure is Qwen2-0.5B only
    assert out.loc[3, "accuracy"] == 47.3
    spelled = attach_accuracy(rows(("fastvithd", {"width_mult": 1.0, "depth_mult": 1.0}, 512, "qwen2-0.5b")))
    assert spelled.loc[0, "accuracy"] == 52.5  # explicit default knobs are the released model
    docvqa = attach_accuracy(df, metric="docvqa")
    assert docvqa.loc[2, "accuracy"] == 88.3
    assert docvqa.loc[2, "accuracy_source"] == "published:fastvlm-model-card"


def test_user_csv_takes_precedence_and_existing_values_stay(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text('encoder,resolution,llm,value,knobs\n'
                   'fastvithd,1024,qwen2-0.5b,60.0,\n'
                   'fastvithd,512,qwen2-0.5b,40.0,"{""width_mult"": 0.5}"\n')
    df = rows(("fastvithd", {}, 1024, "qwen2-0.5b"), ("fastvithd", {"width_mult": 0.5}, 512, "qwen2-0.5b"),
              ("fastvithd", {}, 512, "qwen2-0.5b"))
    df.loc[2, ["accuracy", "accuracy_source"]] = [33.0, "trained:proxy"]
    out = attach_accuracy(df, user_csv=csv)
    assert list(out["accuracy"]) == [60.0, 40.0, 33.0]
    assert list(out["accuracy_source"]) == ["user:mine", "user:mine", "trained:proxy"]
    assert attach_accuracy(df, overwrite=True).loc[2, "accuracy"] == 52.5


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="metric"):
        attach_accuracy(rows(("fastvithd", {}, 256, "qwen2-0.5b")), metric="nope")
    bad = tmp_path / "bad.csv"
    bad.write_text("encoder,resolution,value\nfastvithd,256,50\n")
    with pytest.raises(ValueError, match="llm"):
        attach_accuracy(rows(("fastvithd", {}, 256, "qwen2-0.5b")), user_csv=bad)
    pct = tmp_path / "pct.csv"
    pct.write_text("encoder,resolution,llm,value\nfastvithd,256,qwen2-0.5b,0.5e3\n")
    with pytest.raises(ValueError, match="percentage"):
        attach_accuracy(rows(("fastvithd", {}, 256, "qwen2-0.5b")), user_csv=pct)
    with pytest.raises(ValueError, match="does not exist"):
        attach_accuracy(rows(("fastvithd", {}, 256, "qwen2-0.5b")), user_csv=tmp_path / "missing.csv")



def test_results_load_joins_user_and_published_accuracy(tmp_path):
    """results.load fills accuracy from a user's CSV (and the published tables) with its source."""
    import sweep_fakes as F
    from explorer.data import results
    from explorer.measure.settings import MeasureSettings
    from explorer.data.space import load_space
    from explorer.data.store import Store

    raw = {"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2]}}}, "resolutions": [64],
           "llms": ["llm-a"], "text_tokens": [0]}
    sp = load_space(raw, shape_fn=F.shape, check_models=False)
    F.run(sp, MeasureSettings(device="cpu"), Store(tmp_path / "r"))
    csv = tmp_path / "acc.csv"
    csv.write_text('encoder,resolution,llm,value,knobs,source\ntoy,64,llm-a,42.5,"{""width"": 2}",my-eval\n')
    df = results.load(tmp_path / "r", accuracy_csv=csv).set_index("knobs")
    assert df.loc['{"width":2}', "accuracy"] == 42.5
    assert df.loc['{"width":2}', "accuracy_source"] == "user:my-eval"
    assert df.loc['{"width":2}', "accuracy_low"] == df.loc['{"width":2}', "accuracy_high"] == 42.5
    assert df.loc['{"width":1}', "accuracy_source"].startswith("predicted:")  # a user's value wins where given
    bare = results.load(tmp_path / "r", accuracy_csv=csv, predict_accuracy=False).set_index("knobs")
    assert np.isnan(bare.loc['{"width":1}', "accuracy"])
    plain = results.load(tmp_path / "r", accuracy_metric=None)
    assert plain["accuracy"].isna().all()
