"""Frontiers compared across environments (a hand-made table with a hand-worked answer, and a store
holding two environments)."""
from __future__ import annotations

import pandas as pd
import pytest

import sweep_fakes as F
from explorer.analysis.fleet import compare_environments
from explorer.data import results
from explorer.data.space import load_space
from explorer.data.store import Store
from explorer.measure.settings import MeasureSettings


def _table():
    # (point, ttft on env 1, ttft on env 2, accuracy)
    rows = [("A", 10, 15, 0.50), ("B", 20, 12, 0.60), ("C", 30, 25, 0.55), ("D", 40, 50, 0.70)]
    out = []
    for env, threads, col in (("e1", 1, 1), ("e2", 2, 2)):
        for p, t1, t2, acc in rows:
            out.append({"point_key": p, "env_key": env, "device": "cpu", "threads": threads, "dtype": "float32",
                        "status": "ok", "ttft_ms": float(t1 if col == 1 else t2), "accuracy": acc,
                        "encoder": "toy", "knobs": "{}", "resolution": 64, "llm": "llm-a"})
    return pd.DataFrame(out)


def test_frontiers_per_environment_and_the_points_on_all_of_them():
    fleet = compare_environments(_table(), budget_ms=30)
    # e1: A (fastest), B (better than A), D (most accurate); C loses to B. e2: B beats A on both; B, D.
    assert set(fleet.fronts["e1"].front["point_key"]) == {"A", "B", "D"}
    assert set(fleet.fronts["e2"].front["point_key"]) == {"B", "D"}
    assert fleet.on_every_front == ("B", "D")
    assert fleet.labels == {"e1": "cpu, 1 threads, float32", "e2": "cpu, 2 threads, float32"}
    within = fleet.within_budget.set_index("point_key")
    assert set(within.index) == {"A", "B", "C"}  # D takes 40 / 50 ms
    assert within.loc["A", "worst_ttft_ms"] == 15 and within.loc["C", "worst_ttft_ms"] == 30
    assert within.loc["B", "best_ttft_ms"] == 12
    assert list(fleet.table()["on_its_frontier"]) == [3, 2]


def test_points_missing_in_one_environment_are_not_on_every_frontier():
    df = _table()
    df = df[~((df["env_key"] == "e2") & (df["point_key"] == "D"))]  # D not measured on e2
    fleet = compare_environments(df)
    assert fleet.common_points == ("A", "B", "C")
    assert fleet.on_every_front == ("B",)  # among A, B, C: e1 front A, B; e2 front B


def test_a_store_with_two_environments(tmp_path):
    raw = {"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2]}}}, "resolutions": [64, 128],
           "llms": ["llm-a"], "text_tokens": [0]}
    sp = load_space(raw, shape_fn=F.shape, check_models=False)
    st = Store(tmp_path / "r")
    F.run(sp, MeasureSettings(device="cpu"), st, environment=F.FakeEnv(key="one"))
    F.run(sp, MeasureSettings(device="cpu"), st, environment=F.FakeEnv(key="two"))
    df = results.load(st, env="all", accuracy_metric=None)
    assert len(df) == 8 and set(df["env_key"]) == {"one", "two"}
    fleet = compare_environments(df)
    assert set(fleet.fronts) == {"one", "two"} and len(fleet.common_points) == 4
    # equal fakes on both: the two frontiers, and so their intersection, are the same points
    assert set(fleet.on_every_front) == set(fleet.fronts["one"].front["point_key"])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="env='all'"):
        compare_environments(_table().drop(columns="env_key"))
    with pytest.raises(ValueError, match="budget_ms"):
        compare_environments(_table(), budget_ms=0)


def test_the_report_compares_the_environments():
    import re

    from explorer.analysis.report import render_report

    page = render_report(_table(), budgets=(30,))
    assert "<h2>Across environments</h2>" in page
    common = re.search(r'id="fleet-common-table".*?</table>', page, re.S).group(0)
    assert re.findall(r"<td>([A-D])</td>", common) == ["B", "D"]
    assert "<th>ttft_ms @ e1</th>" in common and "<th>ttft_ms @ e2</th>" in common
    cells = re.findall(r"<td>\s*(\S*?)\s*</td>\s*<td>\s*(\S*?)\s*</td>\s*<td>([A-D])</td>", common)
    assert cells == [("20", "12", "B"), ("40", "50", "D")]  # TTFT on e1, on e2 (the hand table)
    budget = re.search(r'id="fleet-budget-table".*?</table>', page, re.S).group(0)
    assert re.findall(r"<td>([A-D])</td>", budget) == ["A", "B", "C"]  # by worst TTFT: 15, 20, 30
    one_env = render_report(_table()[lambda d: d["env_key"] == "e1"])
    assert "Across environments" not in one_env


def test_plot_env_all_writes_the_comparison(tmp_path, capsys):
    from explorer.cli import main

    raw = {"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2]}}}, "resolutions": [64],
           "llms": ["llm-a"], "text_tokens": [0]}
    sp = load_space(raw, shape_fn=F.shape, check_models=False)
    st = Store(tmp_path / "r")
    for key in ("one", "two"):
        F.run(sp, MeasureSettings(device="cpu"), st, environment=F.FakeEnv(key=key))
    assert main(["plot", f"source={tmp_path}/r", "env=all", f"out={tmp_path}/p.html"]) == 0
    assert "<h2>Across environments</h2>" in (tmp_path / "p.html").read_text()
    assert main(["plot", f"source={tmp_path}/r", "env=three", f"out={tmp_path}/q.html"]) == 2
    assert "invalid env='three'" in capsys.readouterr().err
