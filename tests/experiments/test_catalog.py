"""experiments/catalog.py: the `--list` catalog names every task, mixer and config variant, readably."""

from __future__ import annotations

import importlib
import math
import re

import jax.numpy as jnp
import pytest

import lra
from experiments import catalog, validation
from models import registry

CONFIG_FLAG = re.compile(r"--config=([a-z_0-9]+)(?::([A-Za-z0-9_-]+))?(?=\s|$)")


@pytest.fixture(scope="module")
def text():
    return catalog.listing()


def test_the_listing_is_short_plain_text(text):
    lines = text.splitlines()
    assert 40 < len(lines) < 250  # grows by about 3 lines per mixer and 2 per task
    assert max(map(len, lines)) <= catalog.WIDTH
    assert text.isascii() and not text.endswith("\n")
    for noise in ("MISSING", "object at 0x", "<class", "_TYPE", "000000000"):
        assert noise not in text, noise


def test_every_task_appears_with_length_classes_input_and_data(text):
    for name in lra.task_names():
        spec = lra.get_task(name)
        row = re.search(rf"^  {name} +(\d+) +(\d+)  (.+)$", text, re.MULTILINE)
        assert row, name
        assert (int(row[1]), int(row[2])) == (spec.seq_len, spec.num_classes)
        assert ("pixels" if not spec.padded and not spec.causal else "tokens") in row[3]
        assert ("dual input" in row[3]) == spec.dual_input
        assert ("generated" in row[3]) == ("generated" in spec.sources)
        assert ("built-in" in row[3]) == ("builtin" in spec.sources)
        assert ("files" in row[3]) == ("files" in spec.sources)
        # the download command of a task with official files (the corpora name theirs in the files line)
        assert (f"python -m lra.download {name} --data_dir=DIR" in text) == (spec.download == name)


def test_every_mixer_appears_with_its_options_and_traits(text):
    for name in registry.mixer_names():
        block = re.search(rf"^  {name}: (.+)\n((?:    .+\n?)+)", text, re.MULTILINE)
        assert block, name
        header, options = block[1], " ".join(block[2].split())
        settable = registry.mixer_contract(name).defaults()  # the options a config can set
        for option in registry.mixer_options(name):
            if option in settable:
                assert re.search(rf"(^| ){option}=\S", options), (name, option)
            else:  # d_model, bidirectional, dtype (config.model's) and param_dtype (not an option)
                assert not re.search(rf"(^| ){option}=", options), (name, option)
        traits = catalog.mixer_traits(name)
        cls = registry.mixer_class(name)
        assert traits["causal"] == cls.has_causal_form
        assert ("bidirectional only" in header) == (not traits["causal"])
        assert ("recurrent step" in header) == (traits["step"] and not traits["kv_cache"])
    assert "nystrom: bidirectional only (no causal form); no decoding step" in text
    assert re.search(r"^  softmax: causal or bidirectional; decoding step over a key-value cache", text, re.MULTILINE)
    assert re.search(r"^  lru: causal or bidirectional; recurrent step", text, re.MULTILINE)
    # the config's defaults, readable
    assert "dt_min=0.001" in text and "max_phase=6.28319" in text and "scan_method='auto'" in text
    assert "position='rope'" in text and "blocks=4" in text


def test_format_value_is_readable():
    assert catalog.format_value(1e-3) == "0.001"
    assert catalog.format_value(0.1 * 3) == "0.3"  # not 0.30000000000000004
    assert catalog.format_value(2 * math.pi) == "6.28319"
    assert catalog.format_value(1e-30) == "1e-30"
    assert catalog.format_value(10000.0) == "10000.0"
    assert catalog.format_value(registry.REQUIRED) == "<required>"
    assert catalog.format_value(jnp.float32) == "float32"
    assert catalog.format_value(jnp.dtype("bfloat16")) == "bfloat16"
    assert catalog.format_value("zoh") == "'zoh'" and catalog.format_value(None) == "None"
    assert catalog.format_value(True) == "True" and catalog.format_value(64) == "64"
    assert catalog.format_value(object()) == "<object>"


def test_every_config_variant_appears_in_the_form_users_type(text):
    listed = {(task, variant) for task, variant in CONFIG_FLAG.findall(text)}
    expected = {(task, "") for task in catalog.config_files()}
    expected |= {(task, variant) for task in catalog.config_files() for variant in catalog.variants(task)}
    assert listed == expected
    assert set(catalog.config_files()) == {m.rsplit(".", 1)[1] for m in validation.task_config_modules()}
    assert catalog.variants() == (["cpu"] + [f"{m}-cpu" for m in registry.mixer_names()] + registry.mixer_names())
    with_recipe = [m for m in registry.mixer_names() if "listops" in registry.mixer_contract(m).recipes]
    assert {"lru", "s5", "softmax", "vq"} <= set(with_recipe)  # the published LRA settings
    assert catalog.variants("listops") == (["cpu"] + [f"{m}-cpu" for m in registry.mixer_names()] + with_recipe)
    assert "nystrom-cpu" not in catalog.variants("lm") and "lru-cpu" in catalog.variants("lm")  # a causal task
    assert "--config=listops:s5-cpu" in text and re.search(r"--config=listops(\s|$)", text)


def test_every_listed_variant_loads_and_validates(text):
    flags = sorted(set(CONFIG_FLAG.findall(text)))
    assert len(flags) == sum(1 + len(catalog.variants(task)) for task in catalog.config_files())
    for task, variant in flags:
        get_config = importlib.import_module(f"experiments.configs.{task}").get_config
        config = get_config(variant) if variant else get_config()
        assert config.task == task
        validation.validate_config(config)


def test_tasks_without_a_config_file_are_reachable(text):
    extra = [name for name in lra.task_names() if name not in catalog.config_files()]
    assert extra  # mnist, pmnist, fashion_mnist
    assert f"--config=image:cpu --config.task={extra[0]}" in text.replace("\n  ", " ")
    for name in extra:
        assert name in text.split("CONFIGS", 1)[1]
        config = importlib.import_module("experiments.configs.image").get_config("cpu")
        config.task = name
        validation.validate_config(config)


def test_lm_accelerator_variant_is_transformer_vq_on_enwik8():
    """--config=lm:vq takes the Recipe in models/vq.py through apply_anchor, data section included."""
    from experiments.configs import lm

    assert "vq" in catalog.variants("lm") and "lru" not in catalog.variants("lm")  # only vq has an LM recipe
    c = lm.get_config("vq")
    assert (c.data.source, c.data.seq_len, c.data.lm.format) == ("files", 2048, "enwik8")
    assert c.data.lm.split_seed == 0  # the nested update keeps the keys the recipe does not set
    assert (c.model.mixer, c.model.n_layers, c.model.d_model, c.model.norm, c.model.bidirectional) == (
        "vq", 48, 768, "layer", False)
    assert (c.model.vq.key_dim, c.model.vq.codebook_size, c.model.vq.block_len) == (128, 512, 512)
    assert (c.optim.lr, c.optim.weight_decay, c.optim.clip_norm, c.optim.warmup_steps) == (4e-4, 2e-4, 0.1, 10_000)
    assert (c.train.batch_size, c.train.num_steps) == (128, 125_000)
