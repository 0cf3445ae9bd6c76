"""CIFAR-10 grayscale as 1,024 pixels (LRA Image). Needs the data:
--config.data.data_dir=.../cifar-10-batches-py. Pixels are tokens 0..255 by default (no padding: black is a pixel);
--config.model.input_encoding=linear reads them as values in [-1, 1] instead. Variants: see common.py.
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
    c.task = "image"
    c.data.source = "files"
    c.data.seq_len = 0  # the task's own length: 1,024 for CIFAR-10, 784 with --config.task=mnist / pmnist / ...
    c.data.val_size = 5000  # held out from train (CIFAR-10: 45k / 5k; use 6000 for the MNIST family)
    if cpu:
        common.apply_cpu_budget(c, mixer)
        c.train.num_steps = 1000
    else:
        common.apply_anchor(c, "image", mixer)
    return c
