"""What the command-line entry points (experiments/train.py, experiments/evaluate.py) share: log filtering and
the errors that are a user's mistake (printed as one line, with no traceback)."""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import flags, logging


def quiet_library_logs() -> None:
    """Orbax reports every read and write at INFO through absl; keep its warnings and errors only."""
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe a mistake in the command, the data or the environment: one line, no traceback."""
    import lra
    from experiments.trainer import CheckpointError, ConfigMismatchError, ConfigValueError, NonFiniteError
    from experiments.validation import ConfigError
    from experiments.workdir import WorkdirError

    return (ConfigError, WorkdirError, ConfigMismatchError, ConfigValueError, CheckpointError, NonFiniteError,
            lra.LRADataError, OSError)


def hard_exit(code: int) -> None:
    """Exits now, after flushing the output. After a failed checkpoint save, orbax can leave non-daemon threads
    waiting for signals that never come, and a normal exit would wait for them forever; the checkpoints already
    written are complete (orbax renames a finished checkpoint into place), so nothing is lost by not waiting."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.flush()
    os._exit(code)


def usage_exit(message: str, program: str, more_help: str = "") -> None:
    """A command-line mistake: one "error:" line and a hint, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    print(f"(python -m {program} --help for the flags{more_help})", file=sys.stderr)
    sys.exit(2)


def flags_parser(program: str):
    """An absl flags parser for app.run that reports a bad flag in one line (exit status 2) instead of absl's
    FATAL block."""

    def parse(argv: list[str]) -> list[str]:
        """Parses argv with absl's flags; a bad flag exits 2 with one line."""
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            usage_exit(str(error), program)
        raise AssertionError("unreachable")

    return parse
