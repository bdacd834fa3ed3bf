"""Per-stage profile of the Winograd layers (see :mod:`tvm_winograd.bench.stages`).

    python scripts/profile_stages.py --layers 'vgg_*,resnet_*' --out-md stages.md --out-json stages.json
"""

import sys

from tvm_winograd.bench.stages import main

if __name__ == "__main__":
    sys.exit(main())
