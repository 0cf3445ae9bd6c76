"""Raster helpers of the Pathfinder generator: paddles, dilation, Lanczos resampling (Pillow), markers.

The original generator ([PF] drewlinsley/pathfinder `snakes.py`) draws with PIL at `aa` times the final
resolution and shrinks with `scipy.misc.imresize(..., interp='lanczos')`, i.e. PIL's Lanczos resize. Here:

- `rasterize_segment`: a PIL-like line on the fine (aa) grid, in numpy. Width 1 is a DDA line (one pixel per
  step along the major axis, endpoints included, like PIL's Bresenham); a wider line is the butt-ended
  rectangle of that width around the segment (pixel centres at signed distance in (-width/2, width/2] from the
  segment axis), close to PIL's wide-line polygon. Not Pillow's `ImageDraw.line`: that differs on most of the
  generator's segments (measured with Pillow 13.0.0 over every paddle orientation the generator uses: 57 of 378
  at resolution 32, width 1; 383 of 398, 710 of 810 and 372 of 409 at 64, 128 and 256, widths 2-4), and the
  generated data are defined by this rasterisation.
- `resample`: Pillow's `Image.resize(..., Image.Resampling.LANCZOS)` of an 8-bit ('L') image, the resampling
  imresize performed: Lanczos-3, antialiased (the kernel stretched by the shrink factor), for these square
  shrinks the horizontal pass first, each pass rounded and clipped to 0..255. It replaced a numpy version of the
  same passes (float64 weights) because it gives the same pixels on every input the generator shrinks, measured
  with Pillow 13.0.0: the line and mask patches of all 1,995 (orientation, margin, resolution) combinations the
  generator draws, and the marker disk at every centre at resolutions 32, 64, 128 and 256. It is not the same
  function on every image: Pillow's weights are 22-bit fixed point, so ties and near-ties (k + 0.5 before
  rounding) can round the other way (one level, somewhere in ~5% of square shrinks of random 0/255 images),
  and for non-square resizes Pillow may run the vertical pass first. test_generated_pixels_are_pinned
  (tests/lra/test_lra_pathfinder.py) pins the generated pixels, and setup.py pins Pillow.
- `paddle_patches`: draw_line_n_mask -- the anti-aliased paddle and its exclusion mask (the line dilated by a
  disk of radius margin*aa, then shrunk), on a square patch centred at the paddle's start.
- `dilate_max` / `dilate_any`: grey / boolean dilation as OpenCV's `cv2.dilate` computes it (a
  correlation: out[p] = max over kernel offsets d of in[p + d]; pixels outside the image do not count).
  Numpy: Pillow's MaxFilter has only square kernels, these are disks and paddle shapes.
- `marker_disk`: draw_circle -- a disk drawn on the fine grid and shrunk.

Coordinates are (row, col) = (y, x) as in [PF]; an orientation theta points along (sin theta, cos theta).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image


def translate_coord(coord: tuple[int, int], orientation: float, distance: float) -> tuple[int, int]:
    """[PF] translate_coord: move `distance` along `orientation` and round both coordinates UP (ceil)."""
    return (
        int(math.ceil(coord[0] + distance * math.sin(orientation))),
        int(math.ceil(coord[1] + distance * math.cos(orientation))),
    )


def flip_by_pi(orientation: float) -> float:
    """[PF] flip_by_pi: the opposite direction, kept in [-pi, pi]."""
    return orientation + math.pi if orientation < 0 else orientation - math.pi


@functools.lru_cache(maxsize=64)
def disk_struct(radius: float) -> np.ndarray:
    """(2r+1, 2r+1) bool disk x^2 + y^2 <= r^2 with r = int(radius), [PF] generate_dilation_struct."""
    r = int(radius)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    struct = x * x + y * y <= radius * radius
    struct.setflags(write=False)
    return struct


def struct_offsets(struct: np.ndarray) -> np.ndarray:
    """(k, 2) int offsets of the nonzero cells of an odd-sized kernel from its centre (cv2's anchor)."""
    rows, cols = np.nonzero(struct)
    return np.stack([rows - struct.shape[0] // 2, cols - struct.shape[1] // 2], axis=1)


@functools.lru_cache(maxsize=64)
def disk_offsets(radius: float) -> np.ndarray:
    """(k, 2) offsets of `disk_struct(radius)` (cached, read-only)."""
    offsets = struct_offsets(disk_struct(radius))
    offsets.setflags(write=False)
    return offsets


def dilate_max(image: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """out[p] = max over offsets d of image[p + d] (0 where p + d is outside); image (H, W), offsets (k, 2).

    This is cv2.dilate with the kernel whose nonzero cells are `offsets` around its centre: OpenCV correlates
    (no kernel flip) and its default border never wins the max. With no offsets the image is returned
    unchanged (a lone anchor). Cost O(k * H * W).
    """
    if len(offsets) == 0:
        return image.copy()
    height, width = image.shape
    pad = int(np.max(np.abs(offsets)))
    padded = np.zeros((height + 2 * pad, width + 2 * pad), dtype=image.dtype)
    padded[pad : pad + height, pad : pad + width] = image
    out = np.zeros_like(image)
    for dy, dx in offsets:
        np.maximum(out, padded[pad + dy : pad + dy + height, pad + dx : pad + dx + width], out=out)
    return out


def dilate_any(occupied: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boolean `dilate_max`: out[p] = any(occupied[p + d]) over the offsets; ~8x cheaper than the float one.

    dilate_max(x, offsets) <= t equals ~dilate_any(x > t, offsets) for t >= 0, which is all the seed
    sampler needs.
    """
    if len(offsets) == 0:
        return occupied.copy()
    height, width = occupied.shape
    pad = int(np.max(np.abs(offsets)))
    padded = np.zeros((height + 2 * pad, width + 2 * pad), dtype=bool)
    padded[pad : pad + height, pad : pad + width] = occupied
    out = np.zeros_like(occupied)
    for dy, dx in offsets:
        out |= padded[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
    return out


def resample(image255: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Lanczos-3 resize (Pillow, 8-bit) of an image holding integers 0..255 (any numeric dtype).

    Returns float64 (out_h, out_w) holding integers 0..255 (see the module docstring for what it equals).
    """
    pixels = np.asarray(image255)
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255 or not np.array_equal(pixels, np.round(pixels)):
        raise ValueError("resample expects integers 0..255")
    image = Image.fromarray(pixels.astype(np.uint8))  # (H, W) uint8: mode "L"
    shrunk = image.resize((out_shape[1], out_shape[0]), Image.Resampling.LANCZOS)
    return np.asarray(shrunk, dtype=np.float64)


def rasterize_segment(size: int, start: tuple[int, int], end: tuple[int, int], width: int) -> np.ndarray:
    """(size, size) float64 image, 1 on a line of `width` pixels from `start` to `end` (y, x), 0 elsewhere."""
    canvas = np.zeros((size, size))
    (y0, x0), (y1, x1) = start, end
    dy, dx = y1 - y0, x1 - x0
    if width <= 1:
        steps = max(abs(dy), abs(dx))
        t = np.arange(steps + 1) / max(steps, 1)
        rows = np.floor(y0 + t * dy + 0.5).astype(int)
        cols = np.floor(x0 + t * dx + 0.5).astype(int)
        inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
        canvas[rows[inside], cols[inside]] = 1.0
        return canvas
    length = math.hypot(dy, dx)
    rows, cols = np.mgrid[0:size, 0:size]
    along = ((rows - y0) * dy + (cols - x0) * dx) / max(length, 1e-12)
    across = ((rows - y0) * dx - (cols - x0) * dy) / max(length, 1e-12)  # signed distance to the axis
    # Half-open across the axis, so an axis-parallel line is exactly `width` pixels thick.
    band = (across > -width / 2 + 1e-9) & (across <= width / 2 + 1e-9)
    canvas[(along >= -1e-9) & (along <= length + 1e-9) & band] = 1.0
    return canvas


def patch_radius(length: int, thickness: float, margin: int) -> int:
    """R = length + ceil(thickness) + margin: a paddle patch is (2R + 1)^2 pixels centred on its start."""
    return length + int(math.ceil(thickness)) + margin


@functools.lru_cache(maxsize=4096)
def paddle_patches(
    orientation: float, length: int, thickness: float, margin: int, aa_scale: int
) -> tuple[np.ndarray, np.ndarray]:
    """[PF] draw_line_n_mask on its own patch: (line, exclusion mask), each (2R+1, 2R+1) float64 in [0, 1].

    The line runs from the patch centre for `length` pixels along `orientation`, drawn `round(thickness*aa)`
    fine pixels wide on a (2R*aa + 1)^2 grid and shrunk with Lanczos (values k/255). The mask is the same fine
    line dilated by a disk of radius margin*aa, shrunk the same way. Contrast is applied by the caller.
    Results are cached (orientations repeat: integer degrees for seeds, integer displacements afterwards)
    and read-only.
    """
    radius = patch_radius(length, thickness, margin)
    fine_size = 2 * radius * aa_scale + 1
    fine_centre = radius * aa_scale
    fine_head = translate_coord((fine_centre, fine_centre), orientation, length * aa_scale)
    fine_line = rasterize_segment(
        fine_size, (fine_centre, fine_centre), fine_head, round(thickness * aa_scale)
    )
    fine_mask = dilate_max(fine_line, disk_offsets(margin * aa_scale))
    shape = (2 * radius + 1, 2 * radius + 1)
    line = resample(255.0 * fine_line, shape) / 255.0
    mask = resample(255.0 * fine_mask, shape) / 255.0
    line.setflags(write=False)
    mask.setflags(write=False)
    return line, mask


def patch_window(
    image_shape: tuple[int, int], centre: tuple[int, int], radius: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Slices (image region, patch region) to paste a (2r+1)^2 patch at `centre`, clipped; None if off."""
    regions = []
    for axis in range(2):
        low, high = centre[axis] - radius, centre[axis] + radius + 1
        clipped_low, clipped_high = max(low, 0), min(high, image_shape[axis])
        if clipped_low >= clipped_high:
            return None
        regions.append((slice(clipped_low, clipped_high), slice(clipped_low - low, clipped_high - low)))
    return (regions[0][0], regions[1][0]), (regions[0][1], regions[1][1])


def paste(image_shape: tuple[int, int], patch: np.ndarray, centre: tuple[int, int]) -> np.ndarray:
    """A zero image of `image_shape` with `patch` (odd square) centred at `centre`, clipped at borders."""
    out = np.zeros(image_shape)
    window = patch_window(image_shape, centre, patch.shape[0] // 2)
    if window is not None:
        out[window[0]] = patch[window[1]]
    return out


@functools.lru_cache(maxsize=4096)
def seed_struct_offsets(
    orientation: float, length: int, thickness: float, margin: int, aa_scale: int
) -> np.ndarray:
    """(k, 2) offsets of [PF]'s head-centric seed kernel: free tails are where a paddle can start.

    [PF] draws the paddle mask on a (2(L+m)+1)^2 canvas starting at (L+m+1, L+m+1) -- one pixel off its
    centre -- and casts it to uint8, so only cells where the shrunk mask is exactly 1 survive. Dilating the
    occupancy with this kernel (cv2 correlation, anchor at the centre) marks every tail from which the paddle
    would land on an occupied pixel.
    """
    _, mask = paddle_patches(orientation, length, thickness, margin, aa_scale)
    side = 2 * (length + margin) + 1
    canvas = paste((side, side), mask, (length + margin + 1, length + margin + 1))
    offsets = struct_offsets(canvas >= 1.0)
    offsets.setflags(write=False)
    return offsets


def marker_disk(
    image_shape: tuple[int, int], centre: tuple[int, int], radius: float, aa_scale: int
) -> np.ndarray:
    """[PF] draw_circle: (H, W) float64 in [0, 1], a disk of `radius` at `centre` drawn at aa scale, shrunk.

    The fine (H*aa, W*aa) image is 255 on the fine pixels (i, j) with (i - cy*aa)^2 + (j - cx*aa)^2 <=
    (radius*aa)^2 and 0 elsewhere, shrunk with `resample` (~0.5 ms at Path-X's 256 -> 128, two per image).
    """
    height, width = image_shape
    fine_radius = radius * aa_scale
    rows = np.arange(height * aa_scale)[:, None] - centre[0] * aa_scale
    cols = np.arange(width * aa_scale)[None, :] - centre[1] * aa_scale
    fine = np.where(rows * rows + cols * cols <= fine_radius * fine_radius, 255, 0).astype(np.uint8)
    return resample(fine, image_shape) / 255.0


def bytescale(image: np.ndarray) -> np.ndarray:
    """scipy.misc.bytescale as old scipy.misc.imsave applied it: min..max -> 0..255, rounded, uint8.

    A constant image maps to all zeros (bytescale's cscale = 1 when max == min, and the value minus min is 0).
    """
    low, high = float(image.min()), float(image.max())
    span = high - low if high > low else 1.0
    return (np.clip((image - low) * (255.0 / span), 0.0, 255.0) + 0.5).astype(np.uint8)
