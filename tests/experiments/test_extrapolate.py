"""experiments/extrapolate.py: the schemes' options, the repeated windows, every scheme that should reduce to the
trained model within the training length does, and the command on a tiny trained LM."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import data as data_lib
from experiments import extrapolate, trainer
from experiments.configs import lm as lm_config
from models.registry import resolve_mixer

pytestmark = pytest.mark.usefixtures("fast_compilation")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = 16


def test_repeated_windows_repeat_the_first_training_length_bytes():
    inputs = np.arange(2 * 40, dtype=np.uint8).reshape(2, 40)
    rep_in, rep_labels = extrapolate.repeated_windows(inputs, 16)
    np.testing.assert_array_equal(rep_in[0], np.concatenate([inputs[0, :16]] * 2 + [inputs[0, :8]]))
    np.testing.assert_array_equal(rep_labels[0, :-1], rep_in[0, 1:])
    assert rep_labels[0, 15] == inputs[0, 0] and rep_labels[0, -1] == inputs[0, 8]


def _options(mixer, **options):
    resolved = resolve_mixer(mixer, options, length=T)
    return resolved.as_dict(), resolved.contract.choices()


@pytest.mark.parametrize("scheme, expected", [
    ("trained", {}),
    ("ntk", {"rope_scaling": "ntk", "rope_scale": 4.0, "train_length": T}),
    ("yarn", {"rope_scaling": "yarn", "rope_scale": 4.0, "train_length": T}),
    ("logn", {"logn_scaling": True, "train_length": T}),
    ("rerope", {"rope_scaling": "rerope", "rerope_window": 8, "rerope_leak": 0.0}),
    ("leaky_rerope", {"rope_scaling": "rerope", "rerope_window": 8, "rerope_leak": 16.0}),
])
def test_scheme_options_of_a_rope_softmax_run(scheme, expected):
    options, choices = _options("softmax", position="rope")
    got = extrapolate.scheme_options(scheme, options, choices, T, 4 * T, rerope_window=8, rerope_leak=16.0)
    assert got == expected


def test_schemes_a_run_cannot_take_are_none():
    lru, lru_choices = _options("lru")
    assert extrapolate.scheme_options("ntk", lru, lru_choices, T, 2 * T, rerope_window=8, rerope_leak=16.0) is None
    assert extrapolate.scheme_options("logn", lru, lru_choices, T, 2 * T, rerope_window=8, rerope_leak=16.0) is None
    linear, choices = _options("linear", position="rope")  # linear attention has no ReRoPE
    assert extrapolate.scheme_options("rerope", linear, choices, T, 2 * T, rerope_window=8, rerope_leak=16.0) is None
    nope, choices = _options("softmax")
    assert extrapolate.scheme_options("ntk", nope, choices, T, 2 * T, rerope_window=8, rerope_leak=16.0) is None


def _context():
    from models.registry import MixerContext

    return MixerContext(d_model=16, length=2 * T)


def _logits(config, variables, tokens):
    spec = data_lib.task_spec(config)
    model = trainer.build_model(config, spec)
    inputs, mask = trainer.model_inputs(tokens, spec, "embed")
    return np.asarray(model.apply(variables, inputs, mask))


@pytest.mark.parametrize("scheme", ["ntk", "yarn", "rerope", pytest.param("logn", marks=pytest.mark.slow),
                                    pytest.param("ntk_logn", marks=pytest.mark.slow),
                                    pytest.param("rerope_logn", marks=pytest.mark.slow)])
def test_within_the_training_length_each_scheme_is_the_trained_model(scheme):
    config = lm_config.get_config("softmax-cpu")
    config.data.seq_len = T
    config.model.update(d_model=16, n_layers=1)
    config.model.softmax.update(position="rope", num_heads=2)
    spec = data_lib.task_spec(config)
    state, _, _ = trainer.create_state(trainer.build_model(config, spec), config, spec)
    variables = {"params": state["params"], **state["collections"]}
    tokens = np.random.default_rng(0).integers(0, 256, (2, T)).astype(np.int32)
    base = _logits(config, variables, tokens)
    options, choices = _options("softmax", position="rope", num_heads=2)
    changes = extrapolate.scheme_options(scheme, options, choices, T, T, rerope_window=T, rerope_leak=16.0)
    config.model.softmax.update(changes)
    np.testing.assert_allclose(_logits(config, variables, tokens), base, atol=2e-5, rtol=2e-5)


def test_the_command_writes_rows_a_table_and_a_plot(tmp_path):
    workdir = tmp_path / "run"
    train = [sys.executable, "-m", "experiments.train", "--config=lm:softmax-cpu", f"--workdir={workdir}",
             f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.data.seq_len=32",
             "--config.model.softmax.position=rope", "--config.model.d_model=16", "--config.model.n_layers=1",
             "--config.train.num_steps=4", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
             "--config.optim.warmup_steps=1", "--config.train.batch_size=4", "--config.train.eval_batch_size=8",
             "--config.data.lm.max_eval_windows=8"]
    proc = subprocess.run(train, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())  # the lm task's own figures
    assert results["train_length"] == 32
    assert results["test_bpb"] == pytest.approx(results["test_loss"] / math.log(2), rel=1e-12)
    assert 0 < results["val_bpb"] and 0 < results["unigram_bpb"] < 8
    out = tmp_path / "ex" / "table.json"
    proc = subprocess.run([sys.executable, "-m", "experiments.extrapolate", f"--workdir={workdir}",
                           "--eval_lengths=1,2", "--positions=trained,ntk,rerope", "--max_windows=4",
                           f"--out={out}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["train_length"] == 32
    assert {(r["scheme"], r["mode"], r["length"]) for r in result["rows"]} == {
        (s, m, n) for s in ("trained", "ntk", "rerope") for m in ("nonrepeated", "repeated") for n in (32, 64)}
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["bpb"] > 0 for r in result["rows"])
    assert (tmp_path / "ex" / "table.md").read_text().startswith("| mixer |")
    assert (tmp_path / "ex" / "table.png").stat().st_size > 1000
    linear_logn = extrapolate.scheme_options("logn", *_options("linear", position="rope"), T, 2 * T, rerope_window=8,
                                             rerope_leak=16.0)
    assert resolve_mixer("linear", {}).contract.check_options(linear_logn, _context()), \
        "linear attention refuses log-n scaling through its contract, so the command skips it"
    bad = subprocess.run([sys.executable, "-m", "experiments.extrapolate", f"--workdir={workdir}",
                          "--positions=rope2"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --positions: unknown 'rope2'")
