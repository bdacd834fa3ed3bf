"""Benchmarks: one harness (:mod:`.harness`: alternating blocks, self-checks), the machine probe
(:mod:`.probe`), the Winograd roofline (:mod:`.roofline`), the competitors (:mod:`.peers`), and the
layer (:mod:`.layers`, ``tvm-winograd bench``) and whole-model (:mod:`.models`,
``scripts/bench_models.py``) benchmarks built on them."""

from .harness import BLOCK_GAP_S
from .layers import add_bench_arguments, main, run_bench

__all__ = ["BLOCK_GAP_S", "add_bench_arguments", "run_bench", "main"]
