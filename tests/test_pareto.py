"""Frontiers, budgets and hypervolume, cross-checked against a brute-force dominance test."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from explorer.analysis.pareto import (
    DEFAULT_OBJECTIVES,
    Objective,
    best_under_budget,
    hypervolume,
    pareto_front,
    parse_objectives,
    reference_point_from,
)
from fastvlm_table import paper_table, random_table

TTFT_ACC = (Objective("ttft_ms", "min"), Objective("accuracy", "max"))


def brute_force_front(df: pd.DataFrame, objectives, group_cols=()) -> set:
    """Index labels of the non-dominated valid rows, by checking every pair (tests only)."""
    valid = []
    for label, row in df.iterrows():
        if "status" in df.columns and row["status"] != "ok":
            continue
        values = [row[o.column] for o in objectives]
        if any(not isinstance(v, (int, float, np.number)) or not math.isfinite(v) for v in values):
            continue
        loss = tuple(v if o.minimize else -v for v, o in zip(values, objectives))
        group = tuple(row[c] for c in group_cols)
        valid.append((label, group, loss))
    front = set()
    for label, group, loss in valid:
        dominated = any(
            g == group and all(a <= b for a, b in zip(other, loss)) and any(a < b for a, b in zip(other, loss))
            for _, g, other in valid
        )
        if not dominated:
            front.add(label)
    return front


def brute_force_excluded(df: pd.DataFrame, columns) -> set:
    bad = set()
    for label, row in df.iterrows():
        if "status" in df.columns and row["status"] != "ok":
            bad.add(label)
        elif any(pd.isna(row[c]) or not math.isfinite(float(row[c])) for c in columns):
            bad.add(label)
    return bad


# --- objectives -------------------------------------------------------------------------------


def test_objective_directions_normalised_and_validated():
    assert Objective("ttft_ms", "min") == Objective("ttft_ms", "minimise") == Objective("ttft_ms", "minimize")
    assert Objective("accuracy", "MAX").direction == "maximize"
    with pytest.raises(ValueError, match=r"direction='up'.*minimize.*maximize"):
        Objective("accuracy", "up")
    with pytest.raises(ValueError, match="column"):
        Objective("", "min")


def test_parse_objectives_forms():
    assert parse_objectives(None) == DEFAULT_OBJECTIVES
    assert parse_objectives("ttft_ms:min, accuracy:max") == TTFT_ACC
    assert parse_objectives([("ttft_ms", "min"), "accuracy:max"]) == TTFT_ACC
    assert parse_objectives("encoder_gflops") == (Objective("encoder_gflops", "minimize"),)
    with pytest.raises(ValueError, match="appears twice"):
        parse_objectives("ttft_ms:min,ttft_ms:max")
    with pytest.raises(ValueError, match="at least one"):
        parse_objectives([])
    with pytest.raises(ValueError, match="objectives item 3"):
        parse_objectives([3])


# --- frontier on the paper's figure -----------------------------------------------------------


def test_paper_figure_frontier_is_fastvithd():
    df = paper_table()
    result = pareto_front(df)
    assert result.objectives == DEFAULT_OBJECTIVES and not result.fallback
    # The paper's claim: FastViTHD is the accuracy-TTFT frontier at every resolution it was run at.
    assert list(result.front["encoder"]) == ["fastvithd"] * 4
    assert list(result.front["resolution"]) == [256, 512, 768, 1024]  # best TTFT first
    assert set(result.front.index) == brute_force_front(df, DEFAULT_OBJECTIVES)
    assert result.on_front.sum() == 4 and result.on_front[result.front.index].all()
    # 6 rows without accuracy and 2 failed rows are left out, each with a reason.
    assert result.n_rows == 19 and result.n_valid == 11 and len(result.excluded) == 8
    reasons = result.excluded["reason"]
    assert (reasons[df["llm"].eq("qwen2-1.5b") & df["status"].eq("ok")] == "accuracy is missing").all()
    failed = result.excluded.loc[df.index[df["status"] != "ok"], "reason"]
    assert failed.str.startswith("status=").all()
    assert failed.str.contains("out of memory").any() and failed.str.contains("timeout").any()
    assert "8 row(s) left out" in result.summary()


def test_group_fronts_per_llm_and_encoder():
    df = paper_table()
    by_encoder = pareto_front(df, group_by="encoder")
    fronts = by_encoder.fronts()
    assert list(fronts)[0] == "all"
    # Each encoder alone: its own frontier. ConvNeXt-L's four points all trade off; ViT-L has one.
    assert len(fronts["encoder=convnext_l"]) == 4
    assert len(fronts["encoder=vit_l14_clip"]) == 1
    for label, front in fronts.items():
        if label == "all":
            continue
        encoder = label.split("=", 1)[1]
        expected = brute_force_front(df[df["encoder"] == encoder], DEFAULT_OBJECTIVES)
        assert set(front.index) == expected, label
    two = pareto_front(df, group_by=["llm", "encoder"])
    assert set(two.group_fronts["group"]) == {
        f"llm=qwen2-0.5b, encoder={e}" for e in df.loc[df["llm"] == "qwen2-0.5b", "encoder"].unique()
    }  # the 1.5B rows have no accuracy, so that LLM has no valid row and no frontier
    with pytest.raises(ValueError, match=r"group_by=\['nope'\]"):
        pareto_front(df, group_by="nope")


@pytest.mark.parametrize("seed", range(8))
def test_random_tables_match_brute_force(seed):
    df = random_table(60, seed)
    result = pareto_front(df, group_by="llm")
    assert set(result.front.index) == brute_force_front(df, TTFT_ACC)
    assert set(result.excluded.index) == brute_force_excluded(df, ["ttft_ms", "accuracy"])
    assert result.n_valid + len(result.excluded) == len(df)
    for label, front in result.fronts().items():
        if label == "all":
            continue
        llm = label.split("=", 1)[1]
        assert set(front.index) == brute_force_front(df[df["llm"] == llm], TTFT_ACC), label
    # Per-group frontiers keep the group's rows only.
    grouped = result.group_fronts
    assert (grouped["group"] == "llm=" + grouped["llm"]).all()


@pytest.mark.parametrize("seed", range(4))
def test_three_objectives_match_brute_force(seed):
    df = random_table(80, 100 + seed)
    objectives = "ttft_ms:min,accuracy:max,encoder_gflops:min"
    result = pareto_front(df, objectives)
    assert set(result.front.index) == brute_force_front(df, parse_objectives(objectives))


def test_ties_are_all_kept_and_counted():
    df = pd.DataFrame({
        "ttft_ms": [10.0, 10.0, 10.0, 20.0, 20.0, 30.0],
        "accuracy": [50.0, 50.0, 49.0, 55.0, 55.0, 55.0],
        "point_key": list("abcdef"),
    })
    result = pareto_front(df)
    assert list(result.front["point_key"]) == ["a", "b", "d", "e"]
    assert list(result.front["n_identical"]) == [2, 2, 2, 2]
    assert any("identical" in note for note in result.notes)
    single = pareto_front(df, "ttft_ms:min")
    assert sorted(single.front["point_key"]) == ["a", "b", "c"]


def test_accuracy_fallback_to_resolution_then_visual_tokens():
    df = paper_table().assign(accuracy=np.nan)
    result = pareto_front(df)
    assert result.fallback
    assert result.objectives == (Objective("ttft_ms", "min"), Objective("resolution", "max"))
    assert any("resolution:max" in note and "stand-in" in note for note in result.notes)
    assert set(result.front.index) == brute_force_front(df, result.objectives)
    no_res = df.drop(columns="resolution")
    assert pareto_front(no_res).objectives[1] == Objective("visual_tokens", "max")
    with pytest.raises(ValueError, match="no row has an accuracy, resolution or visual_tokens"):
        pareto_front(no_res.drop(columns="visual_tokens"))
    # Only the defaults fall back: an explicit accuracy objective reports every row instead.
    explicit = pareto_front(df, TTFT_ACC)
    assert explicit.front.empty and len(explicit.excluded) == len(df)


def test_bad_values_reported_and_no_status_column_means_ok():
    df = pd.DataFrame({"ttft_ms": [10.0, np.inf, 30.0, 5.0], "accuracy": ["50", "60", "n/a", 40]})
    result = pareto_front(df)
    assert dict(result.excluded["reason"]) == {1: "ttft_ms is infinite", 2: "accuracy is not a number"}
    assert set(result.front.index) == {0, 3}


def test_empty_and_invalid_tables():
    empty = paper_table().iloc[0:0]
    result = pareto_front(empty, TTFT_ACC)
    assert result.front.empty and result.excluded.empty and result.n_valid == 0
    with pytest.raises(ValueError, match="duplicate labels"):
        pareto_front(pd.concat([paper_table(), paper_table()]))
    with pytest.raises(ValueError, match="DataFrame"):
        pareto_front([{"ttft_ms": 1}])
    with pytest.raises(ValueError, match=r"objectives=\['latency'\].*not in the table"):
        pareto_front(paper_table(), "latency:min")


# --- budgets ----------------------------------------------------------------------------------


def test_best_under_budget_on_the_paper_figure():
    df = paper_table()
    best = best_under_budget(df, budget=200)
    assert len(best) == 1
    assert best.loc[0, "encoder"] == "fastvithd" and best.loc[0, "resolution"] == 1024
    assert best.loc[0, "accuracy"] == 55.9 and best.loc[0, "row"] == 3
    assert best.loc[0, "n_under_budget"] == 7  # 0.5B rows at or under 200 ms
    assert best_under_budget(df, budget=100).loc[0, "resolution"] == 768
    per_llm = best_under_budget(df, budget=100, group_by="llm").set_index("llm")
    assert per_llm.loc["qwen2-0.5b", "accuracy"] == 54.5
    # The 1.5B rows have no accuracy: the group is there, saying nothing fits.
    assert per_llm.loc["qwen2-1.5b", "n_under_budget"] == 0 and pd.isna(per_llm.loc["qwen2-1.5b", "accuracy"])
    nothing = best_under_budget(df, budget=10)
    assert nothing.loc[0, "n_under_budget"] == 0 and nothing.loc[0, "cheapest_ttft_ms"] == 30


def test_best_under_budget_ties_go_to_the_cheaper_row():
    df = pd.DataFrame({"ttft_ms": [90.0, 50.0, 50.0, 300.0], "accuracy": [60.0, 60.0, 60.0, 70.0],
                       "status": ["ok", "ok", "ok", "ok"]})
    best = best_under_budget(df, budget=100)
    assert best.loc[0, "row"] == 1 and best.loc[0, "n_under_budget"] == 3


@pytest.mark.parametrize("seed", range(4))
def test_best_under_budget_matches_brute_force(seed):
    df = random_table(50, seed)
    best = best_under_budget(df, budget=60, group_by="encoder").set_index("encoder")
    for encoder in df["encoder"].unique():
        rows = df[(df["encoder"] == encoder) & (df["status"] == "ok") & (df["ttft_ms"] <= 60)
                  & df["accuracy"].notna()]
        if rows.empty:
            assert best.loc[encoder, "n_under_budget"] == 0
        else:
            assert best.loc[encoder, "accuracy"] == rows["accuracy"].max()
            assert best.loc[encoder, "n_under_budget"] == len(rows)


def test_best_under_budget_rejects_bad_arguments():
    df = paper_table()
    with pytest.raises(ValueError, match=r"budget='200'"):
        best_under_budget(df, budget="200")
    with pytest.raises(ValueError, match=r"budget=nan"):
        best_under_budget(df, budget=float("nan"))
    with pytest.raises(ValueError, match=r"maximise=\['acc'\]"):
        best_under_budget(df, maximise="acc")
    with pytest.raises(ValueError, match=r"budget_column=\['latency'\]"):
        best_under_budget(df, budget_column="latency")


# --- hypervolume ------------------------------------------------------------------------------


def test_hypervolume_by_hand_2d():
    # Minimise TTFT, maximise accuracy; reference: 50 ms and 40 %.
    front = pd.DataFrame({"ttft_ms": [10.0, 20.0, 40.0], "accuracy": [50.0, 55.0, 58.0]})
    # Vertical strips from each point to the next (or to the reference TTFT), down to 40 %:
    #   [10, 20) x (50 - 40) = 100;  [20, 40) x (55 - 40) = 300;  [40, 50) x (58 - 40) = 180.
    expected = 10 * 10 + 20 * 15 + 10 * 18
    assert hypervolume(front, TTFT_ACC, (50.0, 40.0)) == pytest.approx(expected)
    assert hypervolume(front, TTFT_ACC, {"accuracy": 40.0, "ttft_ms": 50.0}) == pytest.approx(580.0)
    # A dominated point, a point past the reference and a NaN row add nothing.
    extra = pd.concat([front, pd.DataFrame({"ttft_ms": [30.0, 60.0, np.nan], "accuracy": [50.0, 70.0, 99.0]})])
    assert hypervolume(extra.reset_index(drop=True), TTFT_ACC, (50.0, 40.0)) == pytest.approx(580.0)
    assert hypervolume(front.iloc[0:0], TTFT_ACC, (50.0, 40.0)) == 0.0


def test_hypervolume_by_hand_3d_and_directions():
    boxes = pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 0.0], "c": [1.0, 2.0]})
    # Boxes to (3, 3, 3): 2*2*2 = 8 and 1*3*1 = 3, overlapping in [2,3]x[1,3]x[2,3] = 2: union 9.
    assert hypervolume(boxes, "a:min,b:min,c:min", (3, 3, 3)) == pytest.approx(9.0)
    flipped = -boxes  # the same problem with every objective maximised
    assert hypervolume(flipped, "a:max,b:max,c:max", (-3, -3, -3)) == pytest.approx(9.0)


def union_of_boxes_by_inclusion_exclusion(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact volume of the union of the boxes [p, ref] (minimisation): the sum over every non-empty
    subset S of (-1)^(|S|+1) x the volume of the boxes' intersection [max over S, ref]. An
    algorithm of its own, exponential but exact, so it can judge ours on small sets."""
    import itertools

    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(range(len(points)), k):
            corner = points[list(subset)].max(axis=0)
            total += (-1) ** (k + 1) * float(np.prod(np.clip(ref - corner, 0.0, None)))
    return total


@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_matches_inclusion_exclusion(seed):
    rng = np.random.default_rng(seed)
    for dims in (2, 3, 4):
        points = rng.random((10, dims))
        df = pd.DataFrame(points, columns=[f"o{i}" for i in range(dims)])
        ref = np.full(dims, 1.1)
        ours = hypervolume(df, [f"o{i}:min" for i in range(dims)], list(ref))
        assert ours == pytest.approx(union_of_boxes_by_inclusion_exclusion(points, ref), rel=1e-12)


def test_hypervolume_of_frontier_equals_hypervolume_of_all_rows():
    df = random_table(60, 7)
    result = pareto_front(df)
    ref = reference_point_from(df, TTFT_ACC)
    valid = df.drop(index=result.excluded.index)
    assert hypervolume(result.front, TTFT_ACC, ref) == pytest.approx(hypervolume(valid, TTFT_ACC, ref))
    assert ref["ttft_ms"] > valid["ttft_ms"].max() and ref["accuracy"] < valid["accuracy"].min()


def test_hypervolume_rejects_bad_reference():
    front = pd.DataFrame({"ttft_ms": [10.0], "accuracy": [50.0]})
    with pytest.raises(ValueError, match="2 values are needed"):
        hypervolume(front, TTFT_ACC, (50.0,))
    with pytest.raises(ValueError, match=r"no value for \['accuracy'\]"):
        hypervolume(front, TTFT_ACC, {"ttft_ms": 50.0})
    with pytest.raises(ValueError, match="finite"):
        hypervolume(front, TTFT_ACC, (math.inf, 40.0))
    with pytest.raises(ValueError, match="margin"):
        reference_point_from(front, TTFT_ACC, margin=-1)
