"""Tests for the lra/pathfinder/ package (generator, drawing, PNG files, reader, cache, datasets), plus the
uint8 path of lra.tasks.Split and lra.batching that the memmap cache relies on."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest

from lra import pathfinder as pf
from lra.batching import BatchSchedule, eval_batches
from lra.errors import LRADataError
from lra.pathfinder import draw
from lra.tasks import Split, get_task

RES = 32
NUM_DEBUG_EXAMPLES = 120


@pytest.fixture(scope="module")
def params32():
    return pf.pathfinder_params(RES, "hard")


@pytest.fixture(scope="module")
def debug_examples(params32):
    """(image, label, debug) for examples 0..N-1 of seed 3 at resolution 32, hard."""
    return [
        pf.generate_example(params32, pf.example_rng(params32, 3, i), return_debug=True)
        for i in range(NUM_DEBUG_EXAMPLES)
    ]


def reaches(ink: np.ndarray, start, goal, threshold: float, grow: int) -> bool:
    """Breadth-first search over pixels with ink > threshold, after a (2 grow + 1)^2 square dilation."""
    occupied = ink > threshold
    height, width = occupied.shape
    grown = occupied.copy()
    for y, x in zip(*np.nonzero(occupied)):
        grown[max(y - grow, 0) : y + grow + 1, max(x - grow, 0) : x + grow + 1] = True
    if not grown[start]:
        return False
    seen = {tuple(start)}
    frontier = [tuple(start)]
    while frontier:
        y, x = frontier.pop()
        for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
            if 0 <= ny < height and 0 <= nx < width and grown[ny, nx] and (ny, nx) not in seen:
                seen.add((ny, nx))
                frontier.append((ny, nx))
    return tuple(goal) in seen


# ------------------------------------------------------------------------------------------ parameters


def test_parameters_follow_the_lra_table_and_difficulties():
    p32 = pf.pathfinder_params(32, "hard")
    assert (p32.window_size, p32.padding, p32.antialias_scale, p32.seed_distance, p32.marker_radius) == (
        32, 1, 2, 7, 1.5,
    )  # fmt: skip
    assert (p32.paddle_length, p32.paddle_thickness, p32.paddle_margin_list, p32.continuity) == (
        2,
        0.5,
        (1,),
        1.0,
    )
    assert (p32.num_distractor_snakes, p32.snake_contrast_list, p32.paddle_contrast_list) == (
        5,
        (2.0,),
        (0.75,),
    )
    p128 = pf.pathfinder_params(128, "hard")
    assert (p128.paddle_margin_list, p128.seed_distance, p128.marker_radius, p128.paddle_thickness) == (
        (2, 3), 20, 3.0, 1.5,
    )  # fmt: skip
    assert (p128.num_distractor_snakes, p128.snake_contrast_list, p128.continuity) == (8, (0.9,), 1.8)
    assert pf.pathfinder_params(256, "hard").padding == 22
    assert pf.pathfinder_params(64, "hard").num_distractor_snakes == 5
    for difficulty, directory, length in (
        ("easy", "curv_baseline", 6),
        ("intermediate", "curv_contour_length_9", 9),
        ("hard", "curv_contour_length_14", 14),
    ):
        for name in (difficulty, directory):
            params = pf.pathfinder_params(32, name)
            assert (params.contour_length, params.distractor_length) == (length, length // 3)
            assert params.num_distractor_snakes == 5  # not recomputed per difficulty, as in [PF]'s wrapper
        assert pf.difficulty_dir(difficulty) == directory
    for resolution in pf.RESOLUTIONS:  # [PF] requires thickness * aa to be an integer
        params = pf.pathfinder_params(resolution)
        assert (params.paddle_thickness * params.antialias_scale).is_integer()


def test_parameters_reject_bad_values(params32):
    with pytest.raises(ValueError, match="resolution"):
        pf.pathfinder_params(48)
    with pytest.raises(ValueError, match="difficulty"):
        pf.pathfinder_params(32, "medium")
    with pytest.raises(ValueError, match="thickness"):
        dataclasses.replace(params32, paddle_thickness=0.75)
    with pytest.raises(ValueError, match="paddle_margin_list"):
        dataclasses.replace(params32, paddle_margin_list=())


# ----------------------------------------------------------------------------------- drawing helpers


@functools.cache
def lanczos_written_out(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of one Lanczos-3 pass, PIL's convention, from the kernel formula: output pixel i
    is centred at input coordinate (i + 0.5) * scale, the kernel is stretched by the shrink factor, rows sum to 1."""
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    matrix = np.zeros((size_out, size_in))
    for i in range(size_out):
        centre = (i + 0.5) * scale
        for j in range(size_in):
            x = (j + 0.5 - centre) / stretch  # distance between pixel centres, in kernel units
            if abs(x) < 3 and abs(j + 0.5 - centre) <= 3 * stretch:
                matrix[i, j] = 1.0 if x == 0 else 3 * np.sin(np.pi * x) * np.sin(np.pi * x / 3) / (np.pi * x) ** 2
        matrix[i] /= matrix[i].sum()
    return matrix


def resample_written_out(image255: np.ndarray, out_shape) -> np.ndarray:
    """PIL's 8-bit Lanczos resize: horizontal pass, round and clip to 0..255, vertical pass, round and clip."""

    def round_clip(values):
        return np.clip(np.floor(values + 0.5), 0.0, 255.0)

    horizontal = round_clip(image255 @ lanczos_written_out(image255.shape[1], out_shape[1]).T)
    return round_clip(lanczos_written_out(image255.shape[0], out_shape[0]) @ horizontal)


def test_resample_equals_the_lanczos_kernel_written_out_on_the_generators_paddles():
    """draw.resample (Pillow) gives exactly the written-out Lanczos-3 on the fine paddles and masks the generator
    shrinks (seed orientations in integer degrees, extension orientations from the candidate circle): the
    generated data depend on it, so a Pillow that rounded differently would fail here."""
    for resolution in pf.RESOLUTIONS:
        params = pf.pathfinder_params(resolution, "hard")
        aa, length = params.antialias_scale, params.paddle_length
        for margin in params.paddle_margin_list:
            _, candidates = pf.generate._circle_candidates(length + margin)
            orientations = [np.deg2rad(d) for d in range(-180, 180, 9)]
            orientations += [draw.flip_by_pi(float(o)) for o in candidates[::3]]
            radius = draw.patch_radius(length, params.paddle_thickness, margin)
            centre, shape = radius * aa, (2 * radius + 1, 2 * radius + 1)
            for orientation in orientations:
                head = draw.translate_coord((centre, centre), orientation, length * aa)
                fine = draw.rasterize_segment(
                    2 * centre + 1, (centre, centre), head, round(params.paddle_thickness * aa)
                )
                for image in (fine, draw.dilate_max(fine, draw.disk_offsets(margin * aa))):
                    np.testing.assert_array_equal(
                        draw.resample(255.0 * image, shape), resample_written_out(255.0 * image, shape)
                    )
    with pytest.raises(ValueError, match="0..255"):
        draw.resample(np.full((4, 4), 0.5), (2, 2))


def test_dilations_match_a_brute_force_loop():
    rng = np.random.default_rng(0)
    image = rng.random((9, 11)) * (rng.random((9, 11)) < 0.2)
    offsets = np.array([[0, 0], [1, 2], [-2, 1], [0, -3]])
    expected = np.zeros_like(image)
    for y in range(9):
        for x in range(11):
            values = [image[y + dy, x + dx] for dy, dx in offsets if 0 <= y + dy < 9 and 0 <= x + dx < 11]
            expected[y, x] = max(values + [0.0])
    np.testing.assert_array_equal(draw.dilate_max(image, offsets), expected)
    np.testing.assert_array_equal(draw.dilate_any(image > 0.3, offsets), expected > 0.3)
    assert draw.disk_struct(1).sum() == 5 and draw.disk_struct(2).sum() == 13


def test_circle_candidates_equal_the_literal_pf_computation():
    """[PF] get_coords_cmf: float points on the circle, out-of-bounds dropped, truncated, de-duplicated."""
    size = 32
    for radius in (3, 7, 8):
        offsets, orientations = pf.generate._circle_candidates(radius)
        for pivot in [(16, 16), (0, 0), (2, 30), (-3, 10), (33, 33), (31, 5)]:
            angles = np.arange(0, 360, 360.0 / (2 * radius * np.pi)) * np.pi / 180
            ys, xs = pivot[0] + radius * np.sin(angles), pivot[1] + radius * np.cos(angles)
            inside = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
            literal = np.unique(np.stack([ys[inside], xs[inside]], axis=1).astype(int), axis=0)
            points = offsets + np.array(pivot)
            keep = ((points >= 0) & (points < size)).all(axis=1)
            np.testing.assert_array_equal(points[keep], literal.reshape(-1, 2))
            literal_orientations = np.arctan2(literal[:, 0] - pivot[0], literal[:, 1] - pivot[1])
            np.testing.assert_allclose(orientations[keep], literal_orientations)


def test_cached_first_seed_pixels_equal_the_float_dilation(params32):
    """The first target seed's free tails are cached per orientation; they equal [PF]'s float computation."""
    band = 2 * params32.seed_distance
    for degrees in (-180, -97, 0, 45, 179):
        orientation = np.deg2rad(degrees)
        lined = np.zeros((RES, RES))
        lined[:band, :] = lined[RES - band :, :] = lined[:, :band] = lined[:, RES - band :] = 1.0
        offsets = draw.seed_struct_offsets(orientation, 2, 0.5, 1, 2)
        expected = np.argwhere(np.ceil(draw.dilate_max(lined, offsets) - 0.3) == 0)
        np.testing.assert_array_equal(pf.generate._fresh_seed_pixels(orientation, band, params32, 1), expected)
        assert len(offsets) > 0


def test_marker_disk_is_the_written_out_lanczos_of_the_fine_disk():
    """Up to one level: a disk is symmetric, so exact ties (k + 0.5 before rounding) are common, and float64 sums
    round them either way; Pillow's fixed point decides them (test_generated_pixels_are_pinned pins the result)."""
    for size, centre, radius, aa in (
        (32, (5, 20), 1.5, 2), (32, (0, 31), 1.5, 2), (64, (30, 2), 2.5, 2), (128, (127, 60), 3.0, 2),
    ):  # fmt: skip
        rows, cols = np.ogrid[0 : size * aa, 0 : size * aa]
        fine = ((rows - centre[0] * aa) ** 2 + (cols - centre[1] * aa) ** 2 <= (radius * aa) ** 2) * 255.0
        expected = resample_written_out(fine, (size, size))
        marker = draw.marker_disk((size, size), centre, radius, aa) * 255.0
        np.testing.assert_allclose(marker, expected, atol=1 + 1e-9)
        assert marker.max() == 255.0 and (marker[expected == 0] == 0).all()


def test_paddle_patch_is_a_line_of_the_right_length_and_direction():
    line, mask = draw.paddle_patches(0.0, 5, 1.0, 1, 2)  # pointing right (+x)
    centre = line.shape[0] // 2
    assert line[centre, centre] > 0.5 and line[centre, centre + 5] > 0.3
    # Lanczos rings a little (a few levels of 255) but leaves nothing substantial off the line.
    assert (
        line[centre, centre + 7] < 0.05
        and line[centre, centre - 2] < 0.05
        and line[centre + 3, centre + 2] < 0.05
    )
    assert (mask[line > 0.2] > 0.9).all() and mask.max() == 1.0  # the exclusion mask covers the line
    assert (
        mask[centre, centre - 1] > 0.5 and mask[centre, centre + 6] > 0.5
    )  # ... and a margin beyond its ends
    assert ((mask > 0.5) & (line < 0.05)).sum() >= 4
    right, _ = draw.paddle_patches(0.0, 2, 0.5, 1, 2)  # resolution-32 paddle: one fine pixel wide
    down, _ = draw.paddle_patches(np.pi / 2, 2, 0.5, 1, 2)  # +y
    # equal up to the rounding between the two passes (horizontal first, as PIL), which is not symmetric
    np.testing.assert_allclose(down, right.T, atol=0.05)
    fine = draw.rasterize_segment(9, (1, 1), (7, 4), 1)  # DDA: one pixel per step of the major axis
    assert fine.sum() == 7 and fine[1, 1] == fine[7, 4] == 1
    for width in (2, 3, 4):  # an axis-parallel wide line is exactly `width` pixels thick and spans its length
        wide = draw.rasterize_segment(15, (7, 2), (7, 11), width)
        assert wide.sum(axis=0)[2:12].tolist() == [width] * 10 and wide.sum() == 10 * width


def test_bytescale_is_min_max_to_0_255_rounded():
    image = np.array([[0.2, 0.45], [0.7, 0.2]])
    np.testing.assert_array_equal(draw.bytescale(image), [[0, 128], [255, 0]])
    assert draw.bytescale(np.full((2, 2), 0.3)).max() == 0


# ------------------------------------------------------------------------------------- the generator


def test_markers_sit_on_one_contour_exactly_when_the_label_is_1(debug_examples):
    for image, label, debug in debug_examples:
        origin, terminal = debug["origin_index"], debug["terminal_index"]
        assert (origin == terminal) == (label == 1)
        assert debug["marker_centres"] == [debug["origin_tips"][origin], debug["terminal_tips"][terminal]]
        ink = debug["snake_images"] / debug["snake_images"].max()
        # Which target snake carries ink under each marker centre, read off the per-snake images.
        on = []
        for centre in debug["marker_centres"]:
            own = [ink[k][centre] for k in range(2)]
            assert max(own) > 0.5 and min(own) < 0.1, (own, centre)
            on.append(int(np.argmax(own)))
        assert (on[0] == on[1]) == (label == 1)
        # Each target snake is one contour: its dashes, bridged by one pixel, join its tail to its head.
        for k in range(2):
            assert reaches(ink[k], debug["origin_tips"][k], debug["terminal_tips"][k], 0.2, grow=1)
        # The markers are drawn there and are among the brightest pixels.
        for centre in debug["marker_centres"]:
            assert debug["marker_image"][centre] == 1.0 and image[centre] >= 200


def test_target_snakes_neither_cross_nor_touch(debug_examples):
    for _, _, debug in debug_examples:
        ink = debug["snake_images"] / debug["snake_images"].max()
        assert not ((ink[0] > 0.5) & (ink[1] > 0.5)).any()


def test_labels_are_balanced(debug_examples, params32):
    labels = np.array([label for _, label, _ in debug_examples])
    assert 0.35 < labels.mean() < 0.65  # 120 labels; the 4000 below pin the balance down
    # The label is the first draw of each example's stream, so many more labels come cheaply.
    many = np.array([pf.example_rng(params32, 3, i).integers(2) for i in range(4000)])
    np.testing.assert_array_equal(many[: len(labels)], labels)
    assert abs(many.mean() - 0.5) < 0.03


def test_image_statistics(debug_examples):
    images = np.stack([image for image, _, _ in debug_examples])
    assert images.dtype == np.uint8 and images.shape[1:] == (RES, RES)
    assert (images.reshape(len(images), -1).min(axis=1) == 0).all()
    assert (images.reshape(len(images), -1).max(axis=1) == 255).all()
    lit = (images > 0).mean(axis=(1, 2))
    assert lit.min() > 0.1 and lit.max() < 0.8  # dense dashes on a black background at 32x32
    assert len({image.tobytes() for image in images}) == len(images)
    distractors = [debug["distractor_image"].max() > 0 for _, _, debug in debug_examples]
    assert np.mean(distractors) > 0.9


@pytest.mark.parametrize(("resolution", "difficulty"), [(32, "easy"), (128, "hard")])
def test_other_settings_generate_valid_images(resolution, difficulty):
    params = pf.pathfinder_params(resolution, difficulty)
    image, label, debug = pf.generate_example(params, pf.example_rng(params, 0, 1), return_debug=True)
    assert image.shape == (resolution, resolution) and image.min() == 0 and image.max() == 255
    assert (debug["origin_index"] == debug["terminal_index"]) == (label == 1)
    ink = debug["snake_images"] / debug["snake_images"].max()
    for k in range(2):
        assert reaches(ink[k], debug["origin_tips"][k], debug["terminal_tips"][k], 0.2, grow=2)


def test_generation_is_deterministic_and_seed_dependent(params32, debug_examples):
    again, label = pf.generate_example(params32, pf.example_rng(params32, 3, 5))
    np.testing.assert_array_equal(again, debug_examples[5][0])
    assert label == debug_examples[5][1]
    other, _ = pf.generate_example(params32, pf.example_rng(params32, 4, 5))
    assert not np.array_equal(other, again)


# sha256 (first 24 hex digits) of the images and labels of examples 0..n-1, seed 0, as generated before the
# generator became a package and Pillow took over the resampling (lra/pathfinder/draw.py): the data a seed defines.
PINNED_PIXELS = {
    (32, "hard", 20): "eeabecc9ef6e8edf3a11ac80",
    (32, "easy", 20): "07e340e908cb1f740ff6494c",
    (64, "hard", 1): "a038a243baca68d9da944244",
    (128, "hard", 3): "85cc8e6fef41669531356a96",
    (256, "hard", 2): "60ae39f325a9cbb93d1afd6d",
}


def test_generated_pixels_are_pinned():
    """What a seed generates is part of the data's definition (GENERATOR_VERSION): a refactor, or a Pillow whose
    Lanczos rounds differently, must not change a pixel."""
    for (resolution, difficulty, count), expected in PINNED_PIXELS.items():
        params = pf.pathfinder_params(resolution, difficulty)
        digest = hashlib.sha256()
        for index in range(count):
            image, label = pf.generate_example(params, pf.example_rng(params, 0, index))
            digest.update(image.tobytes() + bytes([label]))
        assert digest.hexdigest()[:24] == expected, (resolution, difficulty)


# --------------------------------------------------------------------------------------------- PNG


def filtered_png(
    image: np.ndarray, filter_types, chunk_size: int | None = None, extra_chunk: bool = False
) -> bytes:
    """A PNG built here, independently of the library: row y uses filter filter_types[y % len]."""
    height, width = image.shape
    raw = image.astype(np.int64)
    rows = []
    for y in range(height):
        kind = filter_types[y % len(filter_types)]
        current = raw[y]
        left = np.concatenate([[0], current[:-1]])
        up = raw[y - 1] if y else np.zeros(width, np.int64)
        upper_left = np.concatenate([[0], up[:-1]])
        if kind == 0:
            predicted = np.zeros(width, np.int64)
        elif kind == 1:
            predicted = left
        elif kind == 2:
            predicted = up
        elif kind == 3:
            predicted = (left + up) // 2
        else:
            estimate = left + up - upper_left
            pa, pb, pc = np.abs(estimate - left), np.abs(estimate - up), np.abs(estimate - upper_left)
            predicted = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upper_left))
        rows.append(bytes([kind]) + ((current - predicted) % 256).astype(np.uint8).tobytes())
    data = zlib.compress(b"".join(rows))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    out = pf.PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if extra_chunk:
        out += chunk(b"tEXt", b"Software\x00hand-made")
    step = chunk_size or len(data)
    for start in range(0, len(data), step):
        out += chunk(b"IDAT", data[start : start + step])
    return out + chunk(b"IEND", b"")


def test_png_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    for shape in ((32, 32), (1, 5), (7, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        path = str(tmp_path / "a.png")
        pf.write_png(path, image)
        np.testing.assert_array_equal(pf.read_png(path), image)
        # an 8-bit grayscale, non-interlaced PNG (Pillow picks the row filters)
        content = pf.encode_png(image)
        assert content.startswith(pf.PNG_SIGNATURE + struct.pack(">I", 13))
        assert content[12:29] == b"IHDR" + struct.pack(">IIBBBBB", shape[1], shape[0], 8, 0, 0, 0, 0)
        assert content.endswith(b"\0\0\0\0IEND" + struct.pack(">I", zlib.crc32(b"IEND")))
    with pytest.raises(ValueError, match="uint8"):
        pf.encode_png(np.zeros((4, 4), np.int32))


@pytest.mark.parametrize("filter_types", [[1], [2], [3], [4], [0, 1, 2, 3, 4], [4, 3, 2, 1]])
def test_png_reader_undoes_every_filter_type(filter_types):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (12, 9), dtype=np.uint8)
    image[3:6] = 255  # runs and extremes exercise the wrap-around
    decoded = pf.decode_png(filtered_png(image, filter_types, chunk_size=17, extra_chunk=True))
    np.testing.assert_array_equal(decoded, image)


def test_png_pixel_data_ending_early_or_late_are_refused():
    """A complete zlib stream holding 4 of 6 rows (Pillow alone would return the last two as zeros), and one
    holding 8 rows, are refused, naming the file."""
    image = np.arange(30, dtype=np.uint8).reshape(6, 5)
    header = struct.pack(">IIBBBBB", 5, 6, 8, 0, 0, 0, 0)

    def with_rows(count):
        rows = b"".join(b"\0" + np.resize(image, (count, 5))[y].tobytes() for y in range(count))
        chunks = [(b"IHDR", header), (b"IDAT", zlib.compress(rows)), (b"IEND", b"")]
        return pf.PNG_SIGNATURE + b"".join(
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
            for kind, body in chunks
        )

    np.testing.assert_array_equal(pf.decode_png(with_rows(6), "x.png"), image)
    with pytest.raises(LRADataError, match=r"x\.png: truncated PNG: 24 bytes of pixel data, expected 36"):
        pf.decode_png(with_rows(4), "x.png")
    with pytest.raises(LRADataError, match=r"x\.png: corrupt PNG: more compressed pixel data than the 5x6 header"):
        pf.decode_png(with_rows(8), "x.png")


def test_png_reader_rejects_bad_files_naming_them():
    good = filtered_png(np.arange(64, dtype=np.uint8).reshape(8, 8), [4])
    for cut in (len(good) - 5, len(good) - 12, 40, 20):
        with pytest.raises(LRADataError, match=r"x\.png: .*truncated"):
            pf.decode_png(good[:cut], "x.png")
    with pytest.raises(LRADataError, match="not a PNG"):
        pf.decode_png(b"GIF89a....", "x.png")
    corrupt = bytearray(good)
    corrupt[40] ^= 0xFF
    with pytest.raises(LRADataError, match="CRC"):
        pf.decode_png(bytes(corrupt), "x.png")

    def png_with_header(bit_depth, color_type):
        body = struct.pack(">IIBBBBB", 4, 4, bit_depth, color_type, 0, 0, 0)
        ihdr = struct.pack(">I", 13) + b"IHDR" + body + struct.pack(">I", zlib.crc32(b"IHDR" + body))
        return pf.PNG_SIGNATURE + ihdr

    for bit_depth, color_type in ((8, 2), (16, 0), (8, 6), (4, 0)):
        with pytest.raises(LRADataError, match="unsupported PNG format.*expected 8-bit grayscale"):
            pf.decode_png(png_with_header(bit_depth, color_type), "x.png")


# ------------------------------------------------------------------------------ files, reader, cache


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, params32):
    """30 generated images at 32 (hard) in the official layout, batches of 8, one worker."""
    root = str(tmp_path_factory.mktemp("pf"))
    labels = pf.write_pathfinder_dataset(root, params32, 30, seed=9, num_workers=1, images_per_batch=8)
    return root, labels


def test_written_layout_and_metadata_rows(small_dataset, params32):
    root, labels = small_dataset
    dataset_dir = os.path.join(root, "curv_contour_length_14")
    assert sorted(os.listdir(os.path.join(dataset_dir, "metadata"))) == ["0.npy", "1.npy", "2.npy", "3.npy"]
    with open(os.path.join(dataset_dir, "metadata", "1.npy")) as handle:
        lines = handle.read().split("\n")[:-1]  # LRA's reading
    assert len(lines) == 8
    fields = lines[2].split(" ")
    assert fields[:3] == ["imgs/1", "sample_2.png", "2"] and int(fields[3]) == labels[10]
    assert fields[4:] == [
        "1.0",
        "14",
        "4",
        "2",
        "0.5",
        "1",
        "1",
    ]  # continuity, lengths, paddle, margin, contrasts
    assert os.path.isfile(os.path.join(dataset_dir, "imgs", "3", "sample_5.png"))  # example 29
    assert not os.path.exists(os.path.join(dataset_dir, "imgs", "3", "sample_6.png"))


def test_reader_returns_exactly_the_generated_examples(small_dataset, params32):
    root, labels = small_dataset
    inputs, read_labels = pf.read_pathfinder_examples(os.path.join(root, "curv_contour_length_14"), RES)
    np.testing.assert_array_equal(read_labels, labels)
    assert inputs.dtype == np.uint8 and inputs.shape == (30, RES * RES)
    for i in (0, 9, 29):
        image, label = pf.generate_example(params32, pf.example_rng(params32, 9, i))
        np.testing.assert_array_equal(inputs[i], image.reshape(-1))  # row-major flattening
        assert label == labels[i]


def test_files_do_not_depend_on_workers_or_batching(tmp_path, small_dataset, params32):
    root, _ = small_dataset
    other = str(tmp_path / "two_workers")
    pf.write_pathfinder_dataset(other, params32, 30, seed=9, num_workers=2, images_per_batch=8)
    for batch in range(4):
        for name in os.listdir(os.path.join(root, "curv_contour_length_14", "imgs", str(batch))):
            relative = os.path.join("curv_contour_length_14", "imgs", str(batch), name)
            with (
                open(os.path.join(root, relative), "rb") as a,
                open(os.path.join(other, relative), "rb") as b,
            ):
                assert a.read() == b.read()
    regrouped = str(tmp_path / "regrouped")
    pf.write_pathfinder_dataset(regrouped, params32, 30, seed=9, num_workers=1, images_per_batch=7)
    first = pf.read_pathfinder_examples(os.path.join(root, "curv_contour_length_14"), RES)
    second = pf.read_pathfinder_examples(os.path.join(regrouped, "curv_contour_length_14"), RES)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def copy_dataset(source_root: str, target: str) -> str:
    shutil.copytree(
        os.path.join(source_root, "curv_contour_length_14"), os.path.join(target, "curv_contour_length_14")
    )
    return os.path.join(target, "curv_contour_length_14")


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("imgs/0 sample_0.png 0", ">= 4 space-separated fields"),
        ("imgs/0 sample_0.png 0 2 1.0", "label .* must be 0 or 1"),
        ("pics/0 sample_0.png 0 1 1.0", "imgs/<batch>"),
        ("", ">= 4"),
    ],
)
def test_malformed_metadata_rows_name_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "0.npy"
    path.write_text("imgs/0 sample_1.png 1 0 1.0\n" + line + "\nimgs/0 sample_2.png 2 1\n")
    with pytest.raises(LRADataError, match=rf"0\.npy, line 2: .*{fragment}"):
        pf.read_metadata(str(path))


def test_metadata_reader_accepts_a_binary_npy_and_a_missing_final_newline(tmp_path):
    rows = np.array(
        [["imgs/0", "sample_0.png", "0", "1", "1.8"], ["imgs/0", "sample_1.png", "1", "0", "1.8"]]
    )
    np.save(str(tmp_path / "b.npy"), rows)
    assert pf.read_metadata(str(tmp_path / "b.npy")) == [
        ("imgs/0", "sample_0.png", 1),
        ("imgs/0", "sample_1.png", 0),
    ]
    (tmp_path / "t.npy").write_text("imgs/3 sample_0.png 0 1\nimgs/3 sample_1.png 1 0")
    assert [row[2] for row in pf.read_metadata(str(tmp_path / "t.npy"))] == [1, 0]


def test_reader_errors_name_the_image_file(tmp_path, small_dataset):
    root, _ = small_dataset
    dataset_dir = copy_dataset(root, str(tmp_path / "truncated"))
    victim = os.path.join(dataset_dir, "imgs", "1", "sample_3.png")
    with open(victim, "rb") as handle:
        data = handle.read()
    with open(victim, "wb") as handle:
        handle.write(data[: len(data) // 2])
    with pytest.raises(LRADataError, match=r"imgs/1/sample_3\.png: truncated PNG"):
        pf.read_pathfinder_examples(dataset_dir, RES)
    pf.write_png(victim, np.full((16, 32), 9, np.uint8))
    with pytest.raises(LRADataError, match=r"sample_3\.png: image is 16x32, expected 32x32"):
        pf.read_pathfinder_examples(dataset_dir, RES)
    os.unlink(victim)
    with pytest.raises(LRADataError, match=r"sample_3\.png: cannot read"):
        pf.read_pathfinder_examples(dataset_dir, RES)
    with pytest.raises(LRADataError, match="not found"):
        pf.load_pathfinder(str(tmp_path / "nowhere"), RES, "hard")


def test_empty_and_black_images_are_skipped_with_a_warning(tmp_path, small_dataset):
    root, labels = small_dataset
    dataset_dir = copy_dataset(root, str(tmp_path / "blanks"))
    open(os.path.join(dataset_dir, "imgs", "0", "sample_2.png"), "wb").close()  # example 2: empty file
    pf.write_png(os.path.join(dataset_dir, "imgs", "2", "sample_0.png"), np.zeros((RES, RES), np.uint8))  # 16
    with pytest.warns(UserWarning, match="skipped 2 of 30"):
        inputs, read_labels = pf.read_pathfinder_examples(dataset_dir, RES)
    kept = [i for i in range(30) if i not in (2, 16)]
    np.testing.assert_array_equal(read_labels, labels[kept])
    full, _ = pf.read_pathfinder_examples(os.path.join(root, "curv_contour_length_14"), RES)
    np.testing.assert_array_equal(inputs, full[kept])
    with pytest.warns(UserWarning, match="skipped 2"):
        splits = pf.load_pathfinder(str(tmp_path / "blanks"), RES, "hard", cache_dir=str(tmp_path / "cache"))
    assert [len(splits[name]) for name in pf.SPLITS] == [
        22,
        3,
        3,
    ]  # floor(.8 * 28), floor(.9 * 28) - 22, rest
    np.testing.assert_array_equal(np.concatenate([splits[n].inputs for n in pf.SPLITS]), inputs)


def test_memmap_cache_equals_the_direct_read_and_is_reused(tmp_path, small_dataset, monkeypatch):
    root, labels = small_dataset
    dataset_dir = copy_dataset(root, str(tmp_path / "data"))
    direct, _ = pf.read_pathfinder_examples(dataset_dir, RES)
    monkeypatch.setattr(pf.reader, "_block_rows", lambda resolution: 7)  # several blocks, decoded by 2 workers
    splits = pf.load_pathfinder(
        str(tmp_path / "data"), RES, "hard", cache_dir=str(tmp_path / "cache"), num_workers=2
    )
    assert [len(splits[name]) for name in pf.SPLITS] == [24, 3, 3]
    for name in pf.SPLITS:
        assert splits[name].inputs.dtype == np.uint8 and isinstance(splits[name].inputs, np.memmap)
        assert splits[name].labels.dtype == np.int32
    np.testing.assert_array_equal(np.concatenate([splits[n].inputs for n in pf.SPLITS]), direct)
    np.testing.assert_array_equal(np.concatenate([splits[n].labels for n in pf.SPLITS]), labels)
    (cache_path,) = [p for p in os.listdir(tmp_path / "cache") if not p.startswith(".")]
    with open(tmp_path / "cache" / cache_path / "info.json") as handle:
        assert json.load(handle)["num_examples"] == 30

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(pf.dataset, "build_cache", no_rebuild)
    again = pf.load_pathfinder(str(tmp_path / "data"), RES, "hard", cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(again["val"].inputs, splits["val"].inputs)
    # Touching a metadata file invalidates the cache.
    metadata = os.path.join(dataset_dir, "metadata", "0.npy")
    stat = os.stat(metadata)
    os.utime(metadata, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="reused"):
        pf.load_pathfinder(str(tmp_path / "data"), RES, "hard", cache_dir=str(tmp_path / "cache"))
    uncached = pf.load_pathfinder(str(tmp_path / "data"), RES, "hard", use_cache=False)
    np.testing.assert_array_equal(uncached["train"].inputs, direct[:24])


def test_split_positions_follow_lra_percent_slices():
    assert pf.split_positions(200_000) == {
        "train": (0, 160_000),
        "val": (160_000, 180_000),
        "test": (180_000, 200_000),
    }
    assert pf.split_positions(199_999) == {
        "train": (0, 159_999),
        "val": (159_999, 179_999),
        "test": (179_999, 199_999),
    }


def test_ensure_generated_writes_once_and_loads(tmp_path, monkeypatch):
    root = pf.ensure_generated_pathfinder(str(tmp_path), 32, "easy", 10, seed=1, num_workers=1)
    assert os.path.basename(root).startswith("pathfinder32-")
    assert os.path.isdir(os.path.join(root, "curv_baseline", "imgs", "0"))
    with open(os.path.join(root, "params.json")) as handle:
        assert json.load(handle)["params"]["contour_length"] == 6
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []  # no temporary left behind
    monkeypatch.setattr(pf.dataset, "write_pathfinder_dataset", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert pf.ensure_generated_pathfinder(str(tmp_path), 32, "easy", 10, seed=1) == root
    splits = pf.load_pathfinder(root, 32, "easy")  # cache inside the generated tree
    assert [len(splits[name]) for name in pf.SPLITS] == [8, 1, 1]
    assert get_task("pathfinder").seq_len == splits["train"].inputs.shape[1]


def test_example_grid_and_command_line(tmp_path, capsys, monkeypatch):
    grid = pf.example_grid(resolutions=(32,), columns=2, tile=64, gutter=2)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 64 + 2, 12 + 2 * (2 + 64))
    assert (grid[:64, :12] == 255).all() and (grid[66:, :12] == 48).all()  # label bars: 1 on top, then 0
    assert pf.main(["--output_dir", str(tmp_path / "cli"), "--num_examples", "3", "--num_workers", "1"]) == 0
    assert "3 images" in capsys.readouterr().out
    assert len(pf.read_index(str(tmp_path / "cli" / "curv_contour_length_14"))[0]) == 3
    monkeypatch.setattr(pf.cli, "example_grid", lambda **kwargs: grid)
    path = str(tmp_path / "docs" / "grid.png")
    assert pf.main(["--grid", path]) == 0
    np.testing.assert_array_equal(pf.read_png(path), grid)


# ------------------------------------------------------------------------ uint8 splits and batching


def pixel_split(num_examples: int) -> Split:
    inputs = (np.arange(num_examples * 4).reshape(num_examples, 4) * 37 % 256).astype(np.uint8)
    return Split(inputs=inputs, labels=(np.arange(num_examples) % 2).astype(np.int32), name="train")


def test_split_accepts_uint8_inputs_but_not_other_types():
    assert len(pixel_split(5)) == 5
    for dtype in (np.int64, np.float32, np.int8):
        with pytest.raises(ValueError, match="int32 or uint8"):
            Split(inputs=np.zeros((3, 4), dtype), labels=np.zeros(3, np.int32), name="x")


def test_batches_of_uint8_splits_are_int32_with_the_same_values(tmp_path):
    split = pixel_split(10)
    path = str(tmp_path / "pixels.npy")
    np.save(path, split.inputs)
    mapped = Split(inputs=np.load(path, mmap_mode="r"), labels=split.labels, name="train")
    schedule = BatchSchedule(10, 4, seed=0)
    for step in range(3):
        batch = schedule.batch(mapped, step)
        indices = schedule.local_indices(step)
        assert batch["inputs"].dtype == np.int32 and type(batch["inputs"]) is np.ndarray
        np.testing.assert_array_equal(batch["inputs"], split.inputs[indices].astype(np.int32))
    batches = list(eval_batches(mapped, 4))
    assert all(b["inputs"].dtype == np.int32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["inputs"] for b in batches])[:10], split.inputs)
    assert (np.concatenate([b["inputs"] for b in batches]) >= 0).all()  # 255 stays 255, no sign wrap
    assert np.concatenate([b["inputs"] for b in batches]).max() == split.inputs.max()


# ------------------------------------------------------------------------------------ progress bar


def record_updates(monkeypatch, module):
    """Wraps `module.progress_bar` so that every bar's update(n) calls are recorded, in order."""
    updates: list[int] = []
    real = module.progress_bar

    def recording(*args, **kwargs):
        bar = real(*args, **kwargs)
        update = bar.update

        def recorded(n=1):
            updates.append(n)
            return update(n)

        bar.update = recorded
        return bar

    monkeypatch.setattr(module, "progress_bar", recording)
    return updates


def test_generation_reports_progress_on_stderr_as_parts_complete(tmp_path, small_dataset, params32, capsys,
                                                                monkeypatch):
    root, labels = small_dataset
    updates = record_updates(monkeypatch, pf.dataset)
    monkeypatch.setattr(pf.dataset, "IMAGES_PER_TASK", 3)  # batches of 8 in parts of 3, 3, 2: assembled in order
    other = str(tmp_path / "parts")
    capsys.readouterr()
    new_labels = pf.write_pathfinder_dataset(other, params32, 30, seed=9, num_workers=2, images_per_batch=8)
    err = capsys.readouterr().err
    assert "Pathfinder-32 curv_contour_length_14" in err and "30/30" in err and "img/s" in err, err
    assert sorted(updates) == sorted([3, 3, 2] * 3 + [3, 3]) and sum(updates) == 30  # one update per part
    np.testing.assert_array_equal(new_labels, labels)
    for relative in ["metadata/0.npy", "metadata/3.npy", "imgs/1/sample_7.png", "imgs/3/sample_5.png"]:
        with (open(os.path.join(root, "curv_contour_length_14", relative), "rb") as a,
              open(os.path.join(other, "curv_contour_length_14", relative), "rb") as b):
            assert a.read() == b.read(), relative
    pf.write_pathfinder_dataset(str(tmp_path / "quiet"), params32, 4, seed=9, num_workers=1, progress=False)
    assert capsys.readouterr().err == ""


def test_ensure_generated_and_the_command_line_show_progress_with_the_total(tmp_path, capsys):
    capsys.readouterr()
    root = pf.ensure_generated_pathfinder(str(tmp_path / "cache"), 32, "easy", 12, seed=1, num_workers=2)
    assert "12/12" in capsys.readouterr().err
    assert pf.ensure_generated_pathfinder(str(tmp_path / "cache"), 32, "easy", 12, seed=1) == root
    assert capsys.readouterr().err == ""  # already generated: no bar
    assert pf.main(["--output_dir", str(tmp_path / "cli"), "--num_examples", "7", "--num_workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "7 images" in captured.out and "7/7" in captured.err and "7/7" not in captured.out
