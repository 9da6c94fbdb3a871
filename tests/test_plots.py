"""Figures, the self-contained report, static export and the `plot` command."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from explorer.analysis import plots, report
from explorer.commands import plot as plot_command
from explorer.analysis.pareto import pareto_front
from fastvlm_table import paper_table, reference_table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return paper_table()


@pytest.fixture(scope="module")
def report_file(tmp_path_factory, table) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    report.write_report(table, path, title="FastVLM paper figure (hand-made table)",
                        reference=reference_table(), budgets=(100, 200))
    return path


# --- figures ----------------------------------------------------------------------------------


def test_objectives_scatter_draws_the_frontier_with_full_hover(table):
    fig = plots.objectives_scatter(table)
    assert isinstance(fig, go.Figure)
    frontier = [t for t in fig.data if t.name.endswith("frontier")]
    assert len(frontier) == 1  # only the 0.5B rows have an accuracy
    front = pareto_front(table, group_by="llm").front
    assert list(frontier[0].x) == sorted(front["ttft_ms"])
    assert frontier[0].line.shape == "hv"  # a staircase: min TTFT, max accuracy
    dominated = next(t for t in fig.data if t.name.endswith("dominated"))
    assert len(dominated.x) == 7
    hover = frontier[0].text[0]
    for piece in ("fastvithd", "256 px", "qwen2-0.5b", "visual 16", "vision encoder", "projector",
                  "LLM prefill", "GFLOP", "params (M)", "accuracy 48.4", "paper figure (approx.)"):
        assert piece in hover, piece
    assert fig.layout.xaxis.type == "log"  # 30 ms to 940 ms
    assert "lower is better" in fig.layout.xaxis.title.text


def test_objectives_scatter_overall_line_and_fallback_title():
    df = paper_table()
    df.loc[df["llm"] == "qwen2-1.5b", "accuracy"] = 57.0  # give the second LLM accuracies
    fig = plots.objectives_scatter(df)
    names = [t.name for t in fig.data]
    assert "llm=qwen2-1.5b: frontier" in names and "overall frontier" in names
    no_acc = plots.objectives_scatter(paper_table().assign(accuracy=np.nan))
    assert "stand-in" in no_acc.layout.title.subtitle.text
    assert no_acc.layout.yaxis.title.text.startswith("input resolution")
    knobs = paper_table().assign(knobs='{"width_mult": 0.5}')
    assert "width_mult=0.5" in plots.objectives_scatter(knobs).data[0].text[0]


def test_ttft_breakdown_stacks_the_three_parts_per_llm(table):
    fig = plots.ttft_breakdown(table)
    assert fig.layout.barmode == "stack"
    assert [a.text for a in fig.layout.annotations] == ["llm: qwen2-0.5b", "llm: qwen2-1.5b"]
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert {t.name for t in bars} == {"vision encoder", "projector", "LLM prefill"}
    assert len(bars) == 6  # three parts x two panels
    first_panel = [t for t in bars if t.xaxis == "x"]
    totals = np.sum([np.asarray(t.y, dtype=float) for t in first_panel], axis=0)
    ok = table[(table["llm"] == "qwen2-0.5b") & (table["status"] == "ok")]
    assert sorted(totals) == pytest.approx(sorted(ok["ttft_ms"]), abs=0.02)
    # Within each encoder the resolutions ascend (plotly orders categories by first appearance).
    pairs = list(zip(*first_panel[0].x))
    fastvithd = [int(inner.split()[0]) for outer, inner in pairs if outer == "fastvithd"]
    assert fastvithd == [256, 512, 768, 1024]
    with pytest.raises(ValueError, match=r"prefill_latency_ms"):
        plots.ttft_breakdown(table.drop(columns="prefill_latency_ms"))


def test_scaling_and_params_figures(table):
    fig = plots.resolution_scaling(table)
    latency = [t for t in fig.data if t.xaxis == "x" and t.name == "fastvithd"][0]
    assert list(latency.x) == [256, 512, 768, 1024]
    tokens = [t for t in fig.data if t.xaxis == "x2" and t.name == "fastvithd"][0]
    assert list(tokens.y) == [16, 64, 144, 256]
    params = plots.params_vs_latency(table)
    siglip = next(t for t in params.data if t.name == "siglip_so400m")
    assert list(siglip.y) == [428.2] and list(siglip.text) == ["384"]  # the timeout row is left out
    with pytest.raises(ValueError, match="encoder_params_m"):
        plots.params_vs_latency(table.drop(columns="encoder_params_m"))


def test_accuracy_vs_ttft_with_published_points(table):
    ref = reference_table()
    fig = plots.accuracy_vs_ttft(table, ref)
    published = [t for t in fig.data if t.name.endswith("(published)")]
    assert len(published) == ref["encoder"].nunique()
    assert sum(len(t.x) for t in published) == len(ref)
    assert all(t.marker.symbol == "diamond-open" for t in published)
    own = next(t for t in fig.data if t.name == "fastvithd")
    same = next(t for t in fig.data if t.name == "fastvithd (published)")
    assert own.marker.color == same.marker.color  # an encoder keeps its colour
    long_format = ref.rename(columns={"ttft_ms": "paper_ttft_ms", "accuracy": "value"}).assign(metric="avg5")
    fig2 = plots.accuracy_vs_ttft(table.assign(accuracy=np.nan), long_format)
    assert sum(len(t.x) for t in fig2.data) == len(ref)
    with pytest.raises(ValueError, match="mixes metrics"):
        plots.accuracy_vs_ttft(table, long_format.assign(metric=["avg5", "textvqa"] * 5 + ["avg5"]))
    with pytest.raises(ValueError, match="no reference"):
        plots.accuracy_vs_ttft(table.assign(accuracy=np.nan))


# --- report -----------------------------------------------------------------------------------


def test_report_is_self_contained(report_file, table):
    page = report_file.read_text(encoding="utf-8")
    plotly_js = get_plotlyjs()
    assert page.count(plotly_js[:300]) == 1  # plotly.js inlined exactly once
    assert page.count("<script") == page.count("</script>")
    assert not re.search(r"<script[^>]*\bsrc=", page), "no external scripts"
    assert not re.search(r"<link[^>]*href=[\"']https?:", page), "no external stylesheets"
    assert page.count('class="plotly-graph-div"') == 5  # every figure drawn


def test_report_contains_frontier_budget_environment_and_left_out_rows(report_file, table):
    page = report_file.read_text(encoding="utf-8")
    front = pareto_front(table, group_by="llm").front
    table_html = re.search(r'<table[^>]*id="frontier-table".*?</table>', page, re.S).group(0)
    assert table_html.count("<tr") == len(front) + 1  # header + one row per frontier point
    for key in front["point_key"]:
        assert key in table_html
    assert 'id="hypervolume-table"' in page and 'id="group-frontier-table"' in page
    assert 'id="budget-200"' in page and 'id="budget-100"' in page
    env = re.search(r'<table[^>]*id="environment-table".*?</table>', page, re.S).group(0)
    assert "Apple M1 Max (paper)" in env and "2.13.0" in env
    left_out = re.search(r'<table[^>]*id="excluded-table".*?</table>', page, re.S).group(0)
    assert "RuntimeError: out of memory at 1536 px" in left_out and "accuracy is missing" in left_out
    assert left_out.count("<tr") == 1 + 8


def test_report_without_accuracy_says_so_and_skips_what_it_cannot_draw(tmp_path):
    df = paper_table().assign(accuracy=np.nan).drop(columns=["encoder_params_m"])
    page = report.write_report(df, tmp_path / "sub" / "r.html").read_text(encoding="utf-8")
    assert "stand-in for accuracy" in page
    assert "Parameters against latency not shown" in page and "encoder_params_m" in page
    assert page.count('class="plotly-graph-div"') == 3  # frontier, breakdown, scaling
    with pytest.raises(ValueError, match="is a directory"):
        report.write_report(df, tmp_path)


# --- static images ----------------------------------------------------------------------------


def test_write_pngs_explains_a_missing_kaleido(monkeypatch, tmp_path, table):
    real = report.importlib.util.find_spec
    monkeypatch.setattr(report.importlib.util, "find_spec",
                        lambda name, *a: None if name == "kaleido" else real(name, *a))
    with pytest.raises(report.StaticExportUnavailable) as err:
        report.write_pngs(table, tmp_path)
    assert "pip install kaleido" in str(err.value) and "apt-get install -y chromium" in str(err.value)


def test_write_pngs_explains_a_missing_chrome(monkeypatch, tmp_path, table):
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name, *a: object())

    def no_chrome(*args, **kwargs):
        raise RuntimeError("\n\nKaleido requires Google Chrome to be installed.\n")

    monkeypatch.setattr(report.pio, "write_images", no_chrome, raising=False)
    monkeypatch.setattr(go.Figure, "write_image", no_chrome)
    with pytest.raises(report.StaticExportUnavailable, match="apt-get install -y chromium") as err:
        report.write_pngs(table, tmp_path)
    assert "requires Google Chrome" in str(err.value)


def test_write_pngs_for_real_where_kaleido_and_chromium_exist(tmp_path, table):
    pytest.importorskip("kaleido", reason="kaleido not installed (optional: pip install kaleido)")
    if not _chromium():
        pytest.skip("no Chromium on this machine (apt-get install -y chromium)")
    files = report.write_pngs(table, tmp_path, reference=reference_table(), width=800, height=500)
    assert [f.name for f in files] == ["frontier.png", "breakdown.png", "scaling.png", "params.png",
                                       "accuracy.png"]
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000


# --- command ----------------------------------------------------------------------------------


def test_plot_command_from_a_csv(tmp_path, table, capsys):
    csv = tmp_path / "results.csv"
    table.to_csv(csv, index=False)
    ref = tmp_path / "ref.csv"
    reference_table().to_csv(ref, index=False)
    out = tmp_path / "out" / "report.html"
    code = plot_command.main([f"source={csv}", f"out={out}", f"reference={ref}", "budgets=[200]",
                              "title=from csv"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "4 of 11 valid rows are on the frontier" in printed and str(out) in printed
    page = out.read_text(encoding="utf-8")
    assert "<title>from csv</title>" in page and 'id="budget-200"' in page and "(published)" in page


def test_plot_command_reports_bad_input(tmp_path, capsys):
    assert plot_command.main([f"source={tmp_path / 'missing.csv'}"]) == 2
    assert "no such file" in capsys.readouterr().err
    csv = tmp_path / "t.csv"
    paper_table().to_csv(csv, index=False)
    assert plot_command.main([f"source={csv}", "objectives=ttft_ms:up", f"out={tmp_path / 'r.html'}"]) == 2
    assert "direction='up'" in capsys.readouterr().err


def test_plot_command_reads_databases_through_results_load(tmp_path, monkeypatch, capsys):
    from explorer.data import results
    seen = []
    monkeypatch.setattr(results, "load", lambda source, env="latest": seen.append(source) or paper_table())
    out = tmp_path / "r.html"
    assert plot_command.main(["source=sqlite:///somewhere/store.db", f"out={out}"]) == 0
    assert seen == ["sqlite:///somewhere/store.db"] and out.is_file()
    monkeypatch.undo()  # the real loader: a folder without a database is a clear error, not a traceback
    assert plot_command.main([f"source={tmp_path / 'no-such-folder'}", f"out={out}"]) == 2
    assert "no-such-folder" in capsys.readouterr().err


def test_plot_command_through_the_dispatcher(tmp_path, monkeypatch, capsys):
    from explorer.cli import main as cli_main

    csv = tmp_path / "t.csv"
    paper_table().drop(columns="llm").to_csv(csv, index=False)  # no llm column: no grouping
    monkeypatch.chdir(tmp_path)
    assert cli_main(["plot", f"source={csv}"]) == 0
    assert (tmp_path / "report.html").is_file()


# --- the page in a real browser -----------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium_args(profile: Path) -> list[str]:
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--virtual-time-budget=15000",
    ]


def test_report_renders_in_headless_chromium(report_file, tmp_path):
    """Every figure is drawn by plotly.js in a real browser, with no network.

    Set EXPLORER_UPDATE_SCREENSHOT=1 to refresh docs/report_screenshot.png from this run.
    """
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install -y chromium) to render the report")
    url = report_file.as_uri()
    dom = subprocess.run([browser, *_chromium_args(tmp_path / "profile"), "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count('class="plot-container plotly"') == 5  # plotly.js built each plot
    assert html.count('class="main-svg"') >= 5
    assert "<path" in html and 'class="xtick"' in html
    shot = tmp_path / "report.png"
    run = subprocess.run([browser, *_chromium_args(tmp_path / "profile2"), "--window-size=1300,2300",
                          f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    if os.environ.get("EXPLORER_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "report_screenshot.png")
