#!/usr/bin/env python
"""Rotation robustness: GMRUNet against dense UNets on rotated scans.

Same as ``gmrseg benchmark rotation``; run with ``--help`` for the options.
Example (about 30 minutes on 2 CPU cores)::

    python benchmarks/rotation_robustness.py --out rotation_benchmark
"""

import sys

from gmrseg.benchmarking.rotation import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
