"""``python -m tvm_winograd.bench.worker RECIPE_JSON``: one timed block of one competitor in a fresh
process (the benchmarks' ``--isolate`` mode); prints one JSON line."""

import json
import sys

from .peers import worker_main

if __name__ == "__main__":
    print(json.dumps(worker_main(sys.argv[1])))
