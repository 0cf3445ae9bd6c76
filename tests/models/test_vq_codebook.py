"""Codebook health of the "vq" mixer: the EMA update over many steps against a float64 numpy reference (through the
trainer's own optimiser), data-dependent initialisation, dead-code restarts (determinism, jit, data-parallel
sharding), and guards: dead codes and empty blocks give finite outputs and gradients, decoding still equals the
parallel call."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from experiments.optim import make_optimizer
from models import param_groups
from models.registry import make_mixer
from ops import vq as vq_ops

D_MODEL = 6
SMALL = dict(d_model=D_MODEL, num_heads=2, key_dim=3, value_dim=2, codebook_size=4, block_len=4)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mixer(dtype=jnp.float64, **options):
    return make_mixer("vq", **{**SMALL, **options}, dtype=dtype, param_dtype=dtype)


def _clustered_inputs(seed, batch=2, length=16, clusters=3, noise=0.05):
    """x (B, L, D) drawn around `clusters` centres, so the keys form clusters; the second row is half padding."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.normal(size=(clusters, D_MODEL))
    x = centres[rng.integers(0, clusters, (batch, length))] + noise * rng.normal(size=(batch, length, D_MODEL))
    mask = np.arange(length)[None] < np.array([[length]] + [[length // 2]] * (batch - 1))
    return jnp.asarray(x), jnp.asarray(mask)


def _init(mixer, x, mask=None, seed=0):
    """(group labels, parameters) without compiling `init`: shapes from eval_shape, values drawn with numpy in the
    mixer's own conventions (codes at the key scale K^(-1/4), counts 1, no update yet, an integer seed)."""
    boxed = jax.eval_shape(mixer.init, jax.random.key(seed), x[:1, :1])["params"]
    rng = np.random.default_rng(seed)
    special = {"c_count": np.ones, "codebook_updates": np.zeros, "bias": np.zeros,
               "codebook_seed": lambda shape: np.full(shape, 1234.0)}

    def value(path, leaf):
        name = path[-1].key
        if name in special:
            return jnp.asarray(special[name](leaf.shape), leaf.dtype)
        scale = mixer.key_dim**-0.25 if name in ("c_sum", "codes") else leaf.shape[0] ** -0.5
        return jnp.asarray(scale * rng.normal(size=leaf.shape), leaf.dtype)

    params = jax.tree_util.tree_map_with_path(value, param_groups.unbox(boxed))
    return param_groups.group_labels(boxed), params


def _keys(mixer, params, x):
    return np.asarray(jax.jit(lambda p: mixer.apply({"params": p}, x, method=lambda m, a: m._project(a)[1]))(params))


def _trainer_step(mixer, labels, x, mask, clip_norm=1e-3):
    """One training step as the trainer takes it (task + sown losses, the grouped optimiser with its clipping),
    with learning rate 0 for every Adam group, so only the codebook group moves and the keys stay fixed."""
    optim = ml_collections.ConfigDict(dict(lr=0.0, ssm_lr=0.0, weight_decay=0.05, warmup_steps=0,
                                           end_lr_fraction=0.0, b1=0.9, b2=0.999, clip_norm=clip_norm))
    tx = make_optimizer(optim, labels, num_steps=100)

    def loss(params):
        y, sown = mixer.apply({"params": params}, x, mask=mask, mutable=["losses", "metrics"])
        # A large task loss, so that the clipping (which must skip the codebook group) really clips.
        return 1e3 * jnp.sum(jnp.sin(y)) + sum(jnp.sum(v) for v in jax.tree.leaves(sown["losses"])), sown

    @jax.jit
    def step(params, opt_state):
        grads, sown = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, sown["metrics"]

    return tx, step


def _ema_reference(keys, real, c_sum, c_count, decay):
    """One EMA update in float64 numpy, token by token: codes from the codebook c_sum / max(c_count, 0.01)."""
    codebook = c_sum / np.maximum(c_count, 0.01)[..., None]
    heads, num_codes, _ = c_sum.shape
    batch_sum, batch_count = np.zeros_like(c_sum), np.zeros_like(c_count)
    used = np.zeros((heads, num_codes), bool)
    for b, t in zip(*np.nonzero(real)):
        for h in range(heads):
            s = int(np.argmin(np.sum((keys[b, t, h] - codebook[h]) ** 2, axis=-1)))
            batch_sum[h, s] += keys[b, t, h]
            batch_count[h, s] += 1
            used[h, s] = True
    return decay * c_sum + (1 - decay) * batch_sum, decay * c_count + (1 - decay) * batch_count, used


# ------------------------------------------------------------------------------------------------ EMA update


def test_ema_update_over_many_steps_matches_float64_reference_and_reaches_cluster_means(x64):
    decay, num_steps = 0.5, 30
    mixer = _mixer(ema_decay=decay)
    x, mask = _clustered_inputs(0)
    labels, params = _init(mixer, x, mask)
    tx, step = _trainer_step(mixer, labels, x, mask)
    opt_state = tx.init(params)
    keys, real = _keys(mixer, params, x), np.asarray(mask)
    c_sum, c_count = np.asarray(params["c_sum"]), np.asarray(params["c_count"])
    initial_codebook = c_sum / c_count[..., None]
    ever_used = np.zeros(c_count.shape, bool)
    for _ in range(num_steps):
        params, opt_state, _ = step(params, opt_state)
        c_sum, c_count, used = _ema_reference(keys, real, c_sum, c_count, decay)
        ever_used |= used
        np.testing.assert_allclose(params["c_sum"], c_sum, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(params["c_count"], c_count, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(_keys(mixer, params, x), keys)  # the keys really stayed fixed
    codebook = np.asarray(vq_ops.codebook_from_ema(params["c_sum"], params["c_count"]))
    # Every code in use has moved (from afar) to the mean of the keys it quantises: a fixed point of k-means.
    for h in range(2):
        codes = np.argmin(np.sum((keys[..., h, None, :] - codebook[h]) ** 2, axis=-1), axis=-1)[real]
        assert len(set(codes.tolist())) >= 2
        for s in set(codes.tolist()):
            mean = keys[..., h, :][real][codes == s].mean(0)
            np.testing.assert_allclose(codebook[h, s], mean, atol=1e-4)
            assert np.linalg.norm(initial_codebook[h, s] - mean) > 0.1
    # Transformer-VQ's convention for codes nobody chose: c_sum and c_count decay together, so the code stays
    # where it was until its count falls below 0.01, then shrinks towards 0 as decay^t / 0.01 (never restarted).
    never = ~ever_used
    assert never.any()
    np.testing.assert_allclose(codebook[never], initial_codebook[never] * (decay**num_steps / 0.01), rtol=1e-8)


# ------------------------------------------------------------------------------- data initialisation, restarts


def test_restart_dead_codes_matches_numpy(x64):
    rng = np.random.default_rng(1)
    heads, num_codes, width = 2, 5, 3
    x = jnp.asarray(rng.normal(size=(3, 4, heads, width)))
    mask = jnp.asarray(rng.uniform(size=(3, 4)) > 0.4)
    c_sum = jnp.asarray(rng.normal(size=(heads, num_codes, width)))
    c_count = jnp.asarray([[4.0, 0.1, 3.0, 0.5, 2.0], [0.05, 6.0, 6.0, 6.0, 6.0]])
    new_sum, new_count, dead = vq_ops.restart_dead_codes(c_sum, c_count, x, jax.random.key(3), 0.2, mask)
    level = 0.2 * np.asarray(c_count).mean(-1, keepdims=True)
    np.testing.assert_array_equal(dead, np.asarray(c_count) < level)  # [1, 3] of head 0, [0] of head 1
    real_keys = np.asarray(x)[np.asarray(mask)]                        # (n, H, K)
    codebook = np.asarray(new_sum) / np.asarray(new_count)[..., None]
    for h in range(heads):
        for s in range(num_codes):
            if dead[h, s]:
                assert np.min(np.abs(real_keys[:, h] - codebook[h, s]).sum(-1)) < 1e-12  # a real key of head h
                np.testing.assert_allclose(new_count[h, s], level[h, 0], rtol=1e-12)
            else:
                np.testing.assert_array_equal(new_sum[h, s], c_sum[h, s])
                assert new_count[h, s] == c_count[h, s]
    # Distinct tokens (drawn without replacement), deterministic given the key; nothing restarts without tokens.
    assert not np.allclose(codebook[0, 1], codebook[0, 3])
    again = vq_ops.restart_dead_codes(c_sum, c_count, x, jax.random.key(3), 0.2, mask)
    np.testing.assert_array_equal(again[0], new_sum)
    none = vq_ops.restart_dead_codes(c_sum, c_count, x, jax.random.key(3), 0.2, jnp.zeros((3, 4), bool))
    np.testing.assert_array_equal(none[0], c_sum)
    assert not np.asarray(none[2]).any()
    with pytest.raises(ValueError, match="threshold"):
        vq_ops.restart_dead_codes(c_sum, c_count, x, jax.random.key(3), 1.5, mask)


def test_kmeans_plusplus_seeds_distinct_real_vectors(x64):
    rng = np.random.default_rng(2)
    centres = 10.0 * rng.normal(size=(4, 2))
    x = jnp.asarray(centres[np.arange(40) % 4] + 0.01 * rng.normal(size=(40, 2)))
    mask = jnp.asarray(np.arange(40) < 36)
    seeds = np.asarray(vq_ops.kmeans_plusplus(x, 4, jax.random.key(0), mask))
    # D^2 sampling on 4 far-apart clusters picks one real vector from each.
    nearest_centre = np.argmin(((seeds[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert sorted(nearest_centre.tolist()) == [0, 1, 2, 3]
    assert all(np.min(np.abs(np.asarray(x)[:36] - s).sum(-1)) == 0 for s in seeds)
    # Fewer distinct vectors than codes: falls back to uniform draws (repeats), stays finite.
    few = vq_ops.kmeans_plusplus(jnp.asarray(np.repeat(centres[:2], 5, axis=0)), 6, jax.random.key(0))
    assert np.isfinite(np.asarray(few)).all() and len({tuple(r) for r in np.asarray(few)}) == 2


@pytest.mark.parametrize("init", [pytest.param("keys", marks=pytest.mark.slow), "kmeans"])
def test_data_initialisation_happens_once_at_the_first_update(x64, init):
    decay = 0.9
    mixer = _mixer(ema_decay=decay, codebook_init=init, kmeans_iters=20, codebook_size=3)
    x, mask = _clustered_inputs(3)
    labels, params = _init(mixer, x, mask)
    assert labels["codebook_updates"] == labels["codebook_seed"] == param_groups.CODEBOOK
    assert float(params["codebook_updates"]) == 0.0
    keys, real = _keys(mixer, params, x), np.asarray(mask)

    @jax.jit
    def statistics(p):  # what a training call (update=True) and an evaluation call quantise with
        method = lambda m, k, msk: (m._ema_statistics(k, msk, True), m._ema_statistics(k, msk, False))  # noqa: E731
        return mixer.apply({"params": p}, jnp.asarray(keys), mask, method=method)

    (init_sum, init_count), (eval_sum, eval_count) = jax.tree.map(np.asarray, statistics(params))
    np.testing.assert_array_equal(init_count, 1.0)
    # Evaluation never initialises: it reads the stored (random) codebook.
    np.testing.assert_array_equal(eval_sum, params["c_sum"])
    np.testing.assert_array_equal(eval_count, params["c_count"])
    real_keys = keys[real]
    for h in range(2):
        if init == "keys":  # every code is a real key of this head, no two the same token
            for code in init_sum[h]:
                assert np.min(np.abs(real_keys[:, h] - code).sum(-1)) < 1e-12
            assert len({tuple(code) for code in init_sum[h]}) == 3
        else:  # three clusters, three codes: each code is the mean of its cluster
            codes = np.argmin(((real_keys[:, h, None] - init_sum[h]) ** 2).sum(-1), axis=1)
            assert sorted(set(codes.tolist())) == [0, 1, 2]
            for s in range(3):
                np.testing.assert_allclose(init_sum[h, s], real_keys[codes == s, h].mean(0), atol=1e-12)

    tx, step = _trainer_step(mixer, labels, x, mask)
    opt_state = tx.init(params)
    # The first update quantises with the data codebook and applies the EMA step to it; the second one starts
    # from the stored statistics (no second initialisation).
    expected_sum, expected_count = init_sum, init_count
    for update in (1, 2):
        params, opt_state, _ = step(params, opt_state)
        expected_sum, expected_count, _ = _ema_reference(keys, real, expected_sum, expected_count, decay)
        np.testing.assert_allclose(params["c_sum"], expected_sum, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(params["c_count"], expected_count, rtol=1e-10, atol=1e-12)
        assert float(params["codebook_updates"]) == update


def test_dead_codes_are_restarted_and_decoding_still_equals_the_call(x64):
    mixer = _mixer(dead_code_threshold=0.5, block_len=3)
    x, mask = _clustered_inputs(4, length=10)
    labels, params = _init(mixer, x, mask)
    # Codes 1.. of every head are far away (100x) and rarely used so far (count 0.05); code 0 takes every key.
    params["c_sum"] = params["c_sum"].at[:, 1:].multiply(100.0 * 0.05)
    params["c_count"] = params["c_count"].at[:, 1:].set(0.05)
    tx, step = _trainer_step(mixer, labels, x, mask)
    opt_state = tx.init(params)
    keys, real = _keys(mixer, params, x), np.asarray(mask)
    params, opt_state, metrics = step(params, opt_state)
    codebook = np.asarray(vq_ops.codebook_from_ema(params["c_sum"], params["c_count"]))
    # After the EMA step codes 1..3 have count 0.0495, below 0.5 x the mean (0.99 + 0.01 n + 3 x 0.0495) / 4
    # (n = 15 real tokens): all three are restarted at real keys, code 0 is not.
    np.testing.assert_allclose(metrics["restarted_code_fraction"][0], 0.75)
    for h in range(2):
        for s in (1, 2, 3):
            assert np.min(np.abs(keys[real][:, h] - codebook[h, s]).sum(-1)) < 1e-12
    assert float(params["codebook_updates"]) == 1.0
    # The next step spreads the keys over the restarted codes.
    params, opt_state, metrics = step(params, opt_state)
    assert float(metrics["dead_code_fraction"][0]) < 0.75
    # Decoding token by token with the restarted codebook equals the parallel call.
    variables = {"params": params}
    expected = jax.jit(mixer.apply)(variables, x)
    state = mixer.apply(variables, 2, method=mixer.init_state)
    decode = jax.jit(lambda s, x_t: mixer.apply(variables, s, x_t, method=mixer.step))
    outputs = []
    for t in range(x.shape[1]):
        state, y_t = decode(state, x[:, t])
        outputs.append(y_t)
    np.testing.assert_allclose(np.stack(outputs, axis=1), expected, atol=1e-12)


def test_simvq_rejects_the_ema_codebook_options():
    with pytest.raises(ValueError, match="codebook_init"):
        jax.eval_shape(make_mixer("vq", d_model=8, quantizer="simvq", dead_code_threshold=0.1).init,
                       jax.random.key(0), jnp.zeros((1, 4, 8)))
    with pytest.raises(ValueError, match="codebook_init"):
        jax.eval_shape(make_mixer("vq", d_model=8, codebook_init="nonesuch").init, jax.random.key(0),
                       jnp.zeros((1, 4, 8)))


_SHARDING_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from models import param_groups
from models.registry import make_mixer

mixer = make_mixer("vq", d_model=8, num_heads=2, key_dim=4, codebook_size=6, block_len=4, codebook_init="kmeans",
                   dead_code_threshold=0.5, kmeans_iters=4, ema_decay=0.5)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(4, 12, 8)), jnp.float32)
mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [7], [12], [3]]))
params = param_groups.unbox(jax.jit(lambda k: mixer.init(k, x[:, :4]))(jax.random.key(0))["params"])

def update(params, x, mask):
    def loss(p):
        y, sown = mixer.apply({"params": p}, x, mask=mask, mutable=["losses", "metrics"])
        return jnp.mean(y ** 2) + sum(jnp.sum(v) for v in jax.tree.leaves(sown["losses"])), sown["metrics"]
    grads, metrics = jax.grad(loss, has_aux=True)(params)
    # SGD(1) on everything (only the codebook group matters here).
    return jax.tree.map(lambda p, g: p - g, params, grads), metrics["restarted_code_fraction"][0]

def run(devices):
    mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
    batch, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    step = jax.jit(update, in_shardings=(replicated, batch, batch), out_shardings=replicated)
    p, restarted = jax.device_put(params, replicated), []
    # Step 1 initialises from the full batch; steps 2, 3 see 2 tokens per row, so codes fall idle and restart.
    for m in (mask, mask & (np.arange(12) < 2), mask & (np.arange(12) < 2)):
        p, fraction = step(p, jax.device_put(x, batch), jax.device_put(m, batch))
        restarted.append(float(fraction))
    return jax.tree.map(np.asarray, p), restarted

(one, r1), (two, r2), (again, _) = run(1), run(2), run(2)
assert jax.device_count() == 2 and max(r2) > 0 and r1 == r2, (r1, r2)   # restarts happened, the same ones
for name in ("c_sum", "c_count", "codebook_updates"):
    np.testing.assert_array_equal(two[name], again[name])                  # deterministic
    np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6)  # independent of the sharding
assert float(two["codebook_updates"]) == 3.0
print("OK")
"""


def test_initialisation_and_restarts_are_deterministic_and_sharding_independent():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_SHARDING_SCRIPT)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


# ------------------------------------------------------------------------------------------------------ guards


def _guard_inputs():
    """Length 13 (not a multiple of C = 4); row 0 real up to 9 (blocks 3 fully padded), row 1 fully padded."""
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 13, D_MODEL)), jnp.float32)
    mask = jnp.asarray(np.arange(13)[None] < np.array([[9], [0]]))
    return x, mask


def _far_codes(name, params):
    """Every code but the first 100x (vq) / 1000x (vq_soft) farther out: dead codes far from every key."""
    if name == "vq":
        return dict(params, c_sum=params["c_sum"].at[:, 1:].multiply(100.0))
    return dict(params, codes=params["codes"].at[:, 1:].multiply(1000.0))


# Each case compiles a forward and backward pass (~3 s of CPU): two run by default, the other two are slow.
@pytest.mark.parametrize("name,bidirectional", [("vq", False), ("vq_soft", True),
                                                pytest.param("vq", True, marks=pytest.mark.slow),
                                                pytest.param("vq_soft", False, marks=pytest.mark.slow)])
def test_dead_codes_and_empty_blocks_give_finite_outputs_and_gradients(name, bidirectional):
    # (No data initialisation here: the forward pass must see the far codes; restarts go into the targets.)
    options = dict(dead_code_threshold=0.1) if name == "vq" else {}
    mixer = make_mixer(name, **SMALL, bidirectional=bidirectional, **options)
    x, mask = _guard_inputs()
    params = _far_codes(name, _init(mixer, x)[1])

    def loss(p, a):
        y, sown = mixer.apply({"params": p}, a, mask=mask, mutable=["losses", "metrics"])
        return jnp.sum(jnp.where(mask[..., None], y, 0.0) ** 2) + sum(
            jnp.sum(v) for v in jax.tree.leaves(sown.get("losses", {}))), (y, sown["metrics"])

    (value, (y, metrics)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(y)).all()
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert all(np.isfinite(np.asarray(m)).all() for m in jax.tree.leaves(metrics))
    assert np.abs(np.asarray(grads[1])[np.asarray(mask)]).max() > 0  # gradients do reach the real tokens
    # The fully padded row (an all-empty sequence: every block of it is empty) gets exactly zero gradient.
    np.testing.assert_array_equal(np.asarray(grads[1])[1], 0.0)
