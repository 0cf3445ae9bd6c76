"""Tests for lra/download_corpora.py: `python -m lra.download enwik8|text8|pg19` against a local HTTP server.

The server (tests/lra/test_download.py's FixtureServer, on 127.0.0.1) serves small files in the official formats:
`enwik8.zip` and `text8.zip`, each holding its one member, and a PG-19 bucket: books under
`/deepmind-gutenberg/<split>/<id>.txt` and the JSON listing API at `/storage/v1/b/deepmind-gutenberg/o` (two
objects a page, so every listing is followed through nextPageToken; with decoy objects that must be skipped).
The official enwik8 / text8 members hold 100,000,000 bytes, which lra/corpus.py checks; the fixtures are tiny, so
the tests set both modules' expected size to the fixtures'. Nothing here touches the internet.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest

from experiments import data as data_lib
from experiments.validation import validate_config
from lra import corpus, download, download_corpora
from lra.errors import LRADataError
from tests.lra.test_download import FixtureServer, config_from_command, error_lines

MEMBER = 6_000  # bytes of the fixture enwik8 / text8 (the official files: 100,000,000)
SPLIT = (5_000, 500, 500)
PAGE = 2  # objects per listing page served here
LISTING = f"/storage/v1/b/{download_corpora.PG19_BUCKET}/o"
BOOKS = {"train": ("10", "11", "12", "9"), "validation": ("20", "21"), "test": ("30", "31", "32")}
DECOYS = ("train/", "train/sub/1.txt", "train/../../evil.txt", "validation/notes.csv")


def member_bytes(name: str) -> bytes:
    rng = np.random.default_rng(len(name))
    return bytes(rng.integers(32, 127, MEMBER, dtype=np.uint8))


def zip_of(member: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, content)
    return buffer.getvalue()


def book_text(split: str, book: str) -> bytes:
    return (f"Book {book} of {split}. " * 40 + "Caf\u00e9 \u2014 the end.\n").encode()


def bucket() -> dict[str, bytes]:
    objects = {f"{split}/{book}.txt": book_text(split, book) for split, books in BOOKS.items() for book in books}
    objects.update(dict.fromkeys(DECOYS, b"decoy"))
    return objects


def listing_route(objects: dict[str, bytes]):
    """The GCS JSON listing API over `objects`, PAGE objects a page, in name order as the API gives them."""
    def route(query: dict[str, list[str]]) -> bytes:
        names = sorted(name for name in objects if name.startswith(query["prefix"][0]))
        start = int(query.get("pageToken", ["0"])[0])
        items = [{"name": name, "size": str(len(objects[name])),
                  "md5Hash": base64.b64encode(hashlib.md5(objects[name]).digest()).decode()}
                 for name in names[start:start + PAGE]]
        page = {"kind": "storage#objects", "items": items}
        if start + PAGE < len(names):
            page["nextPageToken"] = str(start + PAGE)
        return json.dumps(page).encode()
    return route


@pytest.fixture
def served() -> dict[str, bytes]:
    files = {"/enwik8.zip": zip_of("enwik8", member_bytes("enwik8")),
             "/text8.zip": zip_of("text8", member_bytes("text8"))}
    files.update({f"/{download_corpora.PG19_BUCKET}/{name}": content for name, content in bucket().items()})
    return files


@pytest.fixture
def server(served):
    fixture = FixtureServer(served)
    fixture.routes[LISTING] = listing_route(bucket())
    yield fixture
    fixture.close()


@pytest.fixture(autouse=True)
def fixture_sizes(served, monkeypatch):
    """The fixtures' sizes in place of the official ones (the zips: no digest is published, none is checked)."""
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    monkeypatch.setattr(download, "RETRY_DELAY_SECONDS", 0.0)
    monkeypatch.setattr(download_corpora, "MEMBER_BYTES", MEMBER)
    monkeypatch.setattr(corpus, "ENWIK8_BYTES", MEMBER)
    monkeypatch.setattr(corpus, "STANDARD_SPLIT", SPLIT)
    for name in ("enwik8", "text8"):
        spec = download_corpora.CORPORA[name]
        archive = dataclasses.replace(spec.archive, size=len(served[f"/{name}.zip"]))
        monkeypatch.setitem(download_corpora.CORPORA, name, dataclasses.replace(spec, archive=archive))


def run(targets, data_dir, mirror, *extra) -> int:
    return download.main([*targets, f"--data_dir={data_dir}", f"--mirror={mirror}", "--no_progress", *extra])


def load_lm(command: str, cache_dir) -> dict:
    config = config_from_command(command)
    validate_config(config)
    assert config.task == "lm" and config.data.source == "files"
    config.data.cache_dir, config.data.seq_len = str(cache_dir), 16
    return data_lib.load_splits(config)


def listing_requests(server) -> list[str]:
    return [path for path, _ in server.requests if path.startswith(LISTING)]


# ------------------------------------------------------------------------------------------------ enwik8, text8


def test_enwik8_and_text8_download_unpack_and_their_commands_train_on_them(tmp_path, server, capsys):
    data_dir = tmp_path / "data"
    assert run(["enwik8", "text8"], data_dir, server.url) == 0
    commands = capsys.readouterr().out.splitlines()
    assert commands == [download_corpora.train_command(name, str(data_dir)) for name in ("enwik8", "text8")]
    for name, command in zip(("enwik8", "text8"), commands):
        assert (data_dir / name / name).read_bytes() == member_bytes(name)
        assert (data_dir / "downloads" / f"{name}.zip").is_file()  # kept, as the LRA archives
        assert f"--config.data.lm.format={name}" in command
        splits = load_lm(command, tmp_path / "cache")
        assert splits["test"].inputs[0].tobytes() == member_bytes(name)[sum(SPLIT[:2]):][:16]  # the standard split
    assert sorted(server.paths()) == ["/enwik8.zip", "/text8.zip"]
    assert not [p for p in (data_dir / "enwik8").iterdir() if p.name != "enwik8"]  # no .part left
    del server.requests[:]
    assert run(["text8", "enwik8"], data_dir, server.url) == 0  # found: no request at all
    assert server.requests == [] and "enwik8: found in" in capsys.readouterr().err


def test_a_dropped_zip_download_resumes_with_a_range_request(tmp_path, server):
    server.script["/enwik8.zip"] = [("drop", 1000)]
    assert run(["enwik8"], tmp_path, server.url) == 0
    assert server.requests == [("/enwik8.zip", None), ("/enwik8.zip", "bytes=1000-")]
    assert (tmp_path / "enwik8" / "enwik8").read_bytes() == member_bytes("enwik8")


def corrupted(content: bytes, at: int) -> bytes:
    """The zip with the byte at `at` of its compressed data changed (same size; zlib or the CRC-32 must notice)."""
    return content[:at] + bytes([content[at] ^ 0xFF]) + content[at + 1:]


@pytest.mark.parametrize("fault,fragment", [
    ("corrupt", "not a readable zip archive (BadZipFile: Bad CRC-32"),
    ("corrupt stream", "not a readable zip archive (error: Error -3 while decompressing"),  # zlib's error
    ("not a zip", "not a readable zip archive"),
    ("other member", "no member 'enwik8' in it (found ['wiki'])"),
    ("wrong size", f"member 'enwik8' holds {MEMBER - 1:,} bytes, expected {MEMBER:,}"),
])
def test_a_bad_zip_is_an_error_naming_the_file(tmp_path, server, capsys, monkeypatch, fault, fragment):
    content = server.files["/enwik8.zip"]
    # 40: four bytes into the deflate stream (after the 30-byte local header and the name), where the block
    # header sits; a third of the way in: the Huffman-coded data, which the CRC-32 catches.
    content = {"corrupt": corrupted(content, len(content) // 3), "corrupt stream": corrupted(content, 40),
               "not a zip": b"<html>moved</html>".ljust(len(content)),
               "other member": zip_of("wiki", member_bytes("enwik8")),
               "wrong size": zip_of("enwik8", member_bytes("enwik8")[1:])}[fault]
    server.files["/enwik8.zip"] = content
    spec = download_corpora.CORPORA["enwik8"]
    monkeypatch.setitem(download_corpora.CORPORA, "enwik8", dataclasses.replace(
        spec, archive=dataclasses.replace(spec.archive, size=len(content))))
    assert run(["enwik8"], tmp_path, server.url) == 1
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert line.startswith(f"error: {tmp_path / 'downloads' / 'enwik8.zip'}: ") and fragment in line, line
    assert "Traceback" not in err and not (tmp_path / "enwik8" / "enwik8").exists()
    assert not (tmp_path / "enwik8" / "enwik8.part").exists()


def test_a_zip_of_the_wrong_size_is_moved_aside_naming_both_sizes(tmp_path, server, capsys):
    server.files["/text8.zip"] = server.files["/text8.zip"][:-10]  # truncated: no digest, the size tells
    assert run(["text8"], tmp_path, server.url) == 1
    (line,) = error_lines(capsys.readouterr().err)
    archive = tmp_path / "downloads" / "text8.zip"
    expected = download_corpora.CORPORA["text8"].archive.size
    assert line == (f"error: {archive}: {expected - 10:,} bytes, expected {expected:,} (the file was moved to "
                    f"{archive}.bad; run the command again to download it afresh)")


# ------------------------------------------------------------------------------------------------------ pg19


def test_pg19_follows_the_listing_pages_and_its_command_reads_the_books(tmp_path, server, capsys, monkeypatch):
    data_dir = tmp_path / "data"
    assert run(["pg19"], data_dir, server.url, "--jobs=3") == 0
    (command,) = capsys.readouterr().out.splitlines()
    assert command == download_corpora.train_command("pg19", str(data_dir))
    for split, books in BOOKS.items():
        assert sorted(os.listdir(data_dir / "pg19" / split)) == sorted(f"{book}.txt" for book in books)
        for book in books:
            assert (data_dir / "pg19" / split / f"{book}.txt").read_bytes() == book_text(split, book)
    pages = listing_requests(server)
    train_objects = 4 + sum(name.startswith("train/") for name in DECOYS)  # 7: four pages of two
    assert sum("prefix=train%2F" in page for page in pages) == -(-train_objects // PAGE)
    assert any("pageToken=6" in page for page in pages) and all("fields=" in page for page in pages)
    assert not (tmp_path / "evil.txt").exists() and not (data_dir / "pg19" / "train" / "sub").exists()
    splits = load_lm(command, tmp_path / "cache")
    assert splits["val"].inputs.shape[1] == 16
    validation = b"".join(book_text("validation", book) for book in BOOKS["validation"])
    assert splits["val"].inputs[0].tobytes() == validation[:16]
    del server.requests[:]
    monkeypatch.setattr(download, "_file_digests", None)  # books in place with their size are not hashed again
    assert run(["pg19"], data_dir, server.url) == 0  # the kept listing and the books in place: no request
    assert server.requests == []


def test_pg19_a_taste_of_some_splits_then_the_rest(tmp_path, server, capsys):
    assert run(["pg19"], tmp_path, server.url, "--splits=validation,test", "--max_files=1") == 0
    out, err = capsys.readouterr()
    assert out == "" and "no books in train/ yet" in err  # the pg19 format needs train/: no command yet
    assert [sorted(os.listdir(tmp_path / "pg19" / s)) for s in ("validation", "test")] == [["20.txt"], ["30.txt"]]
    assert not (tmp_path / "downloads" / "pg19-test.json").exists()  # a partial listing is not kept
    del server.requests[:]
    assert run(["pg19"], tmp_path, server.url) == 0
    assert capsys.readouterr().out.strip() == download_corpora.train_command("pg19", str(tmp_path))
    fetched = [path for path in server.paths() if not path.startswith(LISTING)]
    assert "/deepmind-gutenberg/validation/20.txt" not in fetched and "/deepmind-gutenberg/test/30.txt" not in fetched
    assert len(fetched) == sum(map(len, BOOKS.values())) - 2  # only the missing books
    assert sorted(os.listdir(tmp_path / "downloads")) == [f"pg19-{s}.json" for s in ("test", "train", "validation")]


def test_pg19_an_interrupted_book_resumes_and_a_wrong_book_names_its_file(tmp_path, server, capsys):
    path = "/deepmind-gutenberg/test/31.txt"
    server.script[path] = [("drop", 100)]
    assert run(["pg19"], tmp_path, server.url, "--splits=test") == 0
    assert [r for r in server.requests if r[0] == path] == [(path, None), (path, "bytes=100-")]
    server.files["/deepmind-gutenberg/validation/21.txt"] = b"X" + book_text("validation", "21")[1:]
    assert run(["pg19"], tmp_path, server.url, "--splits=validation") == 1
    (line,) = error_lines(capsys.readouterr().err)
    book = tmp_path / "pg19" / "validation" / "21.txt"
    assert line.startswith(f"error: {book}: md5 mismatch: expected ") and f"moved to {book}.bad" in line


@pytest.mark.parametrize("page,fragment", [
    (b"<html>not an API</html>", "not a JSON listing"),
    (b'{"items": [{"name": "test/1.txt", "size": "-3"}]}', "item 'test/1.txt': size '-3' is not a byte count"),
    (b'{"items": []}', "no test/<name>.txt books listed; not the PG-19 bucket"),
])
def test_pg19_a_listing_that_is_not_the_bucket_is_an_error_naming_the_url(tmp_path, server, capsys, page, fragment):
    server.routes[LISTING] = lambda query: page
    assert run(["pg19"], tmp_path, server.url, "--splits=test") == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {server.url}{LISTING}?prefix=test%2F") and fragment in line, line


def test_a_listing_error_is_retried(tmp_path, server):
    server.script[LISTING] = [("status", 503)]
    assert run(["pg19"], tmp_path, server.url, "--splits=validation") == 0
    pages = listing_requests(server)
    assert len(pages) == 3 and pages[0] == pages[1]  # the 503, the same page again, then the second page
    assert sorted(os.listdir(tmp_path / "pg19" / "validation")) == ["20.txt", "21.txt"]


def test_a_local_directory_mirror_from_the_variable(tmp_path, served, monkeypatch, capsys):
    mirror = tmp_path / "mirror"
    for path, content in served.items():
        if not path.endswith("/") and ".." not in path:  # files can hold neither name
            (mirror / path[1:]).parent.mkdir(parents=True, exist_ok=True)
            (mirror / path[1:]).write_bytes(content)
    monkeypatch.setenv(download.MIRROR_ENV, str(mirror))
    data_dir = tmp_path / "data"
    assert download.main(["enwik8", "pg19", f"--data_dir={data_dir}", "--no_progress"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert (data_dir / "enwik8" / "enwik8").read_bytes() == member_bytes("enwik8")
    assert sorted(os.listdir(data_dir / "pg19" / "train")) == sorted(f"{book}.txt" for book in BOOKS["train"])


# -------------------------------------------------------------------------------------------- the command line


def test_list_and_flag_errors(capsys):
    assert download.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for target in [*download.TASKS, *download_corpora.CORPORA]:
        (index,) = [i for i, line in enumerate(lines) if line.split()[0] == target]
        assert lines[index + 1].split()[0] == "size:" and lines[index + 2].split()[0] == "licence:", lines[index:]
    assert any("Apache 2.0" in line for line in lines) and any("CC BY-SA" in line for line in lines)
    for args, fragment in ((["pg19", "--data_dir=x", "--splits=train,dev"], "--splits='train,dev': expected a "
                            "comma-separated subset of train,validation,test"),
                           (["pg19", "--data_dir=x", "--max_files=-1"], "--max_files must be >= 0"),
                           (["enwik8", "--data_dir=x", "--max_files=3"], "--max_files applies to the pg19 target"),
                           (["--data_dir=x"], "required: TARGET (or --list)"),
                           (["enwik9", "--data_dir=x"], "unknown task 'enwik9'")):
        with pytest.raises(SystemExit) as caught:
            download.main(args)
        assert caught.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert fragment in line and line.endswith("corpora: enwik8, text8, pg19"), line


def test_the_corpus_readers_name_the_download_command_with_its_root(tmp_path):
    assert download.command_for("pg19", "/d") == "python -m lra.download pg19 --data_dir=/d"
    for name in ("enwik8", "text8", "pg19"):
        with pytest.raises(LRADataError) as caught:
            corpus.load_corpus(name, str(tmp_path / "root" / name), str(tmp_path / "cache"))
        assert str(caught.value).endswith(f"download it with: {download.command_for(name, str(tmp_path / 'root'))}")
