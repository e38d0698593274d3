"""Prove every CUDA path of conformer-bench on one GPU in under five minutes: ``make gpu-check``.

Runs from the source tree (no install needed): ``python3 scripts/gpu_check.py [--output-dir DIR]``.
On a machine without CUDA it exits 2 at once with one line saying so.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conformer_bench.gpu_check.main import main

if __name__ == "__main__":
    sys.exit(main())
