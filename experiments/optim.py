"""The optimiser: AdamW with linear warmup and cosine decay, global-norm clipping, and parameter groups.

The groups come from models.param_groups.group_labels (marked by the modules that own the parameters):
  default   AdamW(lr, weight_decay)
  no_decay  Adam(lr)                 biases, norm scales and other vectors
  ssm       Adam(ssm_lr)             state-space / recurrence parameters: lower learning rate, no decay
  codebook  SGD(1.0)                 VQ codebooks: their gradient is the EMA surrogate's, so one SGD step at
                                     learning rate 1 is the EMA update (ops/vq.py)
Every group follows the same schedule shape (optax schedules: nothing in the optimiser state is mutated
by hand). Gradients are clipped to a global norm taken over every group except the codebooks.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from models.param_groups import CODEBOOK, DEFAULT, NO_DECAY, SSM


def schedule(peak: float, optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """The learning-rate schedule: linear warmup from 0 to `peak` over optim.warmup_steps, then a cosine decay to
    peak * end_lr_fraction at `num_steps`."""
    warmup = min(optim.warmup_steps, max(num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1), end_value=peak * optim.end_lr_fraction)


def make_optimizer(optim: ml_collections.ConfigDict, labels: Any, num_steps: int) -> optax.GradientTransformation:
    """Builds the grouped optimiser for parameters labelled by `labels` (a pytree of group names)."""
    adam = dict(b1=optim.b1, b2=optim.b2)
    transforms = {
        DEFAULT: optax.adamw(schedule(optim.lr, optim, num_steps), weight_decay=optim.weight_decay, **adam),
        NO_DECAY: optax.adam(schedule(optim.lr, optim, num_steps), **adam),
        SSM: optax.adam(schedule(optim.ssm_lr, optim, num_steps), **adam),
        # Codebooks are moved by their own EMA surrogate: plain SGD with learning rate 1, no schedule.
        CODEBOOK: optax.sgd(1.0),
    }
    chain = []
    if optim.clip_norm > 0:
        # The global norm is taken over every group but the codebooks: their "gradients" are EMA statistics,
        # which must arrive unscaled (and would otherwise dominate the norm and shrink everything else).
        not_codebook = jax.tree.map(lambda label: label != CODEBOOK, labels)
        chain.append(optax.masked(optax.clip_by_global_norm(optim.clip_norm), not_codebook))
    chain.append(optax.multi_transform(transforms, labels))
    return optax.chain(*chain)
