"""The check of a mixer's parallel `prefill` (docs/methods.md section 18), shared by the mixers' test files.

Each mixer's own decoding test (step == parallel, float64) calls `check_prefill` with what it already built, so the
check costs one more compilation (the prefill at one prompt length) and a few calls of the compiled step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def max_leaf_difference(first: Any, second: Any) -> float:
    """The largest |a - b| over the leaves of two states, which must have the same structure, shapes and dtypes."""
    assert jax.tree.structure(first) == jax.tree.structure(second)
    worst = 0.0
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
        if a.size:
            worst = max(worst, float(np.max(np.abs(np.asarray(a, np.complex128) - np.asarray(b, np.complex128)))))
    return worst


def check_prefill(mixer: Any, variables: Any, x: Any, expected: Any, step: Callable[[Any, Any], tuple[Any, Any]],
                  prompt: int, *, atol: float = 1e-9) -> None:
    """`mixer.prefill` on the first `prompt` positions of x (B, L, D): its outputs are the parallel call's
    (`expected` (B, L, D)), its state is, leaf by leaf, that of a plain loop of `step(state, x_t)` from
    init_state, and stepping on from it gives the parallel call's outputs at every later position."""
    state, y = jax.jit(lambda v, x: mixer.apply(v, x, method="prefill"))(variables, x[:, :prompt])
    np.testing.assert_allclose(y, expected[:, :prompt], rtol=atol, atol=atol)
    reference = mixer.apply(variables, x.shape[0], method="init_state")
    for t in range(prompt):
        reference, _ = step(reference, x[:, t])
    difference = max_leaf_difference(state, reference)
    assert difference < atol, f"prefill state differs from stepping by {difference}"
    for t in range(prompt, x.shape[1]):
        state, y_t = step(state, x[:, t])
        np.testing.assert_allclose(y_t, expected[:, t], rtol=atol, atol=atol, err_msg=f"step {t} after prefill")
