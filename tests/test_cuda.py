"""The CUDA path without a GPU (DESIGN section 4): real cubins from nvcc, TVM's GPU verification, ptxas
resources, and the numerics of sampled schedules run serially on the CPU against float64.

The driver stand-in (:mod:`tvm_winograd.cuda.driver_stub`) is loaded into this process; the test of the
source-only fallback runs in a subprocess that never loads it.  Numerics are judged by the shared check of
:mod:`tvm_winograd.verify` (worst-case bound and random-rounding model of :mod:`tvm_winograd.accuracy`).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tvm

from tvm_winograd.compute import Epilogue, WinogradConfig, winograd_func
from tvm_winograd.targets import resolve_target
from tvm_winograd.workload import make_spec

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("gcc") is None,
                                reason="needs nvcc (CUDA toolkit) and gcc")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runtime():
    from tvm_winograd.cuda import ensure_cuda_runtime

    return ensure_cuda_runtime()


def test_driver_stand_in_loads_cuda_runtime_without_a_gpu(runtime):
    """TVM's CUDA runtime is loaded, and nothing pretends a GPU exists."""
    assert tvm.runtime.enabled("cuda")
    if runtime.driver == "system":
        pytest.skip("a real NVIDIA driver is installed: the stand-in is not used here")
    assert runtime.driver in ("stand-in", "nvidia-stub") and runtime.library
    assert not runtime.gpu_present and not tvm.cuda(0).exist


def test_rules_registered_for_cuda_and_gpu_keys():
    from tvm_winograd.contract import SCHEDULE_RULES
    from tvm_winograd.schedule import cuda as cuda_schedule

    cuda_schedule.space_generator()  # registers them (cuda-check and tuning generate spaces through it)
    for key in cuda_schedule.RULE_KEYS:
        for stage in ("data_pack", "bgemm", "inverse", "conv2d_winograd", "kernel_pack"):
            name = f"s_tir.meta_schedule.{key}.{SCHEDULE_RULES[stage]}"
            assert tvm.get_global_func(name, allow_missing=True) is not None, name


# --------------------------------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------------------------------

def test_parse_ptxas_report():
    from tvm_winograd.cuda.build import parse_ptxas

    log = textwrap.dedent("""\
        ptxas info    : 0 bytes gmem
        ptxas info    : Compiling entry function 'main_kernel_1' for 'sm_90'
        ptxas info    : Function properties for main_kernel_1
            16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
        ptxas info    : Used 96 registers, used 1 barriers, 12288 bytes smem, 400 bytes cmem[0]
        ptxas info    : Compiling entry function 'main_kernel' for 'sm_90'
        ptxas info    : Function properties for main_kernel
            0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        ptxas info    : Used 32 registers, used 0 barriers, 380 bytes cmem[0]
        """)
    source = ('extern "C" __global__ void __launch_bounds__(256) main_kernel_1(float* a) {}\n'
              'extern "C" __global__ void __launch_bounds__(128) main_kernel(float* a) {}\n')
    k1, k0 = parse_ptxas(log, source)
    assert (k1.name, k1.arch, k1.registers, k1.spill_stores, k1.spill_loads, k1.shared_bytes, k1.threads) == \
        ("main_kernel_1", "sm_90", 96, 8, 4, 12288, 256)
    assert (k0.name, k0.registers, k0.spills, k0.shared_bytes, k0.threads) == ("main_kernel", 32, 0, 0, 128)


def test_occupancy_estimate():
    """sm_80: 64K registers; 128 threads x 128 registers = 16K per block -> 4 blocks = 16 of 64 warps."""
    from tvm_winograd.cuda.build import KernelResources
    from tvm_winograd.cuda.verify import occupancy

    k = KernelResources("k", "sm_80", registers=128, spill_stores=0, spill_loads=0, shared_bytes=0,
                        stack_bytes=0, threads=128)
    assert occupancy(k, 80) == pytest.approx(16 / 64)
    small = KernelResources("k", "sm_80", 32, 0, 0, 48 * 1024, 0, threads=256)  # smem-bound: 164K / 49K = 3
    assert occupancy(small, 80) == pytest.approx(3 * 8 / 64)


def test_cuda_images_of_fatbin_and_bare_cubin():
    """Synthetic images: a fatbin with a PTX and an sm_90 ELF entry; a bare ELF cubin (ABI v8, sm_80)."""
    from tvm_winograd.cuda.build import CudaImage, cuda_images, require_cubin, SourceOnlyModuleError

    def elf(sm_flags: int, abi: int) -> bytes:
        ident = b"\x7fELF" + bytes([2, 1, 1, 0x41, abi]) + bytes(7)
        head = ident + struct.pack("<HHIQQQIHHHHHH", 2, 190, 1, 0, 0, 0, sm_flags, 64, 0, 0, 0, 0, 0)
        return head

    def entry(kind: int, sm: int, payload: bytes) -> bytes:
        return struct.pack("<HHIQII", kind, 0x101, 64, len(payload), 0, 0) + struct.pack("<I", 0) + \
            struct.pack("<I", sm) + bytes(32) + payload

    body = entry(1, 90, b"//ptx\0\0\0") + entry(2, 90, elf(0x5A00, 8))
    fatbin = struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body
    assert cuda_images(b"junk" + fatbin + b"tail") == [CudaImage("ptx", 90), CudaImage("cubin", 90)]
    assert cuda_images(elf(0x5000, 8)) == [CudaImage("cubin", 80)]
    assert cuda_images(elf(0x50, 7)) == [CudaImage("cubin", 80)]
    require_cubin(cuda_images(fatbin), "sm_90")
    with pytest.raises(SourceOnlyModuleError, match="no cubin for sm_80"):
        require_cubin(cuda_images(fatbin), "sm_80")
    with pytest.raises(SourceOnlyModuleError, match="CUDA source only"):
        require_cubin(cuda_images(b"extern \"C\" __global__ void main_kernel() {}"), "sm_80")


SMALL = make_spec((1, 8, 10, 10), (16, 8, 3, 3), padding=1)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_export_round_trip_holds_cubin(runtime, tmp_path, arch):
    """Default schedule -> nvcc -> export .so -> load: the library embeds a cubin for exactly ``arch``,
    the loaded module is a runnable CUDA module with our kernels, and ptxas reports no spills."""
    from tvm_winograd.cuda.build import build_cuda, export_cuda, file_cuda_images
    from tvm_winograd.cuda.verify import occupancy
    from tvm_winograd.schedule.cuda import schedule_cuda_default

    target = resolve_target(arch)
    func = schedule_cuda_default(winograd_func(SMALL, WinogradConfig(m=4), Epilogue(bias=True, relu=True)), target)
    built = build_cuda(func, target)
    sm = int(arch[3:])
    assert [(i.kind, i.sm) for i in built.images] == [("cubin", sm)]
    names = {k.name for k in built.kernels}
    assert len(names) == 3  # data_pack, bgemm, inverse+output
    assert built.arch.startswith(arch)  # the H100 tag targets sm_90a
    assert all(k.arch == built.arch and k.registers > 0 and k.spills == 0 for k in built.kernels)
    assert max(k.shared_bytes for k in built.kernels) > 0  # the bgemm stages its operands in shared memory
    assert all(0 < occupancy(k, sm) <= 1 for k in built.kernels)

    path = tmp_path / f"winograd_{arch}.so"
    images = export_cuda(built.module, path, arch)
    assert ("cubin", sm) in [(i.kind, i.sm) for i in images]
    assert file_cuda_images(path) == images
    lib = tvm.runtime.load_module(str(path))
    assert lib.implements_function("main")
    cuda_mods = [m for m in lib.imports if m.kind == "cuda"]
    assert len(cuda_mods) == 1 and cuda_mods[0].is_runnable()
    assert all(cuda_mods[0].implements_function(n) for n in names)


def test_source_only_fallback_is_refused(tmp_path):
    """Without the driver stand-in TVM silently builds a source-only module: our checks refuse it."""
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
        import tvm
        assert not tvm.runtime.enabled("cuda"), "this machine has a driver: no fallback to test"
        from tvm_winograd.compute import Epilogue, WinogradConfig, winograd_func
        from tvm_winograd.cuda.build import SourceOnlyModuleError, export_cuda, module_cuda_images
        from tvm_winograd.schedule.cuda import schedule_cuda_default
        from tvm_winograd.targets import resolve_target
        from tvm_winograd.workload import make_spec
        target = resolve_target("sm_80")
        spec = make_spec((1, 4, 6, 6), (4, 4, 3, 3), padding=1)
        func = schedule_cuda_default(winograd_func(spec, WinogradConfig(m=2)), target)
        with target:
            built = tvm.tirx.build(tvm.IRModule({{"main": func}}), target=target)
        assert module_cuda_images(built) == []
        try:
            export_cuda(built, {str(tmp_path / "x.so")!r}, "sm_80")
        except SourceOnlyModuleError as err:
            print("REFUSED:", err)
            sys.exit(0)
        sys.exit("exported a source-only module")
        """)
    if _system_driver():
        pytest.skip("a real NVIDIA driver is installed: TVM never falls back here")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "REFUSED: refusing to export a source-only CUDA module for sm_80" in proc.stdout


def _system_driver() -> bool:
    from tvm_winograd.cuda import ensure_cuda_runtime

    return ensure_cuda_runtime().driver == "system"


# --------------------------------------------------------------------------------------------------
# Sampled schedules: every one verified, compiled and numerically right
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "input_shape,weight_shape,layout,m,arch,samples",
    [
        ((1, 32, 14, 14), (32, 32, 3, 3), "NCHW", 4, "sm_80", 4),  # ResNet-like (256@14 scaled down)
        ((1, 28, 28, 16), (3, 3, 16, 24), "NHWC", 2, "sm_90", 3),  # VGG-like (conv3_x scaled down), NHWC
        ((1, 16, 12, 12), (16, 16, 3, 3), "NCHW", 4, "sm_86", 2),  # fp16 storage, fp32 accumulation
    ],
    ids=["resnet-like-nchw-sm80", "vgg-like-nhwc-sm90", "fp16-nchw-sm86"],
)
def test_sampled_schedules_pass_every_check(runtime, request, input_shape, weight_shape, layout, m, arch, samples):
    from tvm_winograd.cuda.check import cuda_check, format_checks, passed

    dtype = "float16" if "fp16" in request.node.callspec.id else "float32"
    spec = make_spec(input_shape, weight_shape, padding=1, layout=layout, dtype=dtype)
    rows = cuda_check(spec, arch, samples=samples, seed=0, m=m)
    table = format_checks(rows)
    # fp16 packs on sm_75+ also get the tensor-core bgemm space (checked in detail by the tensorcore tests)
    expected = ["default", "shared", "direct"] + (["tensorcore", "tensorcore_pipelined"] if dtype == "float16" else [])
    assert [r.space for r in rows] == expected, table
    assert passed(rows), table
    for row in rows:
        assert len(row.candidates) == row.requested
        for cand in row.candidates:
            assert cand.gpu_verified and cand.compiled and cand.numerics_ok, table
            assert f"cubin sm_{arch[3:]}" in cand.cubin
            assert cand.error_ratio is not None and cand.error_ratio <= 1.0
    # the samples are different schedules, not one schedule checked N times
    for row in rows[1:]:
        assert len({c.decisions for c in row.candidates}) == len(row.candidates), table
    assert rows[1].max_shared_bytes > 0 and rows[2].max_shared_bytes == 0, table
    for row in rows[3:]:
        assert all(c.tensor_core for c in row.candidates), table


# --------------------------------------------------------------------------------------------------
# Tensor-core bgemm (fp16 packs, fp32 accumulation)
# --------------------------------------------------------------------------------------------------

def test_tensorcore_space_only_for_fp16_on_tensor_core_archs():
    """fp32 operands never get the tensorcore space (no TF32), neither do fp16 layers whose packs are
    stored in fp32 (alpha > 6) nor targets older than sm_75; fp16 packs on sm_80 / sm_90 do."""
    from tvm.target import Target

    from tvm_winograd.cuda.check import design_spaces
    from tvm_winograd.schedule.cuda import bgemm_spaces
    from tvm_winograd.schedule.cuda.intrin import INTRIN_PREFIX, ensure_tensor_intrinsics
    from tvm_winograd.schedule.cuda.simt import BGEMM_SPACES
    from tvm_winograd.schedule.cuda.tensorcore import TENSORCORE_SPACES, tensorcore_ineligibility

    sm80, sm90 = resolve_target("sm_80"), resolve_target("sm_90")
    assert TENSORCORE_SPACES == ("tensorcore", "tensorcore_pipelined")
    assert bgemm_spaces(("float16", "float16"), sm80) == BGEMM_SPACES + TENSORCORE_SPACES
    assert bgemm_spaces("float16", sm90) == BGEMM_SPACES + TENSORCORE_SPACES
    assert bgemm_spaces(("float32", "float32"), sm90) == BGEMM_SPACES
    assert "TF32" in tensorcore_ineligibility("float32", sm90)
    assert "older than sm_75" in tensorcore_ineligibility("float16", Target({"kind": "cuda", "arch": "sm_70"}))
    assert tensorcore_ineligibility("float16", resolve_target("llvm")) is not None
    # our copies of TVM's wmma intrinsics never take TVM's own names (a later full import of
    # tvm.s_tir.tensor_intrin.cuda, as MetaSchedule's TuneContext does, would refuse to re-register them)
    group = ensure_tensor_intrinsics()
    assert sorted(group) == ["compute", "init", "load_a", "load_b", "store"]
    assert all(name.startswith(INTRIN_PREFIX + "wmma_") for name in group.values()), group

    fp32 = make_spec((1, 32, 14, 14), (32, 32, 3, 3), padding=1)
    fp16 = make_spec((1, 32, 14, 14), (32, 32, 3, 3), padding=1, dtype="float16")
    names = lambda spec, m, arch: [n for n, _ in design_spaces(winograd_func(spec, WinogradConfig(m=m)),  # noqa: E731
                                                                  resolve_target(arch))]
    assert names(fp32, 4, "sm_90") == ["shared", "direct"]
    assert names(fp16, 4, "sm_90") == ["shared", "direct", "tensorcore", "tensorcore_pipelined"]
    assert names(fp16, 6, "sm_80") == ["shared", "direct"]  # alpha = 8: packs stored in fp32


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize(
    "input_shape,weight_shape,layout,m",
    [
        ((1, 32, 14, 14), (32, 32, 3, 3), "NCHW", 4),  # ResNet-like: P = 16, C = K = 32 (no padding)
        ((1, 12, 12, 64), (3, 3, 64, 40), "NHWC", 4),  # VGG-like: P = 9 and K = 40 padded to 16 / 48
    ],
    ids=["resnet-like-nchw", "vgg-like-nhwc-padded"],
)
def test_tensorcore_sampled_schedules(runtime, input_shape, weight_shape, layout, m, arch):
    """Sampled tensorcore schedules of fp16 layers: GPU-verified, nvcc cubins for the arch whose CUDA
    source issues wmma::mma_sync, no spills, and the pre-tensorize program (see
    :mod:`tvm_winograd.cuda.check`) within the fp16-storage / fp32-accumulation error bound on the CPU."""
    from tvm_winograd.cuda.check import cuda_check, format_checks, passed

    spec = make_spec(input_shape, weight_shape, padding=1, layout=layout, dtype="float16")
    rows = cuda_check(spec, arch, samples=2, seed=0, m=m, include_default=False, spaces=["tensorcore"])
    rows += cuda_check(spec, arch, samples=1, seed=0, m=m, include_default=False, spaces=["tensorcore_pipelined"])
    table = format_checks(rows)
    assert [r.space for r in rows] == ["tensorcore", "tensorcore_pipelined"] and passed(rows), table
    assert len(rows[0].candidates) == 2 and len({c.decisions for c in rows[0].candidates}) == 2, table
    for cand in rows[0].candidates + rows[1].candidates:
        assert cand.tensor_core and cand.compiled and cand.gpu_verified, table
        assert f"cubin sm_{arch[3:]}" in cand.cubin and cand.spills == 0 and cand.registers > 0, table
        assert cand.shared_bytes > 0, table  # the fp16 operand tiles are staged in shared memory
        assert cand.numerics_ok and cand.error_ratio is not None and 0 < cand.error_ratio <= 1.0, table


def test_tensorcore_candidate_is_fully_tensorized_and_its_cpu_check_can_fail(runtime, tmp_path):
    """One tensorcore candidate: every wmma stage (fill, load a/b, mma_sync, store) is in the CUDA source;
    its trace (with the Tensorize steps) round-trips through MetaSchedule's JSON database, as tuning records do;
    the CPU program is the pre-``RewriteTensorize`` schedule with the wmma fragments (made global) and the
    annotated intrinsic blocks; it passes, and a one-constant change inside the accumulator fill block
    (the wmma_fill description: 0 -> 1) makes the check fail."""
    import re

    from tvm.s_tir import meta_schedule as ms

    from tvm_winograd.cuda.build import build_cuda
    from tvm_winograd.cuda.check import apply_postprocs_keep_pre_tensorize, design_spaces, sample_space
    from tvm_winograd.cuda.verify import check_numerics
    from tvm_winograd.schedule.cuda.context import postprocs_for
    from tvm_winograd.schedule.cuda.intrin import ensure_tensor_intrinsics_for_database

    spec = make_spec((1, 16, 6, 6), (16, 16, 3, 3), padding=1, dtype="float16")  # P = 9: padded to 16
    config = WinogradConfig(m=2)
    target = resolve_target("sm_80")
    func = winograd_func(spec, config)
    mod = tvm.IRModule({"main": func})
    space = dict(design_spaces(func, target))["tensorcore"]
    sch = sample_space(space, mod, 1)
    rejected, pre = apply_postprocs_keep_pre_tensorize(sch, target, postprocs_for(target, mod))
    assert rejected is None and pre is not None

    db = ms.database.JSONDatabase(work_dir=str(tmp_path))
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(mod), [1e-3], target, None))
    replayed = ms.database.JSONDatabase(work_dir=str(tmp_path)).query_schedule(mod, target, workload_name="main")
    assert "Tensorize" in {inst.kind.name for inst in sch.trace.insts}
    tvm.ir.assert_structural_equal(replayed.mod, sch.mod)
    # a fresh process must register the intrinsics before it can even open such a database
    assert ensure_tensor_intrinsics_for_database(tmp_path)
    assert not ensure_tensor_intrinsics_for_database(tmp_path / "missing")

    built = build_cuda(sch.mod["main"], target)
    source = built.source
    # the fp32 accumulator tiles go through dynamic shared memory: 16 x 16 x 4 bytes per stored fragment,
    # sized at launch (ptxas reports static shared memory only)
    dynamic = [k.dynamic_shared_bytes for k in built.kernels if k.dynamic_shared_bytes]
    assert len(dynamic) == 1 and dynamic[0] % 1024 == 0, built.kernels
    for op in ("wmma::fill_fragment", "wmma::load_matrix_sync", "wmma::mma_sync", "wmma::store_matrix_sync"):
        assert op in source, op

    text = pre.mod.script(show_meta=True)
    for intrin in ("wmma_fill_16x16x16_f32", "wmma_load_16x16x16_f16_a_shared", "wmma_load_16x16x16_f16_b_shared",
                   "wmma_sync_16x16x16_f16f16f32", "wmma_store_16x16x16_f32_shared_dyn"):
        assert f'"meta_schedule.auto_tensorize": "tvm_winograd_{intrin}"' in text, intrin
    assert 'scope="wmma.accumulator"' in text and 'scope="wmma.matrix_a"' in text
    assert "data_pack_reindex_pad_shared" in text  # pad_einsum: the 9 tiles padded to one 16-wide fragment
    assert check_numerics(pre.mod["main"], spec, config).ok

    fill = re.compile(r"(bgemm_reindex_pad_shared_dyn_wmma_accumulator\[[^\]]*\] = )T\.float32\(0\.0\)")
    wrong_text, n = fill.subn(r"\1T.float32(1.0)", text)
    assert n == 1, "the accumulator fill block was not found"
    wrong = tvm.script.from_source(wrong_text)["main"]
    result = check_numerics(wrong, spec, config)
    assert not result.ok and result.worst_ratio > 10


def test_tensorcore_tiles_are_mutable_knobs():
    """The search's tile-size mutator changes the tensorcore space's decisions (block / warp / fragment
    tiles, reduction split), and the mutated schedules replay and pass the CUDA postprocessors."""
    from tvm.s_tir import meta_schedule as ms

    from tvm_winograd.cuda.check import _decisions, design_spaces, sample_space
    from tvm_winograd.schedule.cuda.context import apply_postprocs, light_tune_context, postprocs_for

    spec = make_spec((1, 64, 14, 14), (64, 64, 3, 3), padding=1, dtype="float16")
    target = resolve_target("sm_80")
    func = winograd_func(spec, WinogradConfig(m=4))
    mod = tvm.IRModule({"main": func})
    sch = sample_space(dict(design_spaces(func, target))["tensorcore"], mod, 1)
    mutator = ms.mutator.MutateTileSize()
    mutator._initialize_with_tune_context(light_tune_context(mod, target))
    postprocs = postprocs_for(target, mod)
    accepted = set()
    for i in range(6):
        trace = mutator.apply(sch.trace)
        assert trace is not None
        mutated = tvm.s_tir.Schedule(mod, seed=i + 1)
        trace.apply_to_schedule(mutated, remove_postproc=True)
        if apply_postprocs(mutated, target, postprocs) is None:
            accepted.add(_decisions(mutated))
    accepted.discard(_decisions(sch))
    assert accepted, "no mutated tensorcore schedule passed the postprocessors"


def test_numerics_check_catches_a_wrong_program(runtime):
    """The CPU numerics check fails when the program does not compute the reference (ReLU applied
    by the schedule but not by the reference): the check can fail."""
    from tvm_winograd.cuda.verify import check_numerics
    from tvm_winograd.schedule.cuda import schedule_cuda_default

    config = WinogradConfig(m=2)
    func = schedule_cuda_default(winograd_func(SMALL, config, Epilogue(relu=True)), resolve_target("sm_80"))
    assert check_numerics(func, SMALL, config, Epilogue(relu=True)).ok
    wrong = check_numerics(func, SMALL, config, Epilogue())
    assert not wrong.ok and wrong.worst_ratio > 1e3


# --------------------------------------------------------------------------------------------------
# Tuning and benchmarks refuse without a GPU
# --------------------------------------------------------------------------------------------------

def test_tuning_for_cuda_refuses_without_gpu_or_rpc(runtime):
    from tvm_winograd.cuda.measure import NoGPUError, gpu_present, require_gpu_measurement
    from tvm_winograd.tune.measure import make_builder, make_runner

    if gpu_present():
        pytest.skip("a GPU is present")
    target = resolve_target("sm_80")
    with pytest.raises(NoGPUError, match=r"no GPU here and no RPC tracker.*--rpc-tracker HOST:PORT --rpc-key KEY"):
        require_gpu_measurement(target)
    with pytest.raises(NoGPUError):
        make_runner(target)
    assert require_gpu_measurement(target, "127.0.0.1:9190") == "rpc"
    assert require_gpu_measurement(resolve_target("llvm")) == "local"
    make_builder(target)  # building needs no GPU


def test_bench_cuda_exits_without_gpu():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_cuda.py"), "--layers", "resnet"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == 0:
        pytest.skip("a GPU is present: the benchmark ran")
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_weight_transform_default_schedule(runtime):
    """kernel_pack = G g G_T on the GPU schedule: compiles to a cubin, and run serially equals float64
    (bound: :func:`tvm_winograd.accuracy.weight_transform_bound`)."""
    import numpy as np

    from tvm_winograd.accuracy import weight_transform_bound
    from tvm_winograd.compute import weight_transform_func
    from tvm_winograd.cuda.build import build_cuda
    from tvm_winograd.cuda.verify import serial_cpu_func
    from tvm_winograd.reference import winograd_weight_transform
    from tvm_winograd.schedule.cuda import schedule_cuda_default
    from tvm_winograd.targets import host_target

    target = resolve_target("sm_80")
    func = schedule_cuda_default(weight_transform_func(SMALL, WinogradConfig(m=4)), target)
    built = build_cuda(func, target)
    assert [(i.kind, i.sm) for i in built.images] == [("cubin", 80)] and len(built.kernels) == 1
    cpu = tvm.tirx.build(tvm.IRModule({"main": serial_cpu_func(func)}), target=host_target())
    w = np.random.default_rng(1).standard_normal(SMALL.weight_shape).astype("float32")
    out = tvm.runtime.empty((6, 6, SMALL.in_channels, SMALL.out_channels), "float32", tvm.cpu(0))
    cpu["main"](tvm.runtime.tensor(w, tvm.cpu(0)), out)
    ref = winograd_weight_transform(w.astype("float64"), 4, "NCHW")
    bound = weight_transform_bound(w, 4, "NCHW")  # gamma_{r^2 + 3} |G| |g| |G_T| + the stored rounding
    err = np.abs(out.numpy() - ref)
    assert np.all(err <= bound) and err.max() > 0


def test_cpu_run_crash_is_reported_not_fatal():
    """A schedule that corrupts memory on the CPU (an out-of-bounds write) kills a forked child only;
    the check reports it (TVM 0.27's reverse_compute_at under a predicated thread loop did that to
    data_pack before its thread split was made perfect)."""
    from tvm_winograd.cuda.verify import CPUExecutionCrashed, _in_child

    assert _in_child(sum, [1, 2, 3]) == 6
    with pytest.raises(CPUExecutionCrashed, match="crashed \\(signal 6\\)"):
        _in_child(os.abort)
    with pytest.raises(RuntimeError, match="ValueError: bad"):
        _in_child(_raise_value_error)


def _raise_value_error():
    raise ValueError("bad")


def test_metaschedule_builder_ships_a_cubin(runtime):
    """``make_builder`` for CUDA builds in a worker process that has no GPU (the RPC case: measure on a
    remote GPU): the artifact it uploads embeds a real sm_90 cubin, never CUDA source."""
    from tvm.s_tir import meta_schedule as ms

    from tvm_winograd.cuda.build import file_cuda_images
    from tvm_winograd.schedule.cuda import schedule_cuda_default
    from tvm_winograd.tune.measure import make_builder

    target = resolve_target("sm_90")
    func = schedule_cuda_default(winograd_func(SMALL, WinogradConfig(m=2)), target)
    (result,) = make_builder(target, max_workers=1).build([ms.builder.BuilderInput(tvm.IRModule({"main": func}), target)])
    assert result.error_msg is None, result.error_msg
    assert [(i.kind, i.sm) for i in file_cuda_images(result.artifact_path)] == [("cubin", 90)]


@pytest.mark.parametrize("bug,m,dtype", [
    ("perturbed_entry", 4, "float32"),
    ("scaled_output", 4, "float16"),
    ("fp16_accumulation", 2, "float16"),
])
def test_numerics_check_rejects_injected_precision_bug(runtime, inject_transform_bug, bug, m, dtype):
    """The CPU emulation of the default CUDA schedule passes; with a precision bug the worst-case bound
    lets through (asserted: the failure is not the bound's), the shared check rejects it."""
    import dataclasses

    from tvm_winograd.cuda.verify import check_numerics
    from tvm_winograd.schedule.cuda import schedule_cuda_default

    spec = make_spec((1, 16, 10, 10), (16, 16, 3, 3), padding=1, dtype=dtype)
    config, target = WinogradConfig(m=m), resolve_target("sm_80")
    assert check_numerics(schedule_cuda_default(winograd_func(spec, config), target), spec, config).ok
    if bug == "fp16_accumulation":
        built = dataclasses.replace(config, acc_dtype="float16")
    else:
        built = config
        inject_transform_bug(bug)
    result = check_numerics(schedule_cuda_default(winograd_func(spec, built), target), spec, config)
    assert not result.ok and result.worst_ratio > 1.0, result
    assert "worst-case bound" not in result.reason, result


# --------------------------------------------------------------------------------------------------
# The rest of a model on CUDA: direct layers, every kernel of a whole model
# --------------------------------------------------------------------------------------------------

def test_cuda_check_covers_the_direct_layers_of_a_model(runtime):
    """tiny_mixed on sm_80 (the CUDA heuristic runs all of its layers direct): every conv becomes a
    ``direct`` row -- stride 2, 1x1, depthwise, dilated, 5x5 and the 3x3 layers -- and each passes GPU
    verification, an nvcc build with a cubin, and the serial CPU run against float64."""
    from tvm_winograd.cuda.check import cuda_check, passed
    from tvm_winograd.frontend import load_model
    from tvm_winograd.relax_pass import conv_workloads

    mod, _ = load_model("tiny_mixed")
    workloads = conv_workloads(mod, "sm_80", ineligible="tir")
    rows = cuda_check(workloads, "sm_80", samples=1)
    assert {r.space for r in rows} == {"direct"} and len(rows) == len({w.spec.key() for w in workloads}) == 8
    keys = " ".join(r.layer for r in rows)
    assert all(part in keys for part in ("_s2.2_", "_r1x1_", "_g32_", "_d3.3_", "_r5x5_"))
    assert passed(rows), [(r.layer, [c.error for c in r.candidates]) for r in rows]
    assert all(c.cubin.startswith("cubin sm_80") and c.numerics_ok for r in rows for c in r.candidates)


@pytest.mark.parametrize("shape, weight, kwargs", [
    ((1, 16, 9, 9), (16, 1, 3, 3), dict(padding=1, stride=2, groups=16)),      # depthwise, stride 2
    ((1, 8, 10, 10), (16, 2, 3, 3), dict(padding=2, dilation=2, groups=4)),    # grouped, dilated
])
def test_direct_numerics_check_rejects_fp16_accumulation(runtime, shape, weight, kwargs):
    """The CPU emulation of a direct layer's default CUDA schedule passes against float64 with the
    layer's own stride, dilation and groups; the same function accumulating in fp16 is rejected."""
    from tvm_winograd.compute import direct_func
    from tvm_winograd.cuda.verify import check_numerics
    from tvm_winograd.schedule.cuda import schedule_cuda_default

    spec, target, ep = make_spec(shape, weight, **kwargs), resolve_target("sm_80"), Epilogue(bias=True)
    assert check_numerics(schedule_cuda_default(direct_func(spec, ep), target), spec, None, ep).ok
    bad = check_numerics(schedule_cuda_default(direct_func(spec, ep, acc_dtype="float16"), target), spec, None, ep)
    assert not bad.ok and bad.worst_ratio > 1.0, bad


def test_resnet18_cuda_build_every_kernel_verified(runtime, tmp_path):
    """ResNet-18 compiled for sm_80 as ``compile --algo winograd`` does (the heuristic's choice aside): its
    13 3x3 stride-1 layers run Winograd, the 7 others our direct PrimFunc, every
    PrimFunc after the CUDA pipeline is bound to threads and passes TVM's GPU verification for the
    target's limits (which rejects a block of 2048 threads: the check can fail), and the library holds
    an sm_80 cubin."""
    from tvm import te
    from tvm_winograd.cuda.build import require_cubin
    from tvm_winograd.cuda.verify import verify_gpu
    from tvm_winograd.export import compile_model, export_library, prepare_model
    from tvm_winograd.frontend import load_model
    from tvm_winograd.pipeline import build_pipeline, cuda_build_env

    target = resolve_target("sm_80")
    mod, _ = load_model("resnet18")
    prepared, report = prepare_model(mod, target, tmp_path / "schedules", algo="winograd")
    assert sum(r.algorithm == "winograd" for r in report) == 13 and len(report) == 20

    def kernels(module):
        return {gv.name_hint: tvm.s_tir.Schedule(f.with_attr("global_symbol", "main"))
                for gv, f in module.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}

    with cuda_build_env(target):
        lowered = kernels(build_pipeline(target)(prepared))
    assert len(lowered) >= 19
    too_wide = tvm.s_tir.Schedule(te.create_prim_func([a := te.placeholder((4096,), name="a"),
                                                       te.compute((4096,), lambda i: a[i] * 2, name="b")]))
    block, thread = too_wide.split(too_wide.get_loops(too_wide.get_sblock("b"))[0], [None, 2048])
    too_wide.bind(block, "blockIdx.x")
    too_wide.bind(thread, "threadIdx.x")
    assert not verify_gpu(too_wide, target)
    for name, sch in lowered.items():
        assert "threadIdx" in sch.mod.script(), f"{name} is not bound to GPU threads"
        assert verify_gpu(sch, target), f"{name} fails GPU verification for sm_80"
    ex, _ = compile_model(mod, target, tmp_path / "schedules", algo="winograd")
    images = require_cubin(export_library(ex, tmp_path / "resnet18_cuda.so"), "sm_80")
    assert any(img.kind == "cubin" and img.sm == 80 for img in images)


@pytest.mark.parametrize("m", [2, 4])
def test_batched_nchw_layer_passes_every_check(runtime, m):
    """Batch 2, NCHW, 32 channels at 12x12: the default CUDA schedule and a sample of each design space
    pass GPU verification, nvcc and the serial CPU run (the output's fused thread loop once put K
    between the batch and the tiles; the inverse's tile index was then not quasi-affine and every
    schedule of a batched NCHW layer was rejected, the default included)."""
    from tvm_winograd.cuda.check import cuda_check, passed

    spec = make_spec((2, 32, 12, 12), (32, 32, 3, 3), padding=1)
    rows = cuda_check(spec, "sm_80", samples=1, m=m)
    assert {r.space for r in rows} == {"default", "shared", "direct"}
    assert passed(rows), [(r.space, r.rejected, [c.error for c in r.candidates]) for r in rows]
