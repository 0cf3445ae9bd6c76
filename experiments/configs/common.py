"""Per-task, per-mixer settings shared by the task config files.

Every task file exposes `get_config(variant)` with variant one of

    "cpu"              the default: an LRU small enough to train on 2 CPU cores in minutes
    "<mixer>-cpu"      the same small budget with another mixer (e.g. "s5-cpu", "softmax-cpu")
    "<mixer>"          the published settings for accelerators (docs/anchors.md sections 3 and 4), e.g. "s5", "lru"

so `--config=experiments/configs/<task>.py:<variant>` picks one, and any key can still be overridden with
`--config.<key>=<value>`. The published settings are the mixers' recipes (MixerContract.recipes, in each mixer's
module, where a value a paper does not state is marked "assumed").
"""

from __future__ import annotations

import ml_collections

import lra
from models.registry import mixer_contract, mixer_names


def apply_anchor(c: ml_collections.ConfigDict, task: str, mixer: str) -> None:
    """Sets the published accelerator settings of `mixer` on `task`: the Recipe its contract carries
    (models/registry.py; the numbers and their sources are in the mixer's module and docs/anchors.md sections 3
    and 4). A mixer without a recipe for the task has no accelerator variant: ValueError."""
    recipe = mixer_contract(mixer).recipes.get(task) if mixer in mixer_names() else None
    if recipe is None:
        raise ValueError(f"mixer {mixer!r} has no published settings for task {task!r} here (variant {mixer!r}); use "
                         f"the '{mixer}-cpu' variant, or add a Recipe for {task!r} to the mixer's registration")
    c.model.mixer = mixer
    c.model.norm, c.model.residual = "batch", "prenorm"
    c.model.update(dict(recipe.model))
    c.model[mixer].update(dict(recipe.options))
    c.optim.update(dict(recipe.optim))
    c.train.batch_size = recipe.batch_size
    train_size = lra.get_task(task).train_size
    steps = recipe.steps(train_size)
    c.train.num_steps = steps
    c.optim.warmup_steps = int(steps * recipe.warmup(train_size))
    c.train.eval_every = max(steps // 50, 100)
    c.train.checkpoint_every = c.train.eval_every
    c.train.log_every = 100
    _update_nested(c.data, recipe.data)


def _update_nested(section: ml_collections.ConfigDict, values) -> None:
    """section.update(values), except that a dict value updates the nested section of that name."""
    for key, value in values.items():
        if isinstance(value, dict) and key in section:
            _update_nested(section[key], value)
        else:
            section[key] = value


def apply_cpu_budget(c: ml_collections.ConfigDict, mixer: str) -> None:
    """The small CPU budget: 2 layers of width 64, 2,000 steps of batch 32 (minutes on 2 cores), and each mixer's
    smaller state (MixerContract.cpu_options)."""
    c.model.mixer = mixer
    c.model.d_model, c.model.n_layers = 64, 2
    for name in mixer_names():
        c.model[name].update(dict(mixer_contract(name).cpu_options))
    c.train.batch_size, c.train.eval_batch_size = 32, 64
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 2000, 250, 250, 50
    c.optim.update(lr=3e-3, ssm_lr=1.5e-3, warmup_steps=100, weight_decay=0.05)


def parse_variant(variant: str) -> tuple[str, bool]:
    """'cpu' -> ('lru', True); 's5-cpu' -> ('s5', True); 's5' -> ('s5', False)."""
    if variant in ("", "cpu"):
        return "lru", True
    if variant.endswith("-cpu"):
        return variant[: -len("-cpu")], True
    return variant, False
