"""The configuration schema every task config starts from.

Sections:
  task, seed
  data:   where the examples come from (generated or the official files) and the sequence length
  model:  encoder shape and the mixer; `model.<mixer name>` holds the options of that mixer, one section per
          registered mixer (only the selected one is used; resolve_mixer rejects a key the mixer does not have)
  optim:  AdamW with linear warmup and cosine decay; the state-space group's own learning rate
  train:  batch sizes, steps, evaluation, checkpointing, logging
"""

from __future__ import annotations

import ml_collections

from models.registry import mixer_contract, mixer_names


def base_config() -> ml_collections.ConfigDict:
    """A fresh ConfigDict of the schema with the defaults above (task files start from it)."""
    c = ml_collections.ConfigDict()
    c.task = "listops"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "generated"        # "generated" (synthetic tasks) or "files" (official files in data_dir)
    c.data.data_dir = ""               # directory holding the official files when source == "files"
    c.data.cache_dir = ""              # where generated data and preprocessed arrays go ("" = ~/.cache/lra-mixers)
    c.data.seq_len = 0                 # 0 = the task's standard length

    c.model = ml_collections.ConfigDict()
    c.model.mixer = "lru"
    c.model.d_model = 128
    c.model.n_layers = 4
    # None: causal where the mixer has a causal form (every mixer but nystrom); True / False force the direction.
    c.model.bidirectional = ml_collections.config_dict.placeholder(bool)
    c.model.norm = "batch"
    c.model.residual = "prenorm"        # "prenorm", "postnorm" or "deepnorm"
    c.model.dropout = 0.0
    c.model.pooling = "mean"
    c.model.input_encoding = "embed"   # "embed" token ids, or "linear" for pixel values scaled to [-1, 1]
    # Activation dtype: "float32" or "bfloat16" (mixed precision: parameters, norms, softmax normalisers, scans,
    # FFT convolutions, prefix sums and the logits/loss stay float32; models/encoder.py).
    c.model.dtype = "float32"
    # Options of each mixer (only the section named by model.mixer is used; the values come from each mixer's
    # contract, MixerContract.config_options, and the defaults of the rest live in the mixer classes). Length
    # options (l_max, trunc_len, max_decode_len) set to 0 take the task's sequence length.
    for name in mixer_names():
        c.model[name] = ml_collections.ConfigDict(dict(mixer_contract(name).config_options))

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 3e-3
    c.optim.ssm_lr = 1.5e-3            # learning rate of the "ssm" parameter group (no weight decay)
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 100
    c.optim.end_lr_fraction = 0.0      # cosine decays to lr * end_lr_fraction
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.clip_norm = 1.0            # global-norm clipping; 0 disables

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32            # global batch, split over all devices of all hosts
    c.train.eval_batch_size = 64
    c.train.num_steps = 1000
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 2
    c.train.log_every = 50
    c.train.nonfinite = "stop"         # non-finite loss/gradients/update: "stop" (name step and parameter) or "skip"
    c.train.max_consecutive_skips = 10  # with "skip": stop after this many non-finite steps in a row
    return c
