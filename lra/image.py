"""Image tasks as pixel sequences: CIFAR-10 grayscale (LRA "image") and MNIST-family IDX images (extra tasks).

Tokens are the raw pixel values 0..255 (vocabulary 256, LRA's choice), flattened row-major. Every position is a
real pixel, so image sequences are NEVER padded, and a black pixel (0) must not be read as padding: LRA's
transformer builds its mask as `inputs > 0` and so masks black pixels out (docs/lra_data.md section 3.4), which we do
not copy. Their TaskSpecs say `padded=False`, and the trainer then uses an all-True mask instead of `inputs != pad_id`.
The splits stay integer: with `model.input_encoding="linear"` the trainer maps each batch's pixels to [-1, 1]
(experiments/trainer.py, model_inputs).

CIFAR-10 (docs/lra_data.md section 3.4) is read from the official python pickles
`<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch}` (or `data_dir` pointing at that directory):
dicts with b"data" (n, 3072) uint8 -- red, green and blue planes of 32x32, each row-major -- and b"labels"
(n ints 0..9). Grayscale follows `tf.image.rgb_to_grayscale` on uint8, as LRA computes it; see
`rgb_to_grayscale`. Splits follow LRA's `train[:90%]`, `train[90%:]`, `test`: the training batches are
concatenated in order 1..5 and cut at 50000 - val_size (45k / 5k / 10k by default). These are not the same
45k/5k images as TFDS's (TFDS stores the examples in its own shuffled order); the sizes are LRA's.

Pickles are unsafe: loading one from an untrusted source can run arbitrary code. Read only CIFAR-10 files from
a source you trust. `read_cifar_batch` narrows the risk without removing it: it refuses every global but numpy's
array reconstruction, checks before unpickling that every length the pickle declares fits in the file (so a
forged header cannot make the unpickler allocate gigabytes), and bounds the arrays numpy is asked to build by
the file's size.

MNIST family (sequential MNIST, Fashion-MNIST, and their fixed-permutation variants): IDX files
`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`,
each optionally gzipped (`.gz`). IDX: big-endian uint32 magic 0x00000803 (images, 3 dims) or 0x00000801
(labels, 1 dim), then one big-endian uint32 per dimension, then the uint8 values row-major. The declared size is
checked against the file (or, gzipped, against the most a deflate stream of that size can expand to) before any
of it is allocated, and gzip data are inflated only as far as the header says.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
import os
import pickle
import pickletools
import zlib

import numpy as np

from lra.download import download_hint
from lra.errors import LRADataError
from lra.files import open_regular, read_bounded
from lra.tasks import Split

PIXEL_VOCAB_SIZE = 256
# Tasks whose every position is a real pixel: never padded, mask all-True (see module docstring).

# ---------------------------------------------------------------------------------------------------------
# Grayscale, exactly as tf.image.rgb_to_grayscale on uint8 images.

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def rgb_to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) uint8 gray, reproducing `tf.image.rgb_to_grayscale` on uint8.

    TF converts uint8 to float32 (x * float32(1/255)), takes the weighted sum with weights
    (0.2989, 0.5870, 0.1140) in float32, and converts back with `convert_image_dtype`, which multiplies by
    255.5 (= uint8 max + 0.5) and casts, truncating. In pixel units the result is
    floor((0.2989 R + 0.5870 G + 0.1140 B) * 255.5 / 255): neither rounding nor truncation of the weighted sum.
    E.g. pure green 255 gives 149 (rounding would give 150, PIL's "L" gives 150), pure red 76, pure blue 29,
    and gray (v, v, v) stays v. The float32 steps are done in TF's order, with the sum accumulated r, g, b.
    Whether TF's tensordot accumulates in that order is not verified here; another order changes the result
    for 47 of the 16.7M colours (all within 4e-5 of an integer boundary).
    Cost: O(number of pixels), float32 temporaries per channel.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1:] != (3,):
        raise ValueError(f"expected (..., 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    to_unit = np.float32(1.0 / 255.0)
    weights = np.asarray(GRAY_WEIGHTS, dtype=np.float32)
    gray = np.zeros(rgb.shape[:-1], dtype=np.float32)
    for channel in range(3):
        gray += (rgb[..., channel].astype(np.float32) * to_unit) * weights[channel]
    return (gray * np.float32(255.5)).astype(np.uint8)  # non-negative, < 256: astype truncates like TF's cast


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10.

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_SIDE = 32
CIFAR_NUM_CLASSES = 10
# The largest batch file read (lra/files.py). An official batch is ~31 MB (10,000 images of 3,072 bytes); a
# Python 3 re-pickle with protocol 2 stores bytes as latin-1 text, up to twice that.
CIFAR_BATCH_MAX_BYTES = 64 << 20

# The only globals an official batch (numpy arrays pickled by Python 2) or a Python 3 re-pickle refers to.
# Anything else is refused, so loading a pickle cannot run arbitrary code.
_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol 2
    }
)


class _NdarrayStandIn:
    """Stands for numpy.ndarray inside a pickle: usable only as _reconstruct's subtype, never called directly."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray may only appear as the type passed to _reconstruct")


_NDARRAY = _NdarrayStandIn()


class _CheckedArray(np.ndarray):
    """The array type built while unpickling: its __setstate__ refuses states whose data do not match the shape
    (numpy would allocate the declared shape first) and object arrays (which official batches never hold)."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed numpy array state")
        shape, dtype, _, data = state[-4:]
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes | bytearray):
            raise pickle.UnpicklingError(f"unsupported numpy array state (dtype {dtype!r})")
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise pickle.UnpicklingError(f"malformed numpy array shape {shape!r}")
        if math.prod(shape) * dtype.itemsize != len(data):
            raise pickle.UnpicklingError(f"array data of {len(data)} bytes do not fill shape {shape} of {dtype}")
        super().__setstate__(state)


def _bounded_reconstruct(reconstruct, max_bytes: int, subtype, shape, dtype):
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct may only build a numpy.ndarray")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise pickle.UnpicklingError(f"malformed numpy array shape {shape!r}")
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > max_bytes:
        raise pickle.UnpicklingError(f"an array of {nbytes} bytes cannot come from a file of {max_bytes} bytes")
    return reconstruct(_CheckedArray, shape, dtype)


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as Python 3 pickles bytes with protocol 2; any other codec is refused."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    def __init__(self, file, max_bytes: int) -> None:
        super().__init__(file, encoding="bytes")
        self._max_bytes = max_bytes

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        found = super().find_class(module, name)
        if name == "_reconstruct":
            return functools.partial(_bounded_reconstruct, found, self._max_bytes)
        return found


_LENGTH_PREFIXES = {  # pickletools' "length taken from the argument" codes -> (prefix bytes, signed)
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}


def _check_pickle_lengths(raw: bytes, path: str) -> None:
    """Walk the opcodes of a pickle without building anything; LRADataError unless every declared length fits.

    The C unpickler allocates a string, bytes or frame of the declared length before reading it, so a forged
    length (say 1 TiB) in a tiny file would otherwise allocate that much. Cost: one pass, O(number of opcodes).
    """
    position, size = 0, len(raw)
    while position < size:
        opcode = pickletools.code2op.get(chr(raw[position]))
        if opcode is None:
            raise LRADataError(
                f"{path}: not a readable CIFAR-10 pickle (unknown opcode 0x{raw[position]:02x} at byte {position})"
            )
        start = position
        position += 1
        argument = opcode.arg
        if argument is None:
            pass
        elif argument.n >= 0:
            if opcode.name == "FRAME" and position + 8 <= size:
                if int.from_bytes(raw[position : position + 8], "little") > size - position - 8:
                    raise LRADataError(
                        f"{path}: not a readable CIFAR-10 pickle (truncated: the frame at byte {start} runs past "
                        "the end)"
                    )
            position += argument.n
        elif argument.n == pickletools.UP_TO_NEWLINE:  # GLOBAL and INST take two lines (module, name)
            for _ in range(2 if argument.name == "stringnl_noescape_pair" else 1):
                newline = raw.find(b"\n", position)
                if newline < 0:
                    raise LRADataError(
                        f"{path}: not a readable CIFAR-10 pickle (truncated: {opcode.name} at byte {start} has no "
                        "newline)"
                    )
                position = newline + 1
        else:
            width, signed = _LENGTH_PREFIXES[argument.n]
            length = int.from_bytes(raw[position : position + width], "little", signed=signed)
            if length < 0:
                raise LRADataError(
                    f"{path}: not a readable CIFAR-10 pickle (negative length in {opcode.name} at byte {start})"
                )
            position += width + length
        if position > size:
            break
        if opcode.name == "STOP":
            return
    raise LRADataError(
        f"{path}: not a readable CIFAR-10 pickle (truncated: a length runs past the end or no STOP opcode "
        f"before byte {size})"
    )


def _field(batch: dict, name: str, path: str):
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    raise LRADataError(f"{path}: CIFAR-10 batch has no {name!r} entry; keys are {sorted(map(repr, batch))}")


def read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One official CIFAR-10 pickle -> (data (n, 3072) uint8 RGB planes, labels (n,) int32).

    Pickles can run code: read only files from a trusted source (module docstring). Raises LRADataError naming
    the file: missing, not a regular file (a FIFO, a device, a directory, a dangling link: lra/files.py), over
    CIFAR_BATCH_MAX_BYTES, truncated or not a pickle, a length that runs past the end of the file, a global
    other than numpy's array reconstruction, no dict with b"data"/b"labels", data not (n, 3072) uint8 with
    n >= 1, a label count other than n, or a label that is not an integer 0..9 (naming the record).
    """
    if not os.path.lexists(path):
        raise LRADataError(f"{path}: CIFAR-10 batch not found; {download_hint('image', os.path.dirname(path))}")
    raw = read_bounded(path, "a CIFAR-10 batch", CIFAR_BATCH_MAX_BYTES)
    _check_pickle_lengths(raw, path)
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), max_bytes=len(raw)).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        LookupError,
        OverflowError,
        RecursionError,
    ) as error:
        raise LRADataError(f"{path}: not a readable CIFAR-10 pickle ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict):
        raise LRADataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = _field(batch, "data", path)
    labels = _field(batch, "labels", path)
    planes = 3 * CIFAR_SIDE * CIFAR_SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != planes:
        shape = getattr(data, "shape", None)
        raise LRADataError(
            f"{path}: expected data of shape (n, {planes}) uint8, got {shape} {getattr(data, 'dtype', type(data))}"
        )
    if not len(data):
        raise LRADataError(f"{path}: the batch holds no images")
    return np.asarray(data).view(np.ndarray), _cifar_labels(labels, len(data), path)


def _cifar_labels(labels, count: int, path: str) -> np.ndarray:
    """(count,) int32 from a list/tuple of ints or an integer ndarray; anything else -> LRADataError."""
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu" or labels.shape != (count,):
            raise LRADataError(f"{path}: {count} images but labels of shape {labels.shape} {labels.dtype}")
        values = labels.tolist()
    elif isinstance(labels, list | tuple):
        if len(labels) != count:
            raise LRADataError(f"{path}: {count} images but labels of shape ({len(labels)},)")
        values = labels
    else:
        raise LRADataError(f"{path}: labels must be a list of integers, got {type(labels).__name__}")
    for record, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise LRADataError(f"{path}, record {record}: label must be an integer 0..9, got {value!r:.40}")
        if not 0 <= value < CIFAR_NUM_CLASSES:
            raise LRADataError(f"{path}, record {record}: label must be 0..{CIFAR_NUM_CLASSES - 1}, got {value}")
    return np.asarray(values, dtype=np.int32)


def cifar_to_sequences(data: np.ndarray) -> np.ndarray:
    """(n, 3072) uint8 RGB planes -> (n, 1024) int32 gray pixel ids, pixel (row r, column c) at r * 32 + c."""
    rgb = data.reshape(len(data), 3, CIFAR_SIDE * CIFAR_SIDE)
    return rgb_to_grayscale(np.moveaxis(rgb, 1, -1)).astype(np.int32)


def _check_val_size(val_size: int, num_train: int, source: str) -> None:
    """ValueError for a val_size below 1; LRADataError naming `source` when the data hold too few images."""
    if val_size < 1:
        raise ValueError(f"val_size must be at least 1, got {val_size}")
    if val_size > num_train - 1:
        raise LRADataError(
            f"{source}: {num_train} training images, too few for val_size={val_size} (val_size must be between 1 "
            f"and {num_train - 1} to leave a training image)"
        )


def _position_splits(
    train_inputs: np.ndarray,
    train_labels: np.ndarray,
    test_inputs: np.ndarray,
    test_labels: np.ndarray,
    val_size: int,
    source: str,
) -> dict[str, Split]:
    """LRA's split by position: train[:n - val_size], train[n - val_size:], test."""
    _check_val_size(val_size, len(train_labels), source)
    cut = len(train_labels) - val_size
    return {
        "train": Split(inputs=train_inputs[:cut], labels=train_labels[:cut], name="train"),
        "val": Split(inputs=train_inputs[cut:], labels=train_labels[cut:], name="val"),
        "test": Split(inputs=test_inputs, labels=test_labels, name="test"),
    }


def load_cifar10(data_dir: str, *, val_size: int = 5000) -> dict[str, Split]:
    """Read the CIFAR-10 python batches into grayscale pixel sequences.

    Returns:
      {"train", "val", "test"} -> Split with inputs (n, 1024) int32 pixel values 0..255 (NOT padded: the mask
      must be all-True) and labels (n,) int32 0..9. Sizes 45000 / 5000 / 10000 with the official files.
    Raises:
      LRADataError naming the file (see `read_cifar_batch`); ValueError for a val_size that leaves no
      training or no validation image.
    Cost: O(60000 * 3072), ~1 s; no cache, since reading the pickles is as fast as a cache would be.
    """
    directory = os.path.join(data_dir, CIFAR_DIR)
    if not os.path.isdir(directory):
        directory = data_dir
    if not os.path.isdir(directory):
        raise LRADataError(
            f"{data_dir}: CIFAR-10 directory not found; expected {CIFAR_DIR}/ with data_batch_1..5; "
            + download_hint("image", data_dir)
        )
    train_parts = [read_cifar_batch(os.path.join(directory, name)) for name in CIFAR_TRAIN_BATCHES]
    test_data, test_labels = read_cifar_batch(os.path.join(directory, CIFAR_TEST_BATCH))
    train_inputs = np.concatenate([cifar_to_sequences(data) for data, _ in train_parts])
    train_labels = np.concatenate([labels for _, labels in train_parts])
    source = os.path.join(directory, "data_batch_{1..5}")
    return _position_splits(train_inputs, train_labels, cifar_to_sequences(test_data), test_labels, val_size, source)


# ---------------------------------------------------------------------------------------------------------
# MNIST family (IDX files).

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_GZIP_MAGIC = b"\x1f\x8b"


def find_idx_file(data_dir: str, stem: str) -> str:
    """`<data_dir>/<stem>` or, failing that, `<data_dir>/<stem>.gz`; else LRADataError naming both."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.lexists(path):  # whatever it is: read_idx names it if it is not a regular file
            return path
    hint = download_hint("mnist", data_dir, alternatives=("fashion_mnist",))
    raise LRADataError(f"{os.path.join(data_dir, stem)}: IDX file not found (nor {stem}.gz); {hint}")


_IDX_CHUNK = 1 << 20  # bytes inflated at a time
# Deflate expands data by at most ~1032:1, so a gzip file of n bytes cannot hold more than this many times n.
_DEFLATE_MAX_RATIO = 1032


def _gzip_max_bytes(content: int) -> int:
    """The most bytes a gzip file of `content` bytes needs: stored deflate blocks add 5 bytes per 65,535, and
    1 MiB is left for the gzip header's optional name, comment and extra field."""
    return content + content // 8192 + (1 << 20)


def _read_up_to(stream, count: int, path: str) -> bytearray:
    """Up to `count` bytes of `stream` (plain or gzip), read chunk by chunk: memory follows the data found."""
    out = bytearray()
    while len(out) < count:
        try:
            piece = stream.read(min(_IDX_CHUNK, count - len(out)))
        except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
            raise LRADataError(f"{path}: corrupt or truncated gzip data ({error})") from None
        if not piece:
            break
        out += piece
    return out


def read_idx(path: str, magic: int) -> np.ndarray:
    """The uint8 array stored in an IDX file (gzipped or not: detected from the content, not the name).

    Args:
      magic: the expected big-endian header word, IDX_IMAGES_MAGIC or IDX_LABELS_MAGIC; its low byte is the
        number of dimensions.
    Raises LRADataError naming the file: not a regular file (a FIFO, a device, a directory, a dangling link;
    lra/files.py), unreadable gzip, header shorter than announced, wrong magic, a zero dimension, or a payload
    whose size differs from the product of the dimensions (truncated or with trailing bytes). The file's size is
    checked against the header before the payload is read or allocated: exactly header + data when plain; when
    gzipped, at least 1/1032 of the data (deflate's best ratio) and at most `_gzip_max_bytes` of it.
    """
    with open_regular(path, "an IDX file") as handle:
        return _read_idx(handle, os.fstat(handle.fileno()).st_size, path, magic)


def _read_idx(handle, size: int, path: str, magic: int) -> np.ndarray:
    gzipped = handle.read(2) == _GZIP_MAGIC
    handle.seek(0)
    stream = gzip.GzipFile(fileobj=handle, mode="rb") if gzipped else handle
    head = _read_up_to(stream, 4, path)
    if len(head) < 4:
        raise LRADataError(f"{path}: {len(head)} bytes, too short for an IDX header")
    found = int.from_bytes(head, "big")
    if found != magic:
        raise LRADataError(f"{path}: IDX magic 0x{found:08x}, expected 0x{magic:08x}")
    num_dims = magic & 0xFF
    header = 4 + 4 * num_dims
    head += _read_up_to(stream, header - 4, path)
    if len(head) < header:
        raise LRADataError(f"{path}: IDX header truncated ({len(head)} bytes, expected at least {header})")
    dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    expected = math.prod(dims)  # a Python int: no overflow, unlike an int64 product of four uint32s
    if not expected:
        raise LRADataError(f"{path}: IDX dimensions {dims} hold no data")
    if not gzipped and size - header != expected:
        raise LRADataError(f"{path}: IDX dimensions {dims} need {expected} data bytes, found {size - header}")
    if gzipped and expected > _DEFLATE_MAX_RATIO * size:
        raise LRADataError(
            f"{path}: IDX dimensions {dims} need {expected} data bytes, more than a gzip file of {size} bytes "
            "can hold"
        )
    if gzipped and size > _gzip_max_bytes(header + expected):
        raise LRADataError(
            f"{path}: a gzip file of {size:,} bytes, larger than IDX dimensions {dims} ({expected:,} data bytes) "
            f"can need (at most {_gzip_max_bytes(header + expected):,} bytes)"
        )
    payload = _read_up_to(stream, expected + 1, path)  # one byte more: trailing data is an error too
    if len(payload) != expected:
        found_bytes = f"more than {expected} (trailing bytes)" if len(payload) > expected else str(len(payload))
        raise LRADataError(f"{path}: IDX dimensions {dims} need {expected} data bytes, found {found_bytes}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def pixel_permutation(length: int, seed: int) -> np.ndarray:
    """(length,) int64 fixed permutation `np.random.default_rng(seed).permutation(length)`.

    Position t of a permuted sequence holds pixel permutation[t] of the row-major image.
    """
    return np.random.default_rng(seed).permutation(length)


def _read_idx_pair(data_dir: str, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray, str]:
    images_path = find_idx_file(data_dir, IDX_FILES[f"{split}_images"])
    labels_path = find_idx_file(data_dir, IDX_FILES[f"{split}_labels"])
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise LRADataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise LRADataError(f"{labels_path}, record {bad[0]}: label must be 0..{num_classes - 1}, got {labels[bad[0]]}")
    return images.reshape(len(images), -1).astype(np.int32), labels.astype(np.int32), images_path


def load_idx_images(
    data_dir: str,
    *,
    permuted: bool = False,
    permutation_seed: int = 0,
    val_size: int = 6000,
    num_classes: int = 10,
) -> dict[str, Split]:
    """Read MNIST-style IDX files into pixel sequences (sequential MNIST / Fashion-MNIST, plain or permuted).

    Returns:
      {"train", "val", "test"} -> Split with inputs (n, rows * cols) int32 pixel values 0..255, row-major, or
      reordered by `pixel_permutation(rows * cols, permutation_seed)` (the same for every split) when
      `permuted`; labels (n,) int32. Split by position like LRA's MNIST pipeline (train[:90%] / train[90%:]):
      the last `val_size` training images are the validation split (54000 / 6000 / 10000 for MNIST).
      NOT padded: the mask must be all-True.
    Raises:
      LRADataError naming the file (see `read_idx`; also label counts that differ from image counts, labels
      >= num_classes, train and test images of different sizes); ValueError for a bad val_size.
    """
    train_inputs, train_labels, train_path = _read_idx_pair(data_dir, "train", num_classes)
    test_inputs, test_labels, test_path = _read_idx_pair(data_dir, "test", num_classes)
    if train_inputs.shape[1] != test_inputs.shape[1]:
        raise LRADataError(
            f"{data_dir}: training images have {train_inputs.shape[1]} pixels but test images "
            f"{test_inputs.shape[1]} ({train_path}, {test_path})"
        )
    if permuted:
        order = pixel_permutation(train_inputs.shape[1], permutation_seed)
        train_inputs, test_inputs = train_inputs[:, order], test_inputs[:, order]
    return _position_splits(train_inputs, train_labels, test_inputs, test_labels, val_size, train_path)
