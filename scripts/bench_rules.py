"""Each default llvm rule and our direct conv on its roofline (see :mod:`tvm_winograd.bench.rules`).

    python scripts/bench_rules.py                              # every case
    python scripts/bench_rules.py --cases silu matmul_1024     # some
"""

import sys

from tvm_winograd.bench.rules import main

if __name__ == "__main__":
    sys.exit(main())
