"""The corpora of the causal LM task (lra/corpus.py) for `python -m lra.download`: enwik8, text8 and PG-19.

    python -m lra.download enwik8 text8 pg19 --data_dir=DIR [--splits=validation,test] [--max_files=N] [--jobs=8]

    target  fetches                                                  writes (what --config.data.data_dir names)
    enwik8  http://mattmahoney.net/dc/enwik8.zip (36,445,475 bytes)  DIR/enwik8/enwik8 (100,000,000 bytes)
    text8   http://mattmahoney.net/dc/text8.zip (31,344,016 bytes)   DIR/text8/text8 (100,000,000 bytes)
    pg19    the books of the public bucket deepmind-gutenberg        DIR/pg19/{train,validation,test}/<id>.txt

enwik8, text8: the zip goes to DIR/downloads/ as the LRA archives do (resumed, kept), then its one member is
streamed to `<file>.part` next to its place and renamed when whole. Matt Mahoney publishes no digest of either
zip, so none is checked; what is checked: the zip's size (as widely recorded), the member's CRC-32 (zipfile) and
its exact size of 100,000,000 bytes, which lra/corpus.py checks again on every read.

pg19: the book list comes from the bucket's JSON listing API, `<host>/storage/v1/b/deepmind-gutenberg/o?prefix=
<split>/`, followed page by page (`nextPageToken`); it gives every book's size and MD5 (the bucket's own), and
each book is fetched like any download here (`.part`, resumed, retried) from `<host>/deepmind-gutenberg/<split>/
<id>.txt` and checked against both. A complete listing is kept as DIR/downloads/pg19-<split>.json, so a second
run makes no request; books already in place with their listed size are skipped, so an interrupted run goes on
where it stopped. `--splits` picks the splits (default all three; the reader's pg19 format needs all three, so
the training command is printed only when they are there), `--max_files=N` the first N books of each split (by
name: a taste; a later run without it completes the folders), `--jobs` how many books are fetched at once.
Object names that are not `<split>/<name>.txt` (name: letters, digits, '_' and '-') are skipped, so a listing
cannot direct a write outside DIR/pg19/<split>/.

Mirrors (--mirror=URL or LRA_MIXERS_DOWNLOAD_MIRROR, lra/download.py): `URL/enwik8.zip`, `URL/text8.zip`; for
PG-19 a host laid out as storage.googleapis.com (books at `URL/deepmind-gutenberg/<split>/<id>.txt`, the listing
at `URL/storage/v1/b/deepmind-gutenberg/o`), so `--mirror=https://storage.googleapis.com` is the official source;
a local directory (or file: URL) mirror is listed from its `deepmind-gutenberg/<split>/` folders (sizes, no MD5).
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import dataclasses
import http.client
import json
import os
import re
import shlex
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence

from lra import download
from lra.download import DownloadError, Resource

MEMBER_BYTES = 100_000_000  # enwik8 and text8 (lra/corpus.py, ENWIK8_BYTES)
PG19_HOST = "https://storage.googleapis.com"
PG19_BUCKET = "deepmind-gutenberg"
PG19_SPLITS = ("train", "validation", "test")  # the bucket's folders, which lra/corpus.py reads as they are
PG19_PAGE = 1000  # objects per listing page (the API's maximum)
MAX_LISTING_PAGE_BYTES = 16 << 20  # one listing page of 1,000 short items is about 150 kB
_BOOK_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}\.txt")


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A download target of the LM task: `directory` (under --data_dir) is what --config.data.data_dir names."""

    name: str  # also the corpus format (--config.data.lm.format)
    directory: str
    size: str  # the download's size, for --list
    licence: str
    archive: Resource | None = None  # enwik8, text8: the zip holding the file `name`


_WIKIPEDIA = "Wikipedia text: CC BY-SA (Matt Mahoney's page, mattmahoney.net/dc/textdata.html)"
CORPORA: dict[str, Corpus] = {
    "enwik8": Corpus("enwik8", "enwik8", "36,445,475 bytes (enwik8 itself 100,000,000)", _WIKIPEDIA,
                     Resource("http://mattmahoney.net/dc/enwik8.zip", "enwik8.zip", 36_445_475)),
    "text8": Corpus("text8", "text8", "31,344,016 bytes (text8 itself 100,000,000)", _WIKIPEDIA,
                    Resource("http://mattmahoney.net/dc/text8.zip", "text8.zip", 31_344_016)),
    "pg19": Corpus("pg19", "pg19", "28,602 + 50 + 100 books (train / validation / test); the listing's total "
                   "is printed before the books are fetched",
                   "dataset: Apache 2.0 (DeepMind); the texts: public domain in the US (Project Gutenberg)"),
}


def train_command(name: str, data_dir: str) -> str:
    """The training command of the LM task on the corpus this module put under `data_dir` (absolute paths)."""
    directory = os.path.join(os.path.abspath(data_dir), CORPORA[name].directory)
    flags = ["--config=lm", "--config.data.source=files", f"--config.data.lm.format={name}",
             f"--config.data.data_dir={directory}", f"--workdir=workdirs/lm-{name}"]
    return " ".join(["python", "-m", "experiments.train", *(shlex.quote(flag) for flag in flags)])


# ---------------------------------------------------------------------------------------------------------
# enwik8, text8: one member of a zip.


def extract_member(archive: str, member: str, target: str, size: int) -> None:
    """Stream `member` of the zip `archive` to `target` (via `target.part`); it must hold exactly `size` bytes.

    The CRC-32 is checked as the member is read. DownloadError (one line, naming the archive) for an archive
    that is not a readable zip, a missing member or one of another size; nothing is left at `target` then.
    """
    part = target + ".part"
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shown = os.path.basename(archive)
    try:
        with zipfile.ZipFile(archive) as packed:
            try:
                info = packed.getinfo(member)
            except KeyError:
                raise DownloadError(f"{archive}: no member {member!r} in it (found {packed.namelist()[:5]}); "
                                    f"expected the official {shown}") from None
            if info.file_size != size:
                raise DownloadError(f"{archive}: member {member!r} holds {info.file_size:,} bytes, expected "
                                    f"{size:,} (not the official {shown})")
            written = 0
            with packed.open(info) as source, open(part, "wb") as out:
                while chunk := source.read(download.CHUNK_BYTES):
                    written += len(chunk)
                    if written > size:
                        break
                    out.write(chunk)
            if written != size:
                raise DownloadError(f"{archive}: member {member!r} held {written:,} bytes, expected {size:,}")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        _remove(part)
        raise DownloadError(f"{archive}: not a readable zip archive ({type(error).__name__}: {error}); delete "
                            "it and run the command again") from None
    except BaseException:
        _remove(part)
        raise
    os.replace(part, target)


def _remove(path: str) -> None:
    if os.path.lexists(path):
        os.remove(path)


def _prepare_zip(corpus: Corpus, data_dir: str, mirror: str | None, retries: int, progress: bool) -> bool:
    """Fetch and unpack enwik8 / text8 unless in place; True when it was missing."""
    target = os.path.join(data_dir, corpus.directory, corpus.name)
    if os.path.lexists(target):
        found = os.stat(target).st_size if os.path.isfile(target) else None
        if found == MEMBER_BYTES:
            return False
        raise DownloadError(f"{target}: exists but is not the official {MEMBER_BYTES:,}-byte {corpus.name} "
                            f"({'not a regular file' if found is None else f'{found:,} bytes'}); move it away and "
                            "run the command again")
    archive = os.path.join(data_dir, download.DOWNLOADS_DIR, corpus.archive.name)
    download.fetch(corpus.archive, archive, mirror=mirror, retries=retries, progress=progress)
    download._say(f"unpacking {corpus.name} from {archive}")
    extract_member(archive, corpus.name, target, MEMBER_BYTES)
    return True


# ---------------------------------------------------------------------------------------------------------
# PG-19: the bucket listing, then the books.


@dataclasses.dataclass(frozen=True)
class Book:
    split: str
    file: str  # '<id>.txt'
    size: int
    md5: str | None  # hex; None from a local mirror

    def resource(self) -> Resource:
        path = f"{PG19_BUCKET}/{self.split}/{self.file}"
        return Resource(f"{PG19_HOST}/{path}", path, self.size, md5=self.md5)


def listing_url(base: str, split: str, token: str | None = None) -> str:
    query = {"prefix": f"{split}/", "fields": "items(name,size,md5Hash),nextPageToken", "maxResults": PG19_PAGE}
    if token:
        query["pageToken"] = token
    return f"{base.rstrip('/')}/storage/v1/b/{PG19_BUCKET}/o?{urllib.parse.urlencode(query)}"


def _get_json(url: str, retries: int):
    """The JSON document at `url`, retrying connection failures, timeouts and HTTP 408/429/5xx."""
    failures = 0
    while True:
        try:
            with download._open(url, 0) as response:
                body = response.read(MAX_LISTING_PAGE_BYTES + 1)
            break
        except urllib.error.HTTPError as error:
            error.close()
            if error.code not in download.RETRYABLE_HTTP_CODES:
                raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
            reason = f"HTTP {error.code} {error.reason}"
        except urllib.error.URLError as error:
            reason = f"cannot connect ({error.reason})"
        except (http.client.HTTPException, OSError) as error:
            reason = f"{type(error).__name__}: {error}"
        failures += 1
        if failures > retries:
            raise DownloadError(f"{url}: {reason}; {failures} attempts failed; run the same command again")
        download._say(f"listing: {reason}; retrying")
        time.sleep(min(download.RETRY_DELAY_SECONDS * 2 ** (failures - 1), download.MAX_RETRY_DELAY_SECONDS))
    if len(body) > MAX_LISTING_PAGE_BYTES:
        raise DownloadError(f"{url}: a listing page over {MAX_LISTING_PAGE_BYTES:,} bytes; not the bucket listing")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise DownloadError(f"{url}: not a JSON listing ({error})") from None


def _book(item, split: str, url: str) -> Book | None:
    """The Book of one listing item; None for objects that are not `<split>/<name>.txt` (e.g. 'train/')."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise DownloadError(f"{url}: a listing item without a name: {str(item)[:80]}")
    name = item["name"]
    folder, _, file = name.partition("/")
    if folder != split or not _BOOK_NAME.fullmatch(file):
        return None
    size = item.get("size")
    if not (isinstance(size, (str, int)) and str(size).isdigit()):
        raise DownloadError(f"{url}: item {name!r}: size {size!r} is not a byte count")
    md5 = None
    if item.get("md5Hash") is not None:
        try:
            raw = base64.b64decode(str(item["md5Hash"]), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 16:
            raise DownloadError(f"{url}: item {name!r}: md5Hash {item['md5Hash']!r} is not a base64 MD5")
        md5 = raw.hex()
    return Book(split, file, int(size), md5)


def _local_root(mirror: str | None) -> str | None:
    """The directory of a local mirror (a path or a file: URL); None for an http(s) mirror or none."""
    if not mirror:
        return None
    if "://" not in mirror:
        return mirror
    parsed = urllib.parse.urlparse(mirror)
    return urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else None


def list_books(split: str, mirror: str | None, retries: int, limit: int = 0) -> tuple[list[Book], bool]:
    """(the books of `split` sorted by name, whether that is the whole split); `limit` > 0 stops after so many."""
    local = _local_root(mirror)
    if local is not None:
        folder = os.path.join(local, PG19_BUCKET, split)
        if not os.path.isdir(folder):
            raise DownloadError(f"{folder}: not a directory; the mirror {mirror} has no PG-19 {split}/ folder")
        books = [Book(split, name, os.path.getsize(os.path.join(folder, name)), None)
                 for name in sorted(os.listdir(folder))
                 if _BOOK_NAME.fullmatch(name) and os.path.isfile(os.path.join(folder, name))]
        if not books:
            raise DownloadError(f"{folder}: no <name>.txt books in it (a PG-19 mirror folder)")
        return (books[:limit], len(books) <= limit) if limit else (books, True)
    books, token, pages, seen = [], None, 0, set()
    while True:
        url = listing_url(mirror or PG19_HOST, split, token)
        page = _get_json(url, retries)
        if not isinstance(page, dict) or not isinstance(page.get("items", []), list):
            raise DownloadError(f"{url}: not a bucket listing (expected an object with 'items')")
        for item in page.get("items", []):
            book = _book(item, split, url)
            if book is not None and book.file not in seen:
                seen.add(book.file)
                books.append(book)
        pages += 1
        token = page.get("nextPageToken")
        if not token or (limit and len(books) >= limit):
            break
        if pages >= 1000:  # 1,000 pages of 1,000: far beyond PG-19's 28,602 books
            raise DownloadError(f"{url}: more than {pages} listing pages; not the PG-19 bucket")
    if not books:
        raise DownloadError(f"{url}: no {split}/<name>.txt books listed; not the PG-19 bucket")
    books.sort(key=lambda book: book.file)
    return (books[:limit], not token and len(books) <= limit) if limit else (books, True)


def _cached_listing(data_dir: str, split: str, mirror: str | None, retries: int, limit: int) -> list[Book]:
    """The books of `split`: from DIR/downloads/pg19-<split>.json when a complete listing was kept, else listed."""
    path = os.path.join(data_dir, download.DOWNLOADS_DIR, f"pg19-{split}.json")
    try:
        with open(path) as handle:
            record = json.load(handle)
        books = [Book(split, file, int(size), md5) for file, size, md5 in record["books"]
                 if _BOOK_NAME.fullmatch(file)]
        return books[:limit] if limit else books
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or damaged: list again
    books, complete = list_books(split, mirror, retries, limit)
    if complete:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".pg19-{split}.tmp-")
        with os.fdopen(fd, "w") as handle:
            json.dump({"split": split, "books": [[b.file, b.size, b.md5] for b in books]}, handle)
        os.replace(temp, path)
    return books


def _in_place(book: Book, root: str) -> bool:
    path = os.path.join(root, book.split, book.file)
    return os.path.isfile(path) and os.path.getsize(path) == book.size


def _prepare_pg19(data_dir: str, mirror: str | None, retries: int, progress: bool, splits: Sequence[str],
                  max_files: int, jobs: int) -> bool:
    """Fetch the missing books of `splits` into DIR/pg19/<split>/; True when any was missing."""
    root = os.path.join(data_dir, CORPORA["pg19"].directory)
    books = [book for split in splits for book in _cached_listing(data_dir, split, mirror, retries, max_files)]
    todo = [book for book in books if not _in_place(book, root)]
    if not todo:
        return False
    total = sum(book.size for book in todo)
    download._say(f"pg19: fetching {len(todo):,} of {len(books):,} books ({total:,} bytes) into {root}")
    with download._progress(total, 0, "pg19", progress) as bar:
        def fetch_one(book: Book) -> None:
            download.fetch(book.resource(), os.path.join(root, book.split, book.file), mirror=mirror,
                           retries=retries, progress=False)
            bar.update(book.size)

        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(fetch_one, book) for book in todo]
            try:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return True


def pg19_missing_splits(data_dir: str) -> list[str]:
    """The PG-19 split folders under DIR/pg19 that are absent or hold no book (lra/corpus.py needs all three)."""
    root = os.path.join(data_dir, CORPORA["pg19"].directory)
    return [split for split in PG19_SPLITS if not os.path.isdir(os.path.join(root, split))
            or not any(name.endswith(".txt") for name in os.listdir(os.path.join(root, split)))]


# ---------------------------------------------------------------------------------------------------------
# The entry point's part.


def prepare(names: Sequence[str], data_dir: str, *, mirror: str | None = None, retries: int = 4,
            progress: bool = True, splits: Sequence[str] = PG19_SPLITS, max_files: int = 0,
            jobs: int = 8) -> dict[str, str | None]:
    """Download the corpora `names` under `data_dir`; returns {name: its training command}, None for pg19 while
    one of its three split folders holds no book. Runs on the same `data_dir` take turns (lra/download.py's lock
    file). Raises DownloadError (one line)."""
    unknown = [name for name in names if name not in CORPORA]
    if unknown:
        raise ValueError(f"unknown corpus {unknown[0]!r}; corpora: {', '.join(CORPORA)}")
    data_dir = os.path.abspath(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    commands = {}
    with download._locked(os.path.join(data_dir, download.LOCK_NAME)):
        for name in dict.fromkeys(names):
            corpus = CORPORA[name]
            if corpus.archive is not None:
                fetched = _prepare_zip(corpus, data_dir, mirror, retries, progress)
            else:
                fetched = _prepare_pg19(data_dir, mirror, retries, progress, splits, max_files, jobs)
            where = os.path.join(data_dir, corpus.directory)
            download._say(f"{name}: {'ready' if fetched else 'found'} in {where}")
            missing = pg19_missing_splits(data_dir) if name == "pg19" else []
            commands[name] = None if missing else train_command(name, data_dir)
            if missing:
                download._say(f"pg19: no books in {', '.join(m + '/' for m in missing)} yet; the pg19 format "
                              "reads train/, validation/ and test/: run again with those --splits to train on it")
    return commands
