"""lra-mixers: linear RNNs, state-space models and efficient attention on Long Range Arena."""

from setuptools import find_packages, setup

# Pinned: these versions install and import together on Python 3.11 (checked on CPU).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "absl-py==2.5.1",
    "ml_collections==1.1.0",
    "numpy==2.4.6",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
    # lra/pathfinder: PNG files and the Lanczos shrinking of the generator (pinned: generated pixels depend on its
    # rounding; tests/lra/test_lra_pathfinder.py::test_generated_pixels_are_pinned).
    "Pillow==13.0.0",
    "tqdm==4.70.1",
]

TEST_REQUIRES = [
    "pytest==9.0.3",
    "pytest-xdist==3.8.0",
    "execnet==2.1.2",
    "hypothesis==6.155.2",
    "ruff==0.17.6",
    "nbformat==5.11.1",
    "nbclient==0.11.0",
    "ipykernel==7.4.0",
    "nbconvert==7.17.2",
]

# Remote workdirs (gs://...): orbax and etils.epath reach Google Cloud Storage through fsspec's gcsfs.
GCS_REQUIRES = [
    "gcsfs==2026.10.1",
]

setup(
    name="lra-mixers",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11,<3.12",
    packages=find_packages(
        include=["ops", "ops.*", "models", "models.*", "lra", "lra.*", "experiments", "experiments.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "gcs": GCS_REQUIRES},
)
