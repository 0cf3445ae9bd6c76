"""Determinism: the same seed and config train to bitwise-identical state and metrics on CPU (in one process);
another seed trains to different parameters.

Three tiny trainer runs (6 steps, with dropout so that the dropout keys are exercised too). XLA's optimisation
passes are switched off for this module, as in tests/e2e/test_all_tasks.py: they cost more than these tiny programs
run, and the claim is about running one program twice. Across processes and with optimisations on, the
kill/resume tests (tests/e2e/test_train.py, tests/e2e/test_soak.py) check bitwise equality of the final parameters.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import trainer
from tests.e2e.test_train import tiny_config

STEPS = {"train.num_steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3, "model.dropout": 0.1}
TIMING_KEYS = ("steps_per_second", "wall_seconds")  # wall-clock measurements: the only things allowed to differ


pytestmark = pytest.mark.usefixtures("fast_compilation")  # tests/conftest.py


def _run(root, name, seed):
    config = tiny_config(str(root / "cache"), seed=seed, **STEPS)
    workdir = root / name
    results = trainer.train_and_evaluate(config, str(workdir))
    state = ocp.StandardCheckpointer().restore(str(workdir / "checkpoints" / "6" / "state"))
    with open(workdir / "metrics.jsonl") as f:
        metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]
    return {k: v for k, v in results.items() if k not in TIMING_KEYS}, state, metrics


def _leaves(tree):
    """{"/params/block_0/...": array} over every leaf (dicts, optax's named tuples, lists)."""
    return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_same_seed_is_bitwise_identical_and_another_seed_differs(tmp_path):
    results_a, state_a, metrics_a = _run(tmp_path, "a", seed=0)
    results_b, state_b, metrics_b = _run(tmp_path, "b", seed=0)
    _, state_c, _ = _run(tmp_path, "c", seed=1)

    leaves_a, leaves_b, leaves_c = _leaves(state_a), _leaves(state_b), _leaves(state_c)
    assert leaves_a.keys() == leaves_b.keys() == leaves_c.keys()
    assert any(name.startswith("params/") for name in leaves_a) and any("opt_state" in name for name in leaves_a)
    for name in leaves_a:  # parameters, BatchNorm statistics, optimiser moments and the step counter
        assert leaves_a[name].dtype == leaves_b[name].dtype
        assert leaves_a[name].tobytes() == leaves_b[name].tobytes(), name  # bitwise, NaNs included
    # Every train/val/test record (loss, accuracy, gradient norm, learning rate ...) and the results, exactly.
    assert len(metrics_a) > 6 and metrics_a == metrics_b
    assert results_a == results_b

    params = [name for name in leaves_a if name.startswith("params/")]
    differing = [name for name in params if not np.array_equal(leaves_a[name], leaves_c[name])]
    # A different seed changes the initialisation, the batch order and the dropout masks: every trained
    # parameter array differs (a parameter the seed did not touch would point at a seed that is ignored).
    assert differing == params, sorted(set(params) - set(differing))
