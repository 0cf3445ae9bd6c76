"""The Pathfinder command line (`python -m lra.pathfinder`) and the example grid of the docs.

    python -m lra.pathfinder --output_dir=/tmp/pf --resolution=32 --difficulty=hard --num_examples=2000
    python -m lra.pathfinder --grid=docs/pathfinder_examples.png
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import numpy as np

from lra.pathfinder.dataset import write_pathfinder_dataset
from lra.pathfinder.generate import RESOLUTIONS, difficulty_dir, example_rng, generate_example, pathfinder_params
from lra.pathfinder.png import write_png


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
