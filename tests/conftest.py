"""Shared pytest fixtures.

`x64`: runs one test with float64 enabled and restores the previous setting afterwards, so
float64 reference tests never leak 64-bit mode into the others.
`fast_compilation`: for modules of tiny end-to-end runs, whose XLA optimisation passes cost more than running
them; turns them off for the module (`pytestmark = pytest.mark.usefixtures("fast_compilation")`) and restores them.
"""

import jax
import pytest


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def fast_compilation():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavy checks that CI does not run (pytest -m slow)")
