"""Bad input through the real command line: each is refused before any work, names what is wrong,
exits non-zero and prints no traceback (issue 16's adversarial run, as a table).

Most rows go through ``explorer.cli.main`` in this process (what the console script calls, minus
interpreter start-up, so the table stays fast): an uncaught exception fails the row. A few rows
run as real subprocesses of the installed entry point's module.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import sweep_fakes as F
from explorer.cli import main as cli
from explorer.data.space import load_space
from explorer.data.store import Store
from explorer.measure.settings import MeasureSettings

TINY = {"width_mult": 0.25, "depth_mult": 0.25}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Tiny spaces, broken CSVs, broken and foreign databases, and one good store."""
    d = tmp_path_factory.mktemp("adversarial")
    out: dict[str, str] = {"dir": str(d)}

    def space(name: str, **changes) -> str:
        raw = {"name": name, "encoders": {"fastvithd": {"knobs": dict(TINY)}}, "resolutions": [64],
               "llms": ["qwen2-0.5b"], "text_tokens": [4]}
        raw.update(changes)
        path = d / f"{name}.yaml"
        path.write_text(json.dumps(raw))  # JSON is YAML
        return str(path)

    out["space"] = space("tiny")
    out["bool_knob"] = space("boolknob", encoders={"fastvithd": {"knobs": {"width_mult": [True]}}})
    out["bad_family"] = space("badfamily", encoders={"fastvith": {}})
    out["bad_llm"] = space("badllm", llms=["qwen9-0.5b"])
    out["no_res"] = space("nores", resolutions=[])
    out["neg_res"] = space("negres", resolutions=[-64])
    out["huge_res"] = space("hugeres", resolutions=[100000])
    out["huge_prompt"] = space("hugeprompt", text_tokens=[10_000_000])
    out["dead_exclude"] = space("deadexclude", exclude=[{"resolution": 999}])
    out["bad_key"] = space("badkey", resolution=[64])
    out["not_yaml"] = str(d / "broken.yaml")
    Path(out["not_yaml"]).write_text("encoders: [unclosed\n")
    csvs = {"csv_res": "fastvithd,abc,qwen2-0.5b,50", "csv_value": "fastvithd,256,qwen2-0.5b,150",
            "csv_knobs": 'fastvithd,256,qwen2-0.5b,50,"{width: }"', "csv_metric": "fastvithd,256,qwen2-0.5b,50,{},mmmu"}
    for key, row in csvs.items():
        header = "encoder,resolution,llm,value" + (",knobs" if key in ("csv_knobs", "csv_metric") else "") + (
            ",metric" if key == "csv_metric" else "")
        (d / f"{key}.csv").write_text(header + "\n" + row + "\n")
        out[key] = str(d / f"{key}.csv")
    (d / "nocols.csv").write_text("a,b\n1,2\n")
    out["csv_cols"] = str(d / "nocols.csv")
    (d / "zero.db").write_bytes(b"")
    (d / "random.db").write_bytes(os.urandom(4096))
    (d / "truncated.db").write_bytes(b"SQLite format 3\0" + b"\1" * 200)
    con = sqlite3.connect(d / "foreign.db")
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.commit()
    con.close()
    for name in ("zero", "random", "truncated", "foreign"):
        out[f"{name}_db"] = str(d / f"{name}.db")
    good = d / "good"
    toy = load_space({"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2]}}}, "resolutions": [64],
                      "llms": ["llm-a"], "text_tokens": [0]}, shape_fn=F.shape, check_models=False)
    F.run(toy, MeasureSettings(device="cpu"), Store(good))
    out["good"] = str(good)
    newer = d / "newer"
    Store(newer).close()
    con = sqlite3.connect(newer / "store.db")
    con.execute("UPDATE explorer_meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()
    out["newer"] = str(newer)
    (d / "a_file").write_text("x")
    out["a_file"] = str(d / "a_file")
    return out


# (argv with {placeholders}, text the error must contain)
CASES = [
    # sweep: the space
    (["sweep"], "no search space chosen"),
    (["sweep", "space_file={bool_knob}"], "width_mult"),
    (["sweep", "space_file={bad_family}"], "unknown encoder"),
    (["sweep", "space_file={bad_llm}"], "llms[0]"),
    (["sweep", "space_file={no_res}"], "resolutions"),
    (["sweep", "space_file={neg_res}"], "resolutions"),
    (["sweep", "space_file={huge_res}"], "100000"),
    (["sweep", "space_file={huge_prompt}"], "max_position_embeddings"),
    (["sweep", "space_file={dead_exclude}"], "exclude[0].resolution"),
    (["sweep", "space_file={bad_key}"], "resolution"),
    (["sweep", "space_file={not_yaml}"], "not valid YAML"),
    (["sweep", "space_file={space}", "space.resolutions=[63.5]"], "resolutions"),
    # sweep: measurement settings
    (["sweep", "space_file={space}", "measure.warmup_s=inf"], "measure.warmup_s"),
    (["sweep", "space_file={space}", "measure.max_time_s=nan"], "measure.max_time_s"),
    (["sweep", "space_file={space}", "measure.threads=1000"], "measure.threads"),
    (["sweep", "space_file={space}", "measure.threads=0"], "measure.threads"),
    (["sweep", "space_file={space}", "measure.dtype=int8"], "measure.dtype"),
    (["sweep", "space_file={space}", "measure.device=gpu"], "measure.device"),
    (["sweep", "space_file={space}", "measure.target_rel_ci=2"], "measure.target_rel_ci"),
    (["sweep", "space_file={space}", "measure.batch_size=0"], "measure.batch_size"),
    (["sweep", "space_file={space}", "measure.min_iters=10", "measure.max_iters=5"], "measure.max_iters"),
    (["sweep", "space_file={space}", "measure.threads=abc"], "measure.threads"),
    # sweep: engine options and places
    (["sweep", "space_file={space}", "sweep.timeout_s=-5"], "sweep.timeout_s"),
    (["sweep", "space_file={space}", "sweep.timeout_s=inf"], "sweep.timeout_s"),
    (["sweep", "space_file={space}", "sweep.isolation=bogus"], "sweep.isolation"),
    (["sweep", "space_file={space}", "sweep.max_measurements=-1"], "sweep.max_measurements"),
    (["sweep", "space_file={space}", "sweep.resume=maybe"], "sweep.resume"),
    (["sweep", "space_file={space}", "store=not_a_url"], "store"),
    (["sweep", "space_file={space}", "store=mysql://u@127.0.0.1/x"], "MySQLdb"),
    (["sweep", "space_file={space}", "store=postgresql://nobody@127.0.0.1:1/x"], "cannot open it"),
    (["sweep", "space_file={space}", "store=sqlite:///{random_db}"], "file is not a database"),
    (["sweep", "space_file={space}", "store=sqlite:///{newer}/store.db"], "newer explorer"),
    (["sweep", "space_file={space}", "out={a_file}"], "out="),
    (["sweep", "space_file={space}", "out=/proc/explorer-results"], "out="),
    (["sweep", "space_file={space}", "nosuch=1"], "nosuch"),
    # sweep: accuracy inputs, read before any measurement
    (["sweep", "space_file={space}", "accuracy.csv={dir}/missing.csv"], "does not exist"),
    (["sweep", "space_file={space}", "accuracy.csv={csv_res}"], "row 2, column resolution"),
    (["sweep", "space_file={space}", "accuracy.csv={csv_value}"], "row 2, column value"),
    (["sweep", "space_file={space}", "accuracy.csv={csv_knobs}"], "row 2, column knobs"),
    (["sweep", "space_file={space}", "accuracy.csv={csv_metric}"], "row 2, column metric"),
    (["sweep", "space_file={space}", "accuracy.csv={csv_cols}"], "lacks column"),
    (["sweep", "space_file={space}", "accuracy.metric=nosuch"], "accuracy.metric"),
    # search
    (["search", "space_file={space}", "search.trials=0"], "search.trials"),
    (["search", "space_file={space}", "search.sampler=cmaes"], "search.sampler"),
    (["search", "space_file={space}", "search.objectives=[ttft_ms:min,speed:max]"], "speed"),
    (["search", "space_file={space}", "search.objectives=[ttft_ms:fastest]"], "fastest"),
    (["search", "space_file={space}", "search.max_ttft_ms=-1"], "search.max_ttft_ms"),
    (["search", "space_file={space}", "search.population_size=1"], "search.population_size"),
    (["search", "space_file={space}", "sweep.isolation=thread"], "sweep.isolation"),
    (["search", "space_file={space}", "store=not_a_url"], "store"),
    # export
    (["export"], "source"),
    (["export", "source={dir}/nothing"], "no results database"),
    (["export", "source={zero_db}"], "not an explorer results database"),
    (["export", "source={random_db}"], "file is not a database"),
    (["export", "source={truncated_db}"], "cannot open it"),
    (["export", "source={foreign_db}"], "customers"),
    (["export", "source={newer}"], "newer explorer"),
    (["export", "source={good}", "env=nosuchenv"], "env='nosuchenv'"),
    (["export", "source={good}", "space=nosuch"], "space='nosuch'"),
    (["export", "source={good}", "format=xlsx"], "format"),
    (["export", "source={good}", "out={dir}/table.txt"], "out="),
    (["export", "source={good}", "out=/proc/explorer.csv"], "/proc"),
    # plot
    (["plot"], "source"),
    (["plot", "source={dir}/missing.csv"], "no such file"),
    (["plot", "source={random_db}"], "file is not a database"),
    (["plot", "source={good}", "objectives=[ttft_ms:up]"], "direction='up'"),
    (["plot", "source={good}", "budgets=[-1]"], "budgets"),
    (["plot", "source={good}", "out={a_file}/report.html"], "a_file"),
    # train and the dispatcher
    (["train"], "no search space chosen"),
    (["train", "space_file={space}", "out={dir}/empty"], "no results database"),
    (["train", "space_file={space}", "train.max_points=-1"], "train.max_points"),
    (["train", "space_file={space}", "+train.config.max_stepz=3"], "max_stepz"),
    (["nosuchcommand"], "unknown command"),
    (["encoders", "names=[nosuch]"], "names='nosuch'"),
    (["bench", "threads=0"], "threads=0"),
    (["bench", "runtimes=[eager,tensorrt]"], "tensorrt"),
    (["predict", "space_file={space}", "device=nosuch"], "known profiles"),
    (["worker", "store=not_a_url"], "store"),
]


def _argv(template: list[str], files: dict[str, str]) -> list[str]:
    return [a.format(**files) for a in template]


@pytest.mark.parametrize("template, needle", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_named_without_traceback(template, needle, files, capsys, monkeypatch):
    monkeypatch.chdir(files["dir"])
    code = cli(_argv(template, files))
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert code != 0, text
    assert "Traceback" not in text
    assert needle in text, text
    assert not (Path(files["dir"]) / "results").exists()  # nothing was measured or written


def test_the_table_covers_the_reported_cases():
    assert len(CASES) >= 50


SUBPROCESS_CASES = [
    (["sweep", "space_file={space}", "measure.warmup_s=inf"], "measure.warmup_s"),
    (["sweep", "space_file={space}", "store=postgresql://nobody@127.0.0.1:1/x"], "cannot open it"),
    (["export", "source={random_db}"], "file is not a database"),
    (["plot", "source={zero_db}"], "not an explorer results database"),
]


@pytest.mark.parametrize("template, needle", SUBPROCESS_CASES, ids=[c[0][0] for c in SUBPROCESS_CASES])
def test_bad_input_through_a_real_process(template, needle, files):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "explorer", *_argv(template, files)], capture_output=True,
                          text=True, cwd=files["dir"], env=env, timeout=180)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert needle in proc.stderr + proc.stdout
