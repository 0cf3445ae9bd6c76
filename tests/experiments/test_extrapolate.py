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
    ("ntk_dynamic", {"rope_scaling": "ntk_dynamic", "train_length": T}),
    ("ntk_mixed", {"rope_scaling": "ntk_mixed", "rope_scale": 4.0, "train_length": T}),
    ("ntk_mixed_logn", {"rope_scaling": "ntk_mixed", "rope_scale": 4.0, "train_length": T, "logn_scaling": True}),
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
    # dynamic NTK needs per-query scores (the dense softmax path); the mixed frequencies suit any RoPE mixer
    assert extrapolate.scheme_options("ntk_dynamic", linear, choices, T, 2 * T, rerope_window=8,
                                      rerope_leak=16.0) is None
    assert extrapolate.scheme_options("ntk_mixed", linear, choices, T, 2 * T, rerope_window=8,
                                      rerope_leak=16.0)["rope_scaling"] == "ntk_mixed"
    nope, choices = _options("softmax")
    assert extrapolate.scheme_options("ntk", nope, choices, T, 2 * T, rerope_window=8, rerope_leak=16.0) is None


def test_the_contract_refuses_dynamic_ntk_where_it_cannot_run():
    from models.registry import MixerContext

    context = MixerContext(d_model=16, length=T)
    softmax = resolve_mixer("softmax", {"position": "rope"}, length=T)
    assert softmax.contract.check_options({**softmax.as_dict(), "rope_scaling": "ntk_dynamic"}, context) == [
        ("train_length", "rope_scaling='ntk_dynamic' needs train_length > 1 (the training length), got 0")]
    blockwise = resolve_mixer("blockwise", {"position": "rope"}, length=T)
    problems = blockwise.contract.check_options(
        {**blockwise.as_dict(), "rope_scaling": "ntk_dynamic", "train_length": T}, context)
    assert problems[0][0] == "rope_scaling" and problems[0][1].startswith("expected one of 'none', 'ntk', 'ntk_mixed'")


def _context():
    from models.registry import MixerContext

    return MixerContext(d_model=16, length=2 * T)


def _logits(config, variables, tokens):
    spec = data_lib.task_spec(config)
    model = trainer.build_model(config, spec)
    inputs, mask = trainer.model_inputs(tokens, spec, "embed")
    return np.asarray(model.apply(variables, inputs, mask))


@pytest.mark.parametrize("scheme", ["ntk", "ntk_mixed", "yarn", "rerope",
                                    # the mixer-level test below checks dynamic NTK within T (default run)
                                    pytest.param("ntk_dynamic", marks=pytest.mark.slow),
                                    pytest.param("logn", marks=pytest.mark.slow),
                                    pytest.param("ntk_mixed_logn", marks=pytest.mark.slow),
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


def test_dynamic_ntk_is_fixed_ntk_at_the_scale_of_each_prefix(x64):
    """docs/methods.md section 14: position t of the dynamic-NTK mixer sees what fixed NTK at s = (t + 1) / T
    computes on the prefix x[:t+1] (its last row); decoding token by token equals the parallel call; within T it is
    plain RoPE."""
    import jax
    import jax.numpy as jnp

    from models.registry import make_mixer

    train, length, d = 2, 6, 8
    common = dict(d_model=d, bidirectional=False, num_heads=2, position="rope", dtype=jnp.float64,
                  param_dtype=jnp.float64, max_decode_len=length)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, length, d)))
    dynamic = make_mixer("softmax", rope_scaling="ntk_dynamic", train_length=train, **common)
    out, variables = jax.jit(dynamic.init_with_output)(jax.random.PRNGKey(0), x)
    out = np.asarray(out)
    for t in (train - 1, train, length - 1):  # row t of a causal mixer depends on x[:t+1] only: run the full x
        fixed = make_mixer("softmax", rope_scaling="ntk", rope_scale=max(1.0, (t + 1) / train), **common)
        np.testing.assert_allclose(out[:, t], jax.jit(fixed.apply)(variables, x)[:, t], atol=1e-12, err_msg=f"{t}")
    plain = np.asarray(jax.jit(make_mixer("softmax", **common).apply)(variables, x))
    np.testing.assert_allclose(out[:, :train], plain[:, :train], atol=1e-12)
    assert not np.allclose(out[:, train:], plain[:, train:], atol=1e-6)
    step = jax.jit(lambda state, x_t: dynamic.apply(variables, state, x_t, method="step"))
    state = dynamic.init_state(2)
    for t in range(length):
        state, y_t = step(state, x[:, t])
        np.testing.assert_allclose(y_t, out[:, t], atol=1e-12, err_msg=f"step {t}")


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
