"""Download the official data of a task and unpack it into the layout the readers expect.

    python -m lra.download TARGET [TARGET ...] --data_dir=DIR [--mirror=URL] [--retries=4] [--no_progress]
    python -m lra.download --list           every target, what it fetches, its size and licence

A TARGET is a task below or a corpus of the LM task (enwik8, text8, pg19: lra/download_corpora.py, which also
describes their flags --splits, --max_files and --jobs); lra/download_cli.py is the command line.

Tasks and what they fetch (origins, sizes and licences: WORKSPACE.md, "Data"):

    task            fetches and unpacks                                  --config.data.data_dir (under DIR)
    listops         lra_release.gz: listops-1000/                        lra_release/lra_release/listops-1000
    retrieval       lra_release.gz: tsv_data/new_aan_pairs.*             lra_release/lra_release/tsv_data
    pathfinder      lra_release.gz: pathfinder32/ (every difficulty)     lra_release/lra_release/pathfinder32
    pathx           lra_release.gz: pathfinder128/ (every difficulty)    lra_release/lra_release/pathfinder128
    text            aclImdb_v1.tar.gz: {train,test}/{neg,pos}/, README   aclImdb
    image           cifar-10-python.tar.gz: cifar-10-batches-py/         cifar-10-batches-py
    mnist, pmnist   the four MNIST IDX .gz files (not unpacked)          mnist
    fashion_mnist   the four Fashion-MNIST IDX .gz files                 fashion_mnist

Archives are downloaded to `DIR/downloads/` and kept there: the four tasks of the LRA release share one
`lra_release.gz` (several GB), so it is fetched once per DIR, and several of those tasks named in one command
are unpacked in a single pass over it. Members keep their paths inside the archive (as `tar x` would write
them), but only the members a task needs are written: the archive is read as a stream, never unpacked whole.
The IDX files go straight to `DIR/mnist/` and `DIR/fashion_mnist/` (the reader reads them gzipped).

Downloads go to `<file>.part` first and are resumed with an HTTP Range request after an interruption, within
the run (`--retries` consecutive failures without progress, with a growing pause) or by running the same
command again. A server that ignores Range (answers 200 with the whole file) makes the download restart from
byte 0. The sha256 and md5 digests listed in `RESOURCES` (from public sources; none is known for
lra_release.gz) are checked before a file is used; a file that fails is moved to `<file>.bad` and the command
stops with an error naming the file and both digests. Unpacking is safe: absolute paths, `..` components,
links that leave the unpacked tree and special files are refused; a task's directory appears (by a rename from
a staging directory inside DIR) only when complete. A task whose files are already in place is not downloaded
again, and runs on the same DIR take turns (a lock file, DIR/.lra_download.lock). The command ends by printing,
on stdout, the training command of each task (`train_command`); progress and messages go to stderr.

`--mirror=URL` (or the environment variable LRA_MIXERS_DOWNLOAD_MIRROR) replaces the official hosts: every file
is then fetched from `URL/<mirror path>`, with the mirror paths of `RESOURCES` (`lra_release.gz`,
`aclImdb_v1.tar.gz`, `cifar-10-python.tar.gz`, `mnist/<file>`, `fashion-mnist/<file>`; the corpora's:
`enwik8.zip`, `text8.zip`, `deepmind-gutenberg/<split>/<id>.txt`). URL may be http(s), file:, or a local directory.
A known size is checked too (after the digests): the only check of the corpora's zips, for which no digest is
published.

`command_for(target)` is the download command line of a task or corpus; the readers' "not found" errors include it
(`download_hint`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import os
import pathlib
import posixpath
import re
import shlex
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Sequence

MIRROR_ENV = "LRA_MIXERS_DOWNLOAD_MIRROR"
DOWNLOADS_DIR = "downloads"  # archives, under --data_dir
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60.0  # per socket operation (connect, each read)
RETRY_DELAY_SECONDS = 1.0  # pause before retry k is RETRY_DELAY_SECONDS * 2**(k-1), at most MAX_RETRY_DELAY
MAX_RETRY_DELAY_SECONDS = 30.0
USER_AGENT = "lra-mixers-download/1 (python urllib)"
RETRYABLE_HTTP_CODES = (408, 429, 500, 502, 503, 504)


class DownloadError(RuntimeError):
    """A download, verification or unpacking failure; its message is one line naming the URL or file."""


@dataclasses.dataclass(frozen=True)
class Resource:
    """One file to fetch.

    url: the official location. mirror_path: its path under a --mirror (and, for archives, its name under
    DIR/downloads). size, sha256, md5: as published (None when no reliable source gives it).
    """

    url: str
    mirror_path: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None

    @property
    def name(self) -> str:
        return posixpath.basename(self.mirror_path)


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# Sizes and digests: aclImdb from TFDS's checksums.tsv (sha256) and torchtext (md5); CIFAR-10 sha256 from
# Keras's cifar10 loader, md5 from torchvision; MNIST and Fashion-MNIST sha256 from TFDS's url_checksums, md5
# from torchvision (and the Fashion-MNIST README). lra_release.gz: none published (about 7.7 GB).
RESOURCES: dict[str, Resource] = {
    "lra_release": Resource("https://storage.googleapis.com/long-range-arena/lra_release.gz", "lra_release.gz"),
    "aclImdb": Resource(
        "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz", "aclImdb_v1.tar.gz", 84_125_825,
        sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
        md5="7c2ac02c03563afcf9b574c7e56c153a"),
    "cifar10": Resource(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz", 170_498_071,
        sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        md5="c58f30108f718f92721af3b95e74349a"),
    "mnist/train-images": Resource(
        _MNIST_URL + "train-images-idx3-ubyte.gz", "mnist/train-images-idx3-ubyte.gz", 9_912_422,
        sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "mnist/train-labels": Resource(
        _MNIST_URL + "train-labels-idx1-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz", 28_881,
        sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        md5="d53e105ee54ea40749a09fcbcd1e9432"),
    "mnist/test-images": Resource(
        _MNIST_URL + "t10k-images-idx3-ubyte.gz", "mnist/t10k-images-idx3-ubyte.gz", 1_648_877,
        sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        md5="9fb629c4189551a2d022fa330f9573f3"),
    "mnist/test-labels": Resource(
        _MNIST_URL + "t10k-labels-idx1-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz", 4_542,
        sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        md5="ec29112dd5afa0611ce80d1b7f02629c"),
    "fashion_mnist/train-images": Resource(
        _FASHION_URL + "train-images-idx3-ubyte.gz", "fashion-mnist/train-images-idx3-ubyte.gz", 26_421_880,
        sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "fashion_mnist/train-labels": Resource(
        _FASHION_URL + "train-labels-idx1-ubyte.gz", "fashion-mnist/train-labels-idx1-ubyte.gz", 29_515,
        sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        md5="25c81989df183df01b3e8a0aad5dffbe"),
    "fashion_mnist/test-images": Resource(
        _FASHION_URL + "t10k-images-idx3-ubyte.gz", "fashion-mnist/t10k-images-idx3-ubyte.gz", 4_422_102,
        sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        md5="bef4ecab320f06d8554ea6380940ec79"),
    "fashion_mnist/test-labels": Resource(
        _FASHION_URL + "t10k-labels-idx1-ubyte.gz", "fashion-mnist/t10k-labels-idx1-ubyte.gz", 5_148,
        sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        md5="bb300cfdad3c16e7a12a480ee83cd310"),
}


@dataclasses.dataclass(frozen=True)
class TaskData:
    """Where a task's files come from and where they go.

    directory: relative to --data_dir, what --config.data.data_dir must point at. required: paths relative to
    `directory` that must all exist for the data to count as present. archive / members: a key of RESOURCES
    and the member-name prefixes to unpack from it ("a/b/" is a subtree, anything else a name prefix).
    files: keys of RESOURCES downloaded straight into `directory`. train_flags: the training command's flags
    besides data_dir and workdir.
    """

    directory: str
    required: tuple[str, ...]
    train_flags: tuple[str, ...]
    archive: str | None = None
    members: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


_LRA = "lra_release/lra_release/"
_AAN = tuple(f"new_aan_pairs.{split}.tsv" for split in ("train", "eval", "test"))
_IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz")
_IDX_KEYS = ("train-images", "train-labels", "test-images", "test-labels")
_HARD = "curv_contour_length_14"  # the difficulty the configs read ("hard")
_IDX_FLAGS = ("--config.data.val_size=6000",)  # the image config holds out 5,000 (CIFAR-10); MNIST: 6,000

TASKS: dict[str, TaskData] = {
    # Official ListOps rows are up to 1,999 tokens long: the "cpu" variant's seq_len of 200 would cut them.
    "listops": TaskData(_LRA + "listops-1000", tuple(f"basic_{s}.tsv" for s in ("train", "val", "test")),
                        ("--config=listops", "--config.data.source=files", "--config.data.seq_len=2000"),
                        archive="lra_release", members=(_LRA + "listops-1000/",)),
    "text": TaskData("aclImdb", ("train/neg", "train/pos", "test/neg", "test/pos"), ("--config=text",),
                     archive="aclImdb",
                     members=tuple(f"aclImdb/{s}/{label}/" for s in ("train", "test") for label in ("neg", "pos"))
                     + ("aclImdb/README",)),
    "retrieval": TaskData(_LRA + "tsv_data", _AAN, ("--config=retrieval",),
                          archive="lra_release", members=(_LRA + "tsv_data/new_aan_pairs.",)),
    "image": TaskData("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
                      ("--config=image",), archive="cifar10", members=("cifar-10-batches-py/",)),
    "mnist": TaskData("mnist", _IDX, ("--config=image", "--config.task=mnist") + _IDX_FLAGS,
                      files=tuple(f"mnist/{key}" for key in _IDX_KEYS)),
    "pmnist": TaskData("mnist", _IDX, ("--config=image", "--config.task=pmnist") + _IDX_FLAGS,
                       files=tuple(f"mnist/{key}" for key in _IDX_KEYS)),
    "fashion_mnist": TaskData("fashion_mnist", _IDX, ("--config=image", "--config.task=fashion_mnist") + _IDX_FLAGS,
                              files=tuple(f"fashion_mnist/{key}" for key in _IDX_KEYS)),
    "pathfinder": TaskData(_LRA + "pathfinder32", (f"{_HARD}/metadata", f"{_HARD}/imgs"),
                           ("--config=pathfinder", "--config.data.source=files"),
                           archive="lra_release", members=(_LRA + "pathfinder32/",)),
    "pathx": TaskData(_LRA + "pathfinder128", (f"{_HARD}/metadata", f"{_HARD}/imgs"),
                      ("--config=pathx", "--config.data.source=files"),
                      archive="lra_release", members=(_LRA + "pathfinder128/",)),
}


# ---------------------------------------------------------------------------------------------------------
# Command lines.


def _corpora():
    from lra import download_corpora  # imported here: it imports this module

    return download_corpora.CORPORA


def _targets_text() -> str:
    return f"tasks: {', '.join(TASKS)}; corpora: {', '.join(_corpora())}"


def _target_directory(target: str) -> str | None:
    """Where `target` is unpacked, relative to --data_dir; None when it is no download target."""
    if target in TASKS:
        return TASKS[target].directory
    corpus = _corpora().get(target)
    return corpus.directory if corpus else None


def command_for(task: str, data_dir: str = "DIR") -> str:
    """The command line that downloads the official files of `task` (a task or a corpus) into `data_dir`."""
    if _target_directory(task) is None:
        raise ValueError(f"no download for task {task!r}; {_targets_text()}")
    return f"python -m lra.download {task} --data_dir={shlex.quote(data_dir)}"


def download_hint(task: str, data_dir: str | None = None, *, alternatives: Sequence[str] = ()) -> str:
    """'download it with: python -m lra.download TASK --data_dir=ROOT' for a "not found" error message.

    ROOT is derived from `data_dir` (the directory the reader was given) when it ends with the layout this
    module writes (e.g. `/data/aclImdb` -> `/data`); otherwise it is the placeholder DIR. `alternatives` names
    other tasks the same command serves with another TASK (e.g. fashion_mnist for the IDX reader).
    """
    directory = _target_directory(task)
    if directory is None:
        return ""
    root = "DIR"
    if data_dir:
        normalized = os.path.normpath(data_dir)
        suffix = os.path.normpath(directory)
        if normalized == suffix:
            root = "."
        elif normalized.endswith(os.sep + suffix):
            root = normalized[: -len(suffix) - 1] or os.sep
    others = f" (or {', '.join(alternatives)} instead of {task})" if alternatives else ""
    return f"download it with: {command_for(task, root)}{others}"


def train_command(task: str, data_dir: str) -> str:
    """The training command for `task` on the files this module put under `data_dir` (absolute paths)."""
    spec = TASKS[task]
    directory = os.path.join(os.path.abspath(data_dir), *spec.directory.split("/"))
    flags = [*spec.train_flags, f"--config.data.data_dir={directory}", f"--workdir=workdirs/{task}"]
    return " ".join(["python", "-m", "experiments.train", *(shlex.quote(flag) for flag in flags)])


def task_dir(task: str, data_dir: str) -> str:
    return os.path.join(data_dir, *TASKS[task].directory.split("/"))


def missing_files(task: str, data_dir: str) -> list[str]:
    """The required paths of `task` absent under `data_dir` (empty: the data are in place)."""
    directory = task_dir(task, data_dir)
    return [path for path in TASKS[task].required if not os.path.exists(os.path.join(directory, *path.split("/")))]


# ---------------------------------------------------------------------------------------------------------
# Fetching one file: resume, retries, verification.


def resource_url(resource: Resource, mirror: str | None) -> str:
    """The URL to fetch `resource` from: the official one, or `<mirror>/<mirror_path>`."""
    if not mirror:
        return resource.url
    if "://" not in mirror:  # a local directory
        mirror = pathlib.Path(mirror).resolve().as_uri()
    return mirror.rstrip("/") + "/" + urllib.parse.quote(resource.mirror_path)


class _Interrupted(Exception):
    """The transfer broke off (connection dropped, timed out, or ended before its announced length)."""


def _file_digests(path: str, names: Iterable[str]) -> dict[str, str]:
    hashes = {name: hashlib.new(name) for name in names}
    if hashes:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
                for digest in hashes.values():
                    digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in hashes.items()}


def verify(path: str, resource: Resource, *, shown_as: str | None = None) -> None:
    """Check `path` against the resource's published sha256 and md5 (whichever are known), then its size.

    On a mismatch the file is moved to `<shown_as>.bad` (shown_as: the final name, default `path`) and
    DownloadError names the file and both digests.
    """
    expected = {name: value.lower() for name, value in (("sha256", resource.sha256), ("md5", resource.md5))
                if value}
    found = _file_digests(path, expected)
    for name, value in expected.items():
        if found[name] != value:
            target = shown_as or path
            bad = target + ".bad"
            os.replace(path, bad)
            raise DownloadError(f"{target}: {name} mismatch: expected {value}, got {found[name]} (the file was "
                                f"moved to {bad}; run the command again to download it afresh)")
    size = os.path.getsize(path)
    if resource.size is not None and size != resource.size:  # the check left when no digest is published
        target = shown_as or path
        os.replace(path, target + ".bad")
        raise DownloadError(f"{target}: {size:,} bytes, expected {resource.size:,} (the file was moved to "
                            f"{target}.bad; run the command again to download it afresh)")


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of a Content-Range header 'bytes a-b/total' or 'bytes */total'; None when absent."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None
    first = int(match.group(1)) if match.group(1) else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return first, total


def _open(url: str, offset: int):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS)


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm  # imported here: the readers import this module for its messages only

    # Sizes as "1.23GB/7.70GB" (the default shows "1.23G/7.70G"), then elapsed<remaining (the ETA) and the rate.
    sized = "{l_bar}{bar}| {n_fmt}B/{total_fmt}B [{elapsed}<{remaining}, {rate_fmt}]" if total else None
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, bar_format=sized,
                file=sys.stderr, disable=not enabled, dynamic_ncols=True, mininterval=0.5)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _transfer(response, handle, bar, length: int | None) -> int:
    """Copy the body of `response` to `handle`; raise _Interrupted when it breaks off before `length` bytes."""
    received = 0
    while True:
        try:
            chunk = response.read(CHUNK_BYTES)
        except (http.client.HTTPException, OSError) as error:  # resets, timeouts, broken chunked encoding
            raise _Interrupted(f"{type(error).__name__}: {error}") from None
        if not chunk:
            break
        handle.write(chunk)
        received += len(chunk)
        bar.update(len(chunk))
    if length is not None and received < length:
        raise _Interrupted(f"the connection closed after {received} of {length} bytes")
    return received


class _Bar:
    """The progress bar of one file, created on the first response (when the size is known)."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc, self.enabled, self.bar = desc, enabled, None

    def start(self, total: int | None, initial: int):
        if self.bar is None:
            self.bar = _progress(total, initial, self.desc, self.enabled)
        else:
            self.bar.reset(total)
            self.bar.update(initial)
        return self.bar

    def clear(self) -> None:
        if self.bar is not None:
            self.bar.clear()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fetch(resource: Resource, destination: str, *, mirror: str | None = None, retries: int = 4,
          progress: bool = True) -> None:
    """Download `resource` to `destination` (via `<destination>.part`), resuming and retrying; verify it.

    An existing `destination` is verified (when digests are known) and kept. A `.part` left by an earlier run
    is continued from its size with a Range request; a server answering 200 instead of 206 restarts it from
    byte 0. `retries` consecutive failures without progress end the attempt with DownloadError naming the URL;
    the `.part` stays for the next run. HTTP errors other than 408/429/5xx fail at once.
    """
    if os.path.exists(destination):
        verify(destination, resource)
        return
    url = resource_url(resource, mirror)
    part = destination + ".part"
    os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
    failures = 0
    bar = _Bar(resource.name, progress)
    try:
        while True:
            offset = os.path.getsize(part) if os.path.exists(part) else 0
            try:
                if _attempt(url, part, offset, resource, bar):
                    break
                continue  # the .part was discarded: start over
            except _Interrupted as error:
                now = os.path.getsize(part) if os.path.exists(part) else 0
                failures = 0 if now > offset else failures + 1
                if failures > retries:
                    raise DownloadError(
                        f"{url}: {error}; {failures} attempts in a row made no progress; the partial download "
                        f"{part} ({now} bytes) is kept: run the same command again to resume") from None
                delay = min(RETRY_DELAY_SECONDS * 2 ** (failures - 1), MAX_RETRY_DELAY_SECONDS) if failures else 0
                bar.clear()
                _say(f"{resource.name}: {error}; retrying from byte {now}" + (f" in {delay:g} s" if delay else ""))
                time.sleep(delay)
    finally:
        bar.close()
    verify(part, resource, shown_as=destination)
    os.replace(part, destination)


def _attempt(url: str, part: str, offset: int, resource: Resource, bar: _Bar) -> bool:
    """One request. True when `part` now holds the whole file; False to start over (the .part was removed)."""
    try:
        response = _open(url, offset)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:  # Range Not Satisfiable: the .part may already be complete
            _, total = _content_range(error.headers.get("Content-Range"))
            if offset in (total, resource.size):
                return True
            _say(f"{resource.name}: the server refused to resume at byte {offset}; restarting from byte 0")
            os.remove(part)
            return False
        if error.code in RETRYABLE_HTTP_CODES:
            raise _Interrupted(f"HTTP {error.code} {error.reason}") from None
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}"
                            + (f"; the partial download {part} is kept" if offset else "")) from None
    except urllib.error.URLError as error:
        raise _Interrupted(f"cannot connect ({error.reason})") from None
    except (http.client.HTTPException, OSError) as error:
        raise _Interrupted(f"{type(error).__name__}: {error}") from None
    with response:
        status = getattr(response, "status", None) or 200  # file: URLs have no status
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if offset and status == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != offset:
                _say(f"{resource.name}: the server resumed at byte {first}, not {offset}; restarting from byte 0")
                os.remove(part)
                return False
            mode = "ab"
            if total is None:
                total = offset + length if length is not None else resource.size
        else:
            if offset:
                _say(f"{resource.name}: the server ignored the request to resume at byte {offset} (HTTP "
                     f"{status}); restarting from byte 0")
            offset, mode = 0, "wb"
            total = length if length is not None else resource.size
        with open(part, mode) as handle:
            _transfer(response, handle, bar.start(total, offset), length)
    return True


# ---------------------------------------------------------------------------------------------------------
# Unpacking selected members of a tar stream, safely.


class _CountingReader:
    """A file object that advances a progress bar by the bytes read from it."""

    def __init__(self, handle, bar) -> None:
        self._handle, self._bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._bar.update(len(data))
        return data


def _member_path(name: str) -> tuple[str, bool]:
    """(the member's name without '.' components and repeated slashes, whether the name is safe to write)."""
    unsafe = name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or "\x00" in name
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]
    unsafe = unsafe or ".." in parts
    return "/".join(parts), not unsafe


def _selected(name: str, prefixes: Sequence[str]) -> str | None:
    """The first prefix `name` falls under: a subtree 'a/b/' (or the directory 'a/b' itself) or a name prefix."""
    for prefix in prefixes:
        if name.startswith(prefix) or (prefix.endswith("/") and name == prefix[:-1]):
            return prefix
    return None


def _inside(path: str, root: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base + os.sep)


def unpack(archive: str, destination: str, prefixes: Sequence[str], *, progress: bool = True) -> dict[str, int]:
    """Write the members of the tar(.gz) `archive` selected by `prefixes` under `destination`, keeping their paths.

    The archive is read once as a stream. Refused with DownloadError naming the archive and member (nothing
    of that member is written): an absolute name or one with a `..` component, a symbolic link whose target
    lies outside `destination` (after following every link), a hard link to a member not written before, and
    device or FIFO members. Hard links are written as copies. Returns {prefix: number of members written}.
    """
    counts = dict.fromkeys(prefixes, 0)
    os.makedirs(destination, exist_ok=True)
    size = os.path.getsize(archive)
    with open(archive, "rb") as raw, _progress(size, 0, f"unpack {os.path.basename(archive)}", progress) as bar:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = _CountingReader(raw, bar)
        if gzipped:  # inflated here, not by tarfile: gzip notices a truncated stream and checks the CRC
            stream = gzip.GzipFile(fileobj=stream, mode="rb")
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    tar.members = []  # a stream keeps every header otherwise: millions for lra_release.gz
                    name, safe = _member_path(member.name)
                    prefix = _selected(name, prefixes)
                    if prefix is None:
                        continue
                    where = f"{archive}: member {member.name!r}"
                    if not safe:
                        raise DownloadError(f"{where}: refusing an absolute path or a '..' component")
                    target = os.path.join(destination, *name.split("/"))
                    if not _inside(os.path.dirname(target), destination):
                        raise DownloadError(f"{where}: its directory leads outside {destination} through a link")
                    _write_member(tar, member, name, target, destination, where)
                    counts[prefix] += 1
            while stream.read(CHUNK_BYTES):  # to the end: tarfile stops quietly at a header cut short
                pass
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise  # a local file system error (disk full, permissions): not the archive's fault
            raise DownloadError(f"{archive}: not a readable tar archive ({type(error).__name__}: {error}); "
                                "delete it and run the command again") from None
    return counts


def _write_member(tar, member: tarfile.TarInfo, name: str, target: str, destination: str, where: str) -> None:
    if member.isdir():
        os.makedirs(target, exist_ok=True)
        return
    if member.issym() or member.islnk():
        link, safe = _member_path(member.linkname)
        absolute = member.linkname.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", member.linkname))
        if absolute or (member.islnk() and not safe):
            raise DownloadError(f"{where}: refusing a link to {member.linkname!r}")
        source = (os.path.join(os.path.dirname(target), member.linkname) if member.issym()
                  else os.path.join(destination, *link.split("/")))
        if not _inside(source, destination):
            raise DownloadError(f"{where}: refusing a link to {member.linkname!r}, outside the unpacked files")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target):
            os.remove(target)
        if member.issym():
            os.symlink(member.linkname, target)
        elif os.path.isfile(source):
            shutil.copyfile(source, target)
        else:
            raise DownloadError(f"{where}: a hard link to {member.linkname!r}, which was not unpacked before it")
        return
    if not member.isfile():
        raise DownloadError(f"{where}: refusing a special file (device or FIFO)")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target):
        os.remove(target)  # never write through a link an earlier member left there
    source = tar.extractfile(member)
    with open(target, "wb") as handle:
        shutil.copyfileobj(source, handle, CHUNK_BYTES)
    with contextlib.suppress(OSError, OverflowError, ValueError):
        os.utime(target, (member.mtime, member.mtime))


# ---------------------------------------------------------------------------------------------------------
# Tasks.


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on `path` (a lock file) so that two runs never write the same .part; waits for it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another download holding {path}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install(tasks: Sequence[str], staging: str, data_dir: str, archive: str) -> None:
    """Move each task's unpacked directory from `staging` into place, after checking it is complete."""
    for task in tasks:
        missing = missing_files(task, staging)
        if missing:
            expected = posixpath.join(TASKS[task].directory, missing[0])
            raise DownloadError(f"{archive}: no {expected} in the archive; expected the official "
                                f"{os.path.basename(archive)} ({task} needs {', '.join(TASKS[task].required)})")
        target = task_dir(task, data_dir)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(task_dir(task, staging), target)  # atomic: the directory appears complete or not at all


LOCK_NAME = ".lra_download.lock"  # in --data_dir: one download run at a time per directory
STAGING_PREFIX = ".unpack-"  # in --data_dir: archives are unpacked here, then moved into place


def prepare(tasks: Sequence[str], data_dir: str, *, mirror: str | None = None, retries: int = 4,
            progress: bool = True) -> list[str]:
    """Download and unpack `tasks` under `data_dir`; returns the training command of each task, in order.

    Tasks whose files are already in place are skipped without a request. Runs on the same `data_dir` take
    turns (a lock file). Raises DownloadError (one line).
    """
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; tasks: {', '.join(TASKS)}")
    data_dir = os.path.abspath(data_dir)
    tasks = list(dict.fromkeys(tasks))
    todo = [task for task in tasks if missing_files(task, data_dir)]
    if todo:
        os.makedirs(data_dir, exist_ok=True)
        with _locked(os.path.join(data_dir, LOCK_NAME)):
            _prepare_locked(todo, data_dir, mirror, retries, progress)
    for task in tasks:
        _say(f"{task}: {'ready' if task in todo else 'found'} in {task_dir(task, data_dir)}")
    return [train_command(task, data_dir) for task in tasks]


def _prepare_locked(tasks: list[str], data_dir: str, mirror: str | None, retries: int, progress: bool) -> None:
    for name in os.listdir(data_dir):  # staging left by a run that was killed (we hold the lock: none is active)
        if name.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)
    tasks = [task for task in tasks if missing_files(task, data_dir)]  # another run may have finished some
    for task in tasks:
        if TASKS[task].archive and os.path.isdir(task_dir(task, data_dir)):
            raise DownloadError(f"{task_dir(task, data_dir)}: exists but lacks "
                                f"{', '.join(missing_files(task, data_dir))}; move it away and run the command again")
    for task in tasks:  # files used as downloaded (IDX); fetch verifies and keeps those already there
        for key in TASKS[task].files:
            resource = RESOURCES[key]
            destination = os.path.join(task_dir(task, data_dir), resource.name)
            fetch(resource, destination, mirror=mirror, retries=retries, progress=progress)
    by_archive: dict[str, list[str]] = {}
    for task in tasks:
        if TASKS[task].archive:
            by_archive.setdefault(TASKS[task].archive, []).append(task)
    for key, archive_tasks in by_archive.items():
        resource = RESOURCES[key]
        archive = os.path.join(data_dir, DOWNLOADS_DIR, resource.name)
        fetch(resource, archive, mirror=mirror, retries=retries, progress=progress)
        prefixes = [prefix for task in archive_tasks for prefix in TASKS[task].members]
        _say(f"unpacking {', '.join(archive_tasks)} from {archive}")
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=data_dir)
        try:
            unpack(archive, staging, prefixes, progress=progress)
            _install(archive_tasks, staging, data_dir, archive)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Command line (lra/download_cli.py).


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lra.download`: lra/download_cli.py parses the flags and calls `prepare` and the corpora's."""
    from lra import download_cli

    return download_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
