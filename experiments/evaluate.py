r"""Evaluates a training run's checkpoint with the config saved in its workdir, and prints the metrics as JSON.

    python -m experiments.evaluate --workdir=workdirs/default                       # best checkpoint, test split
    python -m experiments.evaluate --workdir=workdirs/default --split=validation --checkpoint=latest
    python -m experiments.evaluate --workdir=workdirs/default --checkpoint=750      # a kept step

Prints one JSON line: {"workdir", "split", "checkpoint", "step", "accuracy", "loss", "examples"}. The best
checkpoint's test accuracy equals the test_accuracy of the run's results.json. Nothing in the workdir is changed.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory (as given to experiments.train).", required=True)
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "validation", "train"], "The split to evaluate.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best (by validation accuracy), latest, or a step number.")


def main(argv: list[str]) -> None:
    """The entry point after flag parsing: evaluates and prints one JSON line (exit 1 with one line on an error)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from experiments import cli
    from experiments.trainer import evaluate_run

    cli.quiet_library_logs()
    try:
        metrics = evaluate_run(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)
    except cli.user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(metrics))


if __name__ == "__main__":
    from experiments import cli

    app.run(main, flags_parser=cli.flags_parser("experiments.evaluate"))
