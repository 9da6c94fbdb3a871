"""The accuracy model: the literature table (schema, hand-checked rows), the fit against synthetic
data drawn from its own stated form, intervals, extrapolation, precedence and frontier membership."""
from __future__ import annotations

import csv
import math

import numpy as np
import pandas as pd
import pytest

from explorer.accuracy import (AccuracyFitOptions, fill_accuracy, fit_accuracy, leave_one_out, load_literature)
from explorer.accuracy.literature import COLUMNS, LITERATURE_DIR, read_literature_file
from explorer.accuracy.validate import benchmark_mean, nearest_published
from explorer.analysis.pareto import frontier_membership


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return load_literature()


def test_literature_table_spans_what_the_model_needs(table):
    assert len(table) >= 300 and table["source_id"].nunique() >= 8
    assert table["llm_params_b"].min() <= 0.5 and table["llm_params_b"].max() >= 7
    assert table["visual_tokens"].min() <= 16 and table["visual_tokens"].max() >= 2000
    assert table["encoder_family"].nunique() >= 5
    for bench in ("textvqa", "docvqa", "chartqa", "ocrbench", "gqa", "mmmu", "seedbench", "mmbench", "pope"):
        assert (table["benchmark"] == bench).sum() >= 5, bench
    assert table["score_pct"].between(0, 200).all()
    assert table["source"].str.match(r"^(github:\S+@[0-9a-f]{7,40}:\S+|https?://\S+)").all()


# One row of each source, read by hand in the source named (repository + file, or URL + table).
HAND_CHECKED = [
    ("llava15", "LLaVA-1.5-13B-LoRA", "vizwiz", None, 58.9),  # LLaVA docs/MODEL_ZOO.md, LLaVA-v1.5 table
    ("llava_next", "LLaVA-1.6-Hermes-Yi-34B", "mme_c", None, 397),  # same file, "1631/397"
    ("tinyllava", "TinyLLaVA (siglip-so400m-patch14-384 + Qwen2-0.5B, base)", "mmmu", None, 29.7),  # README
    ("bunny", "Bunny-v1.1-4B", "mmbench", "test", 75.7),  # BAAI-DCAI/Bunny README, Model Zoo
    ("mobilevlm", "MobileVLM V2 3B", "textvqa", None, 57.5),  # Meituan-AutoML/MobileVLM README
    ("minicpm_v", "MiniCPM-V 2.6", "ocrbench", None, 852),  # OpenBMB/MiniCPM-V docs ("852*")
    ("tinyllava_bench", "TinyLLaVA-2.0B", "mme_p", None, 1433.8),  # DLCV-BUAA/TinyLLaVABench README
    ("vila", "Llama-3-VILA1.5-8B-AWQ", "mmmu", "test", 36.1),  # NVlabs/VILA README, VILA1.5 table
    ("cambrian", "Cambrian-1-13B", "ocrbench", None, 61.9),  # Cambrian-1 project page, Table 5
    ("moe_llava", "MoE-LLaVA-2.7B×4-Top2-384", "mme_p", None, 1431.3),  # PKU-YuanGroup/MoE-LLaVA README
    ("convllava", "ConvLLaVA-1536", "docvqa", None, 59),  # alibaba/conv-llava README, Model Zoo
    ("internvl", "InternVL2-4B", "docvqa", "test", 0.8920),  # InternVL docs, evaluation.md, DocVQA 4B
    ("qwen2_vl", "Qwen2-VL-2B", "ocrbench", None, 794),  # QwenLM/Qwen2-VL README, image benchmarks
    ("paligemma", "PaliGemma pt-896", "docvqa", "test", 84.77),  # big_vision paligemma README
    ("llava_onevision", "LLaVA-OneVision-Qwen2-0.5B-OV", "docvqa", None, 73.7),  # lmms-lab model card model-index
    ("matryoshka_mm", "LLaVA-NeXT-7B-M3", "chartqa", None, 50.24),  # M3 project page table, 36 tokens per grid
    ("tokenpacker", "TokenPacker-HD-7b-9patch-144token", "ocrbench", None, 452),  # TokenPacker README table image
    ("fastvlm_model_cards", "FastVLM-0.5B", "textvqa", None, 64.5),  # apple/FastVLM-0.5B model card
    ("fastvlm_readme_figure", "FastViTHD @256 + Qwen2-0.5B", "avg5", None, 48.4),  # ml-fastvlm README figure
]


@pytest.mark.parametrize("source,model,bench,split,score", HAND_CHECKED, ids=[h[0] for h in HAND_CHECKED])
def test_hand_checked_row(table, source, model, bench, split, score):
    rows = table[(table["source_id"] == source) & (table["model"] == model) & (table["benchmark"] == bench)]
    if split is not None:
        rows = rows[rows["split"] == split]
    assert len(rows) >= 1, (source, model, bench)
    assert score in rows["score"].tolist()


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


GOOD = dict(model="M", source_id="mine", source="https://example.org/paper #Table 2", encoder_family="siglip",
            encoder="", encoder_config="SigLIP", encoder_params_m="400", resolution="384", token_strategy="resize",
            visual_tokens="729", llm="Qwen2-0.5B", llm_params_b="0.5", train_data="", benchmark="textvqa", split="",
            score="55.1", score_max="100", notes="")


@pytest.mark.parametrize("column,value,words", [
    ("score", "101", "score"), ("benchmark", "textvqa2", "benchmark"), ("source", "a paper", "source"),
    ("score_max", "10", "score_max"), ("visual_tokens", "", "visual_tokens"), ("encoder", "convnext_l", "encoder"),
    ("encoder_family", "vit", "encoder_family"), ("source_id", "other", "source_id"),
])
def test_a_bad_row_is_named(tmp_path, column, value, words):
    path = _write(tmp_path / "mine.csv", [GOOD, {**GOOD, "benchmark": "gqa", column: value}])
    with pytest.raises(ValueError, match=rf"mine.csv.*row 3, column {words}"):
        read_literature_file(path)
    assert len(read_literature_file(_write(tmp_path / "mine.csv", [GOOD]))) == 1


def _synthetic(seed: int, n_sources: int = 8) -> tuple[pd.DataFrame, dict]:
    """Results drawn from the model's stated form with known slopes, recipes and noise."""
    rng = np.random.default_rng(seed)
    truth = {"text": (0.30, 0.25), "general": (0.25, 0.05)}  # (LLM slope, token slope) per group
    intercept = {"textvqa": 0.2, "docvqa": 0.6, "gqa": 0.3, "pope": 1.8}
    group = {"textvqa": "text", "docvqa": "text", "gqa": "general", "pope": "general"}
    rows = []
    for s in range(n_sources):
        recipe = rng.normal(0, 0.3)
        for _ in range(12):
            n, t = float(rng.choice([0.5, 1.5, 3, 7, 13])), int(rng.choice([16, 64, 144, 576, 2880]))
            for bench, c in intercept.items():
                a, b = truth[group[bench]]
                centre = c + recipe + a * math.log(n / 2.5) + b * math.log(t / 300)
                score = 100 / (1 + math.exp(-(centre + rng.normal(0, 0.1))))
                rows.append({"model": f"m{s}-{n}-{t}-{len(rows)}", "source_id": f"src{s}", "encoder_family": "siglip",
                             "encoder_params_m": 400.0, "resolution": 384, "token_strategy": "resize",
                             "visual_tokens": t, "llm": "Qwen2", "llm_params_b": n, "benchmark": bench,
                             "split": "", "train_data": "", "score": score, "score_max": 100.0, "score_pct": score,
                             "group": group[bench], "llm_family": "qwen2"})
    return pd.DataFrame(rows), truth


def test_fit_recovers_known_slopes():
    data, truth = _synthetic(0)
    model = fit_accuracy(data, AccuracyFitOptions(bootstrap=10))
    slopes = model.slopes().set_index(["group", "term"])["slope"]
    for group, (a, b) in truth.items():
        assert slopes[(group, "logN")] == pytest.approx(a, abs=0.04)
        assert slopes[(group, "logT")] == pytest.approx(b, abs=0.04)
    assert 0.06 < model.sigma["text"] < 0.16  # the noise drawn: 0.1
    assert 0.1 < model.tau_source["text"] < 0.6  # the recipes drawn: sd 0.3


def test_interval_covers_held_out_sources_at_its_level():
    data, _ = _synthetic(1, n_sources=10)
    result = leave_one_out(data, by="source_id", options=AccuracyFitOptions(bootstrap=10), level=0.8)
    coverage = float(((result.rows["low"] <= result.rows["score_pct"])
                      & (result.rows["score_pct"] <= result.rows["high"])).mean())
    assert 0.65 <= coverage <= 0.95
    # the model beats both baselines on data of its own form
    summary = result.summary().set_index("group")
    assert summary.loc["all", "model_mae"] < summary.loc["all", "mean_mae"]
    assert summary.loc["all", "model_mae"] < summary.loc["all", "nearest_mae"]


def test_baselines_by_hand():
    train = pd.DataFrame({"benchmark": ["gqa", "gqa", "pope"], "llm_params_b": [0.5, 7.0, 7.0],
                          "visual_tokens": [576, 576, 576], "resolution": [336, 336, 336],
                          "encoder_family": ["clip_vit"] * 3, "score_pct": [50.0, 60.0, 85.0]})
    test = pd.DataFrame({"benchmark": ["gqa", "pope", "mmmu"], "llm_params_b": [6.0, 0.5, 1.0],
                         "visual_tokens": [576, 576, 576], "resolution": [336, 336, 336],
                         "encoder_family": ["clip_vit"] * 3})
    np.testing.assert_array_equal(nearest_published(train, test), [60.0, 85.0, np.nan])
    np.testing.assert_array_equal(benchmark_mean(train, test), [55.0, 85.0, np.nan])


def _points(**extra) -> pd.DataFrame:
    rows = []
    for params, knobs in ((122.9, "{}"), (31.1, '{"width_mult":0.5}')):
        for llm in ("qwen2-0.5b", "qwen2-1.5b"):
            rows.append({"encoder": "fastvithd", "knobs": knobs, "resolution": 512, "llm": llm,
                         "encoder_params_m": params, "visual_tokens": 64, "status": "ok", **extra})
    return pd.DataFrame(rows)


def test_fill_keeps_given_values_and_predicts_the_rest(table):
    model = fit_accuracy(table, AccuracyFitOptions(bootstrap=20))
    df = _points(accuracy=np.nan, accuracy_source=None)
    df.loc[0, ["accuracy", "accuracy_source"]] = [52.5, "published:fastvlm-readme-figure"]
    df["accuracy_approximate"] = [True, False, False, False]  # what attach_accuracy sets from the CSV
    out = fill_accuracy(df, "avg5", model=model, explain=True)
    assert out.loc[0, "accuracy"] == 52.5 and out.loc[0, "accuracy_source"] == "published:fastvlm-readme-figure"
    assert (out.loc[0, "accuracy_low"], out.loc[0, "accuracy_high"]) == (52.0, 53.0)  # read off a plot: +-0.5
    predicted = out.iloc[1:]
    assert predicted["accuracy_source"].str.startswith("predicted:").all()
    assert (predicted["accuracy_low"] < predicted["accuracy"]).all()
    assert (predicted["accuracy"] < predicted["accuracy_high"]).all()
    # nobody published a FastViTHD at half width: extrapolated, with the reason and a wider interval
    assert not out.loc[1, "accuracy_extrapolated"] and out.loc[3, "accuracy_extrapolated"]
    assert "fastvithd" in out.loc[3, "accuracy_why"]
    width = out["accuracy_high"] - out["accuracy_low"]
    assert width[3] > width[1]
    # more LLM, more accuracy (at the same recipe and tokens)
    assert out.loc[3, "accuracy"] > out.loc[2, "accuracy"]


def test_published_values_carry_the_csvs_approximate_flag_and_skip_pruned_points():
    """attach_accuracy reads the reference CSVs' own `approximate` column (the README figure's
    values are read off a plot: true; the model cards': false), and never gives a pruned point its
    unpruned twin's published number."""
    from explorer.data.reference import attach_accuracy

    base = {"encoder": "fastvithd", "knobs": "{}", "llm": "qwen2-0.5b", "status": "ok"}
    df = pd.DataFrame([{**base, "resolution": 512, "pruning": None},
                       {**base, "resolution": 512, "pruning": '{"after_layer":2,"ratio":0.5}'}])
    figure = attach_accuracy(df, "avg5")
    assert figure.loc[0, "accuracy"] == 52.5 and figure.loc[0, "accuracy_approximate"]  # fastvlm_readme_figure.csv
    assert math.isnan(figure.loc[1, "accuracy"]) and figure.loc[1, "accuracy_source"] is None
    cards = attach_accuracy(df.assign(resolution=1024), "ai2d")
    assert cards.loc[0, "accuracy"] == 68.0 and not cards.loc[0, "accuracy_approximate"]  # fastvlm_model_cards.csv
    assert math.isnan(cards.loc[1, "accuracy"])


def test_a_pruned_point_is_bracketed_by_its_twin_and_its_kept_tokens(table):
    """No published result prunes inside the LLM: the prediction is the midpoint of the unpruned
    twin's and the same encoder's at kept(V) = V - floor(r V) tokens (each predicted on its own
    here, the oracle), the interval spans both, and it says why it is extrapolated."""
    model = fit_accuracy(table, AccuracyFitOptions(bootstrap=20))
    row = {"encoder": "fastvithd", "knobs": "{}", "resolution": 1024, "llm": "qwen2-0.5b", "encoder_params_m": 122.9,
           "status": "ok", "accuracy": np.nan, "accuracy_source": None}
    twin = fill_accuracy(pd.DataFrame([{**row, "visual_tokens": 256}]), "avg5", model=model)
    kept = fill_accuracy(pd.DataFrame([{**row, "visual_tokens": 256 - math.floor(0.75 * 256)}]), "avg5", model=model)
    assert kept.loc[0, "accuracy"] < twin.loc[0, "accuracy"]  # fewer tokens, less accuracy
    pruned_row = {**row, "visual_tokens": 256, "pruning": '{"after_layer":2,"ratio":0.75}'}
    pruned = fill_accuracy(pd.DataFrame([pruned_row]), "avg5", model=model, explain=True)
    assert pruned.loc[0, "accuracy"] == pytest.approx((twin.loc[0, "accuracy"] + kept.loc[0, "accuracy"]) / 2)
    assert pruned.loc[0, "accuracy_low"] == pytest.approx(min(twin.loc[0, "accuracy_low"], kept.loc[0, "accuracy_low"]))
    assert pruned.loc[0, "accuracy_high"] == pytest.approx(max(twin.loc[0, "accuracy_high"], kept.loc[0, "accuracy_high"]))
    assert pruned.loc[0, "accuracy_extrapolated"] and "in-LLM pruning (after layer 2, ratio 0.75)" in pruned.loc[0, "accuracy_why"]
    assert "64 tokens" in pruned.loc[0, "accuracy_why"]
    # an unpruned row beside it is untouched
    both = fill_accuracy(pd.DataFrame([pruned_row, {**pruned_row, "pruning": None}]), "avg5", model=model)
    assert both.loc[1, "accuracy"] == pytest.approx(twin.loc[0, "accuracy"]) and not both.loc[1, "accuracy_extrapolated"]
    assert both.loc[0, "accuracy"] == pytest.approx(pruned.loc[0, "accuracy"])


def test_frontier_membership_by_hand():
    # A certainly beats C (faster and better even at A's worst); A and B overlap; D is slowest but
    # certainly the most accurate.
    df = pd.DataFrame({"status": "ok", "ttft_ms": [10.0, 12.0, 20.0, 50.0],
                       "accuracy": [60.0, 61.0, 50.0, 80.0], "accuracy_low": [58.0, 55.0, 49.0, 79.0],
                       "accuracy_high": [62.0, 66.0, 51.0, 81.0]}, index=list("ABCD"))
    verdict = frontier_membership(df)
    assert verdict.to_dict() == {"A": "certain", "B": "possible", "C": "dominated", "D": "certain"}
    exact = frontier_membership(df.drop(columns=["accuracy_low", "accuracy_high"]))
    assert exact.to_dict() == {"A": "certain", "B": "certain", "C": "dominated", "D": "certain"}


def test_command_validates_and_refuses(capsys):
    from explorer.commands import accuracy as command

    assert command.main(["validate", "holdout=fastvlm_model_cards", "bootstrap=5"]) == 0
    out = capsys.readouterr().out
    assert "leave-one-source-out" in out and "text" in out and "coverage" in out
    assert command.main(["validate", "holdout=nowhere"]) == 2
    err = capsys.readouterr().err
    assert "holdout" in err and "nowhere" in err
    assert command.main(["show", "encoder=fastvithd", "knobs={width_mult:0.5}", "resolution=512",
                         "llm=qwen2-1.5b", "metric=text_rich"]) == 0
    out = capsys.readouterr().out
    assert "predicted" in out and "extrapolated" in out


def test_external_validation_reads_a_folder_kept_out(tmp_path, capsys, table):
    """holdout=external predicts another folder's results as unknown recipes; a source the model
    was fitted on is refused (it would not be held out)."""
    from explorer.commands import accuracy as command

    rows = [{**GOOD, "benchmark": b, "score": s, "model": f"M{i}", "llm": llm, "llm_params_b": n}
            for i, (b, s, llm, n) in enumerate([("textvqa", "55.1", "Qwen2-0.5B", "0.5"), ("gqa", "58.0", "Qwen2-0.5B", "0.5"),
                                                 ("textvqa", "63.0", "Qwen2-7B", "7"), ("gqa", "62.5", "Qwen2-7B", "7")])]
    folder = tmp_path / "kept_out"
    folder.mkdir()
    _write(folder / "mine.csv", rows)
    assert command.main(["validate", "holdout=external", f"external={folder}", "bootstrap=5"]) == 0
    out = capsys.readouterr().out
    assert "predicting 4 from 1 other sources" in out and "coverage" in out
    _write(folder / "llava15.csv", [{**GOOD, "source_id": "llava15"}])
    assert command.main(["validate", "holdout=external", f"external={folder}"]) == 2
    assert "llava15" in capsys.readouterr().err
    assert command.main(["validate", f"external={folder}"]) == 2  # external without holdout=external
