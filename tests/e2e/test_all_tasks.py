"""Smoke test: every registered mixer family trains on every task through experiments/trainer.py.

Tiny official-format fixtures are written once per module (aclImdb reviews, AAN pairs, CIFAR-10 pickles,
IDX files) and ListOps / Pathfinder / Path-X are generated at tiny sizes into the data cache. Each (task,
mixer) pair of `RUNS` is one in-process `train_and_evaluate` of a 1-layer, width-8 model for 2 steps; the
families rotate over the tasks so that every family and every task appears at least once. A second,
parametrized test builds every registered mixer inside the encoder and runs one jitted training-style forward
and backward pass on ListOps.

Each test costs seconds of XLA compilation (the models are tiny), so the module compiles with XLA's
optimisations off, and only part of it runs by default: one trainer run per core task (ListOps, Text,
Retrieval, Image, MNIST, Pathfinder) and the one-step test of each family without a default trainer run, so
that every family and every core task is covered. The rest (PMNIST, Fashion-MNIST, Path-X, second runs of the
families, the other one-step tests, and the full product of every family on every task) is marked slow:
`pytest -m slow tests/e2e/test_all_tasks.py` runs it.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import lra
import models
from experiments import data as data_lib
from experiments import trainer
from experiments.configs import image as image_config
from experiments.configs import listops as listops_config
from experiments.configs import pathfinder as pathfinder_config
from experiments.configs import pathx as pathx_config
from experiments.configs import retrieval as retrieval_config
from experiments.configs import text as text_config
from lra import listops as listops_lib
from lra import pathfinder as pathfinder_lib
from models import param_groups
from tests.lra.test_lra_image import write_cifar, write_idx_set
from tests.lra.test_lra_retrieval import write_aan
from tests.lra.test_lra_text import write_aclimdb

D_MODEL = 8
SEQ_LEN = 32  # text, retrieval (per document) and listops; pixel tasks keep their 784 / 1024 / 16384 pixels
VAL_SIZE = 4  # CIFAR / IDX validation images (the readers' defaults, 5000 / 6000, need the full datasets)

# Families in the order they are given tasks. A registered mixer belongs to the family its name starts with
# ("vq_soft" is a "vq"); a registered mixer of no listed family is a family of its own, appended at the end,
# so a new family is smoke-tested without editing this file. Families not registered are left out.
FAMILIES = ("performer", "softmax", "s5", "s4", "rtf", "linear", "lru", "blockwise", "s4d", "nystrom", "vq")
# The first len(CORE_TASKS) pairs of the rotation run by default; the others are marked slow (see `rotation`).
CORE_TASKS = ("listops", "text", "retrieval", "image", "mnist", "pathfinder")
TASKS = CORE_TASKS + ("pmnist", "fashion_mnist", "pathx")
# Quadratic in length (blockwise is exact attention in blocks): never on Path-X's 16,384 pixels (minutes).
QUADRATIC_MIXERS = ("softmax", "blockwise")


def family_of(mixer: str) -> str:
    for family in FAMILIES:
        if mixer == family or mixer.startswith(family + "_"):
            return family
    return mixer


def registered_families() -> list[str]:
    """One registered mixer per family: the one named like the family, else the family's first by name."""
    representatives: dict[str, str] = {}
    for name in models.mixer_names():  # sorted, so "vq" comes before "vq_soft"
        family = family_of(name)
        if family not in representatives or name == family:
            representatives[family] = name
    return ([representatives[f] for f in FAMILIES if f in representatives]
            + sorted(m for f, m in representatives.items() if f not in FAMILIES))


def rotation(families: list[str]) -> list[tuple[str, str, bool]]:
    """(task, mixer, slow): family i on task i mod |tasks| until every family and every task has had a run.

    The runs on the core tasks are the default smoke test; the rest (the extra pixel tasks, Path-X and the
    families that wrap around) are marked slow. Path-X never gets a quadratic mixer: "lru" runs there instead,
    and the displaced family runs on ListOps.
    """
    runs = []
    for i in range(max(len(TASKS), len(families))):
        task, mixer = TASKS[i % len(TASKS)], families[i % len(families)]
        if task == "pathx" and mixer in QUADRATIC_MIXERS:
            runs.append(("listops", mixer, True))
            mixer = "lru"
        runs.append((task, mixer, i >= len(CORE_TASKS)))
    return runs


FAMILY_LIST = registered_families()
RUNS = rotation(FAMILY_LIST)
DEFAULT_RUN_FAMILIES = {mixer for _, mixer, slow in RUNS if not slow}

# Tiny options per mixer: widths that divide D_MODEL, blocks and chunks that divide every task's length.
TINY_MIXER_OPTIONS = {
    "lru": dict(d_state=4),
    "s4": dict(d_state=4),
    "s4d": dict(d_state=4),
    "s5": dict(state_size=4, blocks=1),
    "rtf": dict(state_size=4),
    "softmax": dict(num_heads=2),
    "blockwise": dict(num_heads=2, block_size=16),
    "linear": dict(num_heads=2, chunk_size=16),
    "performer": dict(num_heads=2, num_features=8, chunk_size=16),
    "nystrom": dict(num_heads=2, num_landmarks=4),
    "vq": dict(num_heads=1, key_dim=4, codebook_size=8, block_len=16),
    "vq_soft": dict(num_heads=1, key_dim=4, codebook_size=8, block_len=16),
    "mamba": dict(d_state=4, chunk_size=16),
    "mamba2": dict(d_state=4, head_dim=4, chunk_size=16),
}


# ------------------------------------------------------------------------------------------------- fixtures


# XLA's optimisation passes cost more than running these tiny programs (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compilation")


LISTOPS = dict(num_train=32, num_val=8, num_test=8, min_length=5, max_length=SEQ_LEN, max_depth=3, max_args=4,
               generator_seed=0)
PATHFINDER_EXAMPLES = {"pathfinder": 20, "pathx": 10}  # split 80 / 10 / 10 % by position


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Official-format files for every file-based task, and ListOps generated into the data cache."""
    root = tmp_path_factory.mktemp("lra_data")
    rng = np.random.default_rng(0)
    reviews = {
        split: {label: {f"{i}_{i % 4 + (1 if label == 'neg' else 7)}.txt":
                        f"{label} review {i} {'!' * int(rng.integers(1, 40))}".encode()
                        for i in range(count)}
                for label in ("neg", "pos")}
        for split, count in (("train", 8), ("test", 3))
    }
    write_aclimdb(root / "text" / "aclImdb", splits=tuple(reviews.items()))

    def aan_rows(count):
        return [(b"%d" % (i % 2), b"A%02d" % i, b"B%02d" % i, b"document one " * (i + 1),
                 b"document two " * (5 - i)) for i in range(count)]

    write_aan(root / "retrieval", rows={"train": aan_rows(4), "val": aan_rows(2), "test": aan_rows(3)})

    side = 32
    write_cifar(root / "image", rng.integers(0, 256, (10, side, side, 3), dtype=np.uint8),
                rng.integers(0, 10, 10), rng.integers(0, 256, (3, side, side, 3), dtype=np.uint8),
                rng.integers(0, 10, 3))
    write_idx_set(root / "mnist", rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), rng.integers(0, 10, 10),
                  rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), rng.integers(0, 10, 3))

    # Generated in this process (num_workers=1): the trainer's data loader then finds it in the cache instead
    # of starting a pool of worker processes for a few dozen examples. Pathfinder likewise, in
    # `ensure_pathfinder`.
    cache = str(root / "cache")
    options = dict(LISTOPS)
    options["seed"] = options.pop("generator_seed")
    listops_lib.ensure_generated(cache, num_workers=1, **options)
    return root


def ensure_pathfinder(task: str, data_root) -> None:
    """Generates the task's tiny Pathfinder set into the data cache in this process (once per module)."""
    resolution = {"pathfinder": 32, "pathx": 128}[task]
    pathfinder_lib.ensure_generated_pathfinder(str(data_root / "cache"), resolution, "hard",
                                               PATHFINDER_EXAMPLES[task], 0, num_workers=1)


def task_config(task: str, mixer: str, data_root) -> ml_collections.ConfigDict:
    """The task's "cpu" config shrunk to 2 steps of a 1-layer width-8 model on the fixtures."""
    if task in ("mnist", "pmnist", "fashion_mnist"):  # no config file of their own: image's, at 784 pixels
        config = image_config.get_config(f"{mixer}-cpu")
        config.task, config.data.seq_len, config.data.data_dir = task, 0, str(data_root / "mnist")
    else:
        module = {"listops": listops_config, "text": text_config, "retrieval": retrieval_config,
                  "image": image_config, "pathfinder": pathfinder_config, "pathx": pathx_config}[task]
        config = module.get_config(f"{mixer}-cpu")
    config.data.cache_dir = str(data_root / "cache")
    if task in ("text", "retrieval", "image"):
        config.data.data_dir = str(data_root / task)
    if task in ("image", "mnist", "pmnist", "fashion_mnist"):
        config.data.val_size = VAL_SIZE
    if task in ("listops", "text", "retrieval"):
        config.data.seq_len = SEQ_LEN
    if task == "listops":
        config.data.listops.update(LISTOPS)
    if task in PATHFINDER_EXAMPLES:
        config.data.pathfinder.num_examples = PATHFINDER_EXAMPLES[task]
    config.model.update(d_model=D_MODEL, n_layers=1)
    if mixer not in config.model:
        config.model[mixer] = ml_collections.ConfigDict()
    config.model[mixer].update(TINY_MIXER_OPTIONS.get(mixer, {}))
    config.train.update(batch_size=2, eval_batch_size=4, num_steps=2, eval_every=2, checkpoint_every=2,
                        log_every=1)
    config.optim.warmup_steps = 1
    return config


# ------------------------------------------------------------------------------------------------ the runs


def slow_if(slow: bool) -> list:
    return [pytest.mark.slow] if slow else []


@pytest.mark.parametrize("task,mixer", [pytest.param(t, m, marks=slow_if(slow), id=f"{t}-{m}")
                                        for t, m, slow in RUNS])
def test_every_task_trains_with_a_rotation_of_mixer_families(task, mixer, data_root, tmp_path):
    if task in PATHFINDER_EXAMPLES:
        ensure_pathfinder(task, data_root)
    config = task_config(task, mixer, data_root)
    workdir = str(tmp_path / "run")
    results = trainer.train_and_evaluate(config, workdir)

    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == results
    assert results["task"] == task and results["mixer"] == mixer and results["steps"] == 2
    for key in ("val_accuracy", "test_accuracy", "test_majority_rate"):
        assert 0.0 <= results[key] <= 1.0, (key, results[key])
    assert np.isfinite(results["test_loss"])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert {r["split"] for r in records} == {"train", "val", "test"}
    assert all(np.isfinite(r["loss"]) and 0.0 <= r["accuracy"] <= 1.0 for r in records)
    assert all(r["skipped"] == 0.0 for r in train)  # no step had a non-finite loss or gradient


# The full product: every family on every task (Path-X without the quadratic mixers). About 100 trainer runs,
# minutes of compilation, so it is marked slow: `pytest -m slow -k every_family_on_every_task`.
FULL_PRODUCT = [(t, m) for t in TASKS for m in FAMILY_LIST if not (t == "pathx" and m in QUADRATIC_MIXERS)]


@pytest.mark.slow
@pytest.mark.parametrize("task,mixer", [pytest.param(t, m, id=f"{t}-{m}") for t, m in FULL_PRODUCT])
def test_every_family_on_every_task(task, mixer, data_root, tmp_path):
    test_every_task_trains_with_a_rotation_of_mixer_families(task, mixer, data_root, tmp_path)


def test_rotation_covers_every_registered_family_and_every_task():
    assert {family_of(m) for _, m, _ in RUNS} == {family_of(m) for m in models.mixer_names()}
    assert {t for t, _, _ in RUNS} == set(TASKS) and set(TASKS) <= set(lra.task_names())
    assert {t for t, _, slow in RUNS if not slow} == set(CORE_TASKS)
    assert not any(t == "pathx" and m in QUADRATIC_MIXERS for t, m, _ in RUNS)
    # Every family runs by default: in a trainer run, or else in the one-step test below.
    assert {family_of(m) for m in MIXERS_WITH_A_DEFAULT_STEP} | DEFAULT_RUN_FAMILIES == set(FAMILY_LIST)


# ------------------------------------------------------------------------------- every mixer, one step


@pytest.fixture(scope="module")
def listops_batch(data_root):
    config = task_config("listops", "lru", data_root)
    spec = data_lib.task_spec(config)
    train = data_lib.load_splits(config)["train"]
    return spec, jnp.asarray(train.inputs[:2]), jnp.asarray(train.labels[:2])


BLOCK_OWN_PARAMETERS = ("norm", "glu_value", "glu_gate")


# Default selection: a family with a default trainer run takes that run as its smoke test, every other family
# its representative's one-step test; the remaining one-step tests (each costs about as much compilation as a
# trainer run) are marked slow.
MIXERS_WITH_A_DEFAULT_STEP = [m for m in FAMILY_LIST if m not in DEFAULT_RUN_FAMILIES]


@pytest.mark.parametrize("mixer", [pytest.param(m, marks=slow_if(m not in MIXERS_WITH_A_DEFAULT_STEP))
                                   for m in models.mixer_names()])
def test_every_registered_mixer_trains_one_step_in_the_encoder(mixer, listops_batch, data_root):
    spec, tokens, labels = listops_batch
    config = task_config("listops", mixer, data_root)
    model = trainer.build_model(config, spec)
    inputs, mask = trainer.model_inputs(tokens, spec, "embed")

    @jax.jit
    def init_and_grad(key):
        variables = model.init({"params": key, "dropout": key}, inputs, mask, train=False)
        variables = param_groups.unbox(variables)
        params = variables["params"]
        rest = {k: v for k, v in variables.items() if k != "params"}

        def loss_fn(p):
            logits, updates = model.apply({"params": p, **rest}, inputs, mask, train=True,
                                          rngs={"dropout": key},
                                          mutable=[*trainer.MUTABLE, trainer.AUX_LOSSES, trainer.AUX_METRICS])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            aux_losses = jax.tree.leaves(updates.get(trainer.AUX_LOSSES, {}))  # e.g. VQ commitment losses
            return loss + sum(jnp.sum(x) for x in aux_losses), logits

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, logits), grads = init_and_grad(jax.random.key(0))
    assert logits.shape == (2, spec.num_classes)
    assert np.isfinite(float(loss))
    block = grads["encoder"]["block_0"]
    # The mixer is the block's only submodule the block does not name (Flax names it after its class).
    mixer_grads = jax.tree.leaves({k: v for k, v in block.items() if k not in BLOCK_OWN_PARAMETERS})
    assert mixer_grads, "the mixer has no parameters in the encoder"
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    # The loss reaches the mixer: some of its parameters get a non-zero gradient.
    assert any(np.abs(np.asarray(g)).max() > 0 for g in mixer_grads)
