"""8-bit grayscale PNG files of the Pathfinder layout: Pillow encodes and decodes; the container is checked here.

Pillow (`PIL.Image`) writes the files and turns their pixel data into pixels (zlib, the five row filters).
Before Pillow sees a file, `decode_png` checks what lra promises for a hostile file (lra/errors.py: a result
or LRADataError naming the file; no other exception, no hang, no allocation beyond the data present):

- the chunk structure: the signature, every chunk's length and CRC, IHDR first, IEND present, no unknown
  critical chunk (zlib.crc32 and struct; nothing is allocated but slices of the file);
- the header: 8-bit grayscale, non-interlaced, the expected size (or at most PNG_MAX_PIXELS), before anything
  is inflated;
- the pixel data: the IDAT stream is inflated up to the size the header declares, and must hold exactly that
  many bytes. A zlib bomb stops there and is refused ("more compressed pixel data than ... needs"). This check
  cannot be left to Pillow: Pillow 13 accepts a zlib stream that ends at a row boundary before the last row
  and returns those rows as zeros (ZipDecode.c: "The image and the data should end simultaneously", with the
  check commented out), and it ignores data beyond the last row.

Only then does Pillow decode (re-inflating: ~25 us of the ~0.1 ms a Path-X image takes); whatever it raises becomes
LRADataError naming the file too. `encode_png` writes with Pillow's adaptive row filters, so the files are not
byte-identical to those of the hand-written encoder this replaced (filter 0 on every row; Pillow's are 10-14%
larger on Pathfinder images), but they hold the same pixels: generated datasets, their directory names and
the caches built from them are unchanged.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from lra.errors import LRADataError, located
from lra.files import read_bounded

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_FILE_MAX_BYTES = 64 << 20  # the largest PNG `read_png` reads (no expected size known)
PNG_MAX_SIDE = (1 << 31) - 1  # the PNG specification's limit on width and height
PNG_MAX_PIXELS = 1 << 26  # the largest image decoded without an expected size (64 MiB of 8-bit pixels)
_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


def encode_png(image: np.ndarray, *, compression: int = 6) -> bytes:
    """PNG bytes of an (H, W) uint8 image: 8-bit grayscale, non-interlaced (Pillow, zlib level `compression`)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2 or 0 in image.shape:
        raise ValueError(
            f"encode_png expects a non-empty (H, W) uint8 image, got {image.dtype} {image.shape}"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=compression)
    return buffer.getvalue()


def write_png(path: str, image: np.ndarray) -> None:
    """Write `image` (H, W) uint8 as an 8-bit grayscale PNG."""
    data = encode_png(image)
    with open(path, "wb") as handle:
        handle.write(data)


def _check_ihdr(body: bytes, where: str | None, expected_shape: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) of a 13-byte IHDR body that declares an image `decode_png` reads."""
    width, height, bit_depth, color_type, compression, filter_method, interlace = struct.unpack(">IIBBBBB", body)
    if (bit_depth, color_type, compression, filter_method, interlace) != (8, 0, 0, 0, 0) or not (
        1 <= width <= PNG_MAX_SIDE and 1 <= height <= PNG_MAX_SIDE
    ):
        raise LRADataError(
            located(
                where,
                f"unsupported PNG format: {width}x{height}, bit depth {bit_depth}, colour type "
                f"{color_type} ({_COLOR_TYPES.get(color_type, 'unknown')}), interlace {interlace}; "
                f"expected 8-bit grayscale (colour type 0), non-interlaced, sides 1..{PNG_MAX_SIDE}",
            )
        )
    if expected_shape is not None and (height, width) != tuple(expected_shape):
        raise LRADataError(
            located(where, f"image is {height}x{width}, expected {expected_shape[0]}x{expected_shape[1]}")
        )
    if height * width > PNG_MAX_PIXELS:
        raise LRADataError(located(where, f"image is {height}x{width}, over the {PNG_MAX_PIXELS:,} pixels read"))
    return height, width


def _checked_chunks(
    data: bytes, where: str | None, expected_shape: tuple[int, int] | None
) -> tuple[int, int, bytes]:
    """(height, width, the IDAT data joined) of a PNG whose chunk structure and header pass (module docstring)."""
    if not data.startswith(PNG_SIGNATURE):
        raise LRADataError(located(where, "not a PNG file (missing the 8-byte PNG signature)"))
    position = len(PNG_SIGNATURE)
    shape: tuple[int, int] | None = None
    compressed: list[bytes] = []
    while True:
        if position + 8 > len(data):
            raise LRADataError(located(where, f"truncated PNG: data ends at byte {len(data)} before IEND"))
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        end = position + 12 + length
        if end > len(data):
            raise LRADataError(
                located(where, f"truncated PNG: chunk {kind!r} needs {length} bytes, the file ends first")
            )
        body = data[position + 8 : position + 8 + length]
        if struct.unpack(">I", data[end - 4 : end])[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise LRADataError(located(where, f"corrupt PNG: CRC mismatch in chunk {kind!r}"))
        position = end
        if shape is None and kind != b"IHDR":
            raise LRADataError(located(where, f"corrupt PNG: first chunk is {kind!r}, expected IHDR"))
        if kind == b"IHDR":
            if shape is not None or length != 13:
                raise LRADataError(located(where, f"corrupt PNG: an IHDR chunk of {length} bytes, expected one of 13"))
            shape = _check_ihdr(body, where, expected_shape)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            return shape[0], shape[1], b"".join(compressed)
        elif kind[:1].isupper():  # an unknown critical chunk (e.g. PLTE) that a gray decoder must not ignore
            raise LRADataError(located(where, f"unsupported PNG: critical chunk {kind!r} in a grayscale image"))


def _check_pixel_data(compressed: bytes, height: int, width: int, where: str | None) -> None:
    """The IDAT stream inflates to exactly height * (width + 1) bytes (a filter byte per row), inflating no more."""
    needed = height * (width + 1)  # <= PNG_MAX_PIXELS + 2**31: within zlib's max_length
    decompressor = zlib.decompressobj()
    try:
        raw = decompressor.decompress(compressed, needed)
        extra = b"" if decompressor.eof else decompressor.decompress(decompressor.unconsumed_tail, 1)
    except zlib.error as error:
        raise LRADataError(located(where, f"corrupt PNG: bad compressed image data ({error})")) from None
    if extra:
        raise LRADataError(
            located(where, f"corrupt PNG: more compressed pixel data than the {width}x{height} header needs")
        )
    if not decompressor.eof or len(raw) < needed:
        raise LRADataError(located(where, f"truncated PNG: {len(raw)} bytes of pixel data, expected {needed}"))
    filters = np.frombuffer(raw, np.uint8)[:: width + 1]
    if filters.max() > 4:
        row = int(np.argmax(filters > 4))
        raise LRADataError(located(where, f"row {row} has PNG filter type {filters[row]}; expected 0-4"))


def decode_png(data: bytes, where: str | None = None, *, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) uint8 pixels of an 8-bit grayscale, non-interlaced PNG (any of the filter types 0-4).

    Raises LRADataError naming `where` for: a missing signature, truncation (a chunk cut short, no IEND, an
    incomplete zlib stream or too few pixel bytes), more compressed pixel data than the header's size needs, a
    CRC mismatch, and formats other than 8-bit grayscale (colour, palette, alpha, 1/2/4/16-bit, interlaced).
    Ancillary chunks are ignored. With `expected_shape`, a header of another size is refused before inflating.
    Memory: the pixel data are inflated only up to the size the header declares (a zlib bomb stops there), and
    Pillow allocates the image only once the data are known to fill it.
    """
    height, width, compressed = _checked_chunks(data, where, expected_shape)
    _check_pixel_data(compressed, height, width, where)
    try:
        with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
            if image.mode != "L" or image.size != (width, height):
                raise LRADataError(
                    located(where, f"unsupported PNG: Pillow reads it as {image.mode} {image.size}, expected L")
                )
            image.load()
            pixels = np.array(image, dtype=np.uint8)
    except (LRADataError, TimeoutError):  # TimeoutError: a caller's alarm, not the file
        raise
    except Exception as error:  # whatever Pillow raises for a malformed file (SyntaxError "broken PNG file",
        # OSError "image file is truncated", UnidentifiedImageError, DecompressionBombError, ValueError, ...)
        raise LRADataError(located(where, f"corrupt PNG ({type(error).__name__}: {error})")) from None
    if pixels.shape != (height, width):
        raise LRADataError(located(where, f"corrupt PNG: decoded {pixels.shape}, expected {(height, width)}"))
    return pixels


def png_max_bytes(height: int, width: int) -> int:
    """The largest PNG file of an H x W 8-bit grayscale image that is read: twice the unfiltered pixel data
    (deflate's stored blocks, chunk framing) plus 1 MiB for ancillary chunks. Real ones are a fraction of it."""
    return 2 * height * (width + 1) + (1 << 20)


def read_png(path: str) -> np.ndarray:
    """Read an 8-bit grayscale PNG file into (H, W) uint8; errors name the file (see `decode_png`). Only a regular
    file of at most PNG_FILE_MAX_BYTES is read (lra/files.py)."""
    return decode_png(read_bounded(path, "a PNG file", PNG_FILE_MAX_BYTES), path)
