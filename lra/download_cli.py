"""The command line of `python -m lra.download` (lra/download.py): flags, --list, one-line errors, exit codes.

Targets are the tasks of lra/download.py (`TASKS`, fetched by `download.prepare`) and the corpora of
lra/download_corpora.py (`CORPORA`, fetched by `download_corpora.prepare`); the training command of each target
is printed on stdout in the order given, progress and messages go to stderr. Exit status 0, 1 for a failed
download (one line, `error: ...`), 2 for bad flags (one line naming the flag and the targets), 130 when
interrupted (partial downloads are kept for the next run).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lra import download, download_corpora
from lra.download import DownloadError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, with the targets, exit status 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}; {download._targets_text()}\n")


def _size_text(size: int) -> str:
    return f"{size:,} bytes"


# Licences for --list (WORKSPACE.md, "Data", names the sources); keyed by a task's archive or first file.
_LICENCES = {
    "lra_release": "none stated for the data (LRA's code: Apache-2.0); cite LRA and its sources",
    "aclImdb": "none stated; cite Maas et al., ACL 2011",
    "cifar10": "none stated; cite Krizhevsky, 2009",
    "mnist/train-images": "CC BY-SA 3.0 (LeCun and Cortes)",
    "fashion_mnist/train-images": "MIT (Zalando SE)",
}


def target_listing() -> list[str]:
    """The lines of --list: every target, what it fetches, the download size and the licence."""
    rows = []
    for task, spec in download.TASKS.items():
        key = spec.archive or spec.files[0]
        keys = [spec.archive] if spec.archive else list(spec.files)
        sizes = [download.RESOURCES[k].size for k in keys]
        size = (_size_text(sum(sizes)) if None not in sizes else
                "about 7.7 GB, shared by listops, retrieval, pathfinder, pathx")
        rows.append((task, ", ".join(download.RESOURCES[k].name for k in keys), size, _LICENCES.get(key, "")))
    for name, corpus in download_corpora.CORPORA.items():
        fetches = corpus.archive.name if corpus.archive else "deepmind-gutenberg/{train,validation,test}/*.txt"
        rows.append((name, fetches, corpus.size, corpus.licence))
    width = max(len(row[0]) for row in rows) + 2
    lines = []
    for target, fetches, size, licence in rows:
        lines += [f"{target:<{width}}{fetches}", f"{'':<{width}}size: {size}", f"{'':<{width}}licence: {licence}"]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Download the official files of tasks or LM corpora and print the training commands."""
    parser = _Parser(prog="python -m lra.download", description=main.__doc__)
    parser.add_argument("tasks", nargs="*", metavar="TARGET",
                        help=f"one or more of: {', '.join([*download.TASKS, *download_corpora.CORPORA])}")
    parser.add_argument("--data_dir", help="root directory for the downloads and the unpacked data (required)")
    parser.add_argument("--list", action="store_true", help="list the targets (what, size, licence) and exit")
    parser.add_argument("--mirror", default=os.environ.get(download.MIRROR_ENV) or None,
                        help=f"base URL (or directory) replacing the official hosts (default: ${download.MIRROR_ENV})")
    parser.add_argument("--retries", type=int, default=4,
                        help="retries of a transfer that makes no progress (default 4)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--splits", default=None,
                        help="pg19 only: the splits, comma-separated (default train,validation,test)")
    parser.add_argument("--max_files", type=int, default=0, help="pg19 only: the first N books of each split (0: all)")
    parser.add_argument("--jobs", type=int, default=8, help="pg19 only: books fetched at once (default 8)")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(target_listing()), flush=True)
        return 0
    if not args.tasks:
        parser.error("the following arguments are required: TARGET (or --list)")
    if args.data_dir is None:
        parser.error("the following arguments are required: --data_dir")
    unknown = [task for task in args.tasks if task not in download.TASKS and task not in download_corpora.CORPORA]
    if unknown:
        parser.error(f"unknown task {unknown[0]!r}")
    if args.retries < 0:
        parser.error(f"--retries must be >= 0, got {args.retries}")
    splits = [split for split in (args.splits or ",".join(download_corpora.PG19_SPLITS)).split(",") if split]
    wrong = [split for split in splits if split not in download_corpora.PG19_SPLITS]
    if wrong or not splits:
        parser.error(f"--splits={args.splits!r}: expected a comma-separated subset of "
                     f"{','.join(download_corpora.PG19_SPLITS)}")
    if args.max_files < 0:
        parser.error(f"--max_files must be >= 0 (0: every book), got {args.max_files}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    pg19_flags = [flag for flag, used in (("--splits", args.splits is not None), ("--max_files", args.max_files),
                                          ("--jobs", args.jobs != 8)) if used]
    if pg19_flags and "pg19" not in args.tasks:
        parser.error(f"{pg19_flags[0]} applies to the pg19 target only")
    tasks = [task for task in dict.fromkeys(args.tasks) if task in download.TASKS]
    names = [task for task in dict.fromkeys(args.tasks) if task in download_corpora.CORPORA]
    try:
        commands = dict(zip(tasks, download.prepare(tasks, args.data_dir, mirror=args.mirror, retries=args.retries,
                                           progress=not args.no_progress))) if tasks else {}
        if names:
            commands.update(download_corpora.prepare(names, args.data_dir, mirror=args.mirror, retries=args.retries,
                                            progress=not args.no_progress, splits=splits,
                                            max_files=args.max_files, jobs=args.jobs))
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the local side: disk full, permissions
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; partial downloads (*.part) are kept: run the same command again to resume",
              file=sys.stderr)
        return 130
    download._say("train with:")
    for target in dict.fromkeys(args.tasks):
        if commands.get(target):
            print(commands[target], flush=True)
    return 0
