"""TVM's wmma tensor intrinsics for the tensor-core spaces, registered without importing all of TVM's.

Why this module exists.  TVM 0.27 has no registered, per-intrinsic way to obtain its CUDA tensor
intrinsics: ``tvm/s_tir/tensor_intrin/cuda.py`` defines generator functions
(``get_wmma_load_intrin``, ...) and registers every CUDA intrinsic (ldmatrix, mma, wmma for every
dtype and shape: hundreds of TVMScript functions) as a side effect of its import, which costs 40-50 s
of CPU here.  The tensor-core spaces need five.  :func:`ensure_tensor_intrinsics` therefore runs only
that module's imports, constants and undecorated functions (its own source, from TVM's installed
package, compiled under its real file name because TVMScript reads each generator's source through
``inspect``) and registers the five it needs under :data:`INTRIN_PREFIX` + TVM's names (TVM's
registry refuses a second registration of a name, so copies under TVM's names would break a later
full import, which MetaSchedule's ``TuneContext`` constructor does).  Where that module is already
imported, its functions are used directly.  The exec is confined to :func:`_tensor_intrin_generators`.
"""

from __future__ import annotations

import ast
import os
import sys
import threading

import tvm

__all__ = ["INTRIN_PREFIX", "ensure_tensor_intrinsics", "ensure_tensor_intrinsics_for_database",
           "tensorcore_intrin_group"]

_INTRIN_LOCK = threading.Lock()
_INTRIN_GROUP: dict[str, str] | None = None


def tensorcore_intrin_group() -> dict[str, str]:
    """Names of the wmma intrinsics the tensorcore space uses (registered on first call):
    16x16x16 fp16 operands from shared memory, fp32 accumulator fragments stored to shared memory."""
    return dict(ensure_tensor_intrinsics())


#: Prefix of our registered copies of TVM's wmma intrinsics (see :func:`ensure_tensor_intrinsics`).
INTRIN_PREFIX = "tvm_winograd_"


def ensure_tensor_intrinsics() -> dict[str, str]:
    """Register the wmma fp16 x fp16 -> fp32 tensor intrinsics the tensorcore spaces use (idempotent);
    returns the intrinsic group (keys init, load_a, load_b, compute, store).

    The intrinsics are TVM's own (``tvm/s_tir/tensor_intrin/cuda.py``: ``get_wmma_fill_intrin``,
    ``get_wmma_load_intrin``, ``get_wmma_sync_intrin``, ``get_wmma_store_intrin``), registered under
    TVM's names prefixed with :data:`INTRIN_PREFIX`.  Why not ``import tvm.s_tir.tensor_intrin.cuda``:
    it registers every CUDA intrinsic of TVM and costs 40-50 s of CPU here (hundreds of TVMScript
    functions parsed); this builds the five needed from that module's generator functions (its top-level
    ``TensorIntrin.register`` statements are skipped) in ~1 s.  Why the prefix: TVM's registry refuses a
    second registration of a name, so copies under TVM's names would make a later full import of that
    module (MetaSchedule's ``TuneContext`` does it) fail.

    Replaying a tuned tensorcore record (its trace holds ``Tensorize`` steps naming these intrinsics) in
    another process needs them registered too: call this first.
    """
    global _INTRIN_GROUP
    from tvm.s_tir import TensorIntrin

    with _INTRIN_LOCK:
        if _INTRIN_GROUP is not None:
            return _INTRIN_GROUP
        module = _tensor_intrin_generators()
        canonical = module["get_wmma_intrin_group"]("shared", "shared.dyn", "float16", "float32", False)
        generators = {
            "init": lambda: module["get_wmma_fill_intrin"](16, 16, 16, "float32"),
            "load_a": lambda: module["get_wmma_load_intrin"](16, 16, 16, "float16", "shared", False, False),
            "load_b": lambda: module["get_wmma_load_intrin"](16, 16, 16, "float16", "shared", True, False),
            "compute": lambda: module["get_wmma_sync_intrin"](16, 16, 16, "float16", "float32", False),
            "store": lambda: module["get_wmma_store_intrin"](16, 16, 16, "float32", "shared.dyn"),
        }
        group = {key: INTRIN_PREFIX + str(canonical[key]) for key in generators}
        for key, make in generators.items():
            if TensorIntrin.get(group[key], allow_missing=True) is None:
                TensorIntrin.register(group[key], *make())
        _INTRIN_GROUP = group
        return group


def ensure_tensor_intrinsics_for_database(work_dir: str | os.PathLike) -> bool:
    """Call :func:`ensure_tensor_intrinsics` if the MetaSchedule JSON database in ``work_dir`` holds
    tensorcore records (it names intrinsics with :data:`INTRIN_PREFIX`); returns whether it did.

    TVM parses every record's trace when a ``JSONDatabase`` is opened, and a trace naming an unregistered
    tensor intrinsic fails the whole open ("TensorIntrin 'tvm_winograd_wmma_fill_16x16x16_f32' is not
    registered"): call this before opening a database that may hold CUDA tensorcore records.
    """
    path = os.path.join(os.fspath(work_dir), "database_tuning_record.json")
    if not os.path.isfile(path):
        return False
    marker = INTRIN_PREFIX.encode()
    with open(path, "rb") as f:
        if marker not in f.read():
            return False
    ensure_tensor_intrinsics()
    return True


def _tensor_intrin_generators() -> dict:
    """The functions of ``tvm/s_tir/tensor_intrin/cuda.py`` without running its registrations."""
    loaded = sys.modules.get("tvm.s_tir.tensor_intrin.cuda")
    if loaded is not None:
        return vars(loaded)
    path = os.path.join(os.path.dirname(tvm.__file__), "s_tir", "tensor_intrin", "cuda.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    tree.body = [node for node in tree.body
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 or (isinstance(node, ast.FunctionDef) and not node.decorator_list)
                 or (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant))]
    # compiled under the real file name: TVMScript reads each generator's source through inspect
    namespace: dict = {"__name__": "tvm.s_tir.tensor_intrin.cuda", "__file__": path}
    exec(compile(tree, path, "exec"), namespace)  # noqa: S102 - TVM's own installed module source
    return namespace
