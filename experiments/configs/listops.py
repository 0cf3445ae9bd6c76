"""ListOps configurations (variants: see experiments/configs/common.py).

    --config=experiments/configs/listops.py            the default ("cpu"): a small LRU on a small generated ListOps
    --config=experiments/configs/listops.py:s5-cpu     the same budget with another mixer
    --config=experiments/configs/listops.py:s5         S5's published ListOps settings on the full-size generator

The "cpu" data are the official generator with smaller limits (20 < length < 200, depth <= 5, <= 6 arguments):
short enough for a CPU, long enough that the root operator alone does not answer. Accelerator variants generate
the official sizes (96,000 / 2,000 / 2,000; 500 < length < 2000), or read the official files with
--config.data.source=files --config.data.data_dir=.../lra_release/listops-1000.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common
from experiments.configs.base import base_config


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    """The config of `variant`: "cpu" (default), "<mixer>-cpu" or "<mixer>" (published settings); see
    experiments/configs/common.py."""
    mixer, cpu = common.parse_variant(variant)
    c = base_config()
    c.task = "listops"
    if cpu:
        c.data.listops = ml_collections.ConfigDict(dict(
            num_train=8_000, num_val=500, num_test=1_000, min_length=20, max_length=200,
            max_depth=5, max_args=6, generator_seed=0))
        c.data.seq_len = 200
        common.apply_cpu_budget(c, mixer)
    else:
        c.data.listops = ml_collections.ConfigDict(dict(
            num_train=96_000, num_val=2_000, num_test=2_000, min_length=500, max_length=2000,
            max_depth=10, max_args=10, generator_seed=0))
        c.data.seq_len = 2000
        common.apply_anchor(c, "listops", mixer)
    return c
