"""One benchmark session: what every report of this project does around its own measurements.

``with bench_session(threads, "layers") as session:`` sizes TVM's pool, checks the CPU affinity, probes
the machine, calibrates onnxruntime on VGG conv3_2 against the probed peak, and measures the other
load while the body times its competitors; on exit it re-checks the affinity and the load.  Then
``session.meta(...)`` is the report's metadata (probe, self-checks, command) and
:func:`write_report` writes what was asked for.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .harness import LoadMonitor, Reliability, best_of_groups
from .peers import conv_onnx, measure, peer_recipes, save_npz
from .probe import MachineProbe, probe_machine

__all__ = ["BenchSession", "bench_session", "calibrate_peer", "write_report"]


@dataclass
class BenchSession:
    threads: int
    probe: MachineProbe
    reliability: Reliability
    work: Path
    started: float = field(default_factory=time.perf_counter)
    wall_s: float = 0.0

    def meta(self, **settings) -> dict:
        """The report's metadata: ``settings`` plus threads, probe, self-checks, wall time, command."""
        return {**settings, "threads": self.threads, "probe": self.probe.as_dict(), "probe_md": self.probe.markdown(),
                "reliable": self.reliability.reliable, "problems": self.reliability.problems,
                "reliability_md": self.reliability.markdown(), "wall_s": self.wall_s, "command": command_line()}


def command_line() -> str:
    """The command as the user typed it (``tvm-winograd bench ...`` or ``python script ...``)."""
    if Path(sys.argv[0]).name == "tvm-winograd":
        return " ".join(["tvm-winograd"] + sys.argv[1:])
    return " ".join(["python"] + sys.argv)


def calibrate_peer(threads: int, work: Path, rounds: int = 5) -> float:
    """onnxruntime's effective GFLOP/s on VGG conv3_2 (NCHW, batch 1), the faster of its two
    configurations: the self-check that the peers run at their real speed in this process."""
    from ..tune.tasks import layer_spec

    spec = layer_spec("vgg_conv3_2", 1, "NCHW")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape).astype("float32")
    w = rng.standard_normal(spec.weight_shape).astype("float32")
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = work / "calibration.onnx"
    onnx_path.write_bytes(conv_onnx(x.shape, w, 1).SerializeToString())
    recipes = peer_recipes(str(onnx_path), save_npz(work / "calibration.npz", {"x": x}), threads,
                           skip=frozenset({"openvino", "torch"}))
    best = best_of_groups(measure(recipes, rounds))["onnxruntime"]
    return spec.flops / (best.median_ms * 1e6)


@contextlib.contextmanager
def bench_session(threads: int | None, name: str) -> Iterator[BenchSession]:
    """A benchmark session on ``threads`` threads (``None``: every core this process may use)."""
    from ..threads import allowed_cpus, configure_threads

    threads = threads or len(allowed_cpus())
    if threads < 1:
        raise ValueError(f"--threads {threads} must be at least 1")
    configure_threads(threads)
    reliability = Reliability()
    reliability.check_affinity()
    probe = probe_machine(threads)
    with tempfile.TemporaryDirectory(prefix=f"tvm-winograd-{name}-") as tmp:
        session = BenchSession(threads, probe, reliability, Path(tmp))
        reliability.check_peer(calibrate_peer(threads, session.work), probe.fma_gflops,
                               "onnxruntime on VGG conv3_2 (calibration)")
        with LoadMonitor() as load:
            yield session
    reliability.check_load(load)
    reliability.check_affinity()
    session.wall_s = time.perf_counter() - session.started


def write_report(md: str, result: dict, out_md: str | None, out_json: str | None) -> None:
    """Write the markdown report and the JSON results where asked."""
    if out_md:
        Path(out_md).write_text(md + "\n")
    if out_json:
        Path(out_json).write_text(json.dumps(result, indent=1, default=str) + "\n")
