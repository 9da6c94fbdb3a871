"""The notebooks: each a jupytext pair, ``notebooks/NAME.py`` (percent format, the reviewed source) and
``notebooks/NAME.ipynb`` (committed without outputs), in step; and each runs top to bottom in QUICK mode.

The sync check compares the cells (type, source, tags) of the two files, so editing one and not the
other fails here until ``jupytext --sync notebooks/*.py`` is run. Execution happens on a copy in a
temporary folder with a kernel of this interpreter; the results database goes to a temporary folder
(EXPLORER_RESULTS_DIR) and no figure is exported (EXPLORER_WRITE_FIGURES=0), so nothing is written
into the checkout. Both notebooks share one results folder, so the second reuses the FastViTHD and
Qwen2-0.5B measurements of the first. The two runs take about 95 s on 2 cores, beyond the suite's
budget: ``.ci/run`` runs them as a step of their own with ``EXPLORER_TEST_NOTEBOOKS=1``.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupytext.config import find_jupytext_configuration_file, load_jupytext_configuration_file
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["encoder_vs_llm_size", "reproduce_fastvlm_figure", "vlm_tokens"]  # in this order: the second reuses measurements
PREDICT_ONLY = {"vlm_tokens"}  # measures nothing in QUICK mode (meta device and predictions only)
CELL_TIMEOUT_S = 600


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip("\n"), tuple(c.metadata.get("tags", []))) for c in nb.cells]


def pair_differences(py_text: str, ipynb_text: str) -> list[str]:
    """Where the percent-format source and the .ipynb disagree (cell type, source or tags); [] when in step."""
    text_cells = _cells(jupytext.reads(py_text, fmt="py:percent"))
    nb_cells = _cells(nbformat.reads(ipynb_text, as_version=4))
    out = [f"cell {i}: {a[0]} {a[1][:60]!r}{' ' + str(a[2]) if a[2] else ''} != "
           f"{b[0]} {b[1][:60]!r}{' ' + str(b[2]) if b[2] else ''}"
           for i, (a, b) in enumerate(zip(text_cells, nb_cells)) if a != b]
    if len(text_cells) != len(nb_cells):
        out.append(f"{len(text_cells)} cells in the .py, {len(nb_cells)} in the .ipynb")
    return out


def test_notebooks_are_paired_by_the_jupytext_config():
    config_file = find_jupytext_configuration_file(str(ROOT / "notebooks"))
    assert config_file is not None and Path(config_file) == ROOT / "notebooks" / "jupytext.toml"
    config = load_jupytext_configuration_file(config_file)
    formats = config.formats if isinstance(config.formats, str) else ",".join(config.formats)
    assert formats == "ipynb,py:percent"
    pairs = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert pairs == {p.stem for p in (ROOT / "notebooks").glob("*.py")} == set(NOTEBOOKS)


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_py_and_ipynb_are_in_step_and_committed_without_outputs(stem):
    py, ipynb = ROOT / "notebooks" / f"{stem}.py", ROOT / "notebooks" / f"{stem}.ipynb"
    differences = pair_differences(py.read_text(), ipynb.read_text())
    assert not differences, (f"{py.name} and {ipynb.name} differ (run: jupytext --sync notebooks/{stem}.py):\n"
                             + "\n".join(differences))
    nb = nbformat.read(ipynb, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{stem}: committed with outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is nb.cells[1]
    assert "\nQUICK = True " in "\n" + params[0].source
    assert "RESULTS_DB = None" in params[0].source


def test_the_sync_check_catches_an_edit_on_either_side():
    py = (ROOT / "notebooks" / "encoder_vs_llm_size.py").read_text()
    ipynb = (ROOT / "notebooks" / "encoder_vs_llm_size.ipynb").read_text()
    edited_py = py.replace("N_BUDGETS = 5", "N_BUDGETS = 6")
    assert edited_py != py and pair_differences(edited_py, ipynb)
    nb = nbformat.reads(ipynb, as_version=4)
    nb.cells[1].metadata["tags"] = []
    assert pair_differences(py, nbformat.writes(nb))
    nb = nbformat.reads(ipynb, as_version=4)
    n = len(nb.cells)
    nb.cells.append(nbformat.v4.new_markdown_cell("an extra cell"))
    assert pair_differences(py, nbformat.writes(nb)) == [f"{n} cells in the .py, {n + 1} in the .ipynb"]
    assert pair_differences(py, ipynb) == []


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec for this interpreter (a fresh venv may have none registered) and a scratch
    results folder shared by the notebooks of this module."""
    jupyter = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter / "kernels" / "explorer-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "explorer tests", "language": "python",
    }))
    return {"JUPYTER_PATH": str(jupyter), "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
            "IPYTHONDIR": str(jupyter / "ipython"),
            "EXPLORER_RESULTS_DIR": str(tmp_path_factory.mktemp("results")),
            "EXPLORER_WRITE_FIGURES": "0", "EXPLORER_QUICK": "1", "TQDM_DISABLE": "1"}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EXPLORER_TEST_NOTEBOOKS") != "1",
                    reason="about 95 s for both, beyond the suite's budget; .ci/run runs them as a step of "
                           "their own with EXPLORER_TEST_NOTEBOOKS=1")
@pytest.mark.timeout(2 * CELL_TIMEOUT_S)
@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(stem, kernel_env, tmp_path, monkeypatch):
    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / f"{stem}.ipynb", work)
    figures_before = _snapshot(ROOT / "docs" / "figures")
    results_before = sorted(p.name for p in (ROOT / "results").iterdir()) if (ROOT / "results").is_dir() else []

    nb = nbformat.read(work / f"{stem}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="explorer-test",
                            resources={"metadata": {"path": str(work)}})
    started, cpu_before = time.monotonic(), _children_cpu_s()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    # wall time depends on the machine's load; the kernel's CPU time (and its measuring child's) less so
    print(f"{stem}: executed in {time.monotonic() - started:.0f} s wall, "
          f"{_children_cpu_s() - cpu_before:.0f} s CPU (user + sys of the kernel and its children)")

    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    assert "QUICK=True" in text
    assert "all checks passed" in text
    assert "not exported" in text  # EXPLORER_WRITE_FIGURES=0
    if stem not in PREDICT_ONLY:
        assert (Path(kernel_env["EXPLORER_RESULTS_DIR"]) / "quick" / "store.db").is_file()
    # nothing was written into the checkout
    assert _snapshot(ROOT / "docs" / "figures") == figures_before
    after = sorted(p.name for p in (ROOT / "results").iterdir()) if (ROOT / "results").is_dir() else []
    assert not (set(after) - set(results_before)) & {"quick", "fastvithd_full", "paper_baselines"}
