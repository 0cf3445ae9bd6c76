"""WORKSPACE.md's two recipes, followed on a copy of the source tree, through the real entry point.

Adding a mixer: one module (models/<name>.py, a SequenceMixer registered with its contract) plus one registration
(its module's name in models/__init__.py MIXER_MODULES). Adding a task: one lra/ module (its generator or reader
and its registered TaskSpec) plus one config (experiments/configs/<task>.py, which imports the module). The test
copies ops/, models/, lra/ and experiments/ to a temporary directory, writes exactly those files there, and runs
`python -m experiments.train` from the copy: the throwaway task trains with the throwaway mixer, `--list` shows
both, and a bad value of the new mixer's option is one line naming its key. Nothing else of the copy is edited.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.e2e.test_newcomer import assert_one_line_error

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("ops", "models", "lra", "experiments")

MIXER_MODULE = '''
"""A throwaway mixer: a causal exponential moving average of a projection, y_t = W (x_t + decay y_{t-1})."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.param_groups import DEFAULT, NO_DECAY
from models.registry import SequenceMixer, register_mixer


def _check(values, context, ok):
    if ok("decay") and not 0.0 <= values["decay"] < 1.0:
        yield "decay", f"expected a number in [0, 1), got {values['decay']}"


@register_mixer("toy_ema", param_groups=(DEFAULT, NO_DECAY), check=_check, config_options=dict(decay=0.9),
                cpu_options=dict(decay=0.5))
class ToyEMA(SequenceMixer):
    decay: float = 0.9

    def setup(self):
        self.proj = nn.Dense(self.d_model, name="proj")

    def _scan(self, u, reverse=False):
        def step(h, u_t):
            h = self.decay * h + u_t
            return h, h

        _, y = jax.lax.scan(step, jnp.zeros_like(u[:, 0]), jnp.moveaxis(u, 1, 0), reverse=reverse)
        return jnp.moveaxis(y, 0, 1)

    def __call__(self, x, *, mask=None, deterministic=True):
        if mask is not None:
            x = x * mask[..., None].astype(x.dtype)
        u = self.proj(x)
        y = self._scan(u)
        return y + self._scan(u, reverse=True) - u if self.bidirectional else y

    def init_state(self, batch_size):
        return jnp.zeros((batch_size, self.d_model))

    def step(self, state, x_t):
        state = self.decay * state + self.proj(x_t)
        return state, state
'''

TASK_MODULE = '''
"""A throwaway task: is token 1 more frequent than token 2 in a random sequence (generated, seeded)."""

import numpy as np

from lra.tasks import Split, TaskSpec, register_task


def _split(rng, n, length, name):
    inputs = rng.integers(1, 5, (n, length)).astype(np.int32)
    labels = ((inputs == 1).sum(1) > (inputs == 2).sum(1)).astype(np.int32)
    return Split(inputs, labels, name)


def _generated(spec, request):
    options = request.options["toy_count"]
    rng = np.random.default_rng(options["generator_seed"])
    return {name: _split(rng, options["num_examples"], spec.seq_len, name) for name in ("train", "val", "test")}


register_task(TaskSpec(name="toy_count", seq_len=32, vocab_size=5, num_classes=2, train_size=256,
                       loaders={"generated": _generated}, data_section="toy_count",
                       description="which of tokens 1 and 2 is more frequent (a test task)"))
'''

PER_POSITION_TASK = '''
"""A throwaway per-position task: predict the previous token (no target at position 0)."""

import numpy as np

from lra.tasks import HeadKind, Split, TaskSpec, register_task


def _generated(spec, request):
    rng = np.random.default_rng(request.options["toy_previous"]["generator_seed"])
    splits = {}
    for name in ("train", "val", "test"):
        inputs = rng.integers(1, 6, (128, spec.seq_len)).astype(np.int32)
        labels = np.concatenate([np.full((128, 1), -1), inputs[:, :-1]], axis=1).astype(np.int32)
        splits[name] = Split(inputs, labels, name)
    return splits


register_task(TaskSpec(name="toy_previous", seq_len=16, vocab_size=6, num_classes=6, head=HeadKind.PER_POSITION,
                       causal=True, train_size=128, loaders={"generated": _generated}, data_section="toy_previous",
                       description="predict the previous token (a per-position test task)"))
'''

PER_POSITION_CONFIG = '''
"""Configs of the throwaway per-position task."""

import ml_collections

import lra.toy_previous  # noqa: F401  (registers the task)
from experiments.configs import common
from experiments.configs.base import base_config


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    mixer, cpu = common.parse_variant(variant)
    c = base_config()
    c.task = "toy_previous"
    c.data.toy_previous = ml_collections.ConfigDict(dict(generator_seed=0))
    common.apply_cpu_budget(c, mixer)
    c.model.norm = "layer"
    return c
'''

CONFIG_MODULE = '''
"""Configs of the throwaway task."""

import ml_collections

import lra.toy_count  # noqa: F401  (registers the task)
from experiments.configs import common
from experiments.configs.base import base_config


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    mixer, cpu = common.parse_variant(variant)
    c = base_config()
    c.task = "toy_count"
    c.data.toy_count = ml_collections.ConfigDict(dict(num_examples=256, generator_seed=0))
    common.apply_cpu_budget(c, mixer)
    return c
'''


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the source packages with the two recipes applied (the files each recipe says, nothing else)."""
    root = tmp_path_factory.mktemp("recipes") / "repo"
    for package in PACKAGES:
        shutil.copytree(os.path.join(REPO, package), root / package,
                        ignore=shutil.ignore_patterns("__pycache__", "notebooks"))
    # The mixer recipe: one module plus one registration.
    (root / "models" / "toy_ema.py").write_text(textwrap.dedent(MIXER_MODULE))
    init = (root / "models" / "__init__.py").read_text()
    assert init.count('MIXER_MODULES = ("models.attention",') == 1
    (root / "models" / "__init__.py").write_text(
        init.replace('MIXER_MODULES = ("models.attention",', 'MIXER_MODULES = ("models.toy_ema", "models.attention",'))
    # The task recipe: one lra/ module plus one config.
    (root / "lra" / "toy_count.py").write_text(textwrap.dedent(TASK_MODULE))
    (root / "experiments" / "configs" / "toy_count.py").write_text(textwrap.dedent(CONFIG_MODULE))
    (root / "lra" / "toy_previous.py").write_text(textwrap.dedent(PER_POSITION_TASK))
    (root / "experiments" / "configs" / "toy_previous.py").write_text(textwrap.dedent(PER_POSITION_CONFIG))
    return root


def run(tree, *args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_copy_runs_its_own_sources(tree):
    probe = subprocess.run([sys.executable, "-c", "import models, lra; print(models.__file__, lra.__file__)"],
                           cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    assert probe.stdout.split() == [str(tree / "models" / "__init__.py"), str(tree / "lra" / "__init__.py")]


def test_a_new_task_trains_with_a_new_mixer_through_the_entry_point(tree, tmp_path):
    workdir = tmp_path / "run"
    proc = run(tree, "--config=toy_count:toy_ema-cpu", f"--workdir={workdir}", f"--config.data.cache_dir={tmp_path}",
               "--config.train.num_steps=6", "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
               "--config.train.log_every=3", "--config.optim.warmup_steps=1", "--config.train.batch_size=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["task"] == "toy_count" and results["mixer"] == "toy_ema"
    assert 0.0 <= results["test_accuracy"] <= 1.0
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["toy_ema"] == {"decay": 0.5}  # the contract's config options and CPU size


def test_list_shows_the_new_mixer_and_task(tree):
    proc = run(tree, "--list")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "toy_ema: causal or bidirectional; recurrent step" in proc.stdout
    assert "toy_count" in proc.stdout


def test_the_new_mixers_own_check_is_a_one_line_error(tree, tmp_path):
    proc = run(tree, "--config=toy_count:toy_ema-cpu", f"--workdir={tmp_path / 'bad'}",
               "--config.model.toy_ema.decay=1.5")
    assert_one_line_error(proc, "config.model.toy_ema.decay", "expected a number in [0, 1), got 1.5")
    assert not (tmp_path / "bad").exists()


SHORT_RUN = ("--config.train.num_steps=40", "--config.train.eval_every=40", "--config.train.checkpoint_every=40",
             "--config.train.log_every=20", "--config.optim.warmup_steps=2", "--config.train.batch_size=16",
             "--config.optim.lr=0.01")


def test_a_per_position_task_trains_and_is_scored_on_its_targets_only(tree, tmp_path):
    workdir = tmp_path / "run"
    proc = run(tree, "--config=toy_previous:toy_ema-cpu", f"--workdir={workdir}", *SHORT_RUN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["task"] == "toy_previous"
    # Predicting the previous token is easy for a causal layer that sees it: far above chance (1/5) after 40 steps.
    assert results["test_accuracy"] > 0.5, results
    # The majority baseline counts the 15 targets of each sequence, not the unlabelled first position.
    assert results["test_majority_rate"] < 0.3, results


@pytest.mark.parametrize("override, key", [
    ("--config.model.norm=batch", "config.model.norm"),
    pytest.param("--config.model.bidirectional=True", "config.model.bidirectional", marks=pytest.mark.slow),
    pytest.param("--config.model.mixer=nystrom", "config.model.mixer", marks=pytest.mark.slow),
])
def test_a_causal_task_refuses_what_would_see_the_future(tree, tmp_path, override, key):
    proc = run(tree, "--config=toy_previous:toy_ema-cpu", f"--workdir={tmp_path / 'bad'}", override)
    assert_one_line_error(proc, key, "from the past")
