"""End to end: a tiny byte-level LM trained by `python -m experiments.train --config=lm`, then
`python -m experiments.generate` on its workdir (the text, the speed line, the user's mistakes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.usefixtures("fast_compilation")  # the in-process checks: tiny shapes

# 6 steps of a 1-layer, width-16 LRU on the standard library's source. data.seq_len stays at the task's 256:
# experiments/validation.py refuses another length for the lm task (its check is for unpadded pixel tasks).
TINY_LM = {
    "model.d_model": 16, "model.n_layers": 1, "train.num_steps": 6, "train.eval_every": 3,
    "train.checkpoint_every": 3, "optim.warmup_steps": 1, "train.batch_size": 4, "train.eval_batch_size": 8,
    "data.lm.max_eval_windows": 16,
}
SPEED_LINE = re.compile(r"^(\d+) tokens in [\d.]+ s: [\d,.]+ tokens/s \(parallel prefill of (\d+) tokens in [\d.]+ s: "
                        r"[\d,.]+ tokens/s; compilation .*step (\d+)\)$")


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """A module of the repository as a command (bytes out: generated text may hold any byte)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def train_lm(root, variant: str = "cpu"):
    overrides = {**TINY_LM, "data.cache_dir": str(root.parent / "cache")}
    done = run("experiments.train", f"--config=lm:{variant}", f"--workdir={root}",
               *(f"--config.{key}={value}" for key, value in overrides.items()))
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return root


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    return train_lm(tmp_path_factory.mktemp("lm") / "run")


def test_generate_continues_the_prompt_and_reports_the_speed(lm_run):
    done = run("experiments.generate", f"--workdir={lm_run}", "--prompt=def ", "--num_tokens=20", "--greedy")
    stderr = done.stderr.decode("utf-8")
    assert done.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    text, speed, end = done.stdout.decode("utf-8").rsplit("\n", 2)
    assert end == "" and text.startswith("def ")
    match = SPEED_LINE.match(speed)
    assert match, speed
    assert match.groups() == ("20", "4", "6")  # 20 new tokens after 4 prompt bytes, best checkpoint = step 6

    # The same continuation in-process: greedy decoding of the restored model, the bytes decoded as the CLI does.
    from experiments.generate import load_run
    from models import generation

    restored = load_run(str(lm_run))
    assert restored["step"] == 6
    tokens = generation.generate(restored["model"], restored["variables"], np.array([list(b"def ")]), 20,
                                 greedy=True)
    assert bytes(np.asarray(tokens[0], np.uint8)).decode("utf-8", errors="replace") == text


@pytest.mark.slow  # the test budget: sampling determinism is tested in process (tests/models)
def test_sampling_is_reproducible_from_the_command_line(lm_run):
    flags = (f"--workdir={lm_run}", "--prompt=import ", "--num_tokens=12", "--temperature=0.9", "--top_p=0.9",
             "--top_k=50", "--seed=3", "--checkpoint=latest")
    first, second = run("experiments.generate", *flags), run("experiments.generate", *flags)
    assert first.returncode == 0 and second.returncode == 0, first.stderr.decode()[-3000:]
    text = lambda done: done.stdout.decode("utf-8").rsplit("\n", 2)[0]  # noqa: E731
    assert text(first) == text(second) and text(first).startswith("import ")


def write_pooled_run(workdir):
    """A workdir whose config.json is a ListOps run (pooled head)."""
    from experiments.configs import listops

    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(listops.get_config().to_dict()))


@pytest.mark.parametrize("mistake,expected", [
    ("empty_prompt", "error: --prompt is empty"),
    ("missing_workdir", "holds no config.json: it is not a training run's directory"),
    ("pooled_head", "trained task 'listops', whose head is pooled: generation needs a per-position head"),
])
def test_a_users_mistake_is_one_line_and_exit_status_2(lm_run, tmp_path, mistake, expected):
    workdir, prompt = lm_run, "def "
    if mistake == "empty_prompt":
        prompt = ""
    elif mistake == "missing_workdir":
        workdir = tmp_path / "nothing"
    else:
        workdir = tmp_path / "pooled"
        write_pooled_run(workdir)
    done = run("experiments.generate", f"--workdir={workdir}", f"--prompt={prompt}", "--num_tokens=5")
    stderr = done.stderr.decode("utf-8")
    assert done.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr and done.stdout == b""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], stderr


@pytest.mark.slow  # the test budget: it trains a second model
def test_a_key_value_cache_grows_to_hold_the_prompt_and_the_new_tokens(lm_run):
    """Softmax attention decodes with a cache of max_decode_len positions (the trained length, 256, by default):
    load_run sizes it for the request, so 300 steps decode, and the same parameters serve both sizes."""
    from experiments.generate import load_run
    from models import generation

    workdir = train_lm(lm_run.parent / "softmax", "softmax-cpu")
    trained = load_run(str(workdir))
    with pytest.raises(ValueError, match="max_decode_len=256 positions, but a prompt of 4 tokens and 297 new"):
        generation.generate(trained["model"], trained["variables"], np.array([list(b"def ")]), 297, greedy=True)
    longer = load_run(str(workdir), decode_length=300)
    assert longer["model"].encoder.mixer_options["max_decode_len"] == 300
    tokens = generation.generate(longer["model"], longer["variables"], np.array([list(b"def ")]), 297, greedy=True)
    assert tokens.shape == (1, 301)
    short = generation.generate(trained["model"], trained["variables"], np.array([list(b"def ")]), 40, greedy=True)
    np.testing.assert_array_equal(tokens[:, :44], short)  # the longer cache changes nothing before it is needed
