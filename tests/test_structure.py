"""The package's structure: imports point one way (DESIGN.md section 2), and functions stay short.

The import graph is read from the source with :mod:`ast`, nothing is imported: every ``import`` and
``from ... import`` statement counts, at module level or inside a function (a lazy import is still an
arrow), and so do the lazy attribute tables (``_LAZY = {name: module}``) that a package's
``__getattr__`` resolves with ``importlib``.  Importing ``a.b.c`` also runs the package ``a.b``'s
``__init__``: that counts for the layers (not for cycles, since a package always imports its own
modules), except the root package, whose ``__init__`` imports nothing eagerly.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "tvm_winograd"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: The layers, lowest first: a module may import its own layer and the ones before it, never a later
#: one.  Entries name modules relative to the package; a name covers its submodules unless a longer
#: entry places them elsewhere ("" is the package's own __init__, the lazy facade of the API).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("transforms", ("transforms",)),  # exact Cook-Toom matrices (fractions, numpy)
    ("spec", ("workload",)),  # Conv2dSpec, validation, eligibility (stdlib only)
    ("math", ("reference", "accuracy", "activations", "windows")),  # numpy oracles and error analysis, no TVM
    ("platform", ("_version", "targets", "threads", "lowering",  # lowering: the TIR pipeline of every build
                  "cuda", "cuda.driver_stub", "cuda.build", "cuda.measure")),
    ("contract", ("contract",)),
    ("compute", ("compute",)),
    ("schedule", ("schedule",)),
    ("heuristic", ("heuristic",)),  # the CPU cost model and the CUDA heuristic
    ("tune", ("tune", "verify", "cuda.verify", "cuda.check")),
    ("graph pass", ("relax_pass", "relax_layout", "relax_channels", "relax_conv_forms", "frontend", "models")),
    ("pipeline", ("pipeline", "module_schedules", "compile_report", "model_tasks", "export", "api", "runtime",
                  "params",  # --params separate: weights lifted out of the library, the params file
                  "gpu_pack",  # builds the GPU pack: models through the graph pass, CUDA builds, references
                  "gpu_pack_run")),  # the pack's run.py: imports none of the package (numpy, tvm.runtime)
    ("cli, bench", ("cli", "bench", "accuracy_report", "")),
)

#: Where functions must stay short (the issue's "compute, schedule, tune and the graph pass").
SHORT_FUNCTIONS = ("compute.py", "schedule", "tune", "relax_pass.py", "relax_layout.py", "relax_channels.py",
                   "relax_conv_forms.py")
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    if not level:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _lazy_table(tree: ast.Module) -> list[str]:
    """The module names of a top-level ``_LAZY = {attribute: module}`` table."""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)
                and isinstance(node.value, ast.Dict)):
            return [v.value for v in node.value.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return []


def import_graph(modules: dict[str, tuple[Path, bool]] | None = None) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (explicitly, anywhere in its source)."""
    modules = _modules() if modules is None else modules
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module, node.level, name, is_package)
                for alias in node.names:  # `from pkg import module` imports the module
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        for lazy in _lazy_table(tree):  # `import_module(".api", __name__)` or `f"{__name__}.{lazy}"`
            targets.add(_resolve(lazy.lstrip(".") or None, 1, name, is_package) if lazy.startswith(".")
                        else f"{name}.{lazy}")
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _short(module: str) -> str:
    return module[len(PACKAGE) + 1:] if module != PACKAGE else ""


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of ``module`` (the longest entry that names it or a package of it)."""
    rel = _short(module)
    best, best_len = None, -1
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            covers = rel == entry or (entry and rel.startswith(entry + "."))
            if covers and len(entry) > best_len:
                best, best_len = index, len(entry)
    if best is None:
        raise KeyError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return best


def _packages_run_by(module: str) -> list[str]:
    """The package __init__s that importing ``module`` runs (the root package's excepted)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for importer, targets in sorted(graph.items()):
        mine = layer_of(importer)
        for target in sorted(targets):
            for ran in [target] + _packages_run_by(target):
                if ran in graph and ran != importer and layer_of(ran) > mine:
                    out.append(f"{_short(importer)} ({LAYERS[mine][0]}) -> {_short(ran) or PACKAGE} "
                               f"({LAYERS[layer_of(ran)][0]})" + ("" if ran == target else f" via {_short(target)}"))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for module in _modules():
        layer_of(module)


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_import_against_the_layers():
    assert layer_violations(import_graph()) == []


def test_the_checks_can_fail():
    """The checks see a lazy (function-level) import that reaches up, and a cycle."""
    graph = import_graph()
    graph[f"{PACKAGE}.workload"] = graph[f"{PACKAGE}.workload"] | {f"{PACKAGE}.relax_pass"}
    assert layer_violations(graph) == ["workload (spec) -> relax_pass (graph pass)"]
    assert any(f"{PACKAGE}.workload" in c and f"{PACKAGE}.relax_pass" in c for c in cycles(graph))


def test_a_function_level_import_is_an_edge(tmp_path):
    (tmp_path / PACKAGE).mkdir()
    low = tmp_path / PACKAGE / "workload.py"
    low.write_text("def f():\n    from .relax_pass import x\n    return x\n")
    modules = {f"{PACKAGE}.workload": (low, False), f"{PACKAGE}.relax_pass": (low, False)}
    assert import_graph(modules)[f"{PACKAGE}.workload"] == {f"{PACKAGE}.relax_pass"}


def _long_functions() -> list[str]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not any(rel == entry or rel.startswith(entry + "/") for entry in SHORT_FUNCTIONS):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_long_functions_in_compute_schedule_tune_and_the_graph_pass():
    assert _long_functions() == []
