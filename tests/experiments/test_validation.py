"""experiments/validation.py: every shipped config validates; each kind of bad value fails naming its key."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time

import ml_collections
import pytest

import lra
import models
from experiments import catalog, trainer, validation
from experiments.configs import image as image_config
from experiments.configs import listops as listops_config
from experiments.configs import pathfinder as pathfinder_config
from experiments.configs import text as text_config
from experiments.validation import ConfigError, UnknownNameError, validate_config
from models import registry
from models.options import MAX_STATE

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VARIANTS = ["cpu"] + [f"{m}-cpu" for m in models.mixer_names()] + models.mixer_names()


def with_values(config: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted keys set (`train__batch_size=3`), bypassing ConfigDict's type safety so
    that wrong types can be tried; value `DELETE` removes the key."""
    tree = config.to_dict()
    for dotted, value in values.items():
        *parents, leaf = dotted.split("__")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return ml_collections.ConfigDict(tree)


DELETE = object()


def problem(config: ml_collections.ConfigDict, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate_config(config, **kwargs)
    return info.value


# ------------------------------------------------------------------------------------------------ good configs


@pytest.mark.parametrize("module", validation.task_config_modules())
def test_every_variant_of_every_task_file_validates(module):
    get_config = importlib.import_module(module).get_config
    assert get_config().task  # the default variant
    for variant in catalog.variants(module.rsplit(".", 1)[1]):
        validate_config(get_config(variant))


def test_listops_cpu_variants_build_and_trace_their_mixer():
    for variant in VARIANTS:
        if variant.endswith("cpu"):
            validate_config(listops_config.get_config(variant), trace=True)


def test_the_test_suites_tiny_configs_validate():
    from tests.e2e.test_train import tiny_config

    validate_config(tiny_config("/tmp/unused-cache"), trace=True)
    mnist = image_config.get_config()
    mnist.task = "mnist"  # image's config at the task's own 784 pixels (seq_len 0), as tests/e2e/test_all_tasks.py
    validate_config(mnist, trace=True)
    for bidirectional in (None, True, False):
        config = listops_config.get_config()
        config.model.bidirectional = bidirectional
        validate_config(config)
    for mixer in ("lru", "softmax"):  # mixed precision: the mixers are built and traced with dtype bfloat16
        config = listops_config.get_config(f"{mixer}-cpu")
        config.model.dtype = "bfloat16"
        validate_config(config, trace=True)
    validate_config(with_values(listops_config.get_config(), model__lru=DELETE), trace=True)  # defaults


def test_constants_agree_with_the_trainer_and_the_data_loader():
    assert validation.INPUT_ENCODINGS == trainer.INPUT_ENCODINGS
    assert validation.NONFINITE_POLICIES == trainer.NONFINITE_POLICIES
    assert validation.DATA_SOURCES == ("generated", "files", "builtin")


# ------------------------------------------------------------------------------------------------- bad values

BAD_GENERAL = [
    # (dotted key, value, expected message after "config.<key>: ")
    ("train.batch_size", -3, "expected a positive int, got -3"),
    ("train.eval_batch_size", 0, "expected a positive int, got 0"),
    ("train.num_steps", -1, "expected an int >= 0, got -1"),
    ("train.checkpoint_every", 0, "expected a positive int"),
    ("train.keep_checkpoints", 0, "expected a positive int"),
    ("train.nonfinite", "ignore", "expected one of 'stop', 'skip', got 'ignore'"),
    ("optim.lr", 0.0, "expected a positive number, got 0.0"),
    ("optim.ssm_lr", -1e-3, "expected a positive number"),
    ("optim.lr", float("inf"), "expected a positive number, got inf"),
    ("optim.weight_decay", -0.1, "expected a number >= 0"),
    ("optim.warmup_steps", -5, "expected an int >= 0"),
    ("optim.b1", 1.0, r"expected a number in \[0, 1\), got 1.0"),
    ("optim.b2", -0.5, r"expected a number in \[0, 1\)"),
    ("optim.end_lr_fraction", 1.5, r"expected a number in \[0, 1\]"),
    ("optim.clip_norm", -1.0, "expected a number >= 0"),
    ("model.d_model", 0, "expected a positive int, got 0"),
    ("model.n_layers", -2, "expected a positive int"),
    ("model.dropout", 1.0, r"expected a number in \[0, 1\)"),
    ("model.norm", "group", "expected one of 'batch', 'layer', got 'group'"),
    ("model.residual", "sandwich", "expected one of 'prenorm', 'postnorm', 'deepnorm'"),
    ("model.pooling", "cls", "expected one of 'mean', 'last'"),
    ("model.input_encoding", "onehot", "expected one of 'embed', 'linear'"),
    ("model.input_encoding", "linear", "needs a pixel task; 'listops' has token ids"),
    ("model.dtype", "float16", "expected one of 'float32', 'bfloat16', got 'float16'"),
    ("seed", -1, "expected an int >= 0"),
    ("data.source", "web", "expected one of 'generated', 'files', 'builtin', got 'web'"),
    ("data.seq_len", -5, "expected an int >= 0"),
    ("data.seq_len", 100, r"shorter than the longest generated ListOps example \(data.listops.max_length - 1 = 199\)"),
    ("data.listops.num_train", 0, "expected a positive int"),
    ("data.listops.max_args", 1, "expected an int >= 2"),
    ("data.listops.min_length", 300, "no tree can have 300 < length < 200"),
    ("train.batch_size", 9000, r"larger than the generated train split \(data.listops.num_train = 8000\)"),
    # wrong types (ConfigDict's own type safety is bypassed: configs built in Python can hold anything)
    ("train.batch_size", "32", "expected an int, got '32' \\(str\\)"),
    ("train.batch_size", 32.0, "expected an int, got 32.0 \\(float\\)"),
    ("model.dropout", True, "expected a number, got True \\(bool\\)"),
    ("model.bidirectional", "yes", "expected a bool or None, got 'yes'"),
    ("model.lru.d_state", 2.5, "expected an int, got 2.5"),
    ("data", 3, "expected a section"),
]


@pytest.mark.parametrize("key,value,message", BAD_GENERAL, ids=[f"{k}={v!r}" for k, v, _ in BAD_GENERAL])
def test_a_bad_value_names_its_key(key, value, message):
    error = problem(with_values(listops_config.get_config(), **{key.replace(".", "__"): value}))
    assert error.keys == [key], str(error)
    assert str(error).startswith(f"config.{key}: ")
    assert isinstance(error, ValueError)
    assert re.search(message, str(error)), str(error)


def test_the_brief_example_message_verbatim():
    config = listops_config.get_config()
    config.train.batch_size = -3
    assert str(problem(config)) == "config.train.batch_size: expected a positive int, got -3"


BAD_MIXER = [
    # (mixer, options of model.<mixer>, other model keys, key named, message)
    ("lru", dict(d_state=0), {}, "model.lru.d_state", "expected a positive int, got 0"),
    ("lru", dict(r_min=0.9, r_max=0.5), {}, "model.lru.r_min", "expected r_min < r_max"),
    ("lru", dict(r_max=1.0), {}, "model.lru.r_max", r"expected a number in \[0, 1\)"),
    ("lru", dict(scan_method="parallel"), {}, "model.lru.scan_method", "expected one of 'auto', 'sequential'"),
    ("s4", dict(d_state=3), {}, "model.s4.d_state", "even int"),
    ("s4", dict(l_max=100), {}, "model.s4.l_max", "100 is shorter than the sequence length 200"),
    ("s4d", dict(dt_min=0.5, dt_max=0.1), {}, "model.s4d.dt_min", "expected dt_min <= dt_max"),
    ("s4d", dict(lambda_init="random"), {}, "model.s4d.lambda_init", "expected one of 'lin', 'inv', 'legs'"),
    ("s5", dict(state_size=30, blocks=4), {}, "model.s5.blocks", "4 does not divide state_size = 30"),
    ("s5", dict(state_size=12, blocks=4), {}, "model.s5.blocks", "conj_sym needs an even block size"),
    ("rtf", dict(state_size=300), {}, "model.rtf.trunc_len", "must exceed state_size = 300; the sequence length"),
    ("softmax", dict(num_heads=3), {}, "model.softmax.num_heads", "3 does not divide config.model.d_model = 64"),
    ("softmax", dict(num_heads=4, position="rope"), {"d_model": 12}, "model.softmax.position",
     "RoPE needs an even head width"),
    ("softmax", dict(position="sinusoidal"), {}, "model.softmax.position", "expected one of 'none', 'rope'"),
    ("blockwise", dict(block_size=0), {}, "model.blockwise.block_size", "expected a positive int"),
    ("performer", dict(kernel="cosine"), {}, "model.performer.kernel", "expected one of 'softmax', 'relu'"),
    ("nystrom", {}, {"bidirectional": False}, "model.bidirectional", "'nystrom' has no causal form"),
    ("vq", dict(ema_decay=1.0), {}, "model.vq.ema_decay", r"expected a number in \[0, 1\)"),
    ("lru", dict(d_model=32), {}, "model.lru.d_model", "set by config.model.d_model"),
]


@pytest.mark.parametrize("mixer,options,model,key,message", BAD_MIXER,
                         ids=[f"{m}-{k.split('.')[-1]}" for m, _, _, k, _ in BAD_MIXER])
def test_a_bad_mixer_option_names_its_key(mixer, options, model, key, message):
    config = listops_config.get_config(f"{mixer}-cpu")
    values = {f"model__{mixer}__{k}": v for k, v in options.items()}
    values.update({f"model__{k}": v for k, v in model.items()})
    error = problem(with_values(config, **values))
    assert error.keys == [key], str(error)
    assert re.search(message, str(error)), str(error)


def test_unknown_names_are_also_key_errors():
    cases = [
        (dict(task="nonesuch"), "task", "unknown task 'nonesuch'; registered tasks: .*listops"),
        (dict(model__mixer="nonesuch"), "model.mixer", "unknown mixer 'nonesuch'; registered mixers are: .*lru"),
        (dict(model__lru__nonesuch=1), "model.lru.nonesuch", "mixer 'lru' has no option 'nonesuch'; its options"),
        (dict(train__batchsize=8), "train.batchsize",
         r'unknown key \(did you mean "batch_size"\?\); config.train has batch_size'),
        (dict(trian=dict(steps=1)), "trian", r'unknown key \(did you mean "train"\?\); config has data, model'),
        (dict(model__hyena=dict(d_state=4)), "model.hyena", "not a registered mixer"),
    ]
    for values, key, message in cases:
        config = with_values(listops_config.get_config(), **values)
        with pytest.raises(KeyError, match=message) as info:
            validate_config(config)
        assert isinstance(info.value, UnknownNameError) and info.value.keys == [key]


def test_task_specific_lengths_sources_and_sections():
    image = image_config.get_config()
    image.data.seq_len = 784
    assert str(problem(image)).startswith("config.data.seq_len: task 'image' has a fixed length of 1024")
    pathfinder = pathfinder_config.get_config()
    pathfinder.data.seq_len = 2048
    assert problem(pathfinder).keys == ["data.seq_len"]
    pathfinder = pathfinder_config.get_config()
    pathfinder.data.pathfinder.difficulty = "medium"
    assert problem(pathfinder).keys == ["data.pathfinder.difficulty"]
    pathfinder = pathfinder_config.get_config()
    pathfinder.data.pathfinder.num_examples = 20  # 16 training images for a batch of 32
    assert "larger than the generated train split (16" in str(problem(pathfinder))
    text = text_config.get_config()
    text.data.seq_len = 123  # any length: bytes are padded or cut
    validate_config(text)
    text.data.source = "generated"
    assert "task 'text' accepts 'files'" in str(problem(text))
    no_generator = with_values(listops_config.get_config(), data__listops=DELETE)
    assert problem(no_generator).keys == ["data.listops"]
    missing = with_values(listops_config.get_config(), train__nonfinite=DELETE)
    assert str(problem(missing)).startswith("config.train.nonfinite: missing")


def test_all_problems_of_a_stage_are_reported_together():
    config = listops_config.get_config()
    config.train.batch_size, config.optim.lr, config.model.dropout = -1, 0.0, 2.0
    error = problem(config)
    assert sorted(error.keys) == ["model.dropout", "optim.lr", "train.batch_size"]
    assert str(error).startswith("3 problems in the config:\n  config.")
    assert not isinstance(error, KeyError)


def test_trace_reports_what_only_the_mixers_setup_checks(monkeypatch):
    class PickyMixer(registry.SequenceMixer):
        strict: bool = False

        def setup(self) -> None:
            if self.strict:
                raise ValueError("PickyMixer: strict mode is not implemented")

        def __call__(self, x, *, mask=None, deterministic=True):
            return x

    # monkeypatch restores the registry after the test
    monkeypatch.setitem(registry._CONTRACTS, "picky", registry.make_contract("picky", PickyMixer))
    config = listops_config.get_config()
    config.model.mixer = "picky"
    config.model.picky = ml_collections.ConfigDict(dict(strict=False))
    validate_config(config, trace=True)
    config.model.picky.strict = True
    validate_config(config)  # without tracing, no rule knows this option
    error = problem(config, trace=True)
    assert error.keys == ["model.picky"]
    assert "ValueError: PickyMixer: strict mode is not implemented" in str(error)


def test_the_trainer_validates_before_touching_the_workdir(tmp_path):
    config = listops_config.get_config()
    config.optim.b2 = 1.0
    with pytest.raises(ConfigError, match=r"config.optim.b2: expected a number in \[0, 1\)"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_bad_flag_fails_fast_on_the_command_line(tmp_path):
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={tmp_path / 'run'}",
                           "--config.train.batch_size=-1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.time() - start
    assert proc.returncode != 0
    assert "config.train.batch_size: expected a positive int, got -1" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # nothing was built
    assert elapsed < 20, elapsed  # about a second on an idle machine: no JAX import, no compilation


# ------------------------------------------------------------------------------------------- did you mean ...?


def test_did_you_mean_names_the_closest_candidates():
    did_you_mean = validation.did_you_mean
    assert did_you_mean("d_modl", ["d_model", "n_layers"]) == ' (did you mean "d_model"?)'
    assert did_you_mean("batchsize", ["batch_size", "eval_batch_size"]) == ' (did you mean "batch_size"?)'
    assert did_you_mean("LRU", ["lru", "s4"]) == ' (did you mean "lru"?)'  # case-insensitive
    assert did_you_mean("s4x", iter(["s4", "s4d", "s5"])) == ' (did you mean "s4"?)'  # any iterable
    assert did_you_mean("ab", ["abc", "abd"]) == ' (did you mean "abc" or "abd"?)'
    assert did_you_mean("nonesuch", ["lru", "s4"]) == ""
    assert did_you_mean("lru", ["lru", "s4"]) == ""  # not a typo
    assert did_you_mean("x", []) == ""
    # dotted keys: as a whole, else by the last component (same parent first)
    keys = ["model.d_model", "model.n_layers", "train.batch_size", "optim.lr", "optim.ssm_lr"]
    assert did_you_mean("model.d_modl", keys) == ' (did you mean "model.d_model"?)'
    assert did_you_mean("model.d_modl", ["d_model", "n_layers"]) == ' (did you mean "d_model"?)'
    assert did_you_mean("train.lr", keys) == ' (did you mean "optim.lr"?)'
    assert did_you_mean("modle.d_model", keys) == ' (did you mean "model.d_model"?)'
    assert did_you_mean("modle.d_modl", keys + ["model", "train"]) == ' (did you mean "model.d_model"?)'
    assert did_you_mean("trian", keys + ["model", "train"]) == ' (did you mean "train"?)'


def test_the_registry_suggests_as_validation_does():
    for name, candidates in [("d_stat", ["d_state", "r_min"]), ("LRU", registry.mixer_names()),
                             ("softmx", registry.mixer_names()), ("ab", ["abc", "abd"]), ("zzz", ["lru"]),
                             ("lru", ["lru"])]:
        assert registry.did_you_mean(name, candidates) == validation.did_you_mean(name, candidates)


TYPOS = [
    # (dotted key, typo'd value or DELETE-less new key, key named, suggestion); each is ONE line
    ("train__batchsize", 8, "train.batchsize", "batch_size"),
    ("model__d_modl", 64, "model.d_modl", "d_model"),
    ("train__lr", 0.1, "train.lr", "optim.lr"),  # a key in the wrong section
    ("model__lru__d_stat", 8, "model.lru.d_stat", "d_state"),
    ("model__s5x", dict(state_size=4), "model.s5x", "s5"),  # a mixer section
    ("model__mixer", "lruu", "model.mixer", "lru"),
    ("model__mixer", "Softmax", "model.mixer", "softmax"),
    ("task", "listop", "task", "listops"),
    ("model__norm", "btach", "model.norm", "batch"),
    ("model__residual", "pre_norm", "model.residual", "prenorm"),
    ("model__pooling", "maen", "model.pooling", "mean"),
    ("model__input_encoding", "embedding", "model.input_encoding", "embed"),
    ("model__dtype", "bfloat", "model.dtype", "bfloat16"),
    ("train__nonfinite", "skp", "train.nonfinite", "skip"),
    ("data__source", "generate", "data.source", "generated"),
    ("model__lru__scan_method", "sequental", "model.lru.scan_method", "sequential"),
]
MIXER_TYPOS = [
    # (variant, option, typo'd value, suggestion)
    ("softmax-cpu", "position", "rop", "rope"),
    ("performer-cpu", "kernel", "relu_", "relu"),
    ("s5-cpu", "discretization", "zho", "zoh"),
    ("s4d-cpu", "lambda_init", "Lin", "lin"),
    ("linear-cpu", "feature_map", "elu_", "elu"),
    ("vq-cpu", "codebook_init", "kmean", "kmeans"),
    ("vq-cpu", "quantizer", "emma", "ema"),
    ("rtf-cpu", "coefficient_init", "zero", "zeros"),
]


def _one_line_suggestion(config, key, suggestion):
    error = problem(config)
    assert error.keys == [key], str(error)
    assert "\n" not in str(error), str(error)
    assert f'(did you mean "{suggestion}"' in str(error), str(error)  # first ("bfloat16" or "float32")
    return error


@pytest.mark.parametrize("key,value,named,suggestion", TYPOS, ids=[f"{k}={v!r}" for k, v, _, _ in TYPOS])
def test_a_typo_gets_a_suggestion_on_one_line(key, value, named, suggestion):
    _one_line_suggestion(with_values(listops_config.get_config(), **{key: value}), named, suggestion)


@pytest.mark.parametrize("variant,option,value,suggestion", MIXER_TYPOS, ids=[f"{v}-{o}" for v, o, _, _ in MIXER_TYPOS])
def test_a_typo_in_a_mixer_enumeration_gets_a_suggestion(variant, option, value, suggestion):
    mixer = variant[: -len("-cpu")]
    config = with_values(listops_config.get_config(variant), **{f"model__{mixer}__{option}": value})
    _one_line_suggestion(config, f"model.{mixer}.{option}", suggestion)


def test_pathfinder_difficulty_and_a_tasks_source_get_suggestions():
    pathfinder = pathfinder_config.get_config()
    pathfinder.data.pathfinder.difficulty = "hrad"
    _one_line_suggestion(pathfinder, "data.pathfinder.difficulty", "hard")
    text = text_config.get_config()
    text.data.source = "file"
    _one_line_suggestion(text, "data.source", "files")


def test_unknown_names_still_list_every_choice_after_the_suggestion():
    error = problem(with_values(listops_config.get_config(), model__mixer="lruu"))
    assert str(error).startswith('config.model.mixer: unknown mixer \'lruu\' (did you mean "lru"?); registered mixers '
                                 'are: blockwise, ')
    assert isinstance(error, KeyError)


# ------------------------------------------------------------------------------------------------------ warmup


@pytest.mark.parametrize("warmup,steps", [(100, 50), (100, 100), (1, 1)])
def test_a_warmup_as_long_as_the_run_is_refused(warmup, steps):
    config = with_values(listops_config.get_config(), optim__warmup_steps=warmup, train__num_steps=steps)
    error = problem(config)
    assert error.keys == ["optim.warmup_steps"]
    assert str(error) == (f"config.optim.warmup_steps: {warmup} is not below config.train.num_steps = {steps}: the "
                          f"run would end during its learning-rate warmup; lower warmup_steps (e.g. to {steps // 10}) "
                          "or raise num_steps")


@pytest.mark.parametrize("warmup,steps", [(99, 100), (0, 50), (0, 0), (100, 0)])
def test_a_warmup_shorter_than_the_run_or_zero_is_accepted(warmup, steps):
    validate_config(with_values(listops_config.get_config(), optim__warmup_steps=warmup, train__num_steps=steps))


# --------------------------------------------------------------------------------------------- mixer_options


def test_mixer_options_shows_required_options_readably():
    for name in registry.mixer_names():
        options = registry.mixer_options(name)
        assert options["d_model"] is registry.REQUIRED, name
        assert "MISSING" not in repr(options) and "object at 0x" not in repr(options), (name, options)
    assert repr(registry.REQUIRED) == "<required>"
    import copy
    import pickle

    assert copy.deepcopy(registry.REQUIRED) is registry.REQUIRED
    assert pickle.loads(pickle.dumps(registry.REQUIRED)) is registry.REQUIRED
    assert registry.mixer_options("lru")["r_max"] == 0.99  # defaults unchanged


# ------------------------------------------------------------------------------------------------------ ranges

ABSURD = [
    # (dotted key, value, the whole message after "config.<key>: ")
    ("seed", 2**64, "expected an int in [0, 4294967295] (jax.random.key uses 32 bits), got 18446744073709551616"),
    ("seed", 2**32, "expected an int in [0, 4294967295] (jax.random.key uses 32 bits), got 4294967296"),
    ("train.eval_batch_size", 10**9, "expected an int in [1, 65536], got 1000000000"),
    ("train.eval_batch_size", 1e9, "expected an int, got 1000000000.0 (float)"),
    ("train.batch_size", 10**6, "expected an int in [1, 65536], got 1000000"),
    ("model.d_model", 10**6, "expected an int in [1, 16384], got 1000000"),
    ("model.n_layers", 1000, "expected an int in [1, 256], got 1000"),
    ("train.num_steps", 10**12, "expected an int in [0, 100000000], got 1000000000000"),
    ("train.keep_checkpoints", 10**5, "expected an int in [1, 1000], got 100000"),
    ("optim.lr", 5.0, "expected a number in (0, 1], got 5.0"),
    ("optim.clip_norm", 1e12, "expected a number in [0, 1e+06] (0 = no clipping), got 1000000000000.0"),
    ("data.seq_len", 2**21, "expected an int in [0, 1048576] (0 = the task's length), got 2097152"),
    ("data.listops.num_train", 10**9, "expected an int in [1, 10000000], got 1000000000"),
    ("data.listops.max_depth", 10**4, "expected an int in [1, 100], got 10000"),
    ("data.listops.generator_seed", 2**40, "expected an int in [0, 4294967295], got 1099511627776"),
]


@pytest.mark.parametrize("key,value,message", ABSURD, ids=[f"{k}={v!r}" for k, v, _ in ABSURD])
def test_an_absurd_value_is_refused_naming_key_value_and_range(key, value, message):
    error = problem(with_values(listops_config.get_config(), **{key.replace(".", "__"): value}))
    assert error.keys == [key], str(error)
    assert str(error) == f"config.{key}: {message}"


ABSURD_OPTIONS = [
    # (mixer, option, value, message)
    ("lru", "d_state", 10**6, "expected an int in [1, 4096], got 1000000"),
    ("lru", "max_phase", 7.0, "expected a number in (0, 6.283185307179586], got 7.0"),
    ("s5", "state_size", 2**20, "expected an int in [1, 4096], got 1048576"),
    ("s4", "l_max", 2**30, "expected an int in [0, 1048576] (0 = the task's length), got 1073741824"),
    ("s4d", "dt_max", 100.0, "expected a number in (0, 10], got 100.0"),
    ("softmax", "num_heads", 4096, "expected an int in [1, 1024], got 4096"),
    ("softmax", "rope_scale", 0.5, "expected a number >= 1 (L_test / L_train), got 0.5"),
    ("performer", "num_features", 10**6, "expected an int in [1, 65536], got 1000000"),
    ("vq", "kmeans_iters", 10**6, "expected an int in [0, 1000], got 1000000"),
    ("vq", "dead_code_threshold", 2.0, "expected a number in [0, 1], got 2.0"),
]


@pytest.mark.parametrize("mixer,option,value,message", ABSURD_OPTIONS,
                         ids=[f"{m}.{o}={v!r}" for m, o, v, _ in ABSURD_OPTIONS])
def test_an_absurd_mixer_option_is_refused_naming_key_value_and_range(mixer, option, value, message):
    config = with_values(listops_config.get_config(f"{mixer}-cpu"), **{f"model__{mixer}__{option}": value})
    error = problem(config)
    assert error.keys == [f"model.{mixer}.{option}"], str(error)
    assert str(error) == f"config.model.{mixer}.{option}: {message}"


def test_the_upper_bounds_themselves_are_accepted():
    config = with_values(listops_config.get_config(), seed=validation.MAX_SEED,
                         train__eval_batch_size=validation.MAX_BATCH, model__d_model=validation.MAX_WIDTH,
                         model__n_layers=validation.MAX_LAYERS, model__lru__d_state=MAX_STATE,
                         model__lru__max_phase=2 * 3.141592653589793, data__listops__generator_seed=2**32 - 1)
    validate_config(config)
    for ranges in (validation.RANGES, validation.OPTION_RANGES):
        for name, allowed in ranges.items():
            if not allowed.high_open:
                assert allowed.problem(allowed.high) is None, name
                assert allowed.problem(int(allowed.high) if allowed.integer else allowed.high) is None, name
            above = allowed.high + 1 if allowed.integer else allowed.high * 1.5 + 1
            assert allowed.interval() in allowed.problem(above), name
            assert "\n" not in allowed.problem(above)


def _numeric(field: validation.FieldType) -> bool:
    return bool({int, float} & set(field.types)) and bool not in field.types


def test_every_numeric_key_and_mixer_option_has_a_range():
    def numeric_paths(schema, prefix=""):
        for key, value in schema.items():
            if isinstance(value, dict):
                if not (prefix == "model." and key in registry.mixer_names()):  # mixer sections: below
                    yield from numeric_paths(value, f"{prefix}{key}.")
            elif _numeric(value):
                yield prefix + key

    paths = set(numeric_paths(validation.full_schema()))
    assert {"seed", "model.d_model", "train.eval_batch_size", "data.listops.num_train"} <= paths
    task_ranges = {f"data.{spec.data_section}.{key}" for spec in map(lra.get_task, lra.task_names())
                   if spec.data_section for key in spec.data_ranges}
    assert "data.listops.num_train" in task_ranges  # the task's contract holds its section's ranges
    assert paths <= set(validation.RANGES) | task_ranges, paths - set(validation.RANGES) - task_ranges
    options = set()
    for name in registry.mixer_names():
        for option, field in validation._option_types(registry.mixer_class(name)).items():
            if field is not None and _numeric(field) and option not in validation.RESERVED_OPTIONS:
                options.add(option)
    assert options == set(validation.OPTION_RANGES), options ^ set(validation.OPTION_RANGES)
