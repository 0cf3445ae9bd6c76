"""IMDB byte-level classification (LRA Text). Needs the data: --config.data.data_dir=.../aclImdb (or a directory
with train.tsv / test.tsv, see lra/text.py). Validation is carved from train (10%, fixed seed): the test set is
never used for model selection. Variants: see experiments/configs/common.py.
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
    c.task = "text"
    c.data.source = "files"
    c.data.val_fraction = 0.1
    c.data.split_seed = 0
    if cpu:
        c.data.seq_len = 1024  # first 1,024 bytes: a CPU-sized cut of the 4,096 used by S4/S5
        common.apply_cpu_budget(c, mixer)
    else:
        c.data.seq_len = 4096
        common.apply_anchor(c, "text", mixer)
    return c
