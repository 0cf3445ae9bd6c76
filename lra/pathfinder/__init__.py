"""Pathfinder and Path-X: the generator, the official file layout and its reader, PNG files, a memmap cache.

An example is a grayscale image with two target "snakes" (curvy dashed contours made of short paddles),
distractor snakes, and two circular markers; label 1 means both markers sit on the two ends of ONE target snake
(docs/lra_data.md section 5). Tokens are the pixels 0..255 (vocab 256), row-major, never padded. One module per job:

  generate.py  parameters per resolution and difficulty (`pathfinder_params`), the board and snakes,
               `generate_example` and its random stream `example_rng` ([PF] snakes2.py, with the deviations
               and the difficulty reading its docstring lists; cost per image)
  draw.py      raster helpers: paddles, dilation, markers, Lanczos resampling (Pillow)
  png.py       8-bit grayscale PNG files (Pillow), with the checks of hostile files ahead of decoding
  reader.py    the official layout (docs/lra_data.md section 3.5): metadata files, the index of images,
               reading the images (skipping empty or all-black ones with a warning)
  cache.py     the memory-mapped uint8 array cache of a difficulty
  dataset.py   `load_pathfinder` (LRA's positional 80/10/10 split, through the cache), writing generated
               datasets in the official layout (`write_pathfinder_dataset`, `ensure_generated_pathfinder`)
  cli.py       `python -m lra.pathfinder` and the example grid of the docs

Everything other code uses is re-exported here: `from lra import pathfinder as pf; pf.load_pathfinder(...)`.

Command line:
    python -m lra.pathfinder --output_dir=/tmp/pf --resolution=32 --difficulty=hard --num_examples=2000
    python -m lra.pathfinder --grid=docs/pathfinder_examples.png
"""

from lra.pathfinder.cache import CACHE_INFO_MAX_BYTES, CACHE_VERSION, build_cache
from lra.pathfinder.cli import example_grid, main
from lra.pathfinder.dataset import (
    IMAGES_PER_BATCH,
    IMAGES_PER_TASK,
    SPLITS,
    VOCAB_SIZE,
    ensure_generated_pathfinder,
    load_pathfinder,
    split_positions,
    write_pathfinder_dataset,
)
from lra.pathfinder.generate import (
    DIFFICULTIES,
    FREE_LEVEL,
    GENERATOR_VERSION,
    MAX_TARGET_ATTEMPTS,
    OVERLAP_LIMIT,
    RESOLUTIONS,
    PathfinderParams,
    difficulty_dir,
    example_rng,
    generate_example,
    pathfinder_params,
)
from lra.pathfinder.png import (
    PNG_FILE_MAX_BYTES,
    PNG_MAX_PIXELS,
    PNG_MAX_SIDE,
    PNG_SIGNATURE,
    decode_png,
    encode_png,
    png_max_bytes,
    read_png,
    write_png,
)
from lra.pathfinder.reader import (
    METADATA_MAX_BYTES,
    METADATA_MAX_LINE,
    find_dataset_dir,
    metadata_files,
    metadata_row,
    read_index,
    read_metadata,
    read_pathfinder_examples,
)

__all__ = [
    "CACHE_INFO_MAX_BYTES",
    "CACHE_VERSION",
    "DIFFICULTIES",
    "FREE_LEVEL",
    "GENERATOR_VERSION",
    "IMAGES_PER_BATCH",
    "IMAGES_PER_TASK",
    "MAX_TARGET_ATTEMPTS",
    "METADATA_MAX_BYTES",
    "METADATA_MAX_LINE",
    "OVERLAP_LIMIT",
    "PNG_FILE_MAX_BYTES",
    "PNG_MAX_PIXELS",
    "PNG_MAX_SIDE",
    "PNG_SIGNATURE",
    "RESOLUTIONS",
    "SPLITS",
    "VOCAB_SIZE",
    "PathfinderParams",
    "build_cache",
    "decode_png",
    "difficulty_dir",
    "encode_png",
    "ensure_generated_pathfinder",
    "example_grid",
    "example_rng",
    "find_dataset_dir",
    "generate_example",
    "load_pathfinder",
    "main",
    "metadata_files",
    "metadata_row",
    "pathfinder_params",
    "png_max_bytes",
    "read_index",
    "read_metadata",
    "read_pathfinder_examples",
    "read_png",
    "split_positions",
    "write_pathfinder_dataset",
    "write_png",
]
