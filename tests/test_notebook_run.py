"""explorer.engine.notebook_run: environment flags, paths, and read-or-measure with the sweep's fast fakes."""
from __future__ import annotations

import dataclasses

import plotly.graph_objects as go
import pytest

import sweep_fakes as F
from explorer.engine.options import SweepOptions
from explorer.engine.notebook_run import (QUICK_TIMING, env_flag, export_figure, quick_settings, read_or_measure,
                                   resolve_paths, runtime_environment, stored_runtimes)
from explorer.data.space import load_space
from explorer.data.store import Store

FAKE_OPTIONS = dict(options=SweepOptions(isolation="inline", progress=False), backend=F.BACKEND)


def _spaces():
    full = load_space({"name": "toy", "encoders": {"toy": {}}, "resolutions": [64, 128], "llms": ["llm-a"],
                       "text_tokens": [8]}, shape_fn=F.shape, check_models=False)
    quick = dataclasses.replace(full, encoders=(dataclasses.replace(full.encoders[0], resolutions=(64,)),))
    return full, quick


def test_env_flag():
    assert env_flag("X", True, environ={}) is True
    assert env_flag("X", False, environ={"X": "  "}) is False
    for text in ("1", "true", "YES", "on"):
        assert env_flag("X", False, environ={"X": text}) is True
    for text in ("0", "False", "no", "off"):
        assert env_flag("X", True, environ={"X": text}) is False
    with pytest.raises(ValueError, match=r"invalid EXPLORER_QUICK='ture'"):
        env_flag("EXPLORER_QUICK", True, environ={"EXPLORER_QUICK": "ture"})


def test_resolve_paths(tmp_path):
    p = resolve_paths("paper_baselines", environ={}, root=tmp_path)
    assert p.results_db == tmp_path / "results" / "paper_baselines" / "store.db"
    assert p.quick_db == tmp_path / "results" / "quick" / "store.db"
    assert p.figures_dir == tmp_path / "docs" / "figures"
    p = resolve_paths("s", environ={"EXPLORER_RESULTS_DIR": str(tmp_path / "r")}, root=tmp_path)
    assert p.results_db == tmp_path / "r" / "s" / "store.db" and p.quick_db == tmp_path / "r" / "quick" / "store.db"
    p = resolve_paths("s", results_dir=tmp_path / "x", results_db=tmp_path / "my.db",
                      environ={"EXPLORER_RESULTS_DIR": "ignored"}, root=tmp_path)
    assert p.results_db == tmp_path / "my.db" and p.results_dir == tmp_path / "x"
    # the checkout is found from the package when no root is given
    assert (resolve_paths("s", environ={}).root / "search_spaces").is_dir()


def test_quick_settings_cap_the_protocol():
    full, _ = _spaces()
    s = quick_settings(full)
    assert (s.warmup_s, s.warmup_iters, s.min_iters, s.max_iters, s.max_time_s) == (0.0, 0, 1, 1, 1.0)
    assert dict(QUICK_TIMING)["max_iters"] == 1


def test_quick_measures_the_subset_into_its_own_database_then_reads_the_full_one(tmp_path):
    full, quick = _spaces()
    paths = resolve_paths("toy", results_dir=tmp_path, environ={}, root=tmp_path)
    lines: list[str] = []
    F.CALLS.clear()
    rows, source = read_or_measure(full, quick, paths, quick_mode=True, log=lines.append, **FAKE_OPTIONS)
    # one point (toy@64 x llm-a x 8 text tokens): one encoder, one projector, one prefill measurement
    assert dict(F.CALLS) == {"encoder": 1, "projector": 1, "prefill": 1}
    assert list(rows["resolution"]) == [64] and rows["status"].eq("ok").all()
    assert rows["encoder_latency_ms"].iloc[0] == pytest.approx(6.4)  # the fake's rule: resolution / 10
    assert rows["prefill_tokens"].iloc[0] == (64 // 32) ** 2 + 8
    assert source == f"{paths.quick_db} (measured here with QUICK timing caps)"
    assert paths.quick_db.is_file() and not paths.results_db.exists()

    # a full sweep into the space's database (the space's own settings), then QUICK reads it
    F.CALLS.clear()
    rows, source = read_or_measure(full, quick, paths, quick_mode=False, log=lines.append, **FAKE_OPTIONS)
    assert sorted(rows["resolution"]) == [64, 128] and source.endswith("(measured here with the space's timing protocol)")
    assert F.CALLS["encoder"] == 2
    F.CALLS.clear()
    rows, source = read_or_measure(full, quick, paths, quick_mode=True, log=lines.append, **FAKE_OPTIONS)
    assert sum(F.CALLS.values()) == 0 and source == f"{paths.results_db} (read)"
    assert sorted(rows["resolution"]) == [64, 128]
    assert lines[-1] == f"read 2 of the 2 design points (eager) from {paths.results_db}; nothing measured"
    # and the full sweep resumes: nothing left to measure
    rows, _ = read_or_measure(full, quick, paths, quick_mode=False, log=lines.append, **FAKE_OPTIONS)
    assert sum(F.CALLS.values()) == 0 and len(rows) == 2


def test_quick_with_a_database_of_other_points_measures_the_subset(tmp_path):
    full, quick = _spaces()
    paths = resolve_paths("toy", results_dir=tmp_path, environ={}, root=tmp_path)
    paths.results_db.parent.mkdir(parents=True)
    Store(paths.results_db).close()  # exists, holds nothing of this space
    lines: list[str] = []
    rows, source = read_or_measure(full, quick, paths, quick_mode=True, log=lines.append, **FAKE_OPTIONS)
    assert lines[0] == (f"{paths.results_db} holds none of these design points under runtime 'eager': "
                        "measuring the QUICK subset instead")
    assert list(rows["resolution"]) == [64] and "QUICK timing caps" in source


@dataclasses.dataclass(frozen=True)
class _RuntimeEnv:
    """A fake environment that, like the real one, records the runtime and keys on it."""

    runtime: str

    @property
    def key(self) -> str:
        return f"fake-{self.runtime}"

    def to_dict(self) -> dict:
        return {**F.FakeEnv().to_dict(), "runtime": self.runtime}


def test_each_runtime_is_measured_into_and_read_from_its_own_environment(tmp_path):
    full, quick = _spaces()
    paths = resolve_paths("toy", results_dir=tmp_path, environ={}, root=tmp_path)
    kw = dict(options=SweepOptions(isolation="inline", progress=False),
              backend=F.backend(environment=lambda settings: _RuntimeEnv(settings.runtime)), log=lambda _: None)
    assert stored_runtimes(paths.results_db) == []
    F.CALLS.clear()
    eager, _ = read_or_measure(full, quick, paths, quick_mode=False, **kw)
    compiled, _ = read_or_measure(full, quick, paths, quick_mode=False, runtime="compile", **kw)
    # the second runtime measured everything again, in its own environment (nothing reused across runtimes)
    assert dict(F.CALLS) == {"encoder": 4, "projector": 4, "prefill": 4}
    assert eager["runtime"].eq("eager").all() and set(eager["env_key"]) == {"fake-eager"} and len(eager) == 2
    assert compiled["runtime"].eq("compile").all() and set(compiled["env_key"]) == {"fake-compile"}
    assert stored_runtimes(paths.results_db) == ["compile", "eager"]
    store = Store(paths.results_db, create=False)
    try:
        assert runtime_environment(store, "eager") == "fake-eager"
        assert runtime_environment(store, "onnxruntime") is None
    finally:
        store.close()
    # QUICK reads eager rows although compile was measured last (the newest environment is not taken blindly)
    F.CALLS.clear()
    rows, source = read_or_measure(full, quick, paths, quick_mode=True, **kw)
    assert sum(F.CALLS.values()) == 0 and source == f"{paths.results_db} (read)"
    assert rows["runtime"].eq("eager").all() and sorted(rows["resolution"]) == [64, 128]


def test_export_figure_off_or_unavailable_says_so(tmp_path):
    lines: list[str] = []
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    assert export_figure(fig, None, log=lines.append) is None
    assert "not exported" in lines[-1]

    # plotly's own export: written where kaleido and a Chromium exist, else a note naming what is missing
    target = tmp_path / "figs" / "a.png"
    written = export_figure(fig, target, log=lines.append)
    assert target.parent.is_dir()
    if written is None:
        assert lines[-1].startswith("NOTE: static export of a.png skipped (") and "kaleido" in lines[-1]
        assert not target.exists()
    else:
        assert written == target and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert lines[-1] == f"wrote {target}"
