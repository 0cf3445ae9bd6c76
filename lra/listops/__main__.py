"""python -m lra.listops: generate ListOps in the official format (cli.py)."""

import sys

from lra.listops.cli import main

if __name__ == "__main__":
    sys.exit(main())
