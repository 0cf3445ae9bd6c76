r"""Trains a mixer on an LRA task, evaluates it, and writes everything under --workdir.

    python -m experiments.train                                   # LRU on a small generated ListOps (CPU)
    python -m experiments.train --list                            # every task, mixer, option and config variant
    python -m experiments.train --config=listops:s5-cpu --workdir=workdirs/s5   # another mixer, same CPU budget
    python -m experiments.train --config=text --config.data.data_dir=DIR        # a task on its official files
    python -m experiments.train --config=listops:s5 --workdir=gs://bucket/run   # published settings (accelerators)

--config takes a packaged task config by name (`listops`, `listops:s5-cpu`; experiments/configs/<task>.py) or a
path to a config file (`path/to/file.py:variant`); `--config.<key>=<value>` overrides any key. Restarting the
same command resumes from the newest checkpoint in --workdir; raising --config.train.num_steps extends a finished
run. Evaluate a run with `python -m experiments.evaluate --workdir=DIR`. Multi-host: start the same command on
every host with --coordinator_address, --num_processes and --process_id (or let jax.distributed detect the
cluster on TPU / SLURM with --distributed).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sys
import traceback
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cli

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_TASK_FILES = ("__init__.py", "base.py", "common.py")
_DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "listops.py")

# ml_collections reads the --config.<key> overrides from sys.argv when the flag is defined, so it is defined in
# parse_flags, after packaged names are resolved and where a mistyped key can be reported in one line.
_CONFIG: flags.FlagHolder | None = None
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/default",
                               "Directory for checkpoints, metrics and results (made absolute at start; gs://... "
                               "with the [gcs] extra).")
_LIST = flags.DEFINE_bool("list", False, "Print every task, mixer (with its options) and config variant, then exit.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (auto-detected cluster, e.g. TPU pods or SLURM).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Number of processes (hosts) in a multi-host run.",
                                      lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in a multi-host run.", lower_bound=0)


class UsageError(Exception):
    """A mistake on the command line: printed as one line (no traceback), exit status 2."""


def task_config_names() -> list[str]:
    """The packaged task configs (experiments/configs/<name>.py), sorted."""
    return sorted(name[:-3] for name in os.listdir(CONFIG_DIR)
                  if name.endswith(".py") and name not in NOT_TASK_FILES)


def resolve_config_argument(value: str) -> str:
    """`listops[:variant]` -> the packaged file; a relative path that exists from the repository root -> absolute."""
    path, sep, variant = value.partition(":")
    if os.path.exists(path):
        return value
    if os.sep not in path and "/" not in path and not path.endswith(".py"):
        candidate = os.path.join(CONFIG_DIR, f"{path}.py")
        if path in task_config_names():
            return candidate + sep + variant
        from experiments.validation import did_you_mean

        raise UsageError(f"--config={value}: no config file {path!r} and no packaged task config of that name"
                         f"{did_you_mean(path, task_config_names())}; packaged: {', '.join(task_config_names())}")
    from_root = os.path.join(REPO_ROOT, path)
    if os.path.exists(from_root):
        return from_root + sep + variant
    raise UsageError(f"--config={value}: no such file {path!r} (packaged task configs: "
                     f"{', '.join(task_config_names())}; e.g. --config=listops:s5-cpu)")


def _rewrite_config_flag(argv: Sequence[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config_argument(arg[len("--config="):])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config_argument(out[i + 1])
    return out


def _config_file_argument(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg[len("--config="):]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return _DEFAULT_CONFIG


def _load_config(argument: str):
    """The ConfigDict a --config argument names (absolute path[:variant]), loaded as config_flags would."""
    path, _, variant = argument.partition(":")
    spec = importlib.util.spec_from_file_location("_lra_config_for_errors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def _explain_override_error(argv: Sequence[str], error: Exception) -> str:
    """One line naming the --config.<key> flag that failed, with a suggestion for a mistyped key."""
    from experiments.validation import did_you_mean

    first_line = str(error).strip().splitlines()[0].strip("'\"") if str(error).strip() else type(error).__name__
    try:
        config = _load_config(_config_file_argument(argv))
    except Exception as load_error:  # the config file itself is broken
        return f"--config={_config_file_argument(argv)}: loading it failed ({type(load_error).__name__}: {load_error})"
    for arg in argv:
        match = re.match(r"--config\.([^=]+)(?:=(.*))?$", arg)
        if not match:
            continue
        node, walked = config, "config"
        for part in match.group(1).split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                what = f"{walked} has no key {part!r}{did_you_mean(part, keys)}" if keys else f"{walked} is a value"
                return f"{arg}: {what}"
            node, walked = node[part], f"{walked}.{part}"
    return f"invalid --config override: {first_line}"


def _explain_flag_error(argv: Sequence[str], error: flags.Error) -> str:
    """One line for absl's flag error; for a config file that fails to load, the config's own error."""
    text = str(error).strip()
    if "Error whilst parsing config file" in text:
        argument = _config_file_argument(argv)
        try:
            _load_config(argument)
        except Exception as load_error:
            return f"--config={argument}: {load_error}"
    return text.splitlines()[0] if text else type(error).__name__


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, with packaged config names and every mistake reported in one line."""
    global _CONFIG
    try:
        argv = _rewrite_config_flag(argv)
        sys.argv = list(argv)
        if _CONFIG is None:
            _CONFIG = config_flags.DEFINE_config_file(
                "config", _DEFAULT_CONFIG, "A packaged task config by name (listops, listops:s5-cpu; see --list) or "
                "a config file (path.py[:variant]).", lock_config=True)
        return flags.FLAGS(argv)
    except UsageError as error:
        _usage_exit(str(error))
    except flags.Error as error:
        _usage_exit(_explain_flag_error(argv, error))
    except (AttributeError, KeyError, ValueError, TypeError, FileNotFoundError) as error:
        _usage_exit(_explain_override_error(argv, error))
    raise AssertionError("unreachable")


def _usage_exit(message: str) -> None:
    cli.usage_exit(message, "experiments.train", ", --list for tasks, mixers and config variants")


def main(argv: list[str]) -> None:
    """The entry point after flag parsing: --list, validation, multi-host setup, the run, the results."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _LIST.value:
        from experiments import catalog

        with contextlib.suppress(BrokenPipeError):  # e.g. piped into `head`
            print(catalog.listing(), flush=True)
        return
    cli.quiet_library_logs()
    from experiments.validation import ConfigError, validate_config
    from experiments.workdir import WorkdirError, resolve

    try:  # before JAX starts: a bad flag fails here in about a second, naming the key
        workdir = resolve(_WORKDIR.value)
        if _COORDINATOR.value and not re.fullmatch(r"[^:\s]+:\d+", _COORDINATOR.value):
            raise WorkdirError(f"--coordinator_address={_COORDINATOR.value}: expected host:port")
        if _PROCESS_ID.value >= _NUM_PROCESSES.value:
            raise WorkdirError(f"--process_id={_PROCESS_ID.value}: expected 0 <= process_id < --num_processes "
                               f"({_NUM_PROCESSES.value})")
        validate_config(_CONFIG.value)
    except (ConfigError, WorkdirError) as error:
        _usage_exit(str(error))
    import jax

    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    from experiments.trainer import Preempted, train_and_evaluate

    if jax.process_index() == 0:
        print(f"lra-mixers: {_CONFIG.value.task} with {_CONFIG.value.model.mixer}, workdir {workdir}", flush=True)
    logging.info("JAX %s: process %d of %d, %d local / %d global devices (%s)", jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.default_backend())
    logging.info("workdir %s; config (saved as config.json there):\n%s", workdir, _CONFIG.value)
    try:
        results = train_and_evaluate(_CONFIG.value, workdir)
    except Preempted as stopped:
        logging.warning("%s", stopped)
        sys.exit(128 + stopped.signum)  # non-zero: the job did not finish and should be restarted
    except cli.user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        cli.hard_exit(1)
    except Exception:
        traceback.print_exc()
        cli.hard_exit(1)
    if jax.process_index() == 0:
        print(json.dumps(results, indent=2))
        print(f"validation accuracy {results['val_accuracy']:.4f} | test accuracy {results['test_accuracy']:.4f} "
              f"(majority rate {results['test_majority_rate']:.4f}) | results in "
              f"{os.path.join(workdir, 'results.json')}")


def run() -> None:
    """python -m experiments.train."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
