"""Print the error table of Winograd F(m, 3), m = 2..8, in float32 and float16.

    python scripts/accuracy.py [--r 3] [--channels 64] [--size 32] [--json]

Errors are against float64 direct convolution on signed N(0, 1) data, normwise-relative:
max|y - y64| / max|y64| and mean|y - y64| / max|y64|.  The published column quotes Barabasz et al.
(their metric and data differ; it is a reference point, not the same experiment).
"""

from __future__ import annotations

import argparse
import json

from tvm_winograd.accuracy import accuracy_markdown
from tvm_winograd.accuracy_report import measure_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--r", type=int, default=3, help="kernel size (default 3)")
    parser.add_argument("--channels", type=int, default=64, help="input channels (default 64)")
    parser.add_argument("--size", type=int, default=32, help="input height = width (default 32)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args()
    ms = tuple(m for m in range(2, 9) if m + args.r - 1 <= 14)
    rows = measure_accuracy(ms=ms, r=args.r, shape=(1, args.channels, args.size, args.size))
    print(json.dumps(rows, indent=1) if args.json else accuracy_markdown(rows))


if __name__ == "__main__":
    main()
