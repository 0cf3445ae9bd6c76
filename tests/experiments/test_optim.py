"""The grouped optimiser: each group gets its own learning rate and weight decay, from optax schedules."""

import jax.numpy as jnp
import numpy as np

from experiments.configs.base import base_config
from experiments.optim import make_optimizer, schedule
from models.param_groups import CODEBOOK, DEFAULT, NO_DECAY, SSM


def test_groups_get_their_learning_rates_and_decay():
    optim = base_config().optim
    optim.update(lr=0.1, ssm_lr=0.01, weight_decay=0.5, warmup_steps=0, clip_norm=0.0)
    params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0), "lam": jnp.full((3,), 2.0)}
    labels = {"w": DEFAULT, "b": NO_DECAY, "lam": SSM}
    tx = make_optimizer(optim, labels, num_steps=10)
    grads = {k: jnp.ones_like(v) for k, v in params.items()}
    updates, _ = tx.update(grads, tx.init(params), params)
    # Adam's first step moves by lr * sign(g); AdamW adds lr * wd * param.
    np.testing.assert_allclose(updates["lam"], -0.01, rtol=1e-4)
    np.testing.assert_allclose(updates["b"], -0.1, rtol=1e-4)
    np.testing.assert_allclose(updates["w"], -0.1 * (1 + 0.5 * 2.0), rtol=1e-4)


def test_warmup_then_cosine():
    optim = base_config().optim
    optim.update(warmup_steps=10, end_lr_fraction=0.1)
    lr = schedule(1.0, optim, num_steps=110)
    assert float(lr(0)) == 0.0 and float(lr(5)) == 0.5 and float(lr(10)) == 1.0
    np.testing.assert_allclose(float(lr(60)), 0.55, rtol=1e-5)  # halfway down the cosine to 0.1
    np.testing.assert_allclose(float(lr(110)), 0.1, rtol=1e-5)


def test_codebook_gradients_are_neither_clipped_nor_counted_in_the_norm():
    optim = base_config().optim
    optim.update(lr=1.0, ssm_lr=1.0, clip_norm=1.0, warmup_steps=0, weight_decay=0.0)
    params = {"w": jnp.zeros((4,)), "codes": jnp.zeros((3,))}
    tx = make_optimizer(optim, {"w": NO_DECAY, "codes": CODEBOOK}, num_steps=5)
    grads = {"w": jnp.full((4,), 0.1), "codes": jnp.full((3,), 100.0)}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["codes"], -100.0)  # SGD at learning rate 1, unclipped
    np.testing.assert_allclose(updates["w"], -1.0, rtol=1e-4)  # Adam's first step; its norm (0.2) was not clipped


def _adam_reference(gradients, lrs, b1, b2, eps=1e-8):
    """Updates of Adam (bias-corrected moments, eps outside the square root) in float64, one per step."""
    m = v = 0.0
    updates = []
    for t, (g, lr) in enumerate(zip(gradients, lrs), start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        updates.append(-lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
    return updates


def test_two_adam_steps_see_the_globally_clipped_gradients():
    """Adam's first step is lr * sign(g) whatever the gradient's scale, so one step cannot see clipping; the
    second step can: its moments weigh g_2 against the clipped g_1. Reference: g_t * min(1, c / |g_t|) with
    the norm over every non-codebook leaf of both groups (one global norm, not one per group), then Adam per
    group in float64, with the cosine schedule written out (warmup 0: lr_t = lr (1 + cos(pi t / T)) / 2)."""
    optim = base_config().optim
    optim.update(lr=0.1, ssm_lr=0.01, clip_norm=1.0, warmup_steps=0, weight_decay=0.0, end_lr_fraction=0.0)
    num_steps = 10
    labels = {"a": NO_DECAY, "b": SSM, "codes": CODEBOOK}
    params = {"a": jnp.zeros(4), "b": jnp.zeros(3), "codes": jnp.zeros(2)}
    tx = make_optimizer(optim, labels, num_steps=num_steps)
    rng = np.random.default_rng(0)
    # Step 1: global norm ~ 11 (group norms ~ 10 and ~ 5): clipped. Step 2: norm ~ 0.4: left alone.
    steps = [
        {"a": np.array([6.0, -8.0, 0.5, 0.0]), "b": np.array([3.0, 4.0, -0.2]), "codes": np.array([50.0, -50.0])},
        {k: 0.2 * rng.normal(size=v.shape) for k, v in params.items()},
    ]
    state, got = tx.init(params), []
    for grads in steps:
        updates, state = tx.update({k: jnp.asarray(g, jnp.float32) for k, g in grads.items()}, state, params)
        got.append({k: np.asarray(u, np.float64) for k, u in updates.items()})

    def clipped(grads):
        norm = np.sqrt(sum(np.sum(grads[k] ** 2) for k in ("a", "b")))
        return {k: g * min(1.0, optim.clip_norm / norm) if k != "codes" else g for k, g in grads.items()}

    assert np.sqrt(sum(np.sum(steps[0][k] ** 2) for k in ("a", "b"))) > 10 * optim.clip_norm
    assert np.sqrt(sum(np.sum(steps[1][k] ** 2) for k in ("a", "b"))) < optim.clip_norm
    seen = [clipped(grads) for grads in steps]
    for name, peak in (("a", optim.lr), ("b", optim.ssm_lr)):
        lrs = [peak * (1 + np.cos(np.pi * t / num_steps)) / 2 for t in range(2)]
        want = _adam_reference([g[name] for g in seen], lrs, optim.b1, optim.b2)
        for step in range(2):
            np.testing.assert_allclose(got[step][name], want[step], rtol=2e-5, err_msg=f"{name}, step {step + 1}")
    for step in range(2):  # codebooks: SGD at learning rate 1 on the raw gradient
        np.testing.assert_allclose(got[step]["codes"], -steps[step]["codes"], rtol=1e-6)
