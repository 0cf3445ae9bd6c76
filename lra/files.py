"""Opening data files: regular files only, never blocking, never reading past a bound taken from the format.

A data directory may hold anything where a file belongs: a FIFO (opening it for reading blocks until a writer
appears, i.e. forever), a link to /dev/zero (reads without end until MemoryError), a socket, a directory, a
dangling link, or a regular file far larger than its format allows. Every reader in lra/ opens its files
through this module, which:

- follows links and checks the target with os.stat BEFORE opening it: anything but a regular file is an
  `LRADataError` naming the path (and the link's target) and what was expected, so a FIFO or a device is
  never opened. A link to a regular file anywhere (a dataset linked in from another disk) is fine;
- opens with O_NONBLOCK and checks again with fstat, so a file swapped for a FIFO between the two checks still
  cannot block;
- refuses a file larger than the caller's `max_bytes` (a bound from the format: a CIFAR-10 batch, a PNG of the
  expected size, ...) before reading it, and `read_bounded` never reads more than that even if the file grows;
- `bounded_lines` bounds each line of a text file (a TSV row, a metadata line), for formats whose files may be
  large but whose lines are not.

Messages are one line: ``<path>: expected the CIFAR-10 batch (a regular file), found a FIFO (named pipe)``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from lra.errors import LRADataError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return f"a file of type {stat.S_IFMT(mode):#o}"


def _via_link(path: str) -> str:
    """' (a link to <target>)' when `path` resolves elsewhere through links, else ''."""
    target = os.path.realpath(path)
    return f" (a link to {target})" if target != os.path.abspath(path) else ""


def _check(path: str, info: os.stat_result, what: str, max_bytes: int | None) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise LRADataError(f"{path}: expected {what} (a regular file), found {_kind(info.st_mode)}{_via_link(path)}")
    if max_bytes is not None and info.st_size > max_bytes:
        raise LRADataError(
            f"{path}: {info.st_size:,} bytes, larger than {what} can be (at most {max_bytes:,} bytes){_via_link(path)}"
        )


def check_regular(path: str, what: str, max_bytes: int | None = None) -> os.stat_result:
    """os.stat of `path` (links followed) if it is a regular file of at most `max_bytes` bytes.

    Never opens the file. Raises LRADataError naming `path` and `what` (e.g. "the CIFAR-10 batch") for a missing
    file, a dangling link, anything but a regular file, or a file over the bound.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise LRADataError(
                f"{path}: cannot read {what}: a link to {os.readlink(path)}, which does not exist"
            ) from None
        raise LRADataError(f"{path}: cannot read {what} (No such file or directory)") from None
    except (OSError, ValueError) as error:  # a link loop, a component that is not a directory, a NUL in the name
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise LRADataError(f"{path}: cannot read {what} ({reason})") from None
    _check(path, info, what, max_bytes)
    return info


def open_regular(path: str, what: str, max_bytes: int | None = None) -> BinaryIO:
    """`path` opened for binary reading, after `check_regular`; the same checks are repeated on the open file.

    The caller bounds what it reads (see `read_bounded` and `bounded_lines`); the file's size when opened is
    `os.fstat(handle.fileno()).st_size`.
    """
    check_regular(path, what, max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        raise LRADataError(f"{path}: cannot read {what} ({error.strerror or error})") from None
    try:
        _check(path, os.fstat(descriptor), what, max_bytes)  # replaced by something else since check_regular?
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_bounded(path: str, what: str, max_bytes: int) -> bytes:
    """The whole content of the regular file `path`, refused (LRADataError) when over `max_bytes` bytes.

    Memory follows the file's size; a file that grows while it is read is read up to the bound, no further.
    """
    with open_regular(path, what, max_bytes) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(size + 1)  # one byte more than expected: a file that grew since fstat
        if len(data) > size:
            data += handle.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:
        raise LRADataError(f"{path}: grew past {max_bytes:,} bytes while being read, larger than {what} can be")
    return data


def bounded_lines(handle: BinaryIO, path: str, max_line: int, what: str) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line with its ending) of a binary file, each at most `max_line` bytes.

    A longer line is an LRADataError naming the file and the line (`what` says what a line is, e.g. "a ListOps
    row"); at most max_line + 1 bytes are held for it.
    """
    line_number = 0
    while True:
        line = handle.readline(max_line + 1)
        if not line:
            return
        line_number += 1
        if len(line) > max_line:
            raise LRADataError(f"{path}, line {line_number}: longer than {max_line:,} bytes, too long for {what}")
        yield line_number, line
