"""The Pathfinder / Path-X generator: parameters per resolution and difficulty, the board, snakes, one example.

An example is a grayscale image with two target "snakes" (curvy dashed contours made of short paddles),
distractor snakes, and two circular markers. Label 1 means both markers sit on the two ends of ONE target
snake; label 0 means they sit on ends of the two different target snakes (docs/lra_data.md section 5).

Generator (section 5). `generate_example` follows [PF] drewlinsley/pathfinder `snakes2.py` / `snakes.py`:
two seeds `seed_distance` apart, continuity-weighted extension with an exclusion mask, distractor snakes,
markers by label, min-max bytescale to uint8. Parameters per resolution come from LRA's TFDS docstrings
(`pathfinder_params`). Deviations, all deliberate:
- Drawing: lra/pathfinder/draw.py. Lines are rasterised in numpy on the fine grid like PIL's (in kind, not bit
  for bit) and shrunk with Pillow's Lanczos-3, the resampling [PF]'s scipy.misc.imresize used.
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

Cost (CPU time per image, measured with this code): resolution 32 easy 2 ms, intermediate 4 ms, hard 16 ms;
64 hard 0.45 s; 128 hard (Path-X) 0.16 s; 256 hard 0.07 s. Almost all of it is failed attempts at the two
target snakes (means: 4 / 12 / 60 at 32, ~1,150 at 64, ~300 at 128, ~8 at 256), which the algorithm retries
from scratch. So 2,000 Pathfinder-32 images take ~34 CPU-seconds, and 200,000 Path-X images ~9 CPU-hours.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lra.pathfinder import draw

RESOLUTIONS = (32, 64, 128, 256)
# difficulty -> (directory, number of paddles per target snake)
DIFFICULTIES: dict[str, tuple[str, int]] = {
    "easy": ("curv_baseline", 6),
    "intermediate": ("curv_contour_length_9", 9),
    "hard": ("curv_contour_length_14", 14),
}

# Part of the definition of generated data (bump with any change to what a seed produces).
GENERATOR_VERSION = 1
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
