"""Selective copying (the "selective_copy" task; generator: lra/selective_copy.py, docs/methods.md section 17.2).

    --config=selective_copy                the default ("cpu"): a small causal LRU, L = 128 with 16 data tokens
    --config=selective_copy:s4d-cpu        the same budget with another causal mixer
    --config=selective_copy --config.data.selective_copy.variable=False      the classic copying task

The Mamba paper's setting (vocabulary 16, 16 data tokens, 2 layers of width 64) at a CPU length: 128 tokens, of
which the last 16 are the markers. Accuracy counts the marker positions only (chance 1/14).
"""

from __future__ import annotations

import ml_collections

import lra.selective_copy
from experiments.configs import common
from experiments.configs.base import base_config


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    """The config of `variant`: "cpu" (default, an LRU) or "<mixer>-cpu" (any causal mixer)."""
    mixer, cpu = common.parse_variant(variant)
    c = base_config()
    c.task = "selective_copy"
    c.data.source = "generated"
    c.data.seq_len = lra.selective_copy.DEFAULT_LENGTH
    c.data.selective_copy = ml_collections.ConfigDict(dict(num_tokens=16, variable=True, num_train=20_000,
                                                           num_val=500, num_test=1_000, generator_seed=0))
    if not cpu:
        raise ValueError(f"variant {variant!r}: the selective_copy task has no published accelerator recipe here; "
                         f"use '{mixer}-cpu'")
    common.apply_cpu_budget(c, mixer)
    c.model.norm = "layer"
    c.train.batch_size, c.train.eval_batch_size = 32, 250
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 1000, 250, 250, 100
    c.optim.update(lr=3e-3, ssm_lr=1.5e-3, warmup_steps=100, weight_decay=0.05)
    return c
