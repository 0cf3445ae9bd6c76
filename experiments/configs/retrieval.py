"""AAN document matching (LRA Retrieval), with the dual encoder ([u, v, u*v, u-v] head). Needs the data:
--config.data.data_dir=.../lra_release/lra_release/tsv_data (new_aan_pairs.{train,eval,test}.tsv).
Variants: see experiments/configs/common.py.
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
    c.task = "retrieval"
    c.data.source = "files"
    if cpu:
        c.data.seq_len = 1024  # per document; the official length is 4,000
        common.apply_cpu_budget(c, mixer)
        c.train.batch_size = 16
    else:
        c.data.seq_len = 4000
        common.apply_anchor(c, "retrieval", mixer)
    return c
