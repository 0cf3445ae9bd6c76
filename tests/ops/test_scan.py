"""Tests for ops/scan.py: every method against a float64 Python loop, values and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ops.scan import ScanMethod, linear_recurrence

METHODS = ["sequential", "associative", "chunked"]
BATCH, LENGTH, STATE = 2, 11, 3
CHUNK = 4  # 11 = 2 * 4 + 3: the chunked method must handle a remainder
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def reference_recurrence(a, b, h0, reverse):
    """h_t = a_t h_{t-1} + b_t (h_{t+1} when reverse) as a Python loop over t; differentiable by autodiff."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim < b.ndim:  # time-invariant: the same a at every step
        a = jnp.expand_dims(jnp.reshape(a, (1,) * (b.ndim - 1 - a.ndim) + a.shape), 1)
    a = jnp.broadcast_to(a, b.shape)
    state = jnp.broadcast_to(jnp.asarray(h0), (b.shape[0], *b.shape[2:]))
    # Unstack once: indexing a[:, t] eagerly would compile a new slice for every t.
    a_steps, b_steps = jnp.unstack(a, axis=1), jnp.unstack(b, axis=1)
    states = [None] * b.shape[1]
    for t in reversed(range(b.shape[1])) if reverse else range(b.shape[1]):
        state = a_steps[t] * state + b_steps[t]
        states[t] = state
    return jnp.stack(states, axis=1), state


def random_array(rng, shape, is_complex):
    x = rng.normal(size=shape)
    return x + 1j * rng.normal(size=shape) if is_complex else x


def random_decay(rng, shape, is_complex):
    """Decays inside the unit disk (0.5 < |a| < 0.95), as a stable recurrence has."""
    magnitude = rng.uniform(0.5, 0.95, size=shape)
    if not is_complex:
        return magnitude * rng.choice([-1.0, 1.0], size=shape)
    return magnitude * np.exp(1j * rng.uniform(0, 2 * np.pi, size=shape))


def assert_close(actual, expected, tol=1e-10):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


def check_against_reference(cases, method, chunk_size=CHUNK, seed=1):
    """Values and VJPs of linear_recurrence against the loop, for random cotangents of h and h_last.

    `cases` is a list of (a, b, h0 or None, reverse).
    """
    rng = np.random.default_rng(seed)
    primals, cotangents = [], []
    for a, b, h0, _ in cases:
        primals.append((a, b) if h0 is None else (a, b, h0))
        h_dtype = np.result_type(a, b, 0.0 if h0 is None else h0)
        state_shape = (b.shape[0], *b.shape[2:])
        cotangents.append(
            tuple(
                random_array(rng, shape, np.issubdtype(h_dtype, np.complexfloating)).astype(h_dtype)
                for shape in (b.shape, state_shape)
            )
        )

    def evaluate(recurrence, primals, cotangents):
        results = []
        for (_, _, _, reverse), args, ct in zip(cases, primals, cotangents, strict=True):
            outputs, vjp = jax.vjp(functools.partial(recurrence, reverse=reverse), *args)
            results.append((outputs, vjp(ct)))
        return results

    def under_test(a, b, h0=None, *, reverse):
        return linear_recurrence(a, b, h0, reverse=reverse, method=method, chunk_size=chunk_size)

    def reference(a, b, h0=0.0, *, reverse):
        return reference_recurrence(a, b, h0, reverse)

    # The function under test is compiled, as in a model (at XLA's lowest optimisation level, which compiles
    # faster and does not change float64 results beyond rounding); the reference loop runs eagerly, one cached
    # dispatch per operation, which is much cheaper than compiling its unrolled gradient.
    compiled = jax.jit(lambda p, c: evaluate(under_test, p, c), compiler_options=FAST_COMPILE)
    actual = compiled(primals, cotangents)
    expected = evaluate(reference, primals, cotangents)
    for leaf, leaf_ref in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert_close(leaf, leaf_ref)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("time_varying", [False, True])
@pytest.mark.parametrize("is_complex", [False, True])
def test_values_and_gradients_match_loop(x64, method, time_varying, is_complex):
    """Each of the 3 x 2 x 2 combinations, in both directions, with and without h0."""
    rng = np.random.default_rng(0)
    a_shape = (BATCH, LENGTH, STATE) if time_varying else (STATE,)
    a = random_decay(rng, a_shape, is_complex)
    b = random_array(rng, (BATCH, LENGTH, STATE), is_complex)
    h0 = random_array(rng, (BATCH, STATE), is_complex)
    cases = [(a, b, initial, reverse) for reverse in (False, True) for initial in (h0, None)]
    check_against_reference(cases, method)


@pytest.mark.parametrize("length, chunk_size", [(1, 4), (8, 4), (9, 4), (7, 1), (13, None)])
def test_chunked_any_length(x64, length, chunk_size):
    """Lengths below, at and off a multiple of the chunk; chunk 1; the default chunk (here C > L). Both kinds
    of a, in alternating directions."""
    rng = np.random.default_rng(length)
    cases = []
    for time_varying, reverse in ((False, length % 2 == 0), (True, length % 2 == 1)):
        a = random_decay(rng, (BATCH, length, STATE) if time_varying else (BATCH, STATE), True)
        b = random_array(rng, (BATCH, length, STATE), True)
        h0 = random_array(rng, (BATCH, STATE), True)
        cases.append((a, b, h0, reverse))
    check_against_reference(cases, "chunked", chunk_size=chunk_size)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "a_shape, reverse", [((), False), ((BATCH, 3, 1), True), ((BATCH, 1, 1, 4), False), ((1, 7, 1, 4), True)]
)
def test_broadcast_shapes_of_a(x64, method, a_shape, reverse):
    """Shapes of a that broadcast over b (B, L=7, 3, 4): time-invariant ones (the third has rank 4 with L = 1)
    and a time-varying one shared across the batch. Each gradient comes back in a's own shape, summed over
    the broadcast axes; h0 is broadcast over the batch."""
    rng = np.random.default_rng(len(a_shape))
    a = random_decay(rng, a_shape, True)
    b = random_array(rng, (BATCH, 7, 3, 4), True)
    h0 = random_array(rng, (3, 4), True)
    check_against_reference([(a, b, h0, reverse)], method, chunk_size=3)


@pytest.mark.parametrize("method", METHODS)
def test_real_a_with_complex_b(x64, method):
    """A real a is promoted; its gradient is real (the real part of the complex one), as autodiff gives."""
    rng = np.random.default_rng(3)
    b = random_array(rng, (BATCH, LENGTH, STATE), True)
    h0 = random_array(rng, (BATCH, STATE), False)
    a_varying = random_decay(rng, (BATCH, LENGTH, STATE), False)
    a_invariant = random_decay(rng, (STATE,), False)
    check_against_reference([(a_varying, b, h0, False), (a_invariant, b, h0, True)], method)


def test_custom_vjp_matches_autodiff_of_lax_scan(x64):
    """The hand-written backward pass against jax's own derivative of a lax.scan, under jit, complex a."""
    rng = np.random.default_rng(4)
    a = jnp.asarray(random_decay(rng, (STATE,), True))
    b = jnp.asarray(random_array(rng, (BATCH, 64, STATE), True))
    h0 = jnp.asarray(random_array(rng, (BATCH, STATE), True))
    weights = jnp.asarray(random_array(rng, (BATCH, 64, STATE), True))

    def scan_recurrence(a, b, h0):
        def step(h, b_t):
            h = a * h + b_t
            return h, h

        h_last, h = jax.lax.scan(step, h0, jnp.moveaxis(b, 1, 0))
        return jnp.moveaxis(h, 0, 1), h_last

    def loss(recurrence):
        def real_loss(a, b, h0):
            h, h_last = recurrence(a, b, h0)
            return jnp.sum(jnp.abs(weights * h) ** 2) + jnp.sum(jnp.real(h_last))

        return jax.jit(jax.grad(real_loss, argnums=(0, 1, 2)))

    expected = loss(scan_recurrence)(a, b, h0)
    for method in METHODS:
        recurrence = functools.partial(linear_recurrence, method=method, chunk_size=16)
        actual = loss(recurrence)(a, b, h0)
        for grad, grad_ref in zip(actual, expected, strict=True):
            assert_close(grad, grad_ref, tol=1e-9)


@pytest.mark.parametrize("time_varying", [False, True])
def test_backward_keeps_only_inputs_and_outputs(time_varying):
    """Residuals of the VJP are a, h and h0: nothing else of size L. (Plain autodiff of the associative
    scan would keep about 3 (B, L / 2^k, N) arrays per tree level k.) Checked on shapes only, no compute."""
    length = 64
    a = jax.ShapeDtypeStruct((BATCH, length, STATE) if time_varying else (STATE,), jnp.complex64)
    b = jax.ShapeDtypeStruct((BATCH, length, STATE), jnp.complex64)
    for method in METHODS:

        def residuals(a, b, method=method):
            return jax.vjp(lambda a, b: linear_recurrence(a, b, method=method, chunk_size=8), a, b)[1]

        stored = sorted(leaf.shape for leaf in jax.tree.leaves(jax.eval_shape(residuals, a, b)))
        a_stored = a.shape if time_varying else (1, STATE)
        assert stored == sorted([a_stored, b.shape, (BATCH, STATE)]), (method, stored)


def test_low_precision_inputs_are_computed_in_float32():
    rng = np.random.default_rng(6)
    a = jnp.asarray(random_decay(rng, (STATE,), False), jnp.bfloat16)
    b = jnp.asarray(random_array(rng, (BATCH, 40, STATE), False), jnp.bfloat16)
    expected, _ = reference_recurrence(a.astype(jnp.float32), b.astype(jnp.float32), 0.0, False)

    @jax.jit
    def all_methods(a, b):
        return [linear_recurrence(a, b, method=method) for method in METHODS]

    for h, h_last in all_methods(a, b):
        assert h.dtype == h_last.dtype == jnp.bfloat16
        # Only the final rounding to bfloat16 (8 bits of mantissa) separates the two.
        np.testing.assert_allclose(np.asarray(h, np.float32), expected, rtol=1e-2, atol=1e-2)


def test_auto_and_enum(x64):
    rng = np.random.default_rng(7)
    a = random_decay(rng, (STATE,), True)
    b = random_array(rng, (BATCH, LENGTH, STATE), True)
    expected, _ = reference_recurrence(a, b, 0.0, False)

    @jax.jit
    def both(a, b):
        auto, _ = linear_recurrence(a, b, method="auto")
        chunked, _ = linear_recurrence(a, b, method=ScanMethod.CHUNKED)
        return auto, chunked

    for h in both(a, b):
        assert_close(h, expected)


def test_vmap_over_an_extra_axis(x64):
    rng = np.random.default_rng(8)
    a = random_decay(rng, (5, STATE), True)
    b = random_array(rng, (5, BATCH, LENGTH, STATE), True)
    expected = np.stack([reference_recurrence(a[i], b[i], 0.0, False)[0] for i in range(5)])

    @jax.jit
    def all_methods(a, b):
        return [
            jax.vmap(lambda a, b, m=method: linear_recurrence(a, b, method=m, chunk_size=CHUNK)[0])(a, b)
            for method in METHODS
        ]

    for h in all_methods(a, b):
        assert_close(h, expected)


def test_unknown_method_names_the_valid_ones():
    b = jnp.ones((1, 3, 2))
    with pytest.raises(ValueError, match="'sequential'.*'associative'.*'chunked'"):
        linear_recurrence(jnp.ones(2), b, method="parallel")


@pytest.mark.parametrize(
    "a_shape, b_shape, h0_shape, chunk_size",
    [
        ((2,), (3,), None, None),  # b without an L axis
        ((3,), (1, 4, 2), None, None),  # a does not broadcast to (B, N)
        ((1, 5, 2), (1, 4, 2), None, None),  # time-varying a with the wrong L
        ((1, 1, 1, 2), (1, 4, 2), None, None),  # a with more axes than b
        ((2,), (1, 4, 2), (3,), None),  # h0 does not broadcast to (B, N)
        ((2,), (1, 4, 2), None, 0),  # chunk size not positive
    ],
)
def test_bad_shapes_raise(a_shape, b_shape, h0_shape, chunk_size):
    h0 = None if h0_shape is None else jnp.ones(h0_shape)
    with pytest.raises(ValueError, match="linear_recurrence"):
        linear_recurrence(jnp.ones(a_shape), jnp.ones(b_shape), h0, method="chunked", chunk_size=chunk_size)


# Long sequences in float32. |a| = 0.9999 remembers ~10^4 steps, so each state sums ~10^4 terms and float32
# rounding accumulates; the closed form lambda^t cumsum(lambda^-k b_k) would overflow here (0.9999^-65536 =
# 7e2 only for this |a|, but 1e29 for |a| = 0.999). The reference runs in float64 on the same float32-rounded
# inputs, so the error below is the method's own arithmetic. Worst |h - h_ref| over all t and N, relative to
# the rms of h_ref, measured over seeds 1, 2, 9 on this CPU: sequential 6e-6..1.3e-5, chunked 1.8e-5..2.9e-5,
# associative 1.6e-4..3.2e-4 (its tree multiplies long products of a). Against float64 on the unrounded
# inputs all three are 2e-4..5e-4: rounding a to float32 alone costs that, amplified ~1 / (1 - |a|).
LONG_TOLERANCE = {"sequential": 1e-4, "chunked": 1e-4, "associative": 1e-3}


@pytest.mark.parametrize("method", METHODS)
def test_long_sequence_in_float32_stays_close(method):
    length, state = 65_536, 4
    rng = np.random.default_rng(9)
    a = (0.9999 * np.exp(1j * rng.uniform(0, 2 * np.pi, size=state))).astype(np.complex64)
    b = random_array(rng, (1, length, state), True).astype(np.complex64)

    expected = np.empty((length, state), np.complex128)
    h = np.zeros(state, np.complex128)
    for t, b_t in enumerate(b[0].astype(np.complex128)):
        h = a.astype(np.complex128) * h + b_t
        expected[t] = h

    # Compiled: run eagerly, the associative scan's 16 levels would compile one operation at a time (slow).
    recurrence = jax.jit(functools.partial(linear_recurrence, method=method))
    h32, h_last = recurrence(jnp.asarray(a), jnp.asarray(b))
    h32 = np.asarray(h32[0])
    assert np.isfinite(h32).all() and np.isfinite(np.asarray(h_last)).all()
    error = np.abs(h32 - expected).max() / np.sqrt(np.mean(np.abs(expected) ** 2))
    assert error < LONG_TOLERANCE[method], error
