"""The errors a training run stops with (besides CheckpointError, experiments/checkpoints.py, and WorkdirError,
experiments/workdir.py); experiments/cli.py turns them into one-line messages. Re-exported by experiments.trainer.
"""

from __future__ import annotations

import signal


class ConfigMismatchError(ValueError):
    """A restarted run's config differs from the one saved in its workdir."""


class ConfigValueError(ValueError):
    """A config value that cannot run here (e.g. a batch that does not divide over the devices)."""


class NonFiniteError(FloatingPointError):
    """The loss or the gradients became NaN or infinite (train.nonfinite = "stop")."""


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint of the current step was saved first."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; a checkpoint of this step was "
                         "saved and the same command resumes from it")
        self.signum = signum
        self.step = step
