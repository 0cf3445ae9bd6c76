"""Step-by-step decoding of the whole model (models/encoder.py step) and sampling (models/generation.py).

For every registered mixer with a causal form and a recurrent step, a 2-layer PerPositionClassifier with LayerNorm:
the logits of stepping the tokens one at a time equal the parallel call's, and greedy `generate` equals a
reference written here that re-runs the parallel model on the sequence so far and takes the argmax. Then the
residual forms and BatchNorm's running averages, the sampling settings, the errors, and the parameter tree of the
encoder, which the step refactor (setup-defined submodules) must have kept exactly as the compact form named it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from models import generation, param_groups, registry
from models.encoder import Classifier, PerPositionClassifier, ResidualBlock, SequenceEncoder
from tests.models.prefill_checks import check_prefill, max_leaf_difference

pytestmark = pytest.mark.usefixtures("fast_compilation")  # tiny shapes: XLA's optimisation passes cost more

D_MODEL = 8
VOCAB = 13
LENGTH = 12  # stepped positions; blocks and chunks below divide it
BATCH = 2

# Small options per mixer (heads and widths dividing D_MODEL, blocks dividing LENGTH). A mixer not listed runs
# with its defaults; length options left at 0 take LENGTH (the key-value caches hold LENGTH positions).
TINY_OPTIONS = {
    "lru": dict(d_state=4),
    "s4": dict(d_state=4),
    "s4d": dict(d_state=4),
    "s5": dict(state_size=4, blocks=1),
    "rtf": dict(state_size=4),
    "softmax": dict(num_heads=2),
    "blockwise": dict(num_heads=2, block_size=4),
    "linear": dict(num_heads=2, chunk_size=4),
    "performer": dict(num_heads=2, num_features=8, chunk_size=4),
    "vq": dict(num_heads=1, key_dim=4, codebook_size=8, block_len=4),
    "vq_soft": dict(num_heads=1, key_dim=4, codebook_size=8, block_len=4),
    "mamba": dict(d_state=4, chunk_size=4),
    "mamba2": dict(d_state=4, head_dim=4, chunk_size=4),
    "gla": dict(num_heads=2, chunk_size=4),
    "deltanet": dict(num_heads=2, chunk_size=4),
    "rglru": dict(num_heads=2),
}

DECODING_MIXERS = [name for name in registry.mixer_names()
                   if registry.mixer_contract(name).causal and registry.mixer_contract(name).step]
# A recurrence, a convolution's state-space step and a key-value cache in the default run (the test budget);
# the rest (running sums, the VQ cache, ...) in the slow suite (each mixer's own step == parallel is
# tested in the default run by tests/models/test_*_mixers.py).
DEFAULT_DECODING = ("lru", "s4d", "softmax")
DECODING_CASES = [m if m in DEFAULT_DECODING else pytest.param(m, marks=pytest.mark.slow) for m in DECODING_MIXERS]


def build(mixer: str = "lru", *, n_layers: int = 2, norm: str = "layer", residual: str = "prenorm",
          options: dict | None = None) -> PerPositionClassifier:
    resolved = registry.resolve_mixer(mixer, {**TINY_OPTIONS.get(mixer, {}), **(options or {})}, length=LENGTH)
    encoder = SequenceEncoder(vocab_size=VOCAB, d_model=D_MODEL, n_layers=n_layers, mixer=mixer,
                              mixer_options=resolved.as_dict(), bidirectional=False, norm=norm, residual=residual)
    return PerPositionClassifier(encoder=encoder, num_classes=VOCAB)


def tokens(seed: int = 0, length: int = LENGTH) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (BATCH, length), 0, VOCAB)


@functools.cache
def model_and_variables(mixer: str, **kwargs) -> tuple[PerPositionClassifier, dict]:
    model = build(mixer, **kwargs)
    x = tokens()
    boxed = jax.jit(lambda key: model.init(key, x, jnp.ones(x.shape, bool)))(jax.random.key(1))
    variables = param_groups.unbox(boxed)
    if "batch_stats" in variables:  # running averages away from (0, 1), so that using them matters
        leaves, tree = jax.tree.flatten(variables["batch_stats"])
        keys = jax.random.split(jax.random.key(5), len(leaves))
        stats = [jnp.abs(jax.random.normal(k, leaf.shape)) + 0.5 for k, leaf in zip(keys, leaves)]
        variables = {**variables, "batch_stats": jax.tree.unflatten(tree, stats)}
    return model, variables


def parallel_logits(model, variables, x):
    return jax.jit(lambda v, x: model.apply(v, x, jnp.ones(x.shape, bool)))(variables, x)


def stepped_logits(model, variables, x):
    """Logits (B, L, C) of stepping the tokens one at a time, from a fresh state."""

    def run(v, x):
        state = model.apply(v, x.shape[0], method="init_state")
        _, logits = jax.lax.scan(lambda s, t: model.apply(v, s, t, method="step"), state, x.T)
        return jnp.swapaxes(logits, 0, 1)

    return jax.jit(run)(variables, x)


def greedy_reference(model, variables, prompt, num_tokens):
    """Greedy decoding by the parallel model: for each new token, the whole model runs on the sequence so far and
    the argmax of its last position is appended. The sequence sits in a buffer of the final length (one
    compilation); the model is causal, so the zeros after position t do not change position t's logits."""
    batch, length = prompt.shape
    buffer = np.zeros((batch, length + num_tokens), np.int32)
    buffer[:, :length] = np.asarray(prompt)
    apply = jax.jit(lambda v, x: model.apply(v, x, jnp.ones(x.shape, bool)))
    for t in range(length - 1, length + num_tokens - 1):
        logits = np.asarray(apply(variables, jnp.asarray(buffer)))
        buffer[:, t + 1] = logits[:, t].argmax(-1)
    return buffer


# ------------------------------------------------------------------------------- step == parallel, greedy


@pytest.mark.parametrize("mixer", DECODING_CASES)
def test_stepping_the_model_equals_the_parallel_call_and_greedy_equals_rerunning_it(mixer):
    model, variables = model_and_variables(mixer)
    x = tokens()
    expected = parallel_logits(model, variables, x)
    np.testing.assert_allclose(stepped_logits(model, variables, x), expected, atol=1e-4, rtol=1e-4)
    state, last = generation.prefill(model, variables, x[:, :5])
    np.testing.assert_allclose(last, expected[:, 4], atol=1e-4, rtol=1e-4)
    prompt, num_tokens = x[:, :4], LENGTH - 4
    generated = generation.generate(model, variables, prompt, num_tokens, greedy=True)
    assert generated.shape == (BATCH, LENGTH) and generated.dtype == jnp.int32
    np.testing.assert_array_equal(generated, greedy_reference(model, variables, prompt, num_tokens))


# ------------------------------------------------------------------------------------------- parallel prefill

PROMPT = 9  # with VQ's blocks of 4: a non-empty per-code cache (block 0), a full previous block, a partial one


@functools.cache
def _prefill_run(mixer: str):
    """One compiled program per mixer: the parallel logits of the model on the tokens and on the tokens with
    position PROMPT - 2 changed; the parallel prefill of the first PROMPT tokens (state, logits) and the
    token-by-token prefill (generation's step method); the logits of stepping the remaining tokens from the
    parallel prefill's state."""
    model, variables = model_and_variables(mixer)

    def run(variables, x, changed):
        both = jnp.concatenate([x, changed])  # one parallel call for both
        parallel, parallel_changed = jnp.split(model.apply(variables, both, jnp.ones(both.shape, bool)), 2)
        state, prefill_logits = model.apply(variables, x[:, :PROMPT], method="prefill")
        stepped_state, stepped_last = generation._prefill(model, variables, x[:, :PROMPT])
        _, decoded = jax.lax.scan(lambda s, t: model.apply(variables, s, t, method="step"), state,
                                  x[:, PROMPT:].T)
        return (parallel, parallel_changed, state, prefill_logits, stepped_state, stepped_last,
                jnp.swapaxes(decoded, 0, 1))

    x = tokens(seed=4)
    changed = x.at[:, PROMPT - 2].set((x[:, PROMPT - 2] + 1) % VOCAB)
    return jax.jit(run)(variables, x, changed)


# At model level in the default run: S4 (the state kernel by doubling, and its system in the state), both VQ mixers
# (cache and block buffer; the issue asks for them by name); the rest in the slow suite. LRU, S4D and softmax
# prefill in parallel in the greedy test above (generate's default), and every mixer's prefill is checked on its
# own in float64 below.
DEFAULT_PREFILL = ("s4", "vq", "vq_soft")
PREFILL_CASES = [m if m in DEFAULT_PREFILL else pytest.param(m, marks=pytest.mark.slow) for m in DECODING_MIXERS]


@pytest.mark.parametrize("mixer", PREFILL_CASES)
def test_the_parallel_prefill_equals_stepping_the_prompt_and_decoding_continues_the_parallel_call(mixer):
    """For every decoding mixer at model level (2 layers): the state and last logits of the parallel prefill equal
    those of stepping the prompt token by token; its logits are the parallel call's on the prompt, and stepping
    on from its state gives the parallel call's logits at every later position; and the LM is causal."""
    parallel, parallel_changed, state, prefill_logits, stepped_state, stepped_last, decoded = _prefill_run(mixer)
    assert prefill_logits.shape == (BATCH, PROMPT, VOCAB) and prefill_logits.dtype == jnp.float32
    assert max_leaf_difference(state, stepped_state) < 1e-5
    np.testing.assert_allclose(prefill_logits[:, -1], stepped_last, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(prefill_logits, parallel[:, :PROMPT], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(decoded, parallel[:, PROMPT:], atol=1e-4, rtol=1e-4)
    # Causality: the token changed at position t = PROMPT - 2 moves no logit before t (FFT convolutions round
    # differently, hence a tolerance), and moves the logits at t.
    t = PROMPT - 2
    assert np.abs(parallel_changed[:, :t] - parallel[:, :t]).max() < 1e-5
    assert np.abs(parallel_changed[:, t] - parallel[:, t]).max() > 1e-3


# The built-in mixers' own decoding tests check their prefill in float64 (tests/models/prefill_checks.py, called
# from test_lru.py, test_ssm_mixers.py, test_attention_mixers.py, test_vq_mixers.py, test_mamba.py): here they are
# in the slow suite, and any other registered mixer (a new one, possibly with the default prefill) in the default
# run.
OWN_PREFILL_TESTS = ("lru", "s4", "s4d", "s5", "rtf", "softmax", "blockwise", "linear", "performer", "vq", "vq_soft",
                     "mamba", "mamba2")
FLOAT64_CASES = [pytest.param(m, marks=pytest.mark.slow) if m in OWN_PREFILL_TESTS else m for m in DECODING_MIXERS]


@pytest.mark.parametrize("mixer", FLOAT64_CASES)
def test_every_mixers_prefill_equals_its_steps_in_float64(x64, mixer):
    """One mixer in float64: `prefill` on a prompt of PROMPT positions gives the parallel call's outputs and the
    state of a plain loop of `step` calls from init_state (leaf by leaf), and stepping on from that state gives
    the parallel call's later outputs."""
    resolved = registry.resolve_mixer(mixer, TINY_OPTIONS.get(mixer, {}), length=LENGTH)
    module = resolved.build(D_MODEL, bidirectional=False, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(3), (BATCH, LENGTH, D_MODEL), jnp.float64)
    variables = param_groups.unbox(jax.jit(module.init)(jax.random.key(1), x))
    # Parameters in float64 too, cast outside the program of the calls below. (Initialised inside it, under the
    # test's fast_compilation, S4D's parallel call lost precision to about 1e-7: XLA's doing, not the mixer's.)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, variables)
    expected = jax.jit(module.apply)(variables, x)
    assert np.abs(expected).max() > 1e-2  # not a vacuous comparison
    step = jax.jit(lambda state, x_t: module.apply(variables, state, x_t, method="step"))
    check_prefill(module, variables, x, expected, step, PROMPT)


def test_the_registry_has_decoding_mixers_and_each_has_tiny_options():
    assert {"lru", "s4", "s4d", "s5", "rtf", "softmax", "blockwise", "linear", "performer"} <= set(DECODING_MIXERS)
    assert "nystrom" not in DECODING_MIXERS  # bidirectional only
    assert set(DECODING_MIXERS) <= set(TINY_OPTIONS), "give the new mixer small options in TINY_OPTIONS"


@pytest.mark.parametrize("norm,residual", [pytest.param("layer", "postnorm", marks=pytest.mark.slow),
                                           pytest.param("layer", "deepnorm", marks=pytest.mark.slow),
                                           ("batch", "prenorm"), ("batch", "postnorm")])
def test_every_residual_form_and_batchnorm_running_averages_step_as_the_parallel_call(norm, residual):
    model, variables = model_and_variables("lru", norm=norm, residual=residual)
    x = tokens(seed=3)
    np.testing.assert_allclose(stepped_logits(model, variables, x), parallel_logits(model, variables, x),
                               atol=1e-4, rtol=1e-4)


def test_one_block_step_is_the_block_with_train_false():
    """ResidualBlock.step on its own, against the block's __call__ (deepnorm: the scaled skip matters)."""
    _, variables = model_and_variables("lru", residual="deepnorm")
    block = ResidualBlock(D_MODEL, "lru", dict(TINY_OPTIONS["lru"]), False, "layer", "deepnorm", 0.0,
                          deepnorm_alpha=1.7, deepnorm_beta=0.5)
    encoder_params = variables["params"]["encoder"]
    block_variables = {"params": encoder_params["block_0"]}
    x = jax.random.normal(jax.random.key(2), (BATCH, 6, D_MODEL))
    expected = block.apply(block_variables, x, jnp.ones(x.shape[:2], bool), False)
    state = block.apply(block_variables, BATCH, method="init_state")
    outputs = []
    for t in range(x.shape[1]):
        state, y_t = block.apply(block_variables, state, x[:, t], method="step")
        outputs.append(y_t)
    np.testing.assert_allclose(jnp.stack(outputs, 1), expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ sampling


def test_top_k_one_and_a_tiny_top_p_equal_greedy_and_a_seed_is_deterministic():
    model, variables = model_and_variables("lru")
    prompt = tokens()[:, :3]
    greedy = generation.generate(model, variables, prompt, 8, greedy=True)
    np.testing.assert_array_equal(generation.generate(model, variables, prompt, 8, top_k=1, seed=4), greedy)
    np.testing.assert_array_equal(generation.generate(model, variables, prompt, 8, top_p=1e-6, seed=5), greedy)
    hot = dict(temperature=3.0, seed=7)
    first = generation.generate(model, variables, prompt, 8, **hot)
    np.testing.assert_array_equal(generation.generate(model, variables, prompt, 8, **hot), first)
    others = [generation.generate(model, variables, prompt, 8, temperature=3.0, seed=s) for s in (8, 9)]
    assert any(not np.array_equal(first, other) for other in others)  # the seed is used
    np.testing.assert_array_equal(first[:, :3], prompt)


def test_top_k_and_top_p_sample_only_inside_their_cut():
    logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.05, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 400)
    draw = jax.jit(jax.vmap(lambda key, sampling: generation.sample(key, logits, sampling)[0], (0, None)),
                   static_argnums=1)
    assert set(np.asarray(draw(keys, generation.Sampling(top_k=2)))) == {0, 1}
    # nucleus 0.75: 0.4 + 0.3 < 0.75, so the third token is in, the fourth and fifth are out
    assert set(np.asarray(draw(keys, generation.Sampling(top_p=0.75)))) == {0, 1, 2}
    assert set(np.asarray(draw(keys, generation.Sampling()))) == {0, 1, 2, 3, 4}
    low = np.asarray(draw(keys, generation.Sampling(temperature=0.05)))
    assert (low == 0).mean() > 0.99  # a low temperature is nearly greedy


# ------------------------------------------------------------------------------------------------ errors


def test_decoding_refuses_a_bidirectional_encoder_a_mixer_without_step_and_bad_requests():
    model, variables = model_and_variables("lru")
    bidirectional = model.clone(encoder=model.encoder.clone(bidirectional=True))
    with pytest.raises(ValueError, match="needs a causal encoder"):
        bidirectional.apply(variables, 1, method="init_state")
    with pytest.raises(ValueError, match="needs a causal encoder"):
        generation.generate(bidirectional, variables, tokens()[:, :2], 2)
    nystrom = SequenceEncoder(vocab_size=VOCAB, d_model=D_MODEL, n_layers=1, mixer="nystrom",
                              mixer_options={"num_heads": 2, "num_landmarks": 2}, bidirectional=False, norm="layer")
    with pytest.raises(ValueError, match="mixer 'nystrom' has no recurrent step"):
        nystrom.init({"params": jax.random.key(0)}, 1, method="init_state")
    with pytest.raises(ValueError, match="the prompt is empty"):
        generation.generate(model, variables, jnp.zeros((1, 0), jnp.int32), 3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generation.generate(model, variables, tokens()[:, :2], 3, temperature=0.0)
    with pytest.raises(ValueError, match="top_p must be in"):
        generation.generate(model, variables, tokens()[:, :2], 3, top_p=0.0)
    with pytest.raises(ValueError, match=r"top_k must be in \[0, 13\]"):
        generation.generate(model, variables, tokens()[:, :2], 3, top_k=14)
    softmax, softmax_variables = model_and_variables("softmax")
    with pytest.raises(ValueError, match="max_decode_len=12 positions, but a prompt of 4 tokens and 10 new"):
        generation.generate(softmax, softmax_variables, tokens()[:, :4], 10, greedy=True)
    assert generation.generate(softmax, softmax_variables, tokens()[:, :4], 9, greedy=True).shape == (BATCH, 13)


# --------------------------------------------------------------------------------- the parameter tree


def _expand(tree: dict[str, str], n_layers: int = 2) -> list[str]:
    paths = []
    for prefix, leaves in tree.items():
        for i in range(n_layers) if "{i}" in prefix else [None]:
            paths += [f"{prefix.format(i=i)}/{leaf}" for leaf in leaves.split()]
    return sorted(paths)


# Recorded from the compact encoder (git show bb355d6:models/encoder.py) before `step` was added: 2 layers,
# D = 8, vocabulary 11, 3 classes. Every collection (params, batch_stats, constants) and every path.
COMPACT_ENCODER_TREES = {
    "per_position_lru_layer_prenorm": {
        "params/encoder/block_{i}/LRUMixer_0": "B_im B_re C_im C_re D gamma_log nu_log theta_log",
        "params/encoder/block_{i}/glu_gate": "bias kernel",
        "params/encoder/block_{i}/glu_value": "bias kernel",
        "params/encoder/block_{i}/norm": "bias scale",
        "params/encoder/embedding": "embedding",
        "params/encoder/final_norm": "bias scale",
        "params/head": "bias kernel",
    },
    "per_position_softmax_batch_postnorm": {
        "batch_stats/encoder/block_{i}/norm": "mean var",
        "params/encoder/block_{i}/SoftmaxAttention_0": "key/kernel out/kernel query/kernel value/kernel",
        "params/encoder/block_{i}/glu_gate": "bias kernel",
        "params/encoder/block_{i}/glu_value": "bias kernel",
        "params/encoder/block_{i}/norm": "bias scale",
        "params/encoder/embedding": "embedding",
        "params/head": "bias kernel",
    },
    "classifier_performer_input_projection": {
        "constants/encoder/block_{i}/PerformerAttention_0": "favor_projection",
        "params/encoder/block_{i}/PerformerAttention_0": "key/kernel out/kernel query/kernel value/kernel",
        "params/encoder/block_{i}/glu_gate": "bias kernel",
        "params/encoder/block_{i}/glu_value": "bias kernel",
        "params/encoder/block_{i}/norm": "bias scale",
        "params/encoder/final_norm": "bias scale",
        "params/encoder/input_projection": "bias kernel",
        "params/head": "bias kernel",
    },
}


@pytest.mark.parametrize("case", sorted(COMPACT_ENCODER_TREES))
def test_the_parameter_tree_is_the_compact_encoders(case):
    common = dict(d_model=8, n_layers=2)
    if case == "per_position_lru_layer_prenorm":
        model = PerPositionClassifier(SequenceEncoder(vocab_size=11, mixer="lru", mixer_options={"d_state": 4},
                                                      norm="layer", **common), num_classes=3)
    elif case == "per_position_softmax_batch_postnorm":
        model = PerPositionClassifier(SequenceEncoder(vocab_size=11, mixer="softmax", mixer_options={"num_heads": 2},
                                                      norm="batch", residual="postnorm", **common), num_classes=3)
    else:
        model = Classifier(SequenceEncoder(vocab_size=None, mixer="performer", norm="layer", **common,
                                           mixer_options={"num_heads": 2, "num_features": 4, "chunk_size": 4}),
                           num_classes=3)
    inputs = jnp.ones((2, 8), jnp.int32) if model.encoder.vocab_size else jnp.ones((2, 8, 1))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), inputs, jnp.ones((2, 8), bool)))
    paths = sorted(traverse_util.flatten_dict(param_groups.unbox(shapes), sep="/"))
    assert paths == _expand(COMPACT_ENCODER_TREES[case])
