"""A finished run restored read-only for use after training: decoding (experiments/generate.py) and test-time
evaluation at other lengths (experiments/extrapolate.py). No flags are defined here, so both commands import it.
"""

from __future__ import annotations

from typing import Any

BYTE_VOCABULARY = 256  # the lm task's token ids are the raw bytes


class GenerateError(ValueError):
    """A request generation cannot serve (a user's mistake: one line, exit status 2)."""


def load_run(workdir: str, checkpoint: str = "best", *, decode_length: int = 0) -> dict[str, Any]:
    """A causal per-position run restored read-only, ready to decode.

    Reads workdir/config.json and restores the checkpoint `checkpoint` ("best", "latest" or a step number) with
    the trainer's own pieces (validate_config, build_model, create_state's shapes, Checkpoints read-only), as
    experiments.trainer.evaluate_run does. Key-value caches are sized for `decode_length` steps when that exceeds
    the trained length (the cache is decoding state, not a parameter).

    Returns {"workdir", "config", "spec", "model", "variables", "step"}. Raises GenerateError (a run that cannot
    decode), WorkdirError / ConfigError / ConfigValueError / CheckpointError (no run, a bad config or checkpoint).
    """
    import jax
    import ml_collections

    import lra
    from experiments import data as data_lib
    from experiments import workdir as workdir_lib
    from experiments.checkpoints import check_checkpoint_argument, restore_selected
    from experiments.trainer import DataParallel, build_model, create_state
    from experiments.validation import validate_config
    from models.registry import resolve_mixer

    workdir = workdir_lib.resolve(workdir)
    saved = workdir_lib.read_json(workdir, "config.json") if workdir_lib.path(workdir).is_dir() else None
    if saved is None:
        raise workdir_lib.WorkdirError(f"--workdir={workdir} holds no config.json: it is not a training run's "
                                       "directory (python -m experiments.train --config=lm --workdir=... makes one)")
    config = ml_collections.ConfigDict(saved)
    validate_config(config)
    spec = data_lib.task_spec(config)
    if spec.head != lra.HeadKind.PER_POSITION:
        raise GenerateError(f"the run in {workdir} trained task {spec.name!r}, whose head is {spec.head.value}: "
                            "generation needs a per-position head (a language model, --config=lm)")
    if spec.vocab_size != BYTE_VOCABULARY or spec.padded:
        raise GenerateError(f"the run in {workdir} trained task {spec.name!r} (vocabulary {spec.vocab_size}): "
                            "generation reads and writes raw bytes (ids 0..255, no padding), as the lm task")
    mixer_name = config.model.mixer
    section = config.model.get(mixer_name)
    mixer = resolve_mixer(mixer_name, section.to_dict() if section is not None else {}, length=spec.seq_len)
    if mixer.direction(config.model.bidirectional):
        raise GenerateError(f"the run in {workdir} built a bidirectional model (mixer {mixer_name!r}): every "
                            "position sees the future, so it cannot generate; train with causal mixers")
    if not mixer.contract.step:
        raise GenerateError(f"mixer {mixer_name!r} of the run in {workdir} has no recurrent step: it cannot "
                            "decode token by token")
    check_checkpoint_argument(workdir, checkpoint)
    model = build_model(config, spec)
    cache = mixer.as_dict().get("max_decode_len")
    if cache and decode_length > cache:  # a longer cache: the same parameters
        decode_config = ml_collections.ConfigDict(config.to_dict())
        decode_config.model[mixer_name]["max_decode_len"] = int(decode_length)
        model = build_model(decode_config, spec)
    parallel = DataParallel()
    abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated),
                                  jax.eval_shape(lambda: create_state(build_model(config, spec), config, spec)[0]))
    state = restore_selected(workdir, config.train.keep_checkpoints, abstract_state, checkpoint)
    variables = {"params": state["params"], **state["collections"]}
    return {"workdir": workdir, "config": config, "spec": spec, "model": model, "variables": variables,
            "step": int(state["step"])}
