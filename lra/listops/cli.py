"""The ListOps command line (`python -m lra.listops`): generate a dataset and write the official files.

    python -m lra.listops --output_dir=/tmp/listops --num_train_samples=96000 --seed=0
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lra.listops.generate import generate_listops
from lra.listops.tsv import SPLITS, split_path, write_dataset


def main(argv: Sequence[str] | None = None) -> int:
    """Generate ListOps files in the official format; flags mirror LRA's `listops.py` (plus seed/workers)."""
    parser = argparse.ArgumentParser(prog="python -m lra.listops", description=main.__doc__)
    parser.add_argument("--output_dir", required=True, help="directory for <task>_{train,val,test}.tsv")
    parser.add_argument("--task", default="basic", help="file name prefix")
    parser.add_argument("--num_train_samples", "--num_train", dest="num_train", type=int, default=96000)
    parser.add_argument("--num_valid_samples", "--num_val", dest="num_val", type=int, default=2000)
    parser.add_argument("--num_test_samples", "--num_test", dest="num_test", type=int, default=2000)
    parser.add_argument("--max_depth", type=int, default=10)
    parser.add_argument("--max_args", type=int, default=10)
    parser.add_argument("--min_length", type=int, default=500, help="keep trees with min_length < length")
    parser.add_argument("--max_length", type=int, default=2000, help="keep trees with length < max_length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=None, help="default: all available CPUs")
    args = parser.parse_args(argv)
    splits = generate_listops(
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        min_length=args.min_length,
        max_length=args.max_length,
        max_depth=args.max_depth,
        max_args=args.max_args,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    write_dataset(args.output_dir, splits, task=args.task)
    for split in SPLITS:
        print(f"{split_path(args.output_dir, split, args.task)}: {len(splits[split])} rows")
    return 0

