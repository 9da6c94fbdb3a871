"""`python -m explorer sweep` / `export` as a user runs them: errors, Hydra flags, kill and resume."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import sweep_fakes as F
from explorer.data import results
from explorer.commands import export as export_cmd
from explorer.commands import sweep as sweep_cmd
from explorer.measure.settings import MeasureSettings
from explorer.data.space import load_space
from explorer.data.store import Store

REPO = Path(__file__).resolve().parent.parent
TINY_LLM = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "tie_word_embeddings": True,
            "max_position_embeddings": 4096}


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("HYDRA_FULL_ERROR", None)
    e.update(extra)
    return e


def explorer(args: list[str], cwd: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explorer", *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout, **kw)


def tiny_space(tmp_path: Path, name: str = "tiny", resolutions=(64, 128), depth=(0.25,)) -> Path:
    """A space of real, tiny models: FastViTHD at 1/4 width and depth, a 2-layer Qwen2."""
    llm = tmp_path / "tiny_llm.json"
    llm.write_text(json.dumps(TINY_LLM))
    path = tmp_path / "spaces" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"""
name: {name}
encoders:
  fastvithd:
    knobs: {{width_mult: [0.25], depth_mult: {list(depth)}}}
resolutions: {list(resolutions)}
llms: ['{llm}']
text_tokens: [4]
measure: {{threads: 1, warmup_s: 0.0, warmup_iters: 1, min_iters: 2, max_iters: 3, max_time_s: 0.2}}
""")
    return path


# -- errors: a message, an exit code, no traceback ----------------------------------------------


def test_invalid_space_exits_2_without_traceback(tmp_path):
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "bad.yaml").write_text("encoders:\n  fastvithd:\n    knobs: {width_mult: [1.0, -2]}\n"
                                     "  nosuch: {}\nresolutions: [256]\nllms: [qwen2-0.5b]\n")
    proc = explorer(["sweep", f"spaces_dir={spaces}", "+space=bad"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "error: invalid search space" in proc.stderr
    assert "bad.yaml: encoders.fastvithd.knobs.width_mult[1]=-2: invalid width_mult=-2" in proc.stderr
    assert "encoders.nosuch.family='nosuch': unknown encoder; known:" in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "outputs").exists()

    proc = explorer(["sweep", "+space=no_such_space"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: invalid space='no_such_space': not a known space; one of: ")
    assert "fastvithd" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_error_paths_in_process(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep_cmd.main([]) == 2
    assert "no search space chosen" in capsys.readouterr().err
    assert sweep_cmd.main(["+space=fastvithd", "measure.threads=0"]) == 2
    assert "error: invalid measure.threads=0" in capsys.readouterr().err
    assert sweep_cmd.main(["+space=fastvithd", "measure.threads=abc"]) == 2  # Hydra's own type check, reworded
    assert capsys.readouterr().err == "error: invalid measure.threads='abc': an integer\n"
    assert sweep_cmd.main(["+space=fastvithd", "space.resolutions=[0]"]) == 2
    err = capsys.readouterr().err
    assert "fastvithd.yaml (with command-line overrides): resolutions[0]=0" in err
    (tmp_path / "broken.yaml").write_text("encoders: [\n")
    assert sweep_cmd.main(["space_file=broken.yaml"]) == 2
    assert "broken.yaml: not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and not (tmp_path / "outputs").exists()


def test_help_cfg_and_dry_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweep_cmd.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "+space=NAME" in out
    assert all(name in out for name in ("fastvithd", "fastvithd_full", "fastvithd_proxy", "llava15", "paper_baselines"))
    assert sweep_cmd.main(["space=fastvithd", "--cfg", "job"]) == 0  # `space=` works like `+space=`
    out = capsys.readouterr().out
    assert "width_mult" in out and "timeout_s" in out
    space = tiny_space(tmp_path)
    assert sweep_cmd.main([f"space_file={space}", "sweep.dry_run=true", "space.resolutions=[64,96,128]"]) == 0
    out = capsys.readouterr().out
    assert "space 'tiny': 3 design points" in out
    # 96 and 128 px both give ceil(R/64)^2 = 4 tokens: one projector and one prefill serve both
    assert "unique measurements: 7 (encoder 3, projector 2, prefill 2)" in out and "estimated time: about" in out
    assert "results would go to: sqlite:///results/tiny/store.db" in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "outputs").exists()


def test_multirun_dry_run(tmp_path):
    tiny_space(tmp_path, "tiny_a")
    tiny_space(tmp_path, "tiny_b", resolutions=(64,))
    proc = explorer(["sweep", "--multirun", f"spaces_dir={tmp_path / 'spaces'}", "+space=tiny_a,tiny_b",
                     "sweep.dry_run=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "space 'tiny_a': 2 design points" in proc.stdout and "space 'tiny_b': 1 design points" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "spaces", "tiny_llm.json"]
    assert [p.name for p in (tmp_path / "results").iterdir()] == [".multirun"]  # Hydra's multirun.yaml only


# -- export ---------------------------------------------------------------------------------------


def test_export_csv_and_parquet_message(tmp_path, capsys):
    space = load_space({"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2]}}}, "resolutions": [64],
                        "llms": ["llm-a"], "text_tokens": [0]}, shape_fn=F.shape, check_models=False)
    F.run(space, MeasureSettings(device="cpu"), Store(tmp_path / "r"))
    assert export_cmd.main([f"source={tmp_path / 'r'}"]) == 0
    frame = __import__("pandas").read_csv(tmp_path / "r" / "results.csv")
    assert list(frame.columns) == list(results.COLUMNS + results.EXTRA_COLUMNS) and len(frame) == 2
    assert export_cmd.main([f"source={tmp_path / 'r' / 'store.db'}", f"out={tmp_path / 'x.csv'}"]) == 0
    assert (tmp_path / "x.csv").is_file()
    assert export_cmd.main([f"source={tmp_path / 'nothing'}"]) == 2
    assert "no results database" in capsys.readouterr().err
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert export_cmd.main([f"source={tmp_path / 'r'}", "format=parquet"]) == 2
        assert "needs pyarrow, which is not installed" in capsys.readouterr().err
    else:  # pragma: no cover - depends on the environment
        assert export_cmd.main([f"source={tmp_path / 'r'}", "format=parquet"]) == 0


# -- real measurements ------------------------------------------------------------------------------


def _rows(db: Path) -> list[tuple]:
    if not db.is_file():
        return []
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT id, kind, key, env_key, status, started_at, finished_at FROM measurements "
                           "ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        con.close()


def _processes_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_kill_and_resume_a_real_sweep(tmp_path):
    """SIGKILL a real sweep midway; the second run completes it without repeating committed work."""
    space = tiny_space(tmp_path)
    out = tmp_path / "res"
    db = out / "store.db"
    args = [sys.executable, "-m", "explorer", "sweep", f"space_file={space}", f"out={out}", "sweep.progress=false"]
    marker = f"EXPLORER_KILL_TEST={uuid.uuid4().hex}"
    key, value = marker.split("=")
    proc = subprocess.Popen(args, cwd=tmp_path, env=env(**{key: value}), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    F.kill_when(proc, lambda: len(_rows(db)) >= 2, 240, "no measurement committed", poll_s=0.1)
    first = _rows(db)
    assert 2 <= len(first) < 6  # 2 encoders + 2 projectors + 2 prefills in total
    if Path("/proc").is_dir():  # the measurement worker dies with the sweep (PR_SET_PDEATHSIG)
        deadline = time.monotonic() + 10
        while _processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_with(marker)

    done = explorer(args[3:], tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(first)} already stored" in done.stdout and "0 failed" in done.stdout
    page = out / "pareto.html"  # the sweep ends with its interactive Pareto page
    assert f"interactive Pareto report: {page}" in done.stdout
    html = page.read_text()
    assert html.count("plotly.js v") >= 1 and '<script src="http' not in html and "Pareto frontier" in html
    second = _rows(db)
    assert len(second) == 6 and len({(r[1], r[2], r[3]) for r in second}) == 6  # each measurement once
    assert second[: len(first)] == first  # committed rows untouched: same ids and timestamps
    assert all(r[4] == "ok" for r in second)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT point_key) FROM points").fetchone() == (2, 2)
    con.close()
    frame = results.load(out)
    assert len(frame) == 2 and frame.point_key.is_unique and (frame.status == "ok").all()
    assert frame.ttft_ms.gt(0).all() and frame.encoder_gflops.gt(0).all()
    assert list(frame.visual_tokens) == [1, 4] and list(frame.prefill_tokens) == [5, 8]
    assert (frame.prefill_method == "whole-model").all() and (frame.threads == 1).all()
    # a third run has nothing left to do
    again = explorer(args[3:], tmp_path, timeout=300)
    assert again.returncode == 0 and "0 measured now, 6 already stored" in again.stdout
    assert _rows(db) == second


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    space = tiny_space(tmp_path)
    out = tmp_path / "res"
    args = [sys.executable, "-m", "explorer", "sweep", f"space_file={space}", f"out={out}", "sweep.progress=false"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not _rows(out / "store.db"):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stdout + stderr
    assert "stopping after the measurement in flight" in stderr and "Traceback" not in stderr
    assert "interrupted:" in stdout and "resume with the same command:" in stdout
    assert f"explorer sweep space_file={space} out={out}" in stdout
    rows = _rows(out / "store.db")
    assert 1 <= len(rows) < 6 and all(r[4] == "ok" for r in rows)  # the one in flight finished and was stored
