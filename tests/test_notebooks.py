"""The notebooks run top to bottom (nbclient), the quickstart on a checkpoint trained in the test."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def _outputs(notebook, output_type):
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == output_type]


@pytest.mark.slow
def test_quickstart_runs_on_a_trained_checkpoint(micro_run, monkeypatch):
    monkeypatch.setenv("JAX_I2V_CHECKPOINT", str(micro_run))
    monkeypatch.setenv("JAX_I2V_STEPS", "2")
    notebook = _execute("quickstart.ipynb")
    figures = [out for out in _outputs(notebook, "display_data") if "image/png" in out.data]
    assert len(figures) >= 3  # first frame, the frame grid, the filter and spectra
    text = "".join(out.text for out in _outputs(notebook, "stream"))
    for name in ("ground truth", "FrameInit (gaussian)", "no FrameInit"):
        assert f"{name}:" in text


@pytest.mark.slow
def test_unet_walkthrough_matches_the_reference():
    notebook = _execute("unet_walkthrough.ipynb")
    shape, error = "".join(out.text for out in _outputs(notebook, "stream")).strip().rsplit(" ", 1)
    assert float(error) < 1e-4
