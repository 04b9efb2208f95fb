"""The notebooks run top to bottom on small generated data, and are committed without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_the_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == [
        "compare_algorithms.ipynb", "new_hospital.ipynb", "quickstart_images.ipynb"
    ]  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_generated_data(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The kernel inherits this environment: tiny budget, no real data, everything written under tmp_path.
    monkeypatch.setenv("METACLINIC_NOTEBOOK_SIZE", "tiny")
    monkeypatch.setenv("METACLINIC_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("METACLINIC_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the generated data goes
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "using generated" in text  # it said that the real data is missing, and how to get it
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the story is told with plots
    reports = list((tmp_path / "runs").glob("*/*/meta_test_report.json"))
    assert len(reports) >= 2
    for report in map(json.loads, (p.read_text() for p in reports)):
        assert report["metrics"]["accuracy"]["n"] > 0
    assert not (tmp_path / "no-data").exists()  # nothing was written next to (absent) real data
