"""Tests for experiments/notebooks/ablation.ipynb: the committed file is clean, and the notebook runs end to end.

The run executes every cell in a fresh kernel, ipykernel's "python3" kernelspec (it ships with ipykernel, and
jupyter_client starts it with this interpreter, so `pip install -e ".[test]"` is all the setup it needs), at toy
sizes given through the notebook's ABLATION_* environment variables. It then checks what a reader would look at:
the causality line of each mixer, the comparison table (against the runs' own results.json) and the figure.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re

import matplotlib.colors
import matplotlib.image
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "notebooks", "ablation.ipynb")
MIXERS = ("lru", "softmax")
STEPS = 6
TOY_SIZES = {
    "ABLATION_STEPS": str(STEPS),
    "ABLATION_D_MODEL": "8",
    "ABLATION_N_LAYERS": "1",
    "ABLATION_SEQ_LEN": "32",
    "ABLATION_NUM_TRAIN": "96",  # + 12 validation + 12 test: one generator chunk, no worker processes
    "ABLATION_BATCH_SIZE": "8",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_committed_notebook_is_valid_nbformat_4_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4 and notebook.metadata.kernelspec.name == "python3"
    code_cells = [(index, cell) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    assert len(code_cells) >= 5
    for index, cell in code_cells:
        assert cell.outputs == [] and cell.execution_count is None and "execution" not in cell.metadata, (
            f"{NOTEBOOK}, cell {index}: outputs, an execution count or timings are committed; clear all outputs "
            "(Jupyter: Edit > Clear Outputs of All Cells) and save before committing")
    # The first code cell holds every size, each read from the variable the run below sets.
    parameters = code_cells[0][1].source
    for variable in (*TOY_SIZES, "ABLATION_MIXERS", "ABLATION_WORKDIR"):
        assert f'os.environ.get("{variable}"' in parameters, variable


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook after running it at toy sizes, and the directory holding its runs' workdirs."""
    root = tmp_path_factory.mktemp("notebook")
    runs = root / "runs"
    environment = {
        **TOY_SIZES,
        "ABLATION_MIXERS": ",".join(MIXERS),
        "ABLATION_WORKDIR": str(runs),
        "LRA_MIXERS_CACHE": str(root / "cache"),  # generated ListOps go here, not to ~/.cache
        "IPYTHONDIR": str(root / "ipython"),  # a clean IPython profile: no user startup files
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),  # the kernel's connection file
        # Compilation is most of a toy run's time; this test checks that the notebook runs, not its speed.
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    }
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as patch:  # the kernel inherits this process's environment
        for name, value in environment.items():
            patch.setenv(name, value)
        client = NotebookClient(notebook, kernel_name="python3", timeout=600,
                                resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
        client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell fails
    return notebook, runs


def outputs(notebook, output_type=None):
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
            if output_type is None or output.output_type == output_type]


def test_every_cell_ran_in_order_without_errors(executed):
    notebook, _ = executed
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))
    assert not outputs(notebook, "error")


def test_mixers_on_plain_arrays_are_causal_and_only_the_mixer_differs(executed):
    notebook, _ = executed
    stdout = "".join(output.text for output in outputs(notebook, "stream") if output.name == "stdout")
    for name in MIXERS:
        line = re.search(rf"^ *{name}: \(2, 32, 8\) -> \(2, 32, 8\), [\d,]+ parameters; .*$", stdout, re.M)
        assert line and line.group(0).endswith("first moves output 16: causal True"), stdout
    assert "config keys that differ between the runs: ['model.mixer']" in stdout


def test_comparison_table_reports_each_runs_results(executed):
    notebook, runs = executed
    (table,) = [output.data["text/markdown"] for output in outputs(notebook, "display_data")
                if "text/markdown" in output.data]
    lines = table.strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["mixer", "parameters", "steps", "final train loss", "best val acc", "test acc",
                      "test majority", "wall s"]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
    assert [row["mixer"] for row in rows] == list(MIXERS)
    for row in rows:
        with open(runs / row["mixer"] / "results.json") as f:
            results = json.load(f)
        assert results["mixer"] == row["mixer"] and results["steps"] == STEPS == int(row["steps"])
        assert int(row["parameters"].replace(",", "")) == results["num_params"]
        for column, key in (("best val acc", "val_accuracy"), ("test acc", "test_accuracy"),
                            ("test majority", "test_majority_rate")):
            assert row[column] == f"{results[key]:.3f}", (column, row, results)
        assert 0.0 < float(row["final train loss"]) < 10.0  # ListOps has 10 classes: ln 10 = 2.3 at chance


def test_training_curves_are_shown_as_a_png(executed):
    notebook, _ = executed
    (figure,) = [output.data["image/png"] for output in outputs(notebook, "display_data")
                 if "image/png" in output.data]
    data = base64.b64decode(figure)
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, len(data)
    rgb = matplotlib.image.imread(io.BytesIO(data), format="png")[..., :3]
    assert rgb.shape[1] > 2 * rgb.shape[0] > 400, rgb.shape  # two panels side by side
    for color in ("C0", "C1"):  # one curve per mixer, in matplotlib's first two colours
        pixels = np.all(np.abs(rgb - np.asarray(matplotlib.colors.to_rgb(color))) < 0.02, axis=-1).sum()
        assert pixels > 100, (color, pixels)
