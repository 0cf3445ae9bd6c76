"""Shared pytest fixtures.

`x64`: runs one test with float64 enabled and restores the previous setting afterwards, so
float64 reference tests never leak 64-bit mode into the others.
`fast_compilation`: for modules of tiny end-to-end runs, whose XLA optimisation passes cost more than running
them; turns them off for the module (`pytestmark = pytest.mark.usefixtures("fast_compilation")`) and restores them.
`full_optimization`: the opposite, for modules that read XLA's compiled figures (memory) or time programs.

The session runs with XLA's optimisation passes off (jax_disable_most_optimizations, also in the environment of
the subprocesses the end-to-end tests start): the tests' programs are tiny, so compiling them costs more than
running them, and the whole run is about 40% faster. Modules that need the optimised programs use
`full_optimization`.
"""

import os

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


@pytest.fixture(scope="module")
def full_optimization():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def pytest_configure(config):
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # inherited by the tests' subprocesses
    jax.config.update("jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1")
    config.addinivalue_line("markers", "slow: heavy checks that CI does not run (pytest -m slow)")
