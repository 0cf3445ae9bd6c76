"""Tests for experiments/notebooks/ablation.ipynb: the committed file carries the outputs of an execution at its
defaults, and the notebook runs end to end.

The committed notebook is checked as a reader sees it: every code cell executed in order without errors, the
causality line of each mixer, the progress of each run (its workdir, validation and test lines and the final state
of its progress bar, without the carriage-return updates of the bar or any other stderr noise), the comparison
table and the figure, all for the mixers and step count that the parameters cell sets by default.

The run executes every cell in a fresh kernel, ipykernel's "python3" kernelspec (it ships with ipykernel, and
jupyter_client starts it with this interpreter, so `pip install -e ".[test]"` is all the setup it needs), at toy
sizes given through the notebook's ABLATION_* environment variables, and checks the same things, the table against
the runs' own results.json.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import tempfile

import matplotlib.colors
import matplotlib.image
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(REPO, "experiments", "notebooks", "ablation.ipynb")
MAX_NOTEBOOK_BYTES = 300_000
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
TABLE_HEADER = ["mixer", "parameters", "steps", "final train loss", "best val acc", "test acc", "test majority",
                "wall s"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXECUTE_AGAIN = ("execute it again with the command in the notebook's first cell (nbclient with coalesce_streams=True, "
                 "from the repository root) and commit it with its outputs")


# ---------------------------------------------------------------------------------------------------- helpers


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def outputs(notebook, output_type=None) -> list:
    return [output for cell in code_cells(notebook) for output in cell.outputs
            if output_type is None or output.output_type == output_type]


def stream(notebook, name: str) -> str:
    return "".join(output.text for output in outputs(notebook, "stream") if output.name == name)


def default(parameters: str, variable: str) -> str:
    """The default of `variable` in the parameters cell: `os.environ.get("VARIABLE", default)`."""
    match = re.search(rf'os\.environ\.get\("{variable}", "?([^")]*)"?\)', parameters)
    assert match, f"the parameters cell does not read {variable} with a default"
    return match.group(1)


def check_executed_in_order_without_errors(notebook) -> None:
    cells = code_cells(notebook)
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), f"execution counts {counts}: not every cell ran, in order"
    errors = outputs(notebook, "error")
    assert not errors, [f"{error.ename}: {error.evalue}" for error in errors]


def check_mixer_lines(notebook, mixers, seq_len: int, d_model: int) -> None:
    stdout = stream(notebook, "stdout")
    shape = re.escape(f"(2, {seq_len}, {d_model})")
    for name in mixers:
        line = re.search(rf"^ *{name}: {shape} -> {shape}, [\d,]+ parameters; .*$", stdout, re.M)
        assert line and line.group(0).endswith(f"first moves output {seq_len // 2}: causal True"), stdout
    assert "config keys that differ between the runs: ['model.mixer']" in stdout, stdout


def check_progress(notebook, mixers, steps: int, workdir_pattern: str) -> None:
    """Each run's workdir line, its validation and test lines and its progress bar at the end, in run order."""
    stderr = stream(notebook, "stderr")
    assert "\r" not in stderr, ("the progress bars' carriage-return updates are in the outputs", stderr[:2000])
    position = 0
    for name in mixers:
        expected = [rf"^workdir {workdir_pattern}/{name}: a new run$",
                    rf"^step {steps} validation: accuracy [\d.]+ loss [\d.]+$",
                    rf"^step {steps}: test accuracy [\d.]+ loss [\d.]+ \(best checkpoint, step \d+\)$",
                    rf"^train: 100%\|[^|]*\| {steps}/{steps} \[[^]]*(step/s|s/step), loss=[\d.]+, acc=[\d.]+, "
                    r"val_acc=[\d.]+\]$"]
        for pattern in expected:
            match = re.compile(pattern, re.M).search(stderr, position)
            assert match, f"{name}: no line {pattern!r} after position {position} of the stderr output:\n{stderr}"
            position = match.end()


def table_rows(notebook) -> list[dict[str, str]]:
    tables = [output.data["text/markdown"] for output in outputs(notebook, "display_data")
              if "text/markdown" in output.data]
    assert len(tables) == 1, f"{len(tables)} markdown tables in the outputs"
    lines = tables[0].strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == TABLE_HEADER
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def check_figure(notebook, num_runs: int) -> None:
    figures = [output.data["image/png"] for output in outputs(notebook, "display_data") if "image/png" in output.data]
    assert len(figures) == 1, f"{len(figures)} PNG figures in the outputs"
    data = base64.b64decode(figures[0])
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, len(data)
    rgb = matplotlib.image.imread(io.BytesIO(data), format="png")[..., :3]
    assert rgb.shape[1] > 2 * rgb.shape[0] > 400, rgb.shape  # two panels side by side
    for index in range(num_runs):  # one curve per mixer, in matplotlib's default colours C0, C1, ...
        color = matplotlib.colors.to_rgb(f"C{index}")
        pixels = np.all(np.abs(rgb - np.asarray(color)) < 0.02, axis=-1).sum()
        assert pixels > 100, (f"C{index}", pixels)


# ---------------------------------------------------------------------------------------------------- committed


@pytest.fixture(scope="module")
def committed():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = code_cells(notebook)[0].source
    defaults = {variable: default(parameters, variable)
                for variable in ("ABLATION_MIXERS", "ABLATION_STEPS", "ABLATION_SEQ_LEN", "ABLATION_D_MODEL")}
    return notebook, defaults


def test_committed_notebook_is_valid_nbformat_4_and_every_cell_ran_in_order(committed):
    notebook, _ = committed
    nbformat.validate(notebook)
    assert notebook.nbformat == 4 and notebook.metadata.kernelspec.name == "python3"
    assert len(code_cells(notebook)) >= 5
    # The first code cell holds every size, each read from the variable the run below sets.
    parameters = code_cells(notebook)[0].source
    for variable in (*TOY_SIZES, "ABLATION_MIXERS", "ABLATION_WORKDIR"):
        assert f'os.environ.get("{variable}"' in parameters, variable
    for index, cell in enumerate(code_cells(notebook)[1:], 2):
        # every cell but the parameters shows something; an unexecuted or cleared notebook does not
        assert cell.outputs, f"code cell {index} has no outputs: {EXECUTE_AGAIN}"
    check_executed_in_order_without_errors(notebook)
    size = os.path.getsize(NOTEBOOK)
    assert size < MAX_NOTEBOOK_BYTES, f"{NOTEBOOK}: {size:,} bytes"


def test_committed_outputs_show_each_runs_progress_and_nothing_machine_specific(committed):
    notebook, defaults = committed
    mixers, steps = defaults["ABLATION_MIXERS"].split(","), int(defaults["ABLATION_STEPS"])
    check_mixer_lines(notebook, mixers, int(defaults["ABLATION_SEQ_LEN"]), int(defaults["ABLATION_D_MODEL"]))
    try:
        check_progress(notebook, mixers, steps, r"\S*/workdirs/ablation/[^/\s]+")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{EXECUTE_AGAIN}") from None
    # Nothing else on stderr (warnings of the machine that executed it) and no temporary directories.
    known = re.compile(r"(workdir \S+: a new run|step \d+ validation: .*|step \d+: test accuracy .*|"
                       r"(train|ListOps): 100%\|.*)$")
    unknown = [line for line in stream(notebook, "stderr").splitlines() if line and not known.match(line)]
    assert not unknown, unknown
    text = json.dumps([output for output in outputs(notebook) if "image/png" not in output.get("data", {})])
    for temporary in {tempfile.gettempdir(), "/tmp/", "/var/folders/"}:
        assert temporary not in text, f"the outputs name the temporary directory {temporary}"


def test_committed_table_has_a_row_per_default_mixer(committed):
    notebook, defaults = committed
    rows = table_rows(notebook)
    assert [row["mixer"] for row in rows] == defaults["ABLATION_MIXERS"].split(",")
    for row in rows:
        assert int(row["steps"]) == int(defaults["ABLATION_STEPS"]), row
        accuracies = [float(row[column]) for column in ("best val acc", "test acc", "test majority")]
        assert all(0.0 < value <= 1.0 for value in accuracies), row
        assert float(row["test acc"]) > float(row["test majority"]), row  # every run learned something
        assert 0.0 < float(row["final train loss"]) < 10.0, row


def test_committed_figure_is_a_png_with_a_curve_per_mixer(committed):
    notebook, defaults = committed
    check_figure(notebook, len(defaults["ABLATION_MIXERS"].split(",")))


# ---------------------------------------------------------------------------------------------------- executed


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
        client = NotebookClient(notebook, kernel_name="python3", timeout=600, coalesce_streams=True,
                                resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
        client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell fails
    return notebook, runs


def test_every_cell_ran_in_order_without_errors(executed):
    notebook, _ = executed
    check_executed_in_order_without_errors(notebook)


def test_mixers_on_plain_arrays_are_causal_and_only_the_mixer_differs(executed):
    notebook, _ = executed
    check_mixer_lines(notebook, MIXERS, int(TOY_SIZES["ABLATION_SEQ_LEN"]), int(TOY_SIZES["ABLATION_D_MODEL"]))


def test_each_run_shows_its_progress(executed):
    notebook, runs = executed
    check_progress(notebook, MIXERS, STEPS, re.escape(str(runs)))


def test_comparison_table_reports_each_runs_results(executed):
    notebook, runs = executed
    rows = table_rows(notebook)
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
    check_figure(notebook, len(MIXERS))
