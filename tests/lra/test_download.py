"""Tests for lra/download.py: fetching (resume, retries, digests), safe unpacking, the reader layout, the command line.

Everything is served by a local HTTP server (127.0.0.1, a free port, in a thread) from small archives written here in
the official formats: an `lra_release.gz` with ListOps TSVs, AAN pairs, a Pathfinder-32 and a Path-X tree (plus
decoys that must not be unpacked), an aclImdb tarball, a CIFAR-10 python tarball and MNIST / Fashion-MNIST IDX .gz
files. The published digests cannot match these fixtures, so in-process tests swap in the fixtures' own digests; the
subprocess tests use lra_release.gz, for which no digest is published. Nothing here touches the internet.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import os
import re
import shlex
import socket
import subprocess
import sys
import tarfile
import threading
import urllib.parse
from collections.abc import Callable

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from experiments import data as data_lib
from experiments.validation import validate_config
from lra import download, image, listops, retrieval, text
from lra import pathfinder as pf
from lra.errors import LRADataError
from tests.lra.test_lra_image import idx_bytes, write_cifar
from tests.lra.test_lra_retrieval import ROWS as AAN_ROWS
from tests.lra.test_lra_retrieval import write_aan
from tests.lra.test_lra_text import write_aclimdb

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LISTOPS_SIZES = (24, 6, 6)
PATHFINDER_SIZES = {"pathfinder": 20, "pathx": 10}


# ------------------------------------------------------------------------------------------- the fixture files


def tar_gz(root, names) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names:
            tar.add(os.path.join(root, name), arcname=name)
    return buffer.getvalue()


def lra_release_files(root) -> bytes:
    base = os.path.join(root, "lra_release", "lra_release")
    rows = listops.generate_listops(num_train=LISTOPS_SIZES[0], num_val=LISTOPS_SIZES[1], num_test=LISTOPS_SIZES[2],
                                    min_length=5, max_length=40, max_depth=3, max_args=4, seed=0, num_workers=1)
    listops.write_dataset(os.path.join(base, "listops-1000"), rows)
    write_aan(os.path.join(base, "tsv_data"))
    with open(os.path.join(base, "tsv_data", "README"), "w") as handle:  # not a member retrieval needs
        handle.write("decoy")
    pf.write_pathfinder_dataset(os.path.join(base, "pathfinder32"), pf.pathfinder_params(32, "hard"),
                                PATHFINDER_SIZES["pathfinder"], 0, num_workers=1, images_per_batch=8)
    pf.write_pathfinder_dataset(os.path.join(base, "pathfinder32"), pf.pathfinder_params(32, "easy"), 3, 0,
                                curv_dir="curv_baseline", num_workers=1)
    pf.write_pathfinder_dataset(os.path.join(base, "pathfinder128"), pf.pathfinder_params(128, "hard"),
                                PATHFINDER_SIZES["pathx"], 0, num_workers=1, images_per_batch=8)
    # Decoys: the release also holds copies outside lra_release/lra_release/ and resolutions nobody asked for.
    for decoy in ("lra_release/listops-1000/basic_train.tsv", "lra_release/lra_release/pathfinder64/x.txt"):
        os.makedirs(os.path.dirname(os.path.join(root, decoy)), exist_ok=True)
        with open(os.path.join(root, decoy), "w") as handle:
            handle.write("decoy")
    return tar_gz(root, ["lra_release"])


def cifar_files(root) -> bytes:
    rng = np.random.default_rng(1)
    directory = write_cifar(root, rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 10),
                            rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 4))
    with open(os.path.join(directory, "batches.meta"), "wb") as handle:
        handle.write(b"meta")
    return tar_gz(root, [image.CIFAR_DIR])


def idx_files(seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28)), "train-labels-idx1-ubyte.gz":
              rng.integers(0, 10, 10), "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 3)}
    return {name: gzip.compress(idx_bytes(array), mtime=0) for name, array in arrays.items()}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, bytes]:
    """URL path -> content, laid out as a --mirror (lra/download.py, Resource.mirror_path)."""
    root = tmp_path_factory.mktemp("official")
    write_aclimdb(root / "imdb" / "aclImdb")  # with unsup/, *.feat, urls_*.txt and imdb.vocab, as the original
    files = {"/lra_release.gz": lra_release_files(str(root / "lra")),
             "/aclImdb_v1.tar.gz": tar_gz(str(root / "imdb"), ["aclImdb"]),
             "/cifar-10-python.tar.gz": cifar_files(str(root / "cifar"))}
    files.update({f"/mnist/{name}": content for name, content in idx_files(2).items()})
    files.update({f"/fashion-mnist/{name}": content for name, content in idx_files(3).items()})
    return files


# ------------------------------------------------------------------------------------------------ the server


class FixtureServer:
    """Serves `files` over HTTP/1.0, honouring `Range: bytes=N-` unless honour_range is False, and logs requests.

    script[path]: actions for the next requests of `path`, one per request: ("drop", n) sends the headers of the
    whole answer but only n bytes of its body, then closes the connection; ("status", code) answers with an error.
    routes[path]: a function of the parsed query string returning a generated body (an API such as a bucket
    listing); such requests are logged with their query string.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        self.script: dict[str, list[tuple[str, int]]] = {}
        self.routes: dict[str, Callable[[dict[str, list[str]]], bytes]] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server API)
                raw_path, _, query = self.path.partition("?")
                path = urllib.parse.unquote(raw_path)
                requested = self.headers.get("Range")
                server.requests.append((f"{path}?{query}" if query else path, requested))
                action = server.script[path].pop(0) if server.script.get(path) else None
                if path in server.routes:
                    if action and action[0] == "status":
                        self.send_error(action[1])
                        return
                    body = server.routes[path](urllib.parse.parse_qs(query))
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if path not in server.files:
                    self.send_error(404)
                    return
                if action and action[0] == "status":
                    self.send_error(action[1])
                    return
                body, start = server.files[path], 0
                if requested and server.honour_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if action and action[0] == "drop":
                    payload = payload[: action[1]]  # and the connection closes when this handler returns
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # Polled every 50 ms (default 0.5 s), so that close() at each test's end takes no noticeable time.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(served):
    fixture = FixtureServer(served)
    yield fixture
    fixture.close()


@pytest.fixture(autouse=True)
def fixture_digests(served, monkeypatch):
    """The fixtures' own sizes and digests in place of the published ones (none for lra_release, as published)."""
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    monkeypatch.setattr(download, "RETRY_DELAY_SECONDS", 0.0)
    resources = {}
    for key, resource in download.RESOURCES.items():
        content = served["/" + resource.mirror_path]
        if key != "lra_release":
            resource = dataclasses.replace(resource, size=len(content), sha256=hashlib.sha256(content).hexdigest(),
                                           md5=hashlib.md5(content).hexdigest())
        resources[key] = resource
    monkeypatch.setattr(download, "RESOURCES", resources)


def run(tasks, data_dir, server, *extra) -> int:
    return download.main([*tasks, f"--data_dir={data_dir}", f"--mirror={server.url}", "--no_progress", *extra])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------- the printed command and the readers


def config_from_command(command: str):
    """The config `python -m experiments.train ...` builds from the printed flags (config_flags, like train.py)."""
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "experiments.train"], command
    args = argv[3:]
    (spec,) = [arg[len("--config="):] for arg in args if arg.startswith("--config=")]
    name, _, variant = spec.partition(":")
    assert "/" not in name and not name.endswith(".py"), "expected the bare config name"
    path = os.path.join(REPO, "experiments", "configs", f"{name}.py") + (f":{variant}" if variant else "")
    assert [arg for arg in args if not arg.startswith("--config")] == [f"--workdir=workdirs/{argv_task(args)}"]
    parsed = ["train", f"--config={path}", *[arg for arg in args if arg.startswith("--config.")]]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True, sys_argv=parsed)
    flag_values(parsed)
    return flag_values.config


def argv_task(args) -> str:
    (workdir,) = [arg for arg in args if arg.startswith("--workdir=")]
    return workdir.rsplit("/", 1)[1]


def test_every_task_downloads_unpacks_and_its_printed_command_validates_and_loads(tmp_path, server, capsys):
    data_dir = tmp_path / "data"
    assert run(list(download.TASKS), data_dir, server) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == len(download.TASKS)
    # Each file fetched once: the four LRA-release tasks share one archive and one pass over it.
    assert sorted(server.paths()) == sorted(server.files)
    for task, command in zip(download.TASKS, commands):
        assert command == download.train_command(task, str(data_dir))
        config = config_from_command(command)
        validate_config(config)
        assert config.task == task
        assert config.data.data_dir == os.path.join(data_dir, *download.TASKS[task].directory.split("/"))
        assert os.path.isabs(config.data.data_dir)
        config.data.cache_dir = str(tmp_path / "cache")
        if task in ("image", "mnist", "pmnist", "fashion_mnist"):
            config.data.val_size = 2  # the fixtures are tiny
        splits = data_lib.load_splits(config)
        assert all(len(split.labels) for split in splits.values()), task
        if task == "listops":
            assert config.data.seq_len == 2000 and config.data.source == "files"
            assert tuple(len(splits[s].labels) for s in ("train", "val", "test")) == LISTOPS_SIZES
            assert not any(split.num_truncated for split in splits.values())
        if task == "retrieval":
            assert splits["test"].labels.tolist() == [int(float(row[0])) for row in AAN_ROWS["test"]]
        if task in PATHFINDER_SIZES:
            assert sum(len(split.labels) for split in splits.values()) == PATHFINDER_SIZES[task]
        if task == "text":
            assert len(splits["test"].labels) == 4
    release = data_dir / "lra_release" / "lra_release"
    assert sorted(os.listdir(release)) == ["listops-1000", "pathfinder128", "pathfinder32", "tsv_data"]
    unpacked = [name for name in os.listdir(release / "tsv_data") if not name.endswith(".cache.npz")]
    assert sorted(unpacked) == sorted(retrieval.SPLIT_FILES.values())  # not tsv_data/README
    assert (release / "pathfinder32" / "curv_baseline" / "metadata").is_dir()  # the whole pathfinder32 tree
    assert not (data_dir / "lra_release" / "listops-1000").exists()
    assert sorted(os.listdir(data_dir / "aclImdb")) == ["README", "lra_text_bytes.cache.npz", "test", "train"]
    assert sorted(os.listdir(data_dir / "aclImdb" / "train")) == ["neg", "pos"]  # no unsup/, *.feat, urls_*
    assert sorted(os.listdir(data_dir / "mnist")) == sorted(f"{stem}.gz" for stem in image.IDX_FILES.values())
    assert not [name for name in os.listdir(data_dir) if name.startswith(".unpack-")]


def test_a_second_run_finds_the_data_and_requests_nothing(tmp_path, server, capsys):
    assert run(["listops", "text", "mnist"], tmp_path, server) == 0
    first = capsys.readouterr().out
    requested = len(server.requests)
    assert run(["listops", "text", "mnist", "pmnist"], tmp_path, server) == 0
    second = capsys.readouterr()
    assert len(server.requests) == requested  # no request at all, not even for a digest
    assert second.out.splitlines()[:3] == first.splitlines()
    assert "listops: found in" in second.err
    # Another task of the same release reuses the downloaded archive.
    assert run(["retrieval"], tmp_path, server) == 0
    assert len(server.requests) == requested
    assert (tmp_path / "lra_release" / "lra_release" / "tsv_data" / "new_aan_pairs.eval.tsv").is_file()


# ------------------------------------------------------------------------------------------- resume, retries


def test_a_dropped_connection_resumes_with_a_range_request_for_the_rest(tmp_path, server, capsys):
    path = "/aclImdb_v1.tar.gz"
    server.script[path] = [("drop", 1000)]
    assert run(["text"], tmp_path, server) == 0
    assert server.requests == [(path, None), (path, "bytes=1000-")]
    assert "retrying from byte 1000" in capsys.readouterr().err
    assert len(text.load_text(str(tmp_path / "aclImdb"))["test"].labels) == 4
    with open(tmp_path / "downloads" / "aclImdb_v1.tar.gz", "rb") as handle:
        assert handle.read() == server.files[path]


def test_a_network_error_keeps_the_part_file_and_the_next_run_resumes_it(tmp_path, server, capsys):
    path = "/cifar-10-python.tar.gz"
    server.script[path] = [("drop", 4096), ("status", 503), ("status", 503)]
    assert run(["image"], tmp_path, server, "--retries=1") == 1
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert f"{server.url}{path}: HTTP 503" in line and "run the same command again to resume" in line
    assert "Traceback" not in err
    part = tmp_path / "downloads" / "cifar-10-python.tar.gz.part"
    assert part.stat().st_size == 4096
    assert not (tmp_path / "cifar-10-batches-py").exists()
    del server.requests[:]
    assert run(["image"], tmp_path, server) == 0
    assert server.requests == [(path, "bytes=4096-")]
    assert not part.exists()
    assert len(image.load_cifar10(str(tmp_path), val_size=2)["test"].labels) == 4


def test_a_server_that_ignores_range_restarts_from_byte_zero(tmp_path, server, capsys):
    server.honour_range = False
    path = "/mnist/train-images-idx3-ubyte.gz"
    server.script[path] = [("drop", 700)]
    assert run(["mnist"], tmp_path, server) == 0
    assert [request for request in server.requests if request[0] == path] == [(path, None), (path, "bytes=700-")]
    assert "ignored the request to resume at byte 700" in capsys.readouterr().err
    with open(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", "rb") as handle:
        assert handle.read() == server.files[path]  # not the first 700 bytes twice
    assert len(image.load_idx_images(str(tmp_path / "mnist"), val_size=2)["train"].labels) == 8


def test_a_complete_part_file_is_finished_without_a_new_body(tmp_path, server):
    path = "/mnist/t10k-labels-idx1-ubyte.gz"
    directory = tmp_path / "mnist"
    directory.mkdir()
    (directory / "t10k-labels-idx1-ubyte.gz.part").write_bytes(server.files[path])
    assert run(["mnist"], tmp_path, server) == 0
    assert [request for request in server.requests if request[0] == path] == [
        (path, f"bytes={len(server.files[path])}-")]  # answered 416: the .part held it all
    assert (directory / "t10k-labels-idx1-ubyte.gz").read_bytes() == server.files[path]


def test_a_local_directory_serves_as_a_mirror(tmp_path, served, monkeypatch):
    mirror = tmp_path / "mirror"
    for path, content in served.items():
        if path.startswith("/fashion-mnist/"):
            (mirror / path[1:]).parent.mkdir(parents=True, exist_ok=True)
            (mirror / path[1:]).write_bytes(content)
    monkeypatch.setenv(download.MIRROR_ENV, str(mirror))  # the variable, when --mirror is not given
    assert download.main(["fashion_mnist", f"--data_dir={tmp_path / 'data'}", "--no_progress"]) == 0
    assert len(image.load_idx_images(str(tmp_path / "data" / "fashion_mnist"), val_size=2)["test"].labels) == 3


# ------------------------------------------------------------------------------------------------- digests


@pytest.mark.parametrize("kind", ["sha256", "md5"])
def test_a_digest_mismatch_names_the_file_and_both_digests_and_moves_it_aside(tmp_path, server, capsys, kind):
    good = download.RESOURCES["cifar10"]
    wrong = "0" * (64 if kind == "sha256" else 32)
    download.RESOURCES["cifar10"] = dataclasses.replace(
        good, sha256=wrong if kind == "sha256" else None, md5=wrong if kind == "md5" else None)
    assert run(["image"], tmp_path, server) == 1
    (line,) = error_lines(capsys.readouterr().err)
    archive = tmp_path / "downloads" / "cifar-10-python.tar.gz"
    found = getattr(hashlib, kind)(server.files["/cifar-10-python.tar.gz"]).hexdigest()
    assert line == (f"error: {archive}: {kind} mismatch: expected {wrong}, got {found} (the file was moved to "
                    f"{archive}.bad; run the command again to download it afresh)")
    assert (tmp_path / "downloads" / "cifar-10-python.tar.gz.bad").is_file()
    assert not archive.exists() and not (tmp_path / "downloads" / "cifar-10-python.tar.gz.part").exists()
    assert not (tmp_path / "cifar-10-batches-py").exists()
    download.RESOURCES["cifar10"] = good
    assert run(["image"], tmp_path, server) == 0  # downloaded afresh
    assert archive.is_file()


def test_a_bad_file_already_in_place_is_not_trusted(tmp_path, server, capsys):
    directory = tmp_path / "fashion_mnist"
    directory.mkdir()
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(b"not the file")
    assert run(["fashion_mnist"], tmp_path, server) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{directory / 'train-labels-idx1-ubyte.gz'}: sha256 mismatch" in line
    assert (directory / "train-labels-idx1-ubyte.gz.bad").read_bytes() == b"not the file"
    assert run(["fashion_mnist"], tmp_path, server) == 0


# ---------------------------------------------------------------------------------------------- unpacking


def tar_with(members) -> bytes:
    """members: (TarInfo fields as a dict, content bytes or None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for fields, content in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for key, value in fields.items():
                setattr(info, key, value)
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


FILE = tarfile.REGTYPE
UNSAFE = [
    ("dotdot", [({"name": "aclImdb/train/neg/../../../../evil.txt", "type": FILE}, b"x")], "'..' component"),
    ("absolute", [({"name": "/aclImdb/train/neg/evil.txt", "type": FILE}, b"x")], "absolute path"),
    ("absolute link", [({"name": "aclImdb/train/neg/l", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, None)],
     "refusing a link"),
    ("link out", [({"name": "aclImdb/train/neg/l", "type": tarfile.SYMTYPE, "linkname": "../../../.."}, None)],
     "outside the unpacked files"),
    ("through a link", [({"name": "aclImdb/train/d", "type": tarfile.SYMTYPE, "linkname": ".."}, None),
                        ({"name": "aclImdb/train/d/neg", "type": tarfile.SYMTYPE, "linkname": "../.."}, None),
                        ({"name": "aclImdb/train/d/neg/evil.txt", "type": FILE}, b"x")], "outside"),
    ("device", [({"name": "aclImdb/train/neg/dev", "type": tarfile.CHRTYPE}, None)], "special file"),
    ("hard link out", [({"name": "aclImdb/train/neg/h", "type": tarfile.LNKTYPE, "linkname": "../../etc/x"}, None)],
     "refusing a link"),
]


@pytest.mark.parametrize("members,fragment", [case[1:] for case in UNSAFE], ids=[case[0] for case in UNSAFE])
def test_unsafe_members_are_refused_and_nothing_lands_outside(tmp_path, members, fragment):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(tar_with([(dict(fields), content) for fields, content in members]))
    destination = tmp_path / "out" / "staging"
    with pytest.raises(download.DownloadError, match=re.escape(fragment)):
        download.unpack(str(archive), str(destination), ["aclImdb/"], progress=False)
    outside = [os.path.join(d, n) for d, _, names in os.walk(tmp_path) for n in names if n == "evil.txt"]
    assert not outside


def test_links_inside_the_tree_and_members_outside_the_prefixes(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(tar_with([
        ({"name": "./aclImdb/train/neg/0_1.txt", "type": FILE, "mtime": 1_000_000}, b"review"),
        ({"name": "aclImdb/train/neg/s.txt", "type": tarfile.SYMTYPE, "linkname": "0_1.txt"}, None),
        ({"name": "aclImdb/train/neg/h.txt", "type": tarfile.LNKTYPE, "linkname": "aclImdb/train/neg/0_1.txt"}, None),
        ({"name": "../outside/evil.txt", "type": FILE}, b"never selected, so never written"),
        ({"name": "aclImdb/unsup/0_0.txt", "type": FILE}, b"not selected"),
    ]))
    destination = tmp_path / "out"
    counts = download.unpack(str(archive), str(destination), ["aclImdb/train/neg/"], progress=False)
    assert counts == {"aclImdb/train/neg/": 3}
    neg = destination / "aclImdb" / "train" / "neg"
    assert sorted(os.listdir(neg)) == ["0_1.txt", "h.txt", "s.txt"]
    assert (neg / "s.txt").read_bytes() == (neg / "h.txt").read_bytes() == b"review"
    assert os.path.islink(neg / "s.txt") and not os.path.islink(neg / "h.txt")
    assert (neg / "0_1.txt").stat().st_mtime == 1_000_000
    assert not (destination / "aclImdb" / "unsup").exists() and not (tmp_path / "outside").exists()


@pytest.mark.parametrize("cut", ["half", "trailer"])
def test_a_truncated_archive_is_an_error_naming_it(tmp_path, served, cut):
    archive = tmp_path / "aclImdb_v1.tar.gz"
    content = served["/aclImdb_v1.tar.gz"]
    # "trailer": every member is intact, only the gzip size field is missing (tarfile alone would not notice).
    archive.write_bytes(content[: len(content) // 2] if cut == "half" else content[:-4])
    with pytest.raises(download.DownloadError, match=rf"{re.escape(str(archive))}: not a readable tar archive"):
        download.unpack(str(archive), str(tmp_path / "out"), ["aclImdb/"], progress=False)


def test_an_archive_without_the_expected_members_says_so(tmp_path, server, capsys, monkeypatch):
    other = dataclasses.replace(download.TASKS["listops"], members=("lra_release/lra_release/listops-2000/",))
    monkeypatch.setitem(download.TASKS, "listops", other)
    assert run(["listops"], tmp_path, server) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "lra_release.gz: no lra_release/lra_release/listops-1000/basic_train.tsv in the archive" in line
    assert not (tmp_path / "lra_release").exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".unpack-")]


# -------------------------------------------------------------------------------------- the command line


def subprocess_run(*args, mirror: str | None = None):
    env = dict(os.environ)
    env.pop(download.MIRROR_ENV, None)
    if mirror:
        env[download.MIRROR_ENV] = mirror
    return subprocess.run([sys.executable, "-m", "lra.download", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_entry_point_prints_the_train_command_and_fails_in_one_line(tmp_path, server):
    done = subprocess_run("listops", f"--data_dir={tmp_path}", mirror=server.url)  # progress bars on
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [download.train_command("listops", str(tmp_path))]
    validate_config(config_from_command(done.stdout))
    assert re.search(r"lra_release\.gz: 100%\|.*\| [\d.]+kB/[\d.]+kB \[\d+:\d+<\d+:\d+",
                     done.stderr), done.stderr  # size and ETA
    assert server.paths() == ["/lra_release.gz"]

    for args, fragment in ((["imagenet", "--data_dir=x"], "unknown task 'imagenet'"),
                           (["text"], "the following arguments are required: --data_dir"),
                           (["text", "--data_dir=x", "--retries=-1"], "--retries must be >= 0")):
        bad = subprocess_run(*args)
        assert bad.returncode == 2 and bad.stdout == "", bad
        (line,) = bad.stderr.splitlines()
        assert fragment in line and "tasks: " + ", ".join(download.TASKS) in line

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    offline = subprocess_run("text", f"--data_dir={tmp_path}", f"--mirror={closed}", "--retries=0", "--no_progress")
    assert offline.returncode == 1 and "Traceback" not in offline.stderr
    (line,) = error_lines(offline.stderr)
    assert line.startswith(f"error: {closed}/aclImdb_v1.tar.gz: cannot connect")


# ------------------------------------------------------------------------ "not found" errors name the command


def test_command_for_and_the_hint_in_not_found_errors(tmp_path):
    assert download.command_for("text") == "python -m lra.download text --data_dir=DIR"
    assert download.command_for("pathx", "/my data") == "python -m lra.download pathx --data_dir='/my data'"
    with pytest.raises(ValueError, match="tasks: listops"):
        download.command_for("imagenet")
    hint = download.download_hint("listops", "/d/lra_release/lra_release/listops-1000")
    assert hint == "download it with: python -m lra.download listops --data_dir=/d"
    assert download.download_hint("text", "/somewhere/else").endswith("--data_dir=DIR")

    missing = str(tmp_path / "nowhere")
    readers = [
        (lambda: text.load_text(missing), "text"),
        (lambda: retrieval.load_retrieval(missing), "retrieval"),
        (lambda: image.load_cifar10(missing), "image"),
        (lambda: image.load_idx_images(missing), "mnist"),
        (lambda: listops.load_listops(missing), "listops"),
        (lambda: pf.load_pathfinder(missing, 32), "pathfinder"),
        (lambda: pf.load_pathfinder(missing, 128), "pathx"),
    ]
    for load, task in readers:
        with pytest.raises(LRADataError) as caught:
            load()
        message = str(caught.value)
        assert download.command_for(task) in message and "\n" not in message and missing in message, message
    with pytest.raises(LRADataError, match="or fashion_mnist instead of mnist"):
        image.load_idx_images(missing)

    for task in download.TASKS:
        config = config_from_command(download.train_command(task, missing))
        with pytest.raises(FileNotFoundError) as caught:
            data_lib.load_splits(config)
        message = str(caught.value)
        assert "is not a directory" in message and "\n" not in message
        assert message.endswith(f"download it with: {download.command_for(task, missing)}"), message
