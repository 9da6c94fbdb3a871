"""The notebooks: committed without outputs, exactly as tools/make_notebooks.py builds them, and
running top to bottom in QUICK mode (a few minutes in all on 2 CPU cores).

Execution happens on a copy in a temporary folder with a kernel of this interpreter; the results
database goes to a temporary folder (EXPLORER_RESULTS_DIR) and no figure is exported
(EXPLORER_WRITE_FIGURES=0), so nothing is written into the checkout. Both notebooks share one
results folder, so the second reuses the FastViTHD and Qwen2-0.5B measurements of the first.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["encoder_vs_llm_size", "reproduce_fastvlm_figure"]  # in this order: the second reuses measurements
CELL_TIMEOUT_S = 900


def _maker():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "tools" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_committed_notebook_is_generated_and_has_no_outputs(stem):
    path = ROOT / "notebooks" / f"{stem}.ipynb"
    assert path.is_file(), f"{path} is missing: run python tools/make_notebooks.py"
    text = path.read_text()
    assert text == _maker().render(stem), f"{path} differs from tools/make_notebooks.py: regenerate it"
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{stem}: committed with outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is nb.cells[1]
    assert "\nQUICK = True " in "\n" + params[0].source
    assert "RESULTS_DB = None" in params[0].source


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


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


@pytest.mark.slow
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
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    assert "QUICK=True" in text
    assert "all checks passed" in text
    assert "not exported" in text  # EXPLORER_WRITE_FIGURES=0
    assert (Path(kernel_env["EXPLORER_RESULTS_DIR"]) / "quick" / "store.db").is_file()
    # nothing was written into the checkout
    assert _snapshot(ROOT / "docs" / "figures") == figures_before
    after = sorted(p.name for p in (ROOT / "results").iterdir()) if (ROOT / "results").is_dir() else []
    assert not (set(after) - set(results_before)) & {"quick", "fastvithd_full", "paper_baselines"}
