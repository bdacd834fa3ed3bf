"""Whole-model benchmark (see :mod:`tvm_winograd.bench.models`).

    python scripts/bench_models.py                                  # resnet18 resnet50 vgg16, batch 1
    python scripts/bench_models.py --batch 1 8 32 --png batch.png   # the batch sweep
"""

import sys

from tvm_winograd.bench.models import main

if __name__ == "__main__":
    sys.exit(main())
