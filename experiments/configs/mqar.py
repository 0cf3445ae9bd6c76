"""Multi-query associative recall (the "mqar" task; generator: lra/mqar.py, docs/methods.md section 17.1).

    --config=mqar                  the default ("cpu"): a small causal LRU, L = 64, 4 key-value pairs, V = 256
    --config=mqar:softmax-cpu      the same budget with another causal mixer (any mixer with a causal form)
    --config=mqar --config.data.seq_len=128 --config.data.mqar.num_pairs=16     a harder setting

Zoology's Figure-2 models (2 layers, widths 64..512) on a CPU budget: 2 layers of width 64, LayerNorm, AdamW with
weight decay 0.1 and a cosine schedule, batch 32 from 20,000 generated examples. The encoder's blocks always
carry their GLU (Zoology's models have no MLP). Accuracy counts the query positions only.
"""

from __future__ import annotations

import ml_collections

import lra.mqar
from experiments.configs import common
from experiments.configs.base import base_config


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    """The config of `variant`: "cpu" (default, an LRU) or "<mixer>-cpu" (any causal mixer)."""
    mixer, cpu = common.parse_variant(variant)
    c = base_config()
    c.task = "mqar"
    c.data.source = "generated"
    c.data.seq_len = lra.mqar.DEFAULT_LENGTH
    c.data.mqar = ml_collections.ConfigDict(dict(vocab_size=256, num_pairs=4, num_train=20_000, num_val=500,
                                                 num_test=1_000, generator_seed=0))
    if not cpu:
        raise ValueError(f"variant {variant!r}: the mqar task has no published accelerator recipe here; use "
                         f"'{mixer}-cpu'")
    common.apply_cpu_budget(c, mixer)
    c.model.norm = "layer"
    c.train.batch_size, c.train.eval_batch_size = 32, 250
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 1000, 250, 250, 100
    c.optim.update(lr=3e-3, ssm_lr=1.5e-3, warmup_steps=100, weight_decay=0.1)
    return c
