"""Flax modules: mixers (built by name, each with its contract), the sequence encoder and the heads.

Adding a mixer is one module plus one registration: write models/<name>.py with a `SequenceMixer` subclass
decorated with `@register_mixer("<name>", ...)` (models/registry.py), and add the module to MIXER_MODULES below.
The registry imports these modules the first time it is asked for a mixer.
"""

from __future__ import annotations

from typing import Any

# Importing one of these modules registers its mixers.
MIXER_MODULES = ("models.attention", "models.deltanet", "models.gla", "models.linear_attention", "models.lru",
                 "models.mamba", "models.nystrom", "models.rglru", "models.rtf", "models.ssm", "models.vq")
# The dense-attention reference that benchmarks report every mixer against (speed and memory ratios).
BASELINE_MIXER = "softmax"

_REGISTRY_NAMES = (
    "MixerContract",
    "Recipe",
    "ResolvedMixer",
    "SequenceMixer",
    "UnknownMixerError",
    "make_mixer",
    "mixer_class",
    "mixer_contract",
    "mixer_names",
    "mixer_options",
    "register_mixer",
    "resolve_mixer",
)


def __getattr__(name: str) -> Any:
    # Lazy: `import models.options` (no JAX) must not import the mixers; `models.resolve_mixer` etc. load them.
    if name in _REGISTRY_NAMES:
        from models import registry

        registry.load_mixers()
        return getattr(registry, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = list(_REGISTRY_NAMES)
