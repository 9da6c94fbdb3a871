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
import stat
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

import sweep_fakes as F
from pg_server import pg_url, postgres_url  # noqa: F401 - fixtures
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
    # a store whose index page is damaged: plain reads still work, PRAGMA quick_check does not
    con = sqlite3.connect(good / "store.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = con.execute("SELECT rootpage FROM sqlite_master WHERE name='ix_measurements_env'").fetchone()[0]
    size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    corrupt = d / "corrupt"
    corrupt.mkdir()
    data = bytearray((good / "store.db").read_bytes())
    data[(page - 1) * size:(page - 1) * size + 201] = b"\x0d" + b"\xff" * 200
    (corrupt / "store.db").write_bytes(bytes(data))
    con = sqlite3.connect(corrupt / "store.db")
    assert con.execute("PRAGMA quick_check").fetchone()[0] != "ok"  # the damage is real
    assert con.execute("SELECT COUNT(*) FROM points").fetchone()[0] == 2  # and reads do not notice it
    con.close()
    out["corrupt"] = str(corrupt)
    (d / "ref_cols.csv").write_text("a,b\n1,2\n")
    out["ref_cols"] = str(d / "ref_cols.csv")
    out["fifo"] = str(d / "a_fifo")
    os.mkfifo(out["fifo"])
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
    # issue 26: Hydra's own errors, reworded into one line naming the field
    (["sweep", "space_file={space}", "foo=1"], "invalid foo='1': no such option"),
    (["sweep", "space_file={space}", "+foo=1"], "invalid foo='1': no such option"),
    (["sweep", "space_file={space}", "measure.foo=1"], "invalid measure.foo='1': no such option"),
    (["sweep", "space_file={space}", "+measure.foo=1"], "invalid measure.foo='1': no such option"),
    (["sweep", "space_file={space}", "measure.compile=maybe"], "invalid measure.compile='maybe': true or false"),
    (["sweep", "+space=nonexistent"], "invalid space='nonexistent': not a known space; one of:"),
    (["sweep", "space_file={space}", "sweep.isolation=[a"], "put the value in quotes"),
    (["sweep", "space_file={dir}/missing.yaml"], "invalid space_file="),
    (["sweep", "spaces_dir={a_file}", "+space=tiny"], "invalid spaces_dir="),
    (["export", "source={good}", "bogus=1"], "invalid bogus='1': no such option"),
    (["plot", "source={good}", "+bogus=1"], "invalid bogus='1': no such option"),
    (["train", "space_file={space}", "out={dir}/empty", "+train.config.lr=0.002"], "no results database"),  # free-form: passes
    # issue 26: tracebacks and silent answers
    (["search", "space_file={space}", "search.seed=-1"], "invalid search.seed=-1"),
    (["predict", "space_file={huge_res}", "device=nvidia-h100-sxm"], "max_position_embeddings"),
    (["sweep", "space_file={space}", "store=sqlite:///{foreign_db}"], "another application's tables (customers)"),
    (["export", "source={corrupt}"], "quick_check"),
    (["plot", "source={corrupt}"], "quick_check"),
    (["plot", "source={good}", "reference={ref_cols}"], "invalid reference="),
    # issue 26: special files as outputs are refused, never replaced
    (["export", "source={good}", "format=csv", "out=/dev/full"], "character device"),
    (["plot", "source={good}", "out=/dev/full"], "character device"),
    (["export", "source={good}", "format=csv", "out={fifo}"], "a FIFO"),
    (["predict", "space_file={space}", "device=nvidia-h100-sxm", "out=/proc/explorer-predicted"], "invalid out="),
    (["calibrate", "store={good}", "out=/proc/profile.yaml"], "invalid out="),
    (["bench", "out=/dev/full"], "character device"),
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
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err  # one line
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


# -- issue 26: outputs, races, kills, and the library's own refusals -----------------------------

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "PYTHONUNBUFFERED": "1"}
    e.update(extra)
    return e


def _explorer(args: list[str], cwd: str, umask: Optional[int] = None, timeout: float = 180) -> subprocess.CompletedProcess:
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, "-m", "explorer", *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=timeout, preexec_fn=pre)


def _char_device(folder: Path) -> Path:
    """A character device of our own (the kernel's 'full' device, 1:7), else /dev/full itself."""
    path = folder / "full_device"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        return path
    except (PermissionError, OSError):
        if not Path("/dev/full").exists():
            pytest.skip("no character device to write to")
        return Path("/dev/full")


def test_a_character_device_or_fifo_as_out_is_never_replaced(files, tmp_path, capsys, monkeypatch):
    dev = _char_device(tmp_path)
    fifo = Path(files["fifo"])
    proc = _explorer(["export", f"source={files['good']}", "format=csv", f"out={dev}"], str(tmp_path))  # a real process
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: invalid out=") and "never replaces" in proc.stderr and "wrote" not in proc.stdout
    monkeypatch.chdir(tmp_path)
    for args in (["plot", f"source={files['good']}", f"out={dev}"],
                 ["export", f"source={files['good']}", "format=csv", f"out={fifo}"]):
        assert cli(args) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("error: invalid out=") and "never replaces" in captured.err
        assert "wrote" not in captured.out
    assert stat.S_ISCHR(os.stat(dev).st_mode) and stat.S_ISFIFO(os.stat(fifo).st_mode)
    if Path("/dev/full").exists():  # the table's out=/dev/full rows ran before: still the device
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert not list(tmp_path.glob(".*.part")) and not list(Path(files["dir"]).glob(".*.part"))


def test_the_atomic_writer_refuses_a_special_file(files):
    from explorer.checks import OptionError
    from explorer.data.atomic import atomic_path

    with pytest.raises(OptionError, match="a FIFO"):
        with atomic_path(files["fifo"]):
            pass
    assert stat.S_ISFIFO(os.stat(files["fifo"]).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_keep_the_users_umask(files, tmp_path, umask, capsys):
    out = tmp_path / f"table-{umask:o}.csv"
    page = tmp_path / f"page-{umask:o}.html"
    assert _explorer(["export", f"source={files['good']}", f"out={out}"], str(tmp_path), umask).returncode == 0
    before = os.umask(umask)
    try:
        assert cli(["plot", f"source={files['good']}", f"out={page}"]) == 0
        for path in (out, page):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path
        out.chmod(0o604)  # a file that exists keeps its own mode when it is written again
        assert cli(["export", f"source={files['good']}", f"out={out}"]) == 0
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o604
    finally:
        os.umask(before)
    capsys.readouterr()


@pytest.fixture
def read_only_dir(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a read-only tmpfs is not allowed here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_read_only_file_system_is_refused_before_work_by_every_command(files, read_only_dir, tmp_path, capsys,
                                                                        monkeypatch):
    ro = read_only_dir
    for args in (["predict", f"space_file={files['space']}", "device=nvidia-h100-sxm", f"out={ro}/predicted"],
                 ["calibrate", f"store={files['good']}", f"out={ro}/profile.yaml"]):  # the reported tracebacks
        proc = _explorer(args, str(tmp_path))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert proc.stderr.startswith("error: invalid out=") and "read-only file system" in proc.stderr
    monkeypatch.chdir(tmp_path)
    for args in (["export", f"source={files['good']}", f"out={ro}/results.csv"],
                 ["plot", f"source={files['good']}", f"out={ro}/report.html"],
                 ["plot", f"source={files['good']}", f"out={tmp_path}/r.html", f"png={ro}/png"],
                 ["sweep", f"space_file={files['space']}", f"out={ro}/results"],
                 ["bench", f"out={ro}/bench.md"]):
        assert cli(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: invalid ") and err.count("\n") == 1 and "read-only file system" in err, err
    assert not (tmp_path / "r.html").exists()  # refused before the page was written


def test_a_non_ascii_space_path_works_and_an_unreadable_argument_gets_a_hint(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "espace_é"
    path.mkdir()
    (path / "tiny_é.yaml").write_text(Path(files["space"]).read_text())
    assert cli(["sweep", f"space_file={path / 'tiny_é.yaml'}", "sweep.dry_run=true", f"out={tmp_path / 'résultats'}"]) == 0
    out = capsys.readouterr().out
    assert "design points" in out and "résultats" in out
    assert cli(["sweep", f"space_file={path / 'tiny_é.yaml'}", "sweep.timeout_s=[1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the command-line argument 'sweep.timeout_s=[1'") and "quotes" in err


def test_explorer_spaces_dir_naming_a_file_is_refused(files, capsys, monkeypatch):
    monkeypatch.setenv("EXPLORER_SPACES_DIR", files["a_file"])
    assert cli(["sweep", "+space=tiny", "sweep.dry_run=true"]) == 2
    assert capsys.readouterr().err == f"error: invalid EXPLORER_SPACES_DIR={files['a_file']!r}: a file, not a folder of NAME.yaml spaces\n"


def test_library_calls_refuse_bad_values_by_name(files):
    import pandas as pd

    from explorer.analysis.pareto import pareto_front
    from explorer.data import results
    from explorer.models import build_encoder

    df = pd.DataFrame({"ttft_ms": [1.0, 2.0, 3.0], "accuracy": [1.0, 3.0, 2.0], "status": ["ok"] * 3})
    with pytest.raises(ValueError, match="invalid objectives=123"):
        pareto_front(df, 123)
    front = pareto_front(df, ("ttft_ms", "max"))  # one (column, direction) pair
    assert [o.column for o in front.objectives] == ["ttft_ms"] and front.objectives[0].direction == "maximize"
    assert list(front.front["ttft_ms"]) == [3.0]
    with pytest.raises(ValueError, match="invalid ttft_includes_preprocess='no'"):
        results.load(files["good"], ttft_includes_preprocess="no")
    import torch

    with torch.device("meta"), pytest.raises(ValueError, match="clip_head"):
        build_encoder("fastvithd", clip_head="yes")


def test_a_sweep_never_adds_tables_to_another_applications_sqlite_file(files):
    from explorer.data.store import StoreError

    with pytest.raises(StoreError, match="another application's tables"):
        Store(files["foreign_db"])
    con = sqlite3.connect(files["foreign_db"])
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["customers"]
    con.close()


# -- real processes on one store -----------------------------------------------------------------

_OPEN_AT = """
import sys, time
from explorer.data.store import Store
t = float(sys.argv[2])
while time.time() < t:
    time.sleep(0.001)
Store(sys.argv[1]).close()
print("opened")
"""


def test_three_processes_create_a_fresh_postgresql_schema_at_the_same_instant(pg_url, tmp_path):
    """All three open a fresh database at one instant (a shared start time, not one after another)."""
    import time

    at = time.time() + 8  # every interpreter has imported SQLAlchemy by then
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT, pg_url, str(at)], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert all(o[0].strip() == "opened" for o in outs)
    st = Store(pg_url, create=False)
    assert st.schema_version() is not None
    st.close()


def test_three_workers_started_together_on_fresh_postgresql_each_job_once(pg_url, tmp_path):
    from test_cli_sweep import tiny_space

    space = tiny_space(tmp_path)
    args = [sys.executable, "-m", "explorer", "worker", f"store={pg_url}", f"space_file={space}",
            "worker.exclusive_device=false", "worker.poll_s=0.2", "sweep.isolation=inline"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    st = Store(pg_url, create=False)
    rows = st.measurements()
    keys = [(r.kind, r.key, r.env_key) for r in rows]
    assert len(keys) == len(set(keys)) == 6 and all(r.status == "ok" for r in rows)  # 2 encoders, projectors, prefills
    import re

    measured = [int(re.search(r": measured (\d+) ", o[0]).group(1)) for o in outs]
    assert sum(measured) == 6, outs
    from explorer.data.queue import WorkQueue

    assert set(WorkQueue(st).attempts("tiny", rows[0].env_key).values()) == {1}  # each job leased once
    st.close()


_GROUP_SWEEP = """
import sys
import sweep_fakes as F
from explorer.data.space import load_space
from explorer.data.store import Store
from explorer.measure.settings import MeasureSettings
sp = load_space({"name": "nap", "encoders": {"toy": {"knobs": {"sleep_s": [1.5, 4.5]}}}, "resolutions": [64],
                 "llms": ["llm-a"], "text_tokens": [0]}, shape_fn=F.shape, check_models=False)
r = F.run(sp, MeasureSettings(device="cpu"), Store(sys.argv[1]), isolation="process", interleave=4)
print("measured", sum(r.measured.values()))
"""


def _stored(db: Path) -> list[tuple]:
    if not db.is_file():
        return []
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT kind, key, status FROM measurements ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def test_a_kill_costs_only_the_timings_in_flight_of_an_interleaved_group(tmp_path):
    """Two encoders timed as one group (1.5 s and 4.5 s of work): the first to finish is stored at
    once, so a SIGKILL while the other still runs loses that one only; a resume measures the rest."""
    db = tmp_path / "store.db"
    proc = subprocess.Popen([sys.executable, "-c", _GROUP_SWEEP, str(db)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    F.kill_when(proc, lambda: bool(_stored(db)), 120, "nothing committed")
    first = _stored(db)
    assert len(first) == 1 and first[0][0] == "encoder" and first[0][2] == "ok", first  # the other was in flight
    done = subprocess.run([sys.executable, "-c", _GROUP_SWEEP, str(db)], env=_env(), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0 and "measured 3" in done.stdout, done.stdout + done.stderr  # encoder, projector, prefill
    rows = _stored(db)
    assert rows[0] == first[0] and len(rows) == 4 and len({r[:2] for r in rows}) == 4


@pytest.mark.parametrize("n", [3])  # three at once covers two (12 s saved from the suite's budget)
def test_sweeps_started_together_on_one_store_share_the_work(tmp_path, n):
    """``explorer sweep`` n times at once on one fresh store: each job measured once, by one of them."""
    import re

    from test_cli_sweep import tiny_space

    from explorer.engine.sweep import plan_sweep

    space = tiny_space(tmp_path)
    out = tmp_path / "res"
    args = [sys.executable, "-m", "explorer", "sweep", f"space_file={space}", f"out={out}", "sweep.progress=false",
            "sweep.isolation=inline", "report=false"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, outs
    measured = [int(re.search(r"(\d+) measured now", o[0]).group(1)) for o in outs]
    st = Store(out, create=False)
    rows = st.measurements()
    plan = plan_sweep(load_space(str(space)), None, None)  # what a single sweep measures
    assert sum(measured) == len(plan.jobs) == len(rows) == 6, outs
    assert {(r.kind, r.key) for r in rows} == {(j.kind, j.key) for j in plan.jobs}
    assert len({r.env_key for r in rows}) == 1 and all(r.status == "ok" for r in rows)
    assert st.history() == []  # nothing was measured twice (a second measurement replaces and keeps the first here)
    for o, m in zip(outs, measured):  # each says what it measured and what the others did
        stored = int(re.search(r"(\d+) already stored", o[0]).group(1))
        others = re.search(r"(\d+) measured meanwhile by other sweeps or workers", o[0])
        assert m + stored + (int(others.group(1)) if others else 0) == 6, o[0]
    st.close()


def test_a_dry_run_names_the_environment_a_sweep_would_use_and_the_others_stored(tmp_path, capsys, monkeypatch):
    """The dry run plans with the threads a sweep started now would take, and says which other
    environment holds these measurements (and the setting that continues it) instead of '0 stored'."""
    from test_cli_sweep import tiny_space

    from explorer.data.store import MeasurementRecord, utcnow
    from explorer.engine.sweep import plan_sweep

    space = tiny_space(tmp_path)
    out = tmp_path / "res"
    plan = plan_sweep(load_space(str(space)), None, None)
    st = Store(out)
    other = {"device": "Other CPU", "device_type": "cpu", "dtype": "float32", "threads": 7}
    for j in plan.jobs:
        st.save_measurement(MeasurementRecord(kind=j.kind, key=j.key, env_key="other-env", environment=other,
                                              inputs=j.inputs, status="ok", payload={}, error=None,
                                              started_at=utcnow(), finished_at=utcnow(), duration_s=0.1))
    st.close()
    monkeypatch.chdir(tmp_path)
    assert cli(["sweep", f"space_file={space}", f"out={out}", "sweep.dry_run=true"]) == 0
    text = capsys.readouterr().out
    assert "also stored: 6 of these measurements in environment other-env (Other CPU, 7 thread(s), float32); " \
           "measure.threads=7 continues that one" in text


def test_predict_says_which_rows_it_prints(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = Path(files["space"])
    assert cli(["predict", f"space_file={space}", "device=nvidia-h100-sxm", "space.resolutions=[64,128]",
                "space.text_tokens=[4,8]", f"out={tmp_path / 'p'}", "report=false"]) == 0
    out = capsys.readouterr().out
    assert f"the fastest design point per LLM and resolution (2 of 4; every row is in {tmp_path / 'p' / 'predicted.csv'}):" in out
