"""Pathfinder and Path-X: the generator, the official file layout, a PNG codec, the reader and a memmap cache.

An example is a grayscale image with two target "snakes" (curvy dashed contours made of short paddles),
distractor snakes, and two circular markers. Label 1 means both markers sit on the two ends of ONE target
snake; label 0 means they sit on ends of the two different target snakes (docs/lra_data.md section 5).

Generator (section 5). `generate_example` follows [PF] drewlinsley/pathfinder `snakes2.py` / `snakes.py`:
two seeds `seed_distance` apart, continuity-weighted extension with an exclusion mask, distractor snakes,
markers by label, min-max bytescale to uint8. Parameters per resolution come from LRA's TFDS docstrings
(`pathfinder_params`). Deviations, all deliberate:
- Drawing is numpy (no PIL): see lra/pathfinder_draw.py. Lines are rasterised on the fine grid like PIL's and
  shrunk with a re-implemented PIL-style Lanczos-3, so the antialiasing matches in kind, not bit for bit.
- By default (`PathfinderParams.exclusive_targets`) the two target snakes may not cross or touch. In [PF] a
  new paddle of one target snake is never checked against the other snake's newest paddle (that paddle joins
  the mask only on the other snake's next step), so the two growing ends can cross: at resolution 32 about
  15% of [PF]-style images have overlapping target snakes, which makes label-0 images look connected. Also
  [PF] adds only the LAST target snake's final paddle to the mask before the distractors (snake 0's end,
  where a marker may sit, stays open to distractors); here both are added. Cost: ~30% more attempts.
  `exclusive_targets=False` restores [PF]'s behaviour.
- Retry loops that [PF] runs forever are capped (`MAX_TARGET_ATTEMPTS`) and raise.
- Randomness: example i draws from its own numpy stream, seeded by (seed, window size, contour length, i), so
  a dataset is a function of its parameters and seed only, independent of batching and worker count. [PF]
  used the unseeded global numpy state.
- Distractor snakes use `snake_contrast_list` as their contrasts (as [PF]'s make_many_snakes does), target
  paddles `paddle_contrast * snake_contrast` (as two_snakes does). At resolution 32 that makes distractors
  (contrast 2) brighter than targets (1.5) before the final bytescale, as in the original.

Difficulty (AMBIGUOUS, see docs/lra_data.md section 5.1): every LRA docstring sets contour_length = 14, which read
literally would make all three directories "hard". We follow the directory names and the wrapper's comment
("from 6 to 14"): easy = curv_baseline = 6 paddles, intermediate = curv_contour_length_9 = 9, hard =
curv_contour_length_14 = 14; distractor_length = contour_length // 3. num_distractor_snakes is the table's
per-resolution value for every difficulty, because [PF]'s wrapper loop does not recompute it.

Official layout (section 3.5): `<root>/<curv_dir>/imgs/<batch>/sample_<i>.png` and TEXT
`metadata/<batch>.npy`, one line per image: `imgs/<batch> sample_<i>.png <i> <label> <continuity>
<contour_length> <distractor_length> <paddle_length> <paddle_thickness> <paddle_margin> <n_paddle_contrasts>`.
A real binary .npy metadata file (np.save of the string array, as [PF] wrote it) is read too.

Tokens: pixel values 0..255 are the ids (vocab 256), image flattened row-major to H*W. Images have NO padding:
every position is real, and a 0 is a black pixel, not padding (do not build a mask from `inputs > 0`).

Splits: LRA's positional split of ONE difficulty: examples ordered by (numeric batch id, row in the metadata
file), then [:80%] train, [80%:90%] val, [90%:] test, with boundaries floor(0.8 n) and floor(0.9 n). (LRA's
TFDS shuffled examples by key hash before slicing; examples are i.i.d., so any fixed order gives the same
distribution. S4/S5 instead split randomly with seed 42; not reproduced.)

Skipped examples: an empty (0-byte) PNG or an image whose pixels are all 0 is skipped with a warning, as LRA
filters empty images and S4 blacklists the empty `pathfinder32/curv_baseline/imgs/0/sample_172.png`. Anything
else malformed (truncated PNG, wrong size, bad metadata row, missing file) raises LRADataError naming the
file (the metadata file and line for a bad row, the image file for a bad image), and so does a dataset with no
example left. A metadata row must name
`imgs/<batch>/<file>.png` inside the dataset directory (no `..`, no absolute path). Sizes declared in PNG and
.npy headers are checked before anything that large is allocated or inflated. Images and metadata files must be
regular files (links to them are fine): a FIFO, a device, a directory or a dangling link is an LRADataError
raised before opening it, and so is a file over its bound (`png_max_bytes`, METADATA_MAX_BYTES; lra/files.py).

Cost (CPU time per image, measured with this code): resolution 32 easy 2 ms, intermediate 4 ms, hard 16 ms;
64 hard 0.45 s; 128 hard (Path-X) 0.16 s; 256 hard 0.07 s. Almost all of it is failed attempts at the two
target snakes (means: 4 / 12 / 60 at 32, ~1,150 at 64, ~300 at 128, ~8 at 256), which the algorithm retries
from scratch. So 2,000 Pathfinder-32 images take ~34 CPU-seconds, and 200,000 Path-X images ~9 CPU-hours.

Command line:
    python -m lra.pathfinder --output_dir=/tmp/pf --resolution=32 --difficulty=hard --num_examples=2000
    python -m lra.pathfinder --grid=docs/pathfinder_examples.png
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
import tokenize
import warnings
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from lra import pathfinder_draw as draw
from lra.download import download_hint
from lra.errors import LRADataError, located
from lra.files import check_regular, read_bounded
from lra.listops import _default_num_workers, _worker_context
from lra.progress import progress_bar
from lra.tasks import Split

RESOLUTIONS = (32, 64, 128, 256)
# difficulty -> (directory, number of paddles per target snake)
DIFFICULTIES: dict[str, tuple[str, int]] = {
    "easy": ("curv_baseline", 6),
    "intermediate": ("curv_contour_length_9", 9),
    "hard": ("curv_contour_length_14", 14),
}
SPLITS = ("train", "val", "test")
VOCAB_SIZE = 256

# Part of the definition of generated data (bump with any change to what a seed produces).
GENERATOR_VERSION = 1
# Images per `imgs/<batch>` directory and metadata file. Image i's content does not depend on it.
IMAGES_PER_BATCH = 200
# Images per unit of parallel work (a part of one batch); the progress bar moves as each part completes
# (Path-X: ~4 s of one core per part). The files do not depend on it.
IMAGES_PER_TASK = 25
# Bumped when the cache format or the reading rules change.
CACHE_VERSION = 1
# [PF] retries the two target snakes forever. Typical counts: ~50 (32), ~3,000 (64), ~150 (128), ~15 (256).
MAX_TARGET_ATTEMPTS = 100_000
# [PF] accepts a new paddle when max(mask + paddle mask) < 1.8, i.e. it may touch, not cross, earlier ones.
OVERLAP_LIMIT = 1.8
# A pixel is free for a seed when its (dilated) occupancy is <= 0.3 ([PF]: ceil(mask - 0.3) == 0).
FREE_LEVEL = 0.3


# ---------------------------------------------------------------------------------------------------------
# Parameters.


@dataclasses.dataclass(frozen=True)
class PathfinderParams:
    """Everything that shapes one Pathfinder image ([PF] wrapper `Args`, docs/lra_data.md section 5.1).

    Lengths are in final pixels; `antialias_scale` is the supersampling factor of the drawing.
    `max_paddle_retrial` bounds re-draws of one paddle, `max_distractor_contour_retrial` of one distractor.
    `exclusive_targets` (default True) keeps the two target snakes from crossing or touching: each new paddle
    is also checked against the other target snake's newest paddle, and both final paddles enter the mask
    before the distractors. False reproduces [PF] exactly, where the two growing ends are never checked
    against each other (at resolution 32 about 15% of images then have the target snakes crossing, a source
    of label noise) and snake 0's final paddle stays open to distractors.
    """

    window_size: int
    padding: int
    antialias_scale: int
    seed_distance: int
    marker_radius: float
    contour_length: int
    distractor_length: int
    num_distractor_snakes: int
    paddle_length: int
    paddle_thickness: float
    paddle_margin_list: tuple[int, ...]
    continuity: float
    snake_contrast_list: tuple[float, ...]
    paddle_contrast_list: tuple[float, ...]
    max_paddle_retrial: int = 2
    max_distractor_contour_retrial: int = 4
    exclusive_targets: bool = True

    def __post_init__(self) -> None:
        positive = ("window_size", "antialias_scale", "contour_length", "paddle_length")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PathfinderParams.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.padding < 0 or self.seed_distance < 1 or self.marker_radius <= 0:
            raise ValueError(
                "PathfinderParams: expected padding >= 0, seed_distance >= 1, marker_radius > 0; got "
                f"{self.padding}, {self.seed_distance}, {self.marker_radius}"
            )
        if self.distractor_length < 1 and self.num_distractor_snakes > 0:
            raise ValueError(f"PathfinderParams.distractor_length must be >= 1, got {self.distractor_length}")
        fine_width = self.paddle_thickness * self.antialias_scale
        if fine_width != round(fine_width) or fine_width < 1:
            # [PF] draw_line_n_mask raises 'thickness does not break even' in this case.
            raise ValueError(
                f"PathfinderParams: paddle_thickness * antialias_scale must be a positive integer, got "
                f"{self.paddle_thickness} * {self.antialias_scale}"
            )
        for name in ("paddle_margin_list", "snake_contrast_list", "paddle_contrast_list"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"PathfinderParams.{name} must not be empty")
        if min(self.paddle_margin_list) < 0:
            raise ValueError(f"PathfinderParams: margins must be >= 0, got {self.paddle_margin_list}")


# Per-resolution values of LRA's TFDS docstrings (docs/lra_data.md section 5.1); the rest are [PF] wrapper defaults.
_RESOLUTION_TABLE: dict[int, dict[str, Any]] = {
    32: dict(padding=1, antialias_scale=2, paddle_margin_list=(1,), seed_distance=7, marker_radius=1.5,
             paddle_length=2, paddle_thickness=0.5, continuity=1.0, num_distractor_snakes=20 // 4,
             snake_contrast_list=(2.0,), paddle_contrast_list=(0.75,)),
    64: dict(padding=1, antialias_scale=2, paddle_margin_list=(1,), seed_distance=12, marker_radius=2.5,
             paddle_length=5, paddle_thickness=1.0, continuity=1.8, num_distractor_snakes=22 // 4,
             snake_contrast_list=(0.8,), paddle_contrast_list=(1.0,)),
    128: dict(padding=1, antialias_scale=2, paddle_margin_list=(2, 3), seed_distance=20, marker_radius=3.0,
              paddle_length=5, paddle_thickness=1.5, continuity=1.8, num_distractor_snakes=35 // 4,
              snake_contrast_list=(0.9,), paddle_contrast_list=(1.0,)),
    256: dict(padding=22, antialias_scale=2, paddle_margin_list=(3,), seed_distance=27, marker_radius=5.0,
              paddle_length=5, paddle_thickness=2.0, continuity=1.8, num_distractor_snakes=30 // 4,
              snake_contrast_list=(1.0,), paddle_contrast_list=(1.0,)),
}  # fmt: skip


def difficulty_dir(difficulty: str) -> str:
    """Directory name of a difficulty: 'easy'/'intermediate'/'hard' or the directory name itself."""
    for name, (directory, _) in DIFFICULTIES.items():
        if difficulty in (name, directory):
            return directory
    raise ValueError(
        f"unknown Pathfinder difficulty {difficulty!r}; expected one of {list(DIFFICULTIES)} or "
        f"{[directory for directory, _ in DIFFICULTIES.values()]}"
    )


def pathfinder_params(resolution: int, difficulty: str = "hard") -> PathfinderParams:
    """The generator parameters of `pathfinder<resolution>/<difficulty dir>` (see the module docstring)."""
    if resolution not in _RESOLUTION_TABLE:
        raise ValueError(f"unsupported Pathfinder resolution {resolution!r}; expected one of {RESOLUTIONS}")
    directory = difficulty_dir(difficulty)
    contour_length = next(length for d, length in DIFFICULTIES.values() if d == directory)
    return PathfinderParams(
        window_size=resolution,
        contour_length=contour_length,
        distractor_length=contour_length // 3,
        **_RESOLUTION_TABLE[resolution],
    )


# ---------------------------------------------------------------------------------------------------------
# One image.


class _Board:
    """Geometry of one image and padded canvases, so that a paddle patch never needs clipping.

    Every canvas is (S + 2P)^2 with the image at [P:P+S, P:P+S] and P > the paddle patch radius. Mask cells
    outside the image stay 0 (pasted masks are multiplied by `inside`), which is what [PF] gets by clipping
    patches at the border and what cv2.dilate's border does.
    """

    def __init__(self, params: PathfinderParams, margin: int) -> None:
        self.params = params
        self.size = params.window_size
        self.length, self.thickness, self.margin = params.paddle_length, params.paddle_thickness, margin
        self.aa_scale = params.antialias_scale
        self.radius = draw.patch_radius(self.length, self.thickness, margin)
        self.pad = self.radius + 1
        side = self.size + 2 * self.pad
        self.inside = np.zeros((side, side))
        self.inside[self.interior] = 1.0
        self.disk = draw.disk_offsets(margin) + self.pad  # gathered around image coordinates
        self.candidate_offsets, self.candidate_orientations = _circle_candidates(self.length + margin)
        # Flat offsets (candidates, disk cells) from a pivot into the padded canvas: the fast path of the
        # candidate occupancy when every candidate is inside the image.
        self.candidate_reach = int(np.max(np.abs(self.candidate_offsets))) + 1
        cells = self.candidate_offsets[:, None, :] + draw.disk_offsets(margin)[None, :, :]
        self.flat_disk = cells[..., 0] * side + cells[..., 1]

    @property
    def interior(self) -> tuple[slice, slice]:
        return (slice(self.pad, self.pad + self.size),) * 2

    def zeros(self) -> np.ndarray:
        return np.zeros_like(self.inside)

    def window(self, centre: tuple[int, int]) -> tuple[slice, slice]:
        """Padded-canvas slices of the (2R+1)^2 patch centred at image point `centre` (inside the image)."""
        top, left = centre[0] + self.pad - self.radius, centre[1] + self.pad - self.radius
        return slice(top, top + 2 * self.radius + 1), slice(left, left + 2 * self.radius + 1)

    def patches(self, orientation: float) -> tuple[np.ndarray, np.ndarray]:
        return draw.paddle_patches(orientation, self.length, self.thickness, self.margin, self.aa_scale)

    def add_mask(self, mask: np.ndarray, patch: np.ndarray, window: tuple[slice, slice]) -> None:
        """mask = max(mask, patch) on `window`, keeping cells outside the image at 0."""
        rows, cols = window
        low, high = self.pad, self.pad + self.size
        if rows.start >= low and rows.stop <= high and cols.start >= low and cols.stop <= high:
            np.maximum(mask[window], patch, out=mask[window])
        else:
            np.maximum(mask[window], patch * self.inside[window], out=mask[window])

    def render(self, snake: _Snake, canvas: np.ndarray) -> None:
        """Draw `snake`'s paddles into the padded `canvas` (max-combined, each with its contrast)."""
        for window, contrast, line in snake.strokes:
            np.maximum(canvas[window], contrast * line, out=canvas[window])


@dataclasses.dataclass
class _Snake:
    """A growing snake: its paddles, its newest paddle's mask (not yet in the shared mask), its tip state.

    Paddles are kept as strokes and drawn only once the snake is complete (`_Board.render`): most attempts
    fail, and their drawing would be wasted.
    """

    strokes: list[tuple[tuple[slice, slice], float, np.ndarray]]  # (window, contrast, line patch)
    last_mask: tuple[np.ndarray, tuple[slice, slice]]  # (mask patch, window)
    pivot: tuple[int, int]
    orientation: float
    head: tuple[int, int]


def _inside(point: tuple[int, int], size: int) -> bool:
    return 0 <= point[0] < size and 0 <= point[1] < size


@functools.lru_cache(maxsize=32)
def _circle_candidates(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets (n, 2) around a pivot at which [PF] samples the next head, and their orientations (n,).

    [PF] get_coords_cmf takes the points pivot + radius (sin a, cos a) for a in steps of one pixel of arc,
    truncates them to int and removes duplicates (sorted, as np.unique does). With an integer pivot the
    truncated point is pivot + floor(offset) for every in-image point, and a point is in the image exactly
    when its integer offset lands there, so the offsets can be computed once per radius.
    """
    angles = np.deg2rad(np.arange(0.0, 360.0, 360.0 / (2 * radius * np.pi)))
    offsets = np.unique(
        np.floor(np.stack([radius * np.sin(angles), radius * np.cos(angles)], axis=1)), axis=0
    )
    offsets = offsets.astype(np.int64)
    orientations = np.arctan2(offsets[:, 0], offsets[:, 1])
    offsets.setflags(write=False)
    orientations.setflags(write=False)
    return offsets, orientations


@functools.lru_cache(maxsize=8192)
def _continuity_weights(orientation: float, radius: int, continuity: float) -> np.ndarray:
    """max(cos(min(dtheta * continuity, pi/2)), 0)^2 for every candidate offset of `radius` (cached).

    dtheta is the wrapped angle between a candidate's direction and `orientation`. Orientations come from
    a finite set (integer degrees for seeds, candidate directions afterwards), so the cache stays small.
    """
    delta = np.abs(_circle_candidates(radius)[1] - orientation)
    delta = np.minimum(np.minimum(delta, 2 * np.pi - delta) * continuity, 0.5 * np.pi)
    weights = np.maximum(np.cos(delta), 0.0) ** 2
    weights.setflags(write=False)
    return weights


def _extend(
    board: _Board, snake: _Snake, mask: np.ndarray, contrast: float, rng: np.random.Generator
) -> bool:
    """[PF] extend_snake: add one paddle to `snake` (and the previous one to `mask`); False at a dead end.

    Candidates are the integer points (truncated) on the circle of radius L + margin around the new pivot
    P + (L + 2 margin) u(theta), one per pixel of arc, de-duplicated, inside the image. Weight = (1 - mask
    dilated by a disk of radius margin) * max(cos(min(dtheta * continuity, pi/2)), 0)^2. A sampled paddle,
    drawn from the candidate back towards the pivot, is kept when max(mask + its mask) < 1.8 (so it may
    touch only the snake's own previous paddle, whose mask is not in `mask` yet); up to max_paddle_retrial
    + 1 draws from the same distribution.
    """
    size, margin = board.size, board.margin
    new_pivot = draw.translate_coord(snake.pivot, snake.orientation, board.length + 2 * margin)
    offsets = board.candidate_offsets
    weights = _continuity_weights(snake.orientation, board.length + margin, board.params.continuity)
    orientations = board.candidate_orientations
    reach = board.candidate_reach
    if reach <= new_pivot[0] < size - reach and reach <= new_pivot[1] < size - reach:
        # Every candidate is inside the image: one flat gather for the occupancy of all of them.
        base = (new_pivot[0] + board.pad) * mask.shape[1] + new_pivot[1] + board.pad
        occupied = mask.ravel()[base + board.flat_disk].max(axis=1)
    else:
        rows, cols = offsets[:, 0] + new_pivot[0], offsets[:, 1] + new_pivot[1]
        keep = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
        if not keep.any():
            return False
        offsets, orientations, weights = offsets[keep], orientations[keep], weights[keep]
        occupied = mask[rows[keep, None] + board.disk[:, 0], cols[keep, None] + board.disk[:, 1]].max(axis=1)
    cmf = np.cumsum((1.0 - occupied) * weights)
    total = float(cmf[-1])
    if total < 1e-4:
        return False
    for _ in range(board.params.max_paddle_retrial + 1):
        # The first index whose cumulative weight exceeds a uniform draw ([PF]: argmax(cmf - r > 0)).
        index = min(int(np.searchsorted(cmf, rng.random() * total, side="right")), len(cmf) - 1)
        head = (new_pivot[0] + int(offsets[index, 0]), new_pivot[1] + int(offsets[index, 1]))
        orientation = float(orientations[index])
        line, paddle_mask = board.patches(draw.flip_by_pi(orientation))
        window = board.window(head)
        if (mask[window] + paddle_mask).max() < OVERLAP_LIMIT:
            snake.strokes.append((window, contrast, line))
            board.add_mask(mask, *snake.last_mask)
            snake.last_mask = (paddle_mask, window)
            snake.pivot, snake.orientation, snake.head = new_pivot, orientation, head
            return True
    return False


@functools.lru_cache(maxsize=2048)
def _fresh_seed_pixels(orientation: float, band: int, params: PathfinderParams, margin: int) -> np.ndarray:
    """(k, 2) free tails for a seed along `orientation` when the mask is just the border (padding, band)."""
    size = params.window_size
    lined = np.zeros((size, size))
    width = max(band, params.padding)
    lined[:width, :] = lined[size - width :, :] = 1.0
    lined[:, :width] = lined[:, size - width :] = 1.0
    offsets = draw.seed_struct_offsets(
        orientation, params.paddle_length, params.paddle_thickness, margin, params.antialias_scale
    )
    available = np.argwhere(~draw.dilate_any(lined > FREE_LEVEL, offsets))
    available.setflags(write=False)
    return available


def _sample_seed(
    board: _Board, mask: np.ndarray, band: int, rng: np.random.Generator, *, fresh: bool = False
) -> tuple[tuple[int, int], float, tuple[int, int], tuple[int, int]] | None:
    """A seed paddle (tail, orientation, head, pivot) whose tail is free of `mask` plus a border band.

    [PF] seed_snake / initialize_two_seeds: orientation a uniform integer degree in [-180, 180); the mask with
    a border band of width `band` set is dilated by the head-centric paddle kernel, and the tail is uniform
    over the pixels left <= 0.3. Head = tail + L u, pivot = head - (L + margin) u (ceil rounding). Retried
    when head or pivot leaves the image; None after max_paddle_retrial + 1 tries or when nothing is free.
    `fresh` says that `mask` holds only the image border of width `padding` (the first target seed), whose
    free pixels depend on the orientation alone and are cached.
    """
    size = board.size
    if not fresh:
        occupied = mask[board.interior] > FREE_LEVEL
        occupied[:band, :] = occupied[size - band :, :] = True
        occupied[:, :band] = occupied[:, size - band :] = True
    for _ in range(board.params.max_paddle_retrial + 1):
        orientation = math.radians(int(rng.integers(-180, 180)))
        if fresh:
            available = _fresh_seed_pixels(orientation, band, board.params, board.margin)
        else:
            offsets = draw.seed_struct_offsets(
                orientation, board.length, board.thickness, board.margin, board.aa_scale
            )
            available = np.argwhere(~draw.dilate_any(occupied, offsets))
        if len(available) == 0:
            return None
        tail = tuple(int(v) for v in available[rng.integers(len(available))])
        head = draw.translate_coord(tail, orientation, board.length)
        pivot = draw.translate_coord(head, draw.flip_by_pi(orientation), board.length + board.margin)
        if _inside(head, size) and _inside(pivot, size):
            return tail, orientation, head, pivot
    return None


def _seed_snake(
    board: _Board, tail: tuple[int, int], orientation: float, head: tuple[int, int], pivot: tuple[int, int],
    contrast: float,
) -> _Snake:  # fmt: skip
    """A snake holding just its seed paddle, drawn from `tail` along `orientation`."""
    line, paddle_mask = board.patches(orientation)
    window = board.window(tail)
    return _Snake(
        strokes=[(window, contrast, line)],
        last_mask=(paddle_mask, window),
        pivot=pivot,
        orientation=orientation,
        head=head,
    )


def _pick(values: Sequence[float], rng: np.random.Generator) -> float:
    return float(values[rng.integers(len(values))])


def _two_snakes(board: _Board, rng: np.random.Generator) -> tuple[list[_Snake], np.ndarray, list] | None:
    """[PF] two_snakes: two target snakes of contour_length paddles; None when this attempt fails.

    Returns (snakes, padded mask, origin tips = the seed tails). Both final paddles are in the mask.
    """
    params, size = board.params, board.size
    mask = board.zeros()
    if params.padding:
        image_mask = mask[board.interior]
        pad = params.padding
        image_mask[:pad, :] = image_mask[size - pad :, :] = 1.0
        image_mask[:, :pad] = image_mask[:, size - pad :] = 1.0
    mu = list(params.snake_contrast_list) * 2
    mu = [mu[i] for i in rng.permutation(len(mu))[:2]]
    first = _sample_seed(board, mask, 2 * params.seed_distance, rng, fresh=True)
    if first is None:
        return None
    tail1 = first[0]
    for _ in range(params.max_paddle_retrial + 1):
        orientation2 = math.radians(int(rng.integers(-180, 180)))
        direction = math.radians(int(rng.integers(0, 360)))
        tail2 = (
            int(np.round(tail1[0] + params.seed_distance * math.sin(direction))),
            int(np.round(tail1[1] + params.seed_distance * math.cos(direction))),
        )
        head2 = draw.translate_coord(tail2, orientation2, board.length)
        pivot2 = draw.translate_coord(head2, draw.flip_by_pi(orientation2), board.length + board.margin)
        if _inside(head2, size) and _inside(pivot2, size) and _inside(tail2, size):
            break
    else:
        return None
    snakes = [
        _seed_snake(board, *first, _pick(params.paddle_contrast_list, rng) * mu[0]),
        _seed_snake(
            board, tail2, orientation2, head2, pivot2, _pick(params.paddle_contrast_list, rng) * mu[1]
        ),
    ]
    if params.exclusive_targets:
        # Snake k checks against masks[k]: everything drawn so far except its own newest paddle. [PF] shares
        # one mask, which lacks BOTH newest paddles, so the two growing ends could cross.
        masks = [mask.copy(), mask]
        board.add_mask(masks[0], *snakes[1].last_mask)
        board.add_mask(masks[1], *snakes[0].last_mask)
    else:
        masks = [mask, mask]
    for _ in range(params.contour_length - 1):
        contrast = _pick(params.paddle_contrast_list, rng)
        for index, (snake, snake_mu) in enumerate(zip(snakes, mu)):
            if not _extend(board, snake, masks[index], contrast * snake_mu, rng):
                return None
            if params.exclusive_targets:
                board.add_mask(masks[1 - index], *snake.last_mask)
    if params.exclusive_targets:
        mask = masks[0]
        board.add_mask(mask, *snakes[0].last_mask)  # now every paddle of both snakes is in
    else:
        # [PF] adds only the last snake's final paddle, leaving snake 0's end open to distractors.
        board.add_mask(mask, *snakes[1].last_mask)
    return snakes, mask, [tail1, tail2]


def _distractor_snake(
    board: _Board, mask: np.ndarray, rng: np.random.Generator
) -> tuple[_Snake, np.ndarray] | None:
    """[PF] make_snake for a distractor: (snake, new padded mask), or None (nothing changes) on failure."""
    size = board.size
    if np.count_nonzero(mask[board.interior] <= FREE_LEVEL) < 0.01 * size * size:  # stop_with_availability
        return None
    seed = _sample_seed(board, mask, 1, rng)
    if seed is None:
        return None
    contrasts = board.params.snake_contrast_list
    local_mask = mask.copy()
    snake = _seed_snake(board, *seed, _pick(contrasts, rng))
    for _ in range(board.params.distractor_length - 1):
        if not _extend(board, snake, local_mask, _pick(contrasts, rng), rng):
            return None
    board.add_mask(local_mask, *snake.last_mask)
    return snake, local_mask


def generate_example(
    params: PathfinderParams, rng: np.random.Generator, *, return_debug: bool = False
) -> tuple[np.ndarray, int] | tuple[np.ndarray, int, dict[str, Any]]:
    """One Pathfinder image and its label (docs/lra_data.md section 5.2).

    Returns:
      (image, label) with image (H, W) uint8, min-max bytescaled to 0..255, and label 0/1; with
      `return_debug`, also a dict: "snake_images" (2, H, W) float ink of each target snake,
      "distractor_image" (H, W), "marker_image" (H, W), "origin_tips" / "terminal_tips" [(y, x), (y, x)]
      (seed tails / last heads), "origin_index" o, "terminal_index" (o if label 1 else 1 - o),
      "marker_centres" [origin, terminal], "margin", "target_attempts" (tries of the two target snakes).
    Cost: dominated by failed attempts at the two target snakes (see the module docstring), each a few
    dozen paddle placements of ~40 microseconds.
    """
    label = int(rng.integers(2))
    margin = int(_pick(params.paddle_margin_list, rng))
    board = _Board(params, margin)
    attempts, targets = 0, None
    while targets is None and attempts < MAX_TARGET_ATTEMPTS:
        attempts += 1
        targets = _two_snakes(board, rng)
    if targets is None:
        raise RuntimeError(
            f"Pathfinder: {MAX_TARGET_ATTEMPTS} attempts at the two target snakes failed with {params}; "
            "the window is too small for contour_length/seed_distance/padding"
        )
    snakes, mask, origin_tips = targets
    distractors = board.zeros()
    for _ in range(params.num_distractor_snakes):
        for _ in range(params.max_distractor_contour_retrial + 1):
            result = _distractor_snake(board, mask, rng)
            if result is not None:
                board.render(result[0], distractors)
                mask = result[1]
                break
    size = params.window_size
    terminal_tips = [snake.head for snake in snakes]
    origin_index = int(rng.integers(2))
    terminal_index = origin_index if label == 1 else 1 - origin_index
    marker_centres = [origin_tips[origin_index], terminal_tips[terminal_index]]
    origin_disk, terminal_disk = (
        draw.marker_disk((size, size), centre, params.marker_radius, params.antialias_scale)
        for centre in marker_centres
    )
    markers = np.maximum(origin_disk, terminal_disk)
    snake_images = np.zeros((2, size, size))
    for snake_image, snake in zip(snake_images, snakes):
        canvas = board.zeros()
        board.render(snake, canvas)
        snake_image[...] = canvas[board.interior]
    distractor_image = distractors[board.interior]
    image = np.maximum(snake_images.max(axis=0), np.maximum(distractor_image, markers))
    image_uint8 = draw.bytescale(image)
    if not return_debug:
        return image_uint8, label
    debug = {
        "snake_images": snake_images,
        "distractor_image": distractor_image,
        "marker_image": markers,
        "origin_tips": origin_tips,
        "terminal_tips": terminal_tips,
        "origin_index": origin_index,
        "terminal_index": terminal_index,
        "marker_centres": marker_centres,
        "margin": margin,
        "target_attempts": attempts,
    }
    return image_uint8, label, debug


def example_rng(params: PathfinderParams, seed: int, index: int) -> np.random.Generator:
    """The random stream of example `index`: numpy PCG64 seeded by (seed, window, contour length, index)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return np.random.default_rng([seed, params.window_size, params.contour_length, index])


# ---------------------------------------------------------------------------------------------------------
# PNG: 8-bit grayscale only.

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_FILE_MAX_BYTES = 64 << 20  # the largest PNG `read_png` reads (no expected size known)
_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(image: np.ndarray, *, compression: int = 6) -> bytes:
    """PNG bytes of an (H, W) uint8 image: 8-bit grayscale, non-interlaced, filter 0 on every row."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2 or 0 in image.shape:
        raise ValueError(
            f"encode_png expects a non-empty (H, W) uint8 image, got {image.dtype} {image.shape}"
        )
    height, width = image.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image], axis=1)  # filter byte 0 per row
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), compression))
        + _png_chunk(b"IEND", b"")
    )


def write_png(path: str, image: np.ndarray) -> None:
    """Write `image` (H, W) uint8 as an 8-bit grayscale PNG."""
    with open(path, "wb") as handle:
        handle.write(encode_png(image))


def _unfilter_average(filtered: bytes, prior: bytes) -> bytearray:
    out = bytearray(len(filtered))
    left = 0
    for x, value in enumerate(filtered):
        left = (value + ((left + prior[x]) >> 1)) & 0xFF
        out[x] = left
    return out


def _unfilter_paeth(filtered: bytes, prior: bytes) -> bytearray:
    out = bytearray(len(filtered))
    left = upper_left = 0
    for x, value in enumerate(filtered):
        up = prior[x]
        # Paeth: whichever of left, up, upper-left is closest to left + up - upper_left (ties in that order).
        distance_left = abs(up - upper_left)
        distance_up = abs(left - upper_left)
        distance_upper_left = abs(left + up - 2 * upper_left)
        if distance_left <= distance_up and distance_left <= distance_upper_left:
            predicted = left
        elif distance_up <= distance_upper_left:
            predicted = up
        else:
            predicted = upper_left
        left = (value + predicted) & 0xFF
        out[x] = left
        upper_left = up
    return out


def _unfilter(raw: bytes, height: int, width: int, where: str) -> np.ndarray:
    """Undo the per-row PNG filters 0-4 (one byte per pixel); types 0-2 vectorised, 3 and 4 loop in Python."""
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, width + 1)
    kinds = rows[:, 0]
    if not kinds.any():
        return rows[:, 1:].copy()
    if kinds.max() > 4:
        bad = int(np.argmax(kinds > 4))
        raise LRADataError(located(where, f"row {bad} has PNG filter type {kinds[bad]}; expected 0-4"))
    image = np.empty((height, width), dtype=np.uint8)
    prior = np.zeros(width, dtype=np.uint8)
    for y in range(height):
        filtered = rows[y, 1:]
        kind = kinds[y]
        if kind == 0:
            image[y] = filtered
        elif kind == 1:
            image[y] = np.cumsum(filtered, dtype=np.uint64) & 0xFF
        elif kind == 2:
            image[y] = filtered + prior  # uint8 arithmetic wraps modulo 256
        elif kind == 3:
            image[y] = np.frombuffer(_unfilter_average(filtered.tobytes(), prior.tobytes()), dtype=np.uint8)
        else:
            image[y] = np.frombuffer(_unfilter_paeth(filtered.tobytes(), prior.tobytes()), dtype=np.uint8)
        prior = image[y]
    return image


PNG_MAX_SIDE = (1 << 31) - 1  # the PNG specification's limit on width and height


def decode_png(data: bytes, where: str | None = None, *, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) uint8 pixels of an 8-bit grayscale, non-interlaced PNG (any of the filter types 0-4).

    Raises LRADataError naming `where` for: a missing signature, truncation (a chunk cut short, no IEND, an
    incomplete zlib stream or too few pixel bytes), more compressed pixel data than the header's size needs, a CRC
    mismatch, and formats other than 8-bit grayscale (colour, palette, alpha, 1/2/4/16-bit, interlaced).
    Ancillary chunks are ignored. With `expected_shape`, a header of another size is refused before inflating.
    Memory: the pixel data are inflated only up to the size the header declares (a zlib bomb stops there).
    """
    if not data.startswith(PNG_SIGNATURE):
        raise LRADataError(located(where, "not a PNG file (missing the 8-byte PNG signature)"))
    position = len(PNG_SIGNATURE)
    header: tuple[int, ...] | None = None
    compressed: list[bytes] = []
    while True:
        if position + 8 > len(data):
            raise LRADataError(located(where, f"truncated PNG: data ends at byte {len(data)} before IEND"))
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(data):
            raise LRADataError(
                located(where, f"truncated PNG: chunk {kind!r} needs {length} bytes, the file ends first")
            )
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if crc != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise LRADataError(located(where, f"corrupt PNG: CRC mismatch in chunk {kind!r}"))
        position = end
        if header is None and kind != b"IHDR":
            raise LRADataError(located(where, f"corrupt PNG: first chunk is {kind!r}, expected IHDR"))
        if kind == b"IHDR":
            if length != 13:
                raise LRADataError(located(where, f"corrupt PNG: IHDR has {length} bytes, expected 13"))
            header = struct.unpack(">IIBBBBB", body)
            width, height, bit_depth, color_type, compression, filter_method, interlace = header
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
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
        elif kind[:1].isupper():  # an unknown critical chunk (e.g. PLTE) that a gray decoder must not ignore
            raise LRADataError(
                located(where, f"unsupported PNG: critical chunk {kind!r} in a grayscale image")
            )
    width, height = header[0], header[1]
    needed = height * (width + 1)  # a filter byte per row; at most ~2**62, within zlib's max_length
    decompressor = zlib.decompressobj()
    try:
        raw = decompressor.decompress(b"".join(compressed), needed)
        extra = b"" if decompressor.eof else decompressor.decompress(decompressor.unconsumed_tail, 1)
    except zlib.error as error:
        raise LRADataError(located(where, f"corrupt PNG: bad compressed image data ({error})")) from None
    if extra:
        raise LRADataError(
            located(where, f"corrupt PNG: more compressed pixel data than the {width}x{height} header needs")
        )
    if not decompressor.eof or len(raw) < needed:
        raise LRADataError(
            located(where, f"truncated PNG: {len(raw)} bytes of pixel data, expected {needed}")
        )
    return _unfilter(raw, height, width, where)


def png_max_bytes(height: int, width: int) -> int:
    """The largest PNG file of an H x W 8-bit grayscale image that is read: twice the unfiltered pixel data
    (deflate's stored blocks, chunk framing) plus 1 MiB for ancillary chunks. Real ones are a fraction of it."""
    return 2 * height * (width + 1) + (1 << 20)


def read_png(path: str) -> np.ndarray:
    """Read an 8-bit grayscale PNG file into (H, W) uint8; errors name the file (see `decode_png`). Only a regular
    file of at most PNG_FILE_MAX_BYTES is read (lra/files.py)."""
    return decode_png(read_bounded(path, "a PNG file", PNG_FILE_MAX_BYTES), path)


# ---------------------------------------------------------------------------------------------------------
# Metadata files.


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
# The largest cache info.json read (it lists the skipped images).
CACHE_INFO_MAX_BYTES = 64 << 20


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
    hint = f"; {download_hint(task, data_dir)}" if task else ""
    raise LRADataError(
        f"Pathfinder data not found: neither {os.path.join(data_dir, directory)} nor "
        f"{os.path.join(data_dir, f'pathfinder{resolution}', directory)} exists{hint}"
    )


# ---------------------------------------------------------------------------------------------------------
# Reading images and the memmap cache.


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


def _cache_key(dataset_dir: str, resolution: int) -> dict[str, Any]:
    files = []
    for path in metadata_files(dataset_dir):
        stat = check_regular(path, "the metadata file", METADATA_MAX_BYTES)
        files.append([os.path.basename(path), stat.st_size, stat.st_mtime_ns])
    return {
        "cache_version": CACHE_VERSION,
        "resolution": resolution,
        "dataset_dir": os.path.realpath(dataset_dir),
        "metadata": files,
    }


def build_cache(
    dataset_dir: str, resolution: int, cache_path: str, *, num_workers: int | None = None
) -> None:
    """Write `<cache_path>/inputs.npy` (n, H*W) uint8, `labels.npy` (n,) int32 and `info.json`, atomically.

    Pixels stream block by block into an np.lib.format.open_memmap file, so memory stays at a few blocks
    whatever n is (Path-X: 200,000 x 16,384 = 3.3 GB on disk). Skipped images leave the file one copy pass
    shorter at the end. The directory is built under a temporary name and renamed into place.
    """
    key = _cache_key(dataset_dir, resolution)
    paths, labels = read_index(dataset_dir)
    parent = os.path.dirname(os.path.abspath(cache_path))
    os.makedirs(parent, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(cache_path)}.tmp-", dir=parent)
    try:
        full_path = os.path.join(temp_dir, "inputs.full.npy")
        inputs = np.lib.format.open_memmap(
            full_path, mode="w+", dtype=np.uint8, shape=(len(paths), resolution * resolution)
        )
        keep_all = np.zeros(len(paths), dtype=bool)
        written = 0
        for start, pixels, keep in _iterate_blocks(paths, resolution, num_workers):
            kept = pixels[keep]
            inputs[written : written + len(kept)] = kept
            keep_all[start : start + len(keep)] = keep
            written += len(kept)
        inputs.flush()
        del inputs
        final_inputs = os.path.join(temp_dir, "inputs.npy")
        if written == len(paths):
            os.rename(full_path, final_inputs)
        else:
            source = np.load(full_path, mmap_mode="r")
            target = np.lib.format.open_memmap(
                final_inputs, mode="w+", dtype=np.uint8, shape=(written, resolution * resolution)
            )
            step = _block_rows(resolution)
            for start in range(0, written, step):
                stop = min(start + step, written)
                target[start:stop] = source[start:stop]
            target.flush()
            del source, target
            os.unlink(full_path)
        np.save(os.path.join(temp_dir, "labels.npy"), labels[keep_all])
        skipped = [p for p, k in zip(paths, keep_all) if not k]
        with open(os.path.join(temp_dir, "info.json"), "w") as handle:
            json.dump({"key": key, "num_examples": written, "skipped": skipped}, handle, indent=1)
        _warn_skipped(skipped, len(paths))
        if os.path.isdir(cache_path):
            shutil.rmtree(cache_path, ignore_errors=True)  # a stale cache under the same name
        try:
            os.rename(temp_dir, cache_path)
        except OSError:
            if not os.path.isdir(cache_path):
                raise
            shutil.rmtree(temp_dir, ignore_errors=True)  # a concurrent builder finished first
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _open_cache(cache_path: str, key: dict[str, Any], resolution: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(inputs memmap, labels) of a cache built for `key`; None when it is missing, stale or damaged in any way.

    Both arrays are opened as memory maps first, so a damaged .npy header cannot make this allocate: a shape that
    the file does not hold fails to map. Only then are the shapes compared with info.json and the labels copied.
    Anything but a regular file among the three (a FIFO, a link to a device) is never opened (lra/files.py).
    """
    try:
        info = json.loads(read_bounded(os.path.join(cache_path, "info.json"), "a cache index", CACHE_INFO_MAX_BYTES))
        if not isinstance(info, dict) or info.get("key") != json.loads(json.dumps(key)):
            return None
        count = info["num_examples"]
        for name in ("inputs.npy", "labels.npy"):
            check_regular(os.path.join(cache_path, name), "a cache array")
        inputs = np.load(os.path.join(cache_path, "inputs.npy"), mmap_mode="r", allow_pickle=False)
        labels = np.load(os.path.join(cache_path, "labels.npy"), mmap_mode="r", allow_pickle=False)
        if (
            not isinstance(count, int)
            or inputs.shape != (count, resolution * resolution)
            or inputs.dtype != np.uint8
            or labels.shape != (count,)
            or labels.dtype != np.int32
            or not np.isin(labels, (0, 1)).all()
        ):
            return None
        return inputs, np.array(labels)
    except (OSError, ValueError, KeyError, TypeError, EOFError, RecursionError):
        return None


def split_positions(num_examples: int) -> dict[str, tuple[int, int]]:
    """LRA's positional split: train [0, floor(.8n)), val [floor(.8n), floor(.9n)), test [floor(.9n), n)."""
    first, second = num_examples * 8 // 10, num_examples * 9 // 10
    return {"train": (0, first), "val": (first, second), "test": (second, num_examples)}


def _splits(inputs: np.ndarray, labels: np.ndarray) -> dict[str, Split]:
    return {
        name: Split(inputs=inputs[start:stop], labels=np.asarray(labels[start:stop], np.int32), name=name)
        for name, (start, stop) in split_positions(len(labels)).items()
    }


def load_pathfinder(
    data_dir: str,
    resolution: int = 32,
    difficulty: str = "hard",
    cache_dir: str | None = None,
    *,
    use_cache: bool = True,
    num_workers: int | None = None,
) -> dict[str, Split]:
    """Read one difficulty of Pathfinder (Path-X: resolution 128, "hard") into train/val/test splits.

    Args:
      data_dir: a `pathfinder<res>` directory holding `<curv_dir>/`, or the `lra_release` root above it.
      cache_dir: where the uint8 cache goes (a subdirectory `pathfinder<res>-<curv_dir>-<digest>`); default
        `<data_dir>/<curv_dir>/cache`. When it cannot be written, or use_cache=False, everything is read into
        memory instead (n * H*W bytes).
      num_workers: processes decoding PNGs (default: all CPUs; 1 = in this process).
    Returns:
      {"train", "val", "test"} -> Split with inputs (n, H*W) uint8 (read-only memmap views when cached: pass
      batches through lra.batching, which converts to int32) and labels (n,) int32. Ids are pixels 0..255; no
      padding. Split sizes follow `split_positions`.
    The cache is valid while the dataset directory and its metadata files keep their paths, sizes and mtimes
    (images replaced in place without touching the metadata are not noticed: delete the cache then). A cache
    made stale that way is left on disk, not deleted. A damaged cache (unreadable info.json, arrays whose
    headers or sizes disagree with it) is rebuilt.
    Raises LRADataError naming the file for malformed metadata or images, and when no example is listed or
    every image is skipped (empty or all black).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unsupported Pathfinder resolution {resolution!r}; expected one of {RESOLUTIONS}")
    dataset_dir = find_dataset_dir(data_dir, resolution, difficulty)
    if use_cache:
        key = _cache_key(dataset_dir, resolution)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        root = cache_dir if cache_dir is not None else os.path.join(dataset_dir, "cache")
        cache_path = os.path.join(root, f"pathfinder{resolution}-{difficulty_dir(difficulty)}-{digest}")
        cached = _open_cache(cache_path, key, resolution)
        if cached is None:  # missing, stale or damaged: (re)build it
            try:
                build_cache(dataset_dir, resolution, cache_path, num_workers=num_workers)
            except OSError as error:
                warnings.warn(
                    f"Pathfinder: cannot write the cache in {root} ({error}); reading into memory",
                    stacklevel=2,
                )
            else:
                cached = _open_cache(cache_path, key, resolution)
                if cached is None:
                    raise LRADataError(f"{cache_path}: the cache just built cannot be read back")
        if cached is not None:
            return _splits(*cached)
    inputs, labels = read_pathfinder_examples(dataset_dir, resolution, num_workers=num_workers)
    return _splits(inputs, labels)


# ---------------------------------------------------------------------------------------------------------
# Generating the official layout.


def _generate_images(
    task: tuple[str, PathfinderParams, int, int, int, int, int],
) -> tuple[int, int, list[str], list[int]]:
    """Write imgs/<batch>/sample_<i>.png for the global examples [start, stop) of one batch whose first example
    is `first`; return (batch, start, metadata lines, labels) for the parent to assemble the batch's metadata."""
    dataset_dir, params, seed, batch, first, start, stop = task
    image_dir = os.path.join(dataset_dir, "imgs", str(batch))
    os.makedirs(image_dir, exist_ok=True)
    lines, labels = [], []
    for global_index in range(start, stop):
        index = global_index - first
        image, label, debug = generate_example(
            params, example_rng(params, seed, global_index), return_debug=True
        )
        write_png(os.path.join(image_dir, f"sample_{index}.png"), image)
        lines.append(metadata_row(batch, index, label, params, debug["margin"]) + "\n")
        labels.append(label)
    return batch, start, lines, labels


def write_pathfinder_dataset(
    root: str,
    params: PathfinderParams,
    num_examples: int,
    seed: int,
    *,
    curv_dir: str = "curv_contour_length_14",
    num_workers: int | None = None,
    images_per_batch: int = IMAGES_PER_BATCH,
    progress: bool = True,
) -> np.ndarray:
    """Generate `num_examples` images into `<root>/<curv_dir>/{imgs,metadata}` (the official layout).

    Example i (0-based, in split order) lands in batch i // images_per_batch as sample_<i % images_per_batch>
    and is drawn from `example_rng(params, seed, i)`, so the files do not depend on num_workers. Parts of
    batches (IMAGES_PER_TASK images) are generated in parallel (forked workers, or spawned once jax is
    imported); a batch's metadata file is written when its last part is done. Returns the labels (n,) int32.

    progress: a progress bar on stderr (images done / total, rate, time left; lra/progress.py), updated as
    each part completes. TQDM_DISABLE=1 in the environment turns it off too.
    """
    if num_examples < 1 or images_per_batch < 1:
        raise ValueError(
            f"expected num_examples >= 1 and images_per_batch >= 1, got {num_examples}, {images_per_batch}"
        )
    dataset_dir = os.path.join(root, curv_dir)
    os.makedirs(os.path.join(dataset_dir, "metadata"), exist_ok=True)
    batch_sizes = {}
    tasks = []
    for batch, first in enumerate(range(0, num_examples, images_per_batch)):
        stop = min(first + images_per_batch, num_examples)
        batch_sizes[batch] = stop - first
        for start in range(first, stop, IMAGES_PER_TASK):
            tasks.append((dataset_dir, params, int(seed), batch, first, start, min(start + IMAGES_PER_TASK, stop)))
    workers = min(_default_num_workers() if num_workers is None else num_workers, len(tasks))
    if workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")

    parts: dict[int, dict[int, tuple[list[str], list[int]]]] = {batch: {} for batch in batch_sizes}
    labels_by_batch: dict[int, list[int]] = {}

    def collect(results) -> None:
        with progress_bar(num_examples, f"Pathfinder-{params.window_size} {curv_dir}", "img",
                          enabled=progress) as bar:
            for batch, start, lines, labels in results:
                parts[batch][start] = (lines, labels)
                bar.update(len(labels))
                if sum(len(part[1]) for part in parts[batch].values()) < batch_sizes[batch]:
                    continue
                done = parts.pop(batch)
                ordered = [done[key] for key in sorted(done)]
                path = os.path.join(dataset_dir, "metadata", f"{batch}.npy")
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write("".join(line for lines, _ in ordered for line in lines))
                labels_by_batch[batch] = [label for _, labels in ordered for label in labels]

    if workers == 1:
        collect(map(_generate_images, tasks))
    else:
        with _worker_context().Pool(workers) as pool:
            # Unordered: the bar moves as soon as any part is done; the metadata are assembled in order.
            collect(pool.imap_unordered(_generate_images, tasks, chunksize=1))
    return np.asarray([label for batch in sorted(labels_by_batch) for label in labels_by_batch[batch]],
                      dtype=np.int32)


def ensure_generated_pathfinder(
    cache_root: str,
    resolution: int,
    difficulty: str,
    num_examples: int,
    seed: int,
    num_workers: int | None = None,
    progress: bool = True,
) -> str:
    """Generate Pathfinder under `cache_root` unless it is there; return the root for `load_pathfinder`.

    The root is `<cache_root>/pathfinder<res>-<12 hex of sha256(parameters)>/` holding `<curv_dir>/imgs`,
    `<curv_dir>/metadata` and params.json. It is built under a hidden temporary name and renamed into place,
    so it exists complete or not at all; a concurrent caller that loses the rename discards its copy.
    While generating, a progress bar goes to stderr unless `progress` is False (see write_pathfinder_dataset).
    """
    params = pathfinder_params(resolution, difficulty)
    description = {
        "generator_version": GENERATOR_VERSION,
        "images_per_batch": IMAGES_PER_BATCH,
        "params": dataclasses.asdict(params),
        "difficulty": difficulty_dir(difficulty),
        "num_examples": int(num_examples),
        "seed": int(seed),
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]
    name = f"pathfinder{resolution}-{digest}"
    final_dir = os.path.join(cache_root, name)
    if os.path.isdir(final_dir):
        return final_dir
    os.makedirs(cache_root, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_root)
    try:
        write_pathfinder_dataset(
            temp_dir, params, num_examples, seed, curv_dir=difficulty_dir(difficulty), num_workers=num_workers,
            progress=progress,
        )
        with open(os.path.join(temp_dir, "params.json"), "w") as handle:
            json.dump(description, handle, indent=2, sort_keys=True)
        try:
            os.rename(temp_dir, final_dir)
        except OSError:
            if not os.path.isdir(final_dir):
                raise
            shutil.rmtree(temp_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return final_dir


# ---------------------------------------------------------------------------------------------------------
# Example grid and command line.


def example_grid(
    resolutions: Sequence[int] = (32, 128),
    difficulty: str = "hard",
    columns: int = 6,
    seed: int = 0,
    tile: int = 128,
    gutter: int = 4,
) -> np.ndarray:
    """A uint8 picture of generated examples: per resolution, one row of label-1 and one of label-0 images.

    Each image is enlarged by pixel repetition to `tile` pixels. Rows are separated by `gutter` pixels of
    gray 96; a bar at the left of each row is white for label 1 and dark gray (48) for label 0.
    """
    bar = 12
    rows = []
    for resolution in resolutions:
        if tile % resolution:
            raise ValueError(f"tile={tile} must be a multiple of every resolution, got {resolution}")
        params = pathfinder_params(resolution, difficulty)
        found: dict[int, list[np.ndarray]] = {1: [], 0: []}
        index = 0
        while min(len(v) for v in found.values()) < columns:
            image, label = generate_example(params, example_rng(params, seed, index))
            index += 1
            if len(found[label]) < columns:
                found[label].append(np.kron(image, np.ones((tile // resolution,) * 2, np.uint8)))
        for label in (1, 0):
            row = [np.full((tile, bar), 255 if label else 48, np.uint8)]
            for image in found[label]:
                row += [np.full((tile, gutter), 96, np.uint8), image]
            rows.append(np.concatenate(row, axis=1))
    width = rows[0].shape[1]
    pieces = []
    for row in rows:
        pieces += [row, np.full((gutter, width), 96, np.uint8)]
    return np.concatenate(pieces[:-1], axis=0)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate Pathfinder in the official layout, or draw an example grid (--grid)."""
    parser = argparse.ArgumentParser(prog="python -m lra.pathfinder", description=main.__doc__)
    parser.add_argument("--grid", default=None, help="write a PNG grid of examples of both labels and exit")
    parser.add_argument(
        "--output_dir", default=None, help="root; images go to <root>/<curv_dir>/imgs/<batch>/"
    )
    parser.add_argument("--resolution", type=int, default=32, choices=RESOLUTIONS)
    parser.add_argument(
        "--difficulty", default="hard", help="easy / intermediate / hard (or the directory name)"
    )
    parser.add_argument("--num_examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=None, help="default: all available CPUs")
    args = parser.parse_args(argv)
    if args.grid:
        directory = os.path.dirname(args.grid)
        if directory:
            os.makedirs(directory, exist_ok=True)
        write_png(args.grid, example_grid(seed=args.seed, difficulty=args.difficulty))
        print(f"{args.grid}: rows = (32 label 1, 32 label 0, 128 label 1, 128 label 0)")
        return 0
    if not args.output_dir:
        parser.error("give --output_dir (or --grid)")
    params = pathfinder_params(args.resolution, args.difficulty)
    started = time.perf_counter()
    labels = write_pathfinder_dataset(
        args.output_dir,
        params,
        args.num_examples,
        args.seed,
        curv_dir=difficulty_dir(args.difficulty),
        num_workers=args.num_workers,
    )
    elapsed = time.perf_counter() - started
    print(
        f"{os.path.join(args.output_dir, difficulty_dir(args.difficulty))}: {len(labels)} images, "
        f"{labels.mean():.3f} label 1, {elapsed:.1f} s ({len(labels) / elapsed:.1f} images/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
