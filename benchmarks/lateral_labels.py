#!/usr/bin/env python
"""Lateral labels: GMRUNet with left/right label pairs merged against unmerged.

Trains a small GMRUNet on synthetic scans with mirror-image kidneys, once with
``kidney_left`` / ``kidney_right`` merged into one class and split by side
after prediction (the default) and once with ``label_pairs: []``, and prints
the Dice of each label. Run with ``--help`` for the options.
"""

import sys

from gmrseg.benchmarking.lateral import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
