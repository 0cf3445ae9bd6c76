"""Progress bars of the data generators: tqdm on stderr, showing items done / total, rate and time left.

    with progress_bar(2000, "Pathfinder-32 hard", "img") as bar:
        for chunk in pool.imap_unordered(work, tasks):
            bar.update(len(chunk))

On a terminal the bar redraws at most every 0.5 s; when stderr is a file or a pipe (a job's log) it writes a
line at most every 10 s, plus the first and the last. `enabled=False`, or the environment variable
TQDM_DISABLE=1 (read by tqdm itself), turns the bars off.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

TERMINAL_INTERVAL_SECONDS = 0.5
LOG_INTERVAL_SECONDS = 10.0


def progress_bar(total: int, description: str, unit: str, *, enabled: bool = True, initial: int = 0) -> tqdm:
    """A tqdm bar of `total` `unit`s on the current sys.stderr, labelled `description`, starting at `initial`
    (e.g. a resumed training step); use as a context manager (or call close()) and `update(n)` as work completes."""
    stream = sys.stderr
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        terminal = False
    options = dict(
        total=total,
        initial=initial,
        desc=description,
        unit=unit,
        file=stream,
        dynamic_ncols=terminal,
        # A notebook (ipykernel) is watched live like a terminal, though its stderr is not a tty.
        mininterval=TERMINAL_INTERVAL_SECONDS if terminal or "ipykernel" in sys.modules else LOG_INTERVAL_SECONDS,
        smoothing=0.1,  # the rate and ETA follow recent chunks rather than only the average since the start
    )
    if not enabled:  # left out otherwise, so that tqdm's TQDM_DISABLE environment variable applies
        options["disable"] = True
    return tqdm(**options)
