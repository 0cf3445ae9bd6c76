"""Causal language modelling on bytes (the "lm" task; corpora and windows: lra/corpus.py).

    --config=lm                    the default ("cpu"): a small causal LRU on the Python standard library's source
    --config=lm:softmax-cpu        the same budget with another causal mixer
    --config=lm:vq --config.data.data_dir=DIR
                                   Transformer-VQ's published enwik8 settings (accelerators; models/vq.py), on the
                                   official enwik8 file (python -m lra.download enwik8 --data_dir=DIR)
    --config=lm --config.data.source=files --config.data.lm.format=enwik8 --config.data.data_dir=DIR
                                   the official enwik8 file (also text8, pg19, textdir: any folder of .txt files)

Every variant trains at data.seq_len tokens (256 by default) with a per-position head, LayerNorm (BatchNorm's
training statistics would span the future) and causal mixers (validation refuses the others). Evaluation reads
data.lm.max_eval_windows evenly spaced windows of each held-out split (0: all of them); results.json reports
bits per byte (bpb) and next-byte accuracy, and the corpus's own order-0 entropy (unigram_bpb) as the baseline.
"""

from __future__ import annotations

import ml_collections

import lra.corpus  # noqa: F401  (registers the task)
from experiments.configs import common
from experiments.configs.base import base_config


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    """The config of `variant`: "cpu" (default, an LRU), "<mixer>-cpu" (any causal mixer) or "<mixer>" (a mixer
    with a published LM recipe: vq)."""
    mixer, cpu = common.parse_variant(variant)
    c = base_config()
    c.task = "lm"
    c.data.source = "builtin"
    c.data.seq_len = lra.corpus.LM_TRAIN_LENGTH
    c.data.lm = ml_collections.ConfigDict(dict(format="stdlib", split_seed=0, max_eval_windows=512))
    if not cpu:
        common.apply_anchor(c, "lm", mixer)  # the mixer's published LM recipe (e.g. vq: Transformer-VQ on enwik8)
        c.train.eval_batch_size = c.train.batch_size
        return c
    common.apply_cpu_budget(c, mixer)
    c.model.norm = "layer"
    c.model.d_model, c.model.n_layers = 128, 3
    c.train.batch_size, c.train.eval_batch_size = 16, 32
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 1500, 250, 250
    c.optim.update(lr=2e-3, ssm_lr=1e-3, warmup_steps=100, weight_decay=0.01)
    return c
