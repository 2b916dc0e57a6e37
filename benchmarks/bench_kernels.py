#!/usr/bin/env python3
"""The kernel benchmark: the same as ``pyengine bench kernels`` (see benchmarks/README.md).

    python benchmarks/bench_kernels.py --types Q4_K,Q6_K --shapes 4096x4096 --batch 1 --plot k.png
"""
from __future__ import annotations

import sys

from pyengine.bench import main

if __name__ == "__main__":
    sys.exit(main(["kernels", *sys.argv[1:]]))
