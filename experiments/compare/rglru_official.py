"""Compare the rglru mixer with google-deepmind/recurrentgemma's JAX code on identical parameters (not a test).

    python -m experiments.compare.rglru_official --official=/tmp/rg [--x64]

`--official` is a directory holding the `recurrentgemma` package of a checkout (e.g. extracted from the fetched
repository with `git archive HEAD recurrentgemma | tar -x -C /tmp/rg`); nothing of it is copied here. It needs
einops, jaxtyping and typeguard<3 besides jax and flax, so run this from a separate environment that has them
and this repository on its path. What it checks (docs/methods.md section 16.3):

  1. the RG-LRU alone: the official `layers.RGLRU` (outputs and last state) against ops/rglru.py with the same
     a_param and gate blocks;
  2. the whole temporal block: the official `modules.RecurrentBlock` against models/rglru.py's RGLRUMixer with
     its parameters copied over (output, final RG-LRU state and conv cache against the mixer's prefill);
  3. gradients of a random projection of the block's output with respect to every parameter, with one channel's
     a_param so negative that the sqrt's derivative cap is active;
  4. decoding: the official block with its cache, token by token, against the mixer's step;
  5. the a_param initialiser with the same key.

Prints the largest absolute difference of each, for a_param from the ring initialisation and again with one
channel's a_t within 2e-8 of 1, and exits 1 when one of the first exceeds the tolerance of the dtype. With --x64
the official scan is called with float64 accumulation (its default accumulates in float32) and its decoding
state is float64 (its init_cache makes it float32).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np


def _load_official(path: str):
    """(layers, modules) of the official JAX code, without running the packages' __init__.py files (they import
    the sampler, sentencepiece, torch and checkpoint code, which this comparison does not need)."""
    sys.path.insert(0, path)
    for name, folder in (("recurrentgemma", "recurrentgemma"), ("recurrentgemma.jax", "recurrentgemma/jax")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [f"{path}/{folder}"]
            sys.modules[name] = package
    if not hasattr(jax.experimental, "shard_map"):  # older import path the official scan.py uses
        shim = types.ModuleType("jax.experimental.shard_map")
        shim.shard_map = jax.shard_map
        sys.modules["jax.experimental.shard_map"] = shim
    return (importlib.import_module("recurrentgemma.jax.layers"),
            importlib.import_module("recurrentgemma.jax.modules"))


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _compare(layers, modules, params, x, heads) -> dict[str, float]:
    """Largest absolute differences between the official code and ours on parameters `params` (the mixer's)."""
    from models.rglru import RGLRUMixer
    from ops import rglru as rglru_ops

    b, length, d = x.shape
    dtype = x.dtype
    segment_pos = jnp.broadcast_to(jnp.arange(length), (b, length))
    mixer = RGLRUMixer(d_model=d, num_heads=heads)
    official_params = {
        "linear_x": params["linear_x"], "linear_y": params["linear_y"], "linear_out": params["linear_out"],
        "conv_1d": {"w": params["conv_w"], "b": params["conv_b"]},
        "rg_lru": {"a_param": params["a_param"],
                   "input_gate": {"w": params["gate_x_w"], "b": params["gate_x_b"]},
                   "a_gate": {"w": params["gate_a_w"], "b": params["gate_a_b"]}},
    }
    results = {}

    # 1. The RG-LRU alone, on the same input.
    rglru = layers.RGLRU(width=d, num_heads=heads, param_dtype=dtype)
    y_official, h_official = rglru.apply({"params": official_params["rg_lru"]}, x, segment_pos)
    gate_a = rglru_ops.block_diagonal_linear(x, params["gate_a_w"], params["gate_a_b"])
    gate_x = rglru_ops.block_diagonal_linear(x, params["gate_x_w"], params["gate_x_b"])
    y_ours, h_ours = rglru_ops.rglru(x, gate_a, gate_x, params["a_param"])
    results["RG-LRU output"] = _max_diff(y_ours, y_official)
    results["RG-LRU last state"] = _max_diff(h_ours, h_official)

    # 2. The temporal block, and its decoding state after the sequence.
    block = modules.RecurrentBlock(width=d, num_heads=heads, lru_width=d, conv1d_temporal_width=4,
                                   param_dtype=dtype)
    out_official, cache = block.apply({"params": official_params}, x, segment_pos)
    out_ours = mixer.apply({"params": params}, x)
    state, out_prefill = mixer.apply({"params": params}, x, method=RGLRUMixer.prefill)
    results["block output"] = _max_diff(out_ours, out_official)
    results["block prefill output"] = _max_diff(out_prefill, out_official)
    results["block RG-LRU state"] = _max_diff(state["h"], cache.rg_lru_state)
    results["block conv cache"] = _max_diff(state["conv"], cache.conv1d_state)

    # 3. Gradients with respect to every parameter.
    weights = jax.random.normal(jax.random.key(1), out_ours.shape, dtype)
    grad_official = jax.grad(lambda p: jnp.sum(weights * block.apply({"params": p}, x, segment_pos,
                                                                      return_cache=False)[0]))(official_params)
    grad_ours = jax.grad(lambda p: jnp.sum(weights * mixer.apply({"params": p}, x)))(params)
    lru_grads = grad_official["rg_lru"]
    mapped = {
        "linear_x": grad_official["linear_x"], "linear_y": grad_official["linear_y"],
        "linear_out": grad_official["linear_out"], "conv_w": grad_official["conv_1d"]["w"],
        "conv_b": grad_official["conv_1d"]["b"], "a_param": lru_grads["a_param"],
        "gate_x_w": lru_grads["input_gate"]["w"], "gate_x_b": lru_grads["input_gate"]["b"],
        "gate_a_w": lru_grads["a_gate"]["w"], "gate_a_b": lru_grads["a_gate"]["b"],
    }
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grad_ours))
    results["gradients, relative to the largest"] = max(
        _max_diff(ours, theirs) for ours, theirs in zip(jax.tree.leaves(grad_ours), jax.tree.leaves(mapped),
                                                        strict=True)) / scale
    results["gradient of a_param[0]"] = _max_diff(grad_ours["a_param"][0], mapped["a_param"][0])

    # 4. Decoding token by token with the official cache against the mixer's step.
    cache = modules.RecurrentBlock.init_cache(b, d, dtype, conv1d_temporal_width=4)
    cache = cache._replace(rg_lru_state=cache.rg_lru_state.astype(jnp.promote_types(dtype, jnp.float32)))
    state = mixer.apply({"params": params}, b, method=RGLRUMixer.init_state)
    official_step = jax.jit(lambda c, x_t, pos: block.apply({"params": official_params}, x_t, pos, cache=c))
    our_step = jax.jit(lambda s, x_t: mixer.apply({"params": params}, s, x_t, method=RGLRUMixer.step))
    worst = 0.0
    for t in range(length):
        out_t, cache = official_step(cache, x[:, t:t + 1], segment_pos[:, t:t + 1])
        state, y_t = our_step(state, x[:, t])
        worst = max(worst, _max_diff(y_t, out_t[:, 0]))
    results["decoding step outputs"] = worst
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="directory holding the recurrentgemma package")
    parser.add_argument("--x64", action="store_true", help="compare in float64 (default float32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=33)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.x64 else jnp.float32
    tolerance = 1e-12 if args.x64 else 1e-5

    layers, modules = _load_official(args.official)
    if args.x64:
        # The official scan accumulates in float32 unless told otherwise (acc_float_dtype); the RG-LRU does not
        # pass it, so for a float64 comparison its linear_scan is called with float64 accumulation.
        official_scan = layers.scan.linear_scan
        layers.scan.linear_scan = functools.partial(official_scan, acc_float_dtype=jnp.float64)
    from models import param_groups
    from models.rglru import RGLRUMixer

    b, length, d, heads = args.batch, args.length, args.width, args.heads
    keys = iter(jax.random.split(jax.random.key(0), 4))
    x = jax.random.normal(next(keys), (b, length, d), dtype)
    mixer = RGLRUMixer(d_model=d, num_heads=heads, out_variance_scale=1.0)
    params = param_groups.unbox(mixer.init(next(keys), x))["params"]
    # Perturb every parameter but a_param (the zero biases included) so that each one's role is compared.
    leaves, tree = jax.tree.flatten(params)
    leaves = [(leaf + 0.2 * jax.random.normal(k, leaf.shape)).astype(dtype)
              for leaf, k in zip(leaves, jax.random.split(next(keys), len(leaves)), strict=True)]
    params = jax.tree.unflatten(tree, leaves)
    params["a_param"] = mixer.init(next(keys), x)["params"]["a_param"].unbox().astype(dtype)  # the ring init
    # The second case: channel 0 with a_param = -21, so a_t is within 2e-8 of 1 and the sqrt's derivative cap is
    # active; there 1 - a_t^2 differs: the official 1 - exp(2 log a) against our -expm1(2 log a).
    near_one = dict(params, a_param=params["a_param"].at[0].set(-21.0))

    from ops import rglru as rglru_ops

    with jax.enable_x64(False):  # both draw float32 uniforms (the official one draws the default float dtype)
        key = jax.random.key(7)
        ours_init = rglru_ops.a_param_init(key, (d,), 0.9, 0.999)
        official_init = layers.rnn_real_param_init(min_rad=0.9, max_rad=0.999)(key, (d,))
    # a_param = ln(1/r - 1) differs in the last digits (expm1 here, exp(.) - 1 there); the decay r itself not.
    init_diff = _max_diff(rglru_ops.base_decay(ours_init), rglru_ops.base_decay(official_init))
    failed = init_diff > 1e-6
    print(f"a_param initialiser, same key: max abs difference of r = exp(-softplus(a_param)) {init_diff:.3e} "
          f"(of a_param itself {_max_diff(ours_init, official_init):.3e})")
    print(f"recurrentgemma comparison, {jnp.dtype(dtype).name}, B={b} L={length} D={d} H={heads}; "
          f"max abs difference (tolerance {tolerance:g} on the ring init)")
    for case, case_params in (("a_param from the ring init", params), ("a_param[0] = -21 (a_t ~ 1)", near_one)):
        print(f"  {case}:")
        for name, value in _compare(layers, modules, case_params, x, heads).items():
            bad = case_params is params and value > tolerance
            failed |= bad
            print(f"    {name:40s} {value:.3e}{'  EXCEEDS TOLERANCE' if bad else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
