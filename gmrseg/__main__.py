"""Entry point for ``python -m gmrseg`` (also used by ``torchrun -m gmrseg``)."""

import sys

from gmrseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
