"""Induction heads (the "induction" task; generator: lra/induction.py, docs/methods.md section 17.3).

    --config=induction                 the default ("cpu"): a small causal LRU trained at length 64
    --config=induction:softmax-cpu     the same budget with another causal mixer

Only the last position is scored (chance 1/16). Train short, test long:
    python -m experiments.sweep --task=induction --mixers=softmax,lru --d_model=64 --eval_lengths=2,4,8,16 ...
scores each trained model on freshly generated test data at 2x..16x the training length.
"""

from __future__ import annotations

import ml_collections

import lra.induction
from experiments.configs import common
from experiments.configs.base import base_config


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    """The config of `variant`: "cpu" (default, an LRU) or "<mixer>-cpu" (any causal mixer)."""
    mixer, cpu = common.parse_variant(variant)
    c = base_config()
    c.task = "induction"
    c.data.source = "generated"
    c.data.seq_len = lra.induction.DEFAULT_LENGTH
    c.data.induction = ml_collections.ConfigDict(dict(num_train=20_000, num_val=1_000, num_test=2_000,
                                                      generator_seed=0))
    if not cpu:
        raise ValueError(f"variant {variant!r}: the induction task has no published accelerator recipe here; use "
                         f"'{mixer}-cpu'")
    common.apply_cpu_budget(c, mixer)
    c.model.norm = "layer"
    c.train.batch_size, c.train.eval_batch_size = 32, 250
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 1000, 250, 250, 100
    c.optim.update(lr=3e-3, ssm_lr=1.5e-3, warmup_steps=100, weight_decay=0.05)
    return c
