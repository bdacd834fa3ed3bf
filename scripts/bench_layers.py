"""Per-layer CPU benchmark (see :mod:`tvm_winograd.bench`); same as ``tvm-winograd bench``.

    python scripts/bench_layers.py --layout NHWC --layers 'vgg_conv2_2,resnet_*' --trials 32 --out-md bench.md
"""

import sys

from tvm_winograd.bench import main

if __name__ == "__main__":
    sys.exit(main())
