"""python -m lra.pathfinder: generate Pathfinder in the official layout, or draw the example grid (cli.py)."""

import sys

from lra.pathfinder.cli import main

if __name__ == "__main__":
    sys.exit(main())
