"""The official Pathfinder layout: metadata files, the image index, and reading the images (PNG, lra/pathfinder/png.py).

Layout (docs/lra_data.md section 3.5): `<root>/<curv_dir>/imgs/<batch>/sample_<i>.png` and TEXT
`metadata/<batch>.npy`, one line per image: `imgs/<batch> sample_<i>.png <i> <label> <continuity>
<contour_length> <distractor_length> <paddle_length> <paddle_thickness> <paddle_margin> <n_paddle_contrasts>`.
A real binary .npy metadata file (np.save of the string array, as [PF] wrote it) is read too. Examples are
ordered by (numeric batch id, row in the metadata file): the order the splits slice (lra/pathfinder/dataset.py).

Skipped examples: an empty (0-byte) PNG or an image whose pixels are all 0 is skipped with a warning, as LRA
filters empty images and S4 blacklists the empty `pathfinder32/curv_baseline/imgs/0/sample_172.png`. Anything
else malformed (truncated PNG, wrong size, bad metadata row, missing file) raises LRADataError naming the
file (the metadata file and line for a bad row, the image file for a bad image), and so does a dataset with no
example left. A metadata row must name
`imgs/<batch>/<file>.png` inside the dataset directory (no `..`, no absolute path). Sizes declared in PNG and
.npy headers are checked before anything that large is allocated or inflated. Images and metadata files must be
regular files (links to them are fine): a FIFO, a device, a directory or a dangling link is an LRADataError
raised before opening it, and so is a file over its bound (`png_max_bytes`, METADATA_MAX_BYTES; lra/files.py).
"""

from __future__ import annotations

import io
import math
import os
import tokenize
import warnings

import numpy as np

from lra.errors import LRADataError, located
from lra.files import read_bounded
from lra.listops import _default_num_workers, _worker_context
from lra.pathfinder.generate import PathfinderParams, difficulty_dir
from lra.pathfinder.png import decode_png, png_max_bytes


def _format_number(value: float) -> str:
    """Python 2 `str` of [PF]'s Args values: ints as ints, floats with a point (2 -> '2', 2.0 -> '2.0')."""
    return repr(value) if isinstance(value, float) else str(int(value))


def metadata_row(batch: int, index: int, label: int, params: PathfinderParams, margin: int) -> str:
    """One metadata line (no newline): [PF] accumulate_meta's fields joined by single spaces."""
    fields = [
        f"imgs/{batch}", f"sample_{index}.png", index, label, params.continuity, params.contour_length,
        params.distractor_length, params.paddle_length, params.paddle_thickness, margin,
        len(params.paddle_contrast_list),
    ]  # fmt: skip
    return " ".join(field if isinstance(field, str) else _format_number(field) for field in fields)


# Bounds on metadata files (lra/files.py): a file lists one batch of images, one line of ~60 bytes each (the
# binary .npy a few times that), so 64 MiB (a million lines) and 4,096-character lines are beyond any real one.
METADATA_MAX_BYTES = 64 << 20
METADATA_MAX_LINE = 4096


def _binary_metadata_lines(content: bytes, path: str) -> list[str]:
    """Rows of a binary .npy metadata file (a 2-D string array), joined by spaces; the header is checked against
    the file's size before anything is allocated, and object (pickled) arrays are refused."""
    handle = io.BytesIO(content)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
    except (ValueError, SyntaxError, tokenize.TokenError, RecursionError, MemoryError, TypeError, KeyError) as error:
        raise LRADataError(f"{path}: cannot read binary metadata ({type(error).__name__}: {error})") from None
    if dtype.kind not in "SU" or len(shape) != 2 or min(shape) < 0:
        raise LRADataError(
            f"{path}: binary metadata must be a 2-D array of strings, got shape {shape} of {dtype}"
        )
    available = len(content) - handle.tell()
    if math.prod(shape) * dtype.itemsize != available:
        raise LRADataError(
            f"{path}: binary metadata declares {shape} of {dtype}, which the {available} bytes after the header "
            "do not hold exactly (truncated or trailing data)"
        )
    order = "F" if fortran_order else "C"
    array = np.frombuffer(content, dtype=dtype, offset=handle.tell()).reshape(shape, order=order)
    lines = []
    for row_number, row in enumerate(array, start=1):
        try:
            lines.append(" ".join(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in row))
        except UnicodeDecodeError as error:
            raise LRADataError(
                located(f"{path}, row {row_number}", f"metadata is not UTF-8 text ({error.reason})")
            ) from None
    return lines


def read_metadata(path: str) -> list[tuple[str, str, int]]:
    """Rows (subdir, filename, label) of one metadata file, in file order.

    Text (the LRA copies): split on '\\n', a trailing empty line dropped (LRA's `[:-1]`, but a last line
    without a newline is kept), each line split on single spaces; field 0 must be `imgs/<batch>` (one path
    component, not `.` or `..`), field 1 a `.png` file name (no directory) and field 3 the label 0 or 1; no
    field may hold a NUL; a text line may hold METADATA_MAX_LINE characters. A binary .npy (the 2-D string array [PF]
    saved) is read without pickles, its header checked against the file's size. Raises LRADataError naming the
    file and line (row) for a malformed row, and naming the file when it cannot be read or decoded, is not a
    regular file, or is larger than METADATA_MAX_BYTES.
    """
    try:
        content = read_bounded(path, "the metadata file", METADATA_MAX_BYTES)
    except OSError as error:
        raise LRADataError(f"{path}: cannot read the metadata file ({error.strerror or error})") from None
    if content.startswith(b"\x93NUMPY"):
        lines = _binary_metadata_lines(content, path)
    else:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as error:
            raise LRADataError(
                f"{path}: metadata is not UTF-8 text ({error.reason} at byte {error.start})"
            ) from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
    rows = []
    for line_number, line in enumerate(lines, start=1):
        where = f"{path}, line {line_number}"
        if len(line) > METADATA_MAX_LINE:
            raise LRADataError(located(where, f"longer than {METADATA_MAX_LINE:,} characters, not a metadata row"))
        fields = line.rstrip("\r").split(" ")
        if len(fields) < 4:
            raise LRADataError(
                located(
                    where,
                    f"expected >= 4 space-separated fields (subdir file nimg label ...), got {line[:80]!r}",
                )
            )
        subdir, filename, label = fields[0], fields[1], fields[3]
        batch = subdir[len("imgs/") :]
        if (
            not subdir.startswith("imgs/")
            or batch in ("", ".", "..")
            or "/" in batch
            or "/" in filename
            or not filename.endswith(".png")
            or "\x00" in subdir + filename
        ):
            raise LRADataError(
                located(
                    where, f"expected 'imgs/<batch> sample_<i>.png ...', got {' '.join(fields[:2])[:80]!r}"
                )
            )
        if label not in ("0", "1"):
            raise LRADataError(located(where, f"label (field 4) must be 0 or 1, got {label[:20]!r}"))
        rows.append((subdir, filename, int(label)))
    return rows


def _batch_sort_key(filename: str) -> tuple[int, int | str]:
    stem = filename[: -len(".npy")]
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def metadata_files(dataset_dir: str) -> list[str]:
    """Paths of `<dataset_dir>/metadata/*.npy`, by numeric batch id (then non-numeric names, sorted)."""
    directory = os.path.join(dataset_dir, "metadata")
    if not os.path.isdir(directory):
        raise LRADataError(
            f"{directory}: not found; expected the Pathfinder layout <curv_dir>/metadata/<batch>.npy"
        )
    names = sorted((n for n in os.listdir(directory) if n.endswith(".npy")), key=_batch_sort_key)
    if not names:
        raise LRADataError(f"{directory}: no metadata files (*.npy)")
    return [os.path.join(directory, name) for name in names]


def read_index(dataset_dir: str) -> tuple[list[str], np.ndarray]:
    """(image paths, labels (n,) int32) of a `<curv_dir>` directory, in split order (see module docstring)."""
    paths: list[str] = []
    labels: list[int] = []
    for metadata_path in metadata_files(dataset_dir):
        for subdir, filename, label in read_metadata(metadata_path):
            paths.append(os.path.join(dataset_dir, subdir, filename))
            labels.append(label)
    if not paths:
        raise LRADataError(f"{os.path.join(dataset_dir, 'metadata')}: no examples listed in the metadata files")
    return paths, np.asarray(labels, dtype=np.int32)


def find_dataset_dir(data_dir: str, resolution: int, difficulty: str) -> str:
    """`<data_dir>/<curv_dir>`, or `<data_dir>/pathfinder<resolution>/<curv_dir>` (the lra_release root)."""
    directory = difficulty_dir(difficulty)
    for candidate in (
        os.path.join(data_dir, directory),
        os.path.join(data_dir, f"pathfinder{resolution}", directory),
    ):
        if os.path.isdir(candidate):
            return candidate
    task = {32: "pathfinder", 128: "pathx"}.get(resolution)
    from lra.download import download_hint  # lazily: lra.download imports the task registry, which imports this

    hint = f"; {download_hint(task, data_dir)}" if task else ""
    raise LRADataError(
        f"Pathfinder data not found: neither {os.path.join(data_dir, directory)} nor "
        f"{os.path.join(data_dir, f'pathfinder{resolution}', directory)} exists{hint}"
    )


# ---------------------------------------------------------------------------------------------------------
# Reading the images.


def _read_block(task: tuple[list[str], int]) -> tuple[np.ndarray, np.ndarray]:
    """Decode PNGs into (k, H*W) uint8 and a (k,) bool 'keep' (False: empty file or all-zero image)."""
    paths, resolution = task
    out = np.zeros((len(paths), resolution * resolution), dtype=np.uint8)
    keep = np.zeros(len(paths), dtype=bool)
    for row, path in enumerate(paths):
        try:
            data = read_bounded(path, "the image listed in the metadata", png_max_bytes(resolution, resolution))
        except OSError as error:
            raise LRADataError(
                f"{path}: cannot read the image listed in the metadata ({error.strerror})"
            ) from None
        if not data:
            continue
        image = decode_png(data, path, expected_shape=(resolution, resolution))
        if image.any():
            out[row] = image.reshape(-1)
            keep[row] = True
    return out, keep


def _block_rows(resolution: int) -> int:
    return max(1, (1 << 22) // (resolution * resolution))  # ~4 MB of pixels per block


def _iterate_blocks(paths: list[str], resolution: int, num_workers: int | None):
    """Yield (first index, pixels, keep) for consecutive blocks of `paths`, decoded in worker processes."""
    step = _block_rows(resolution)
    tasks = [(paths[start : start + step], resolution) for start in range(0, len(paths), step)]
    workers = min(_default_num_workers() if num_workers is None else num_workers, len(tasks))
    if workers < 1 and tasks:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if workers <= 1:
        results = map(_read_block, tasks)
        for index, (pixels, keep) in enumerate(results):
            yield index * step, pixels, keep
        return
    with _worker_context().Pool(workers) as pool:
        for index, (pixels, keep) in enumerate(pool.imap(_read_block, tasks, chunksize=1)):
            yield index * step, pixels, keep


def _warn_skipped(skipped: list[str], total: int) -> None:
    if len(skipped) == total:
        raise LRADataError(
            f"Pathfinder: no examples left, all {total} images are empty files or all black (first: {skipped[0]})"
        )
    if skipped:
        warnings.warn(
            f"Pathfinder: skipped {len(skipped)} of {total} images that are empty files or all black "
            f"(first: {skipped[0]})",
            stacklevel=3,
        )


def read_pathfinder_examples(
    dataset_dir: str, resolution: int, *, num_workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All examples of a `<curv_dir>` directory in memory: (inputs (n, H*W) uint8, labels (n,) int32).

    Skips empty files and all-zero images (with a warning). Memory: n * H*W bytes; for Path-X use the cache.
    """
    paths, labels = read_index(dataset_dir)
    inputs = np.empty((len(paths), resolution * resolution), dtype=np.uint8)
    keep_all = np.zeros(len(paths), dtype=bool)
    for start, pixels, keep in _iterate_blocks(paths, resolution, num_workers):
        inputs[start : start + len(keep)] = pixels
        keep_all[start : start + len(keep)] = keep
    if keep_all.all():
        return inputs, labels
    _warn_skipped([p for p, k in zip(paths, keep_all) if not k], len(paths))
    return inputs[keep_all], labels[keep_all]
