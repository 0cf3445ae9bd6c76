"""What a run reports while it trains: MetricWriter (workdir/metrics.jsonl and TensorBoard event files, repaired
and trimmed on resume) and Progress (a tqdm bar where a person watches, absl log lines otherwise). Re-exported by
experiments.trainer.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
from absl import flags, logging

from experiments import workdir as workdir_lib

# ------------------------------------------------------------------------------------------------- logging


class MetricWriter:
    """Metrics as JSON lines (workdir/metrics.jsonl) and TensorBoard event files (workdir/tensorboard).

    On a local disk records are appended; on an object store (which cannot append) the file is rewritten whole at
    every write, from the records kept in memory.
    """

    def __init__(self, workdir: str, resume_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.workdir = workdir
        self.remote = workdir_lib.is_remote(workdir)
        self.path = workdir_lib.path(workdir, "metrics.jsonl")
        self.lines: list[str] = []
        if not enabled:
            return
        self._drop_records_after(resume_step)
        from tensorboardX import SummaryWriter  # imported here: only the writing process needs it

        self.tensorboard = SummaryWriter(str(workdir_lib.path(workdir, "tensorboard")), purge_step=resume_step or None)

    def _drop_records_after(self, step: int) -> None:
        """On resume, records written after the restored checkpoint (and any test record, which the rerun writes
        again at its end) are replaced by the rerun's.

        The file is read as bytes and repaired: a torn last line (a kill or a full disk mid-write) is dropped with
        a warning naming the byte offset; a record of unknown shape is dropped with a warning; damage before the
        last line stops the run (WorkdirError naming the file and line), since records would be lost. The kept
        records are written to a temporary file in the same directory, synced, and renamed over the old one, so a
        kill at any moment leaves either the old file or the new one, never less than every record up to `step`.
        """
        if not self.remote:  # temporary files of rewrites that a kill cut short (this process holds the lock)
            directory = os.path.dirname(str(self.path))
            for name in os.listdir(directory):
                if name.startswith("metrics.jsonl.tmp."):
                    logging.warning("removing %s, left by an interrupted rewrite", os.path.join(directory, name))
                    os.remove(os.path.join(directory, name))
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        raw_lines = data.split(b"\n")
        kept: list[str] = []
        changed = False
        offset = 0
        for number, raw in enumerate(raw_lines, start=1):
            line_offset, offset = offset, offset + len(raw) + 1
            is_last = number == len(raw_lines) or (number == len(raw_lines) - 1 and raw_lines[-1] == b"")
            if not raw.strip():
                changed |= bool(raw)
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                if is_last:  # an interrupted write (a kill, a full disk)
                    logging.warning("%s: dropping the damaged last line (byte offset %d, %d bytes: %s)", self.path,
                                    line_offset, len(raw), error)
                    changed = True
                    continue
                raise workdir_lib.WorkdirError(
                    f"{self.path}, line {number} (byte offset {line_offset}) is damaged ({type(error).__name__}); "
                    "records after it would be lost: repair or remove that line, then restart") from None
            if not (isinstance(record, dict) and isinstance(record.get("step"), int)
                    and isinstance(record.get("split"), str)):
                logging.warning("%s, line %d: skipping a record of unknown shape: %.200s", self.path, number,
                                raw.decode("utf-8", "replace"))
                changed = True
                continue
            if record["step"] > step or record["split"] == "test":
                changed = True
                continue
            kept.append(raw.decode("utf-8") + "\n")
        if data and not data.endswith(b"\n"):
            changed = True
        if changed:
            workdir_lib.write_text_atomic(self.workdir, "metrics.jsonl", "".join(kept))
        self.lines = kept if self.remote else []


    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Appends one record {step, split, **metrics} to metrics.jsonl and the TensorBoard events."""
        if not self.enabled:
            return
        line = json.dumps({"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}) + "\n"
        if self.remote:
            self.lines.append(line)
            self.path.write_text("".join(self.lines))
        else:
            with open(self.path, "a") as f:
                f.write(line)
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"{split}/{name}", float(value), step)
        self.tensorboard.flush()

    def close(self) -> None:
        """Releases the resources; call once, after wait()."""
        if self.enabled:
            self.tensorboard.close()


# ---------------------------------------------------------------------------------------------------- progress


class Progress:
    """Progress of the training loop: steps/s, ETA and the latest metrics.

    A tqdm bar (on stderr) where a person watches: a terminal, a notebook, or any call from Python that did not
    go through absl's app.run (whose INFO log lines are then invisible, so the key lines are also printed above
    the bar). Under app.run with stderr redirected (cluster jobs, CI) only the absl log lines are written.
    """

    def __init__(self, start: int, total: int, enabled: bool | None = None) -> None:
        absl_run = flags.FLAGS.is_parsed()
        if enabled is None:
            enabled = not absl_run or sys.stderr.isatty() or "ipykernel" in sys.modules
        self.echo = not absl_run and jax.process_index() == 0
        self.bar = None
        if enabled and jax.process_index() == 0:
            from lra.progress import progress_bar

            self.bar = progress_bar(total, "train", "step", initial=start)

    def say(self, message: str, *args: Any) -> None:
        """An INFO line; also printed (above the bar) when absl's log is not shown."""
        logging.info(message, *args)
        if self.echo:
            text = message % args if args else message
            if self.bar is not None:
                self.bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr)

    def step(self, **metrics: float) -> None:
        """Advances the bar by one step, showing the latest metrics."""
        if self.bar is not None:
            if metrics:
                self.bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()}, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        """Releases the resources; call once, after wait()."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
