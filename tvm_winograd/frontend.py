"""Model loading: a built-in name, an ONNX file, a saved ``torch.export`` program or a Relax IRModule
-> a Relax IRModule whose weights are bound constants (what the Winograd pass needs)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import tvm
from tvm import relax

from .models import BUILTIN_MODELS, build_onnx

__all__ = ["ModelInfo", "load_model", "from_onnx_model", "model_signature"]

logger = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    """What was loaded: the format, the inputs (names, shapes, dtypes) and, for built-in and ONNX
    models, the ONNX ``ModelProto`` (onnxruntime can run it as the reference)."""

    source: str
    format: str  # builtin | onnx | torch | relax
    input_names: list[str] = field(default_factory=list)
    input_shapes: dict[str, tuple] = field(default_factory=dict)
    input_dtypes: dict[str, str] = field(default_factory=dict)
    onnx_model: Any = None
    net: Any = None  # models.Net for built-in models

    def random_inputs(self, seed: int = 1) -> dict:
        """Seeded signed random inputs of the right shapes (symbolic dimensions become 1)."""
        import numpy as np

        rng = np.random.default_rng(seed)
        out = {}
        for name in self.input_names:
            shape = tuple(d if isinstance(d, int) else 1 for d in self.input_shapes[name])
            out[name] = rng.standard_normal(shape).astype(self.input_dtypes.get(name, "float32"))
        return out


def model_signature(mod: tvm.IRModule) -> list[dict]:
    """The inputs of ``mod["main"]``: ``[{"name", "shape", "dtype"}]``, static dimensions as ints and
    symbolic ones as their text (``"n"``).  What :class:`ModelInfo` records and what
    ``tvm_winograd.export.export_library`` writes into a library's trailer."""
    main = mod["main"]
    num_input = main.attrs["num_input"] if main.attrs is not None and "num_input" in main.attrs else len(main.params)
    out = []
    for param in list(main.params)[: int(num_input)]:
        ty = param.ty
        shape = getattr(ty, "shape", None)
        dims: tuple = ()
        if shape is not None and hasattr(shape, "values"):
            dims = tuple(int(v) if isinstance(v, tvm.tirx.IntImm) else str(v) for v in shape.values)
        out.append({"name": str(param.name), "shape": dims, "dtype": str(getattr(ty, "dtype", "float32"))})
    return out


def _signature(mod: tvm.IRModule, info: ModelInfo) -> ModelInfo:
    """Fill the input names/shapes/dtypes of ``info`` from ``mod["main"]`` (:func:`model_signature`)."""
    for entry in model_signature(mod):
        name = entry["name"]
        info.input_names.append(name)
        info.input_shapes[name] = entry["shape"]
        info.input_dtypes[name] = entry["dtype"]
    return info


def _check_shape_names(source: str, input_shapes: Mapping[str, Sequence[int]] | None, names: Sequence[str]) -> None:
    """An input shape for a name the model does not have is an error (it would be silently ignored)."""
    unknown = [n for n in (input_shapes or {}) if n not in names]
    if unknown:
        raise ValueError(f"input shape given for {unknown[0]!r}, which model {source!r} does not have: its inputs "
                         f"are {', '.join(repr(n) for n in names) or 'none'}")


def from_onnx_model(model, input_shapes: Mapping[str, Sequence[int]] | None = None) -> tvm.IRModule:
    """Import an ``onnx.ModelProto`` (weights become constants)."""
    from tvm.relax.frontend.onnx import from_onnx

    shape_dict = {k: list(v) for k, v in input_shapes.items()} if input_shapes else None
    return from_onnx(model, shape_dict=shape_dict, keep_params_in_input=False)


def _load_onnx_file(path: Path):
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError and friends
        raise ValueError(f"cannot read ONNX model {str(path)!r}: {type(err).__name__}: {err}") from None
    if not model.graph.node:
        raise ValueError(f"ONNX model {str(path)!r} has no nodes (corrupt or not an ONNX model)")
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise ValueError(f"ONNX model {str(path)!r} is invalid: {str(err).splitlines()[0]}") from None
    return model


def _load_torch_program(path: Path) -> tvm.IRModule:
    try:
        import torch
        from tvm.relax.frontend.torch import from_exported_program
    except ImportError as err:
        raise NotImplementedError(f"loading {str(path)!r} needs the optional 'torch' extra") from err
    try:
        program = torch.export.load(str(path))
    except Exception as err:
        raise ValueError(f"cannot read torch.export program {str(path)!r}: {type(err).__name__}: {err}") from None
    mod = from_exported_program(program, keep_params_as_input=True)
    mod, params = relax.frontend.detach_params(mod)
    if params.get("main"):
        main = mod["main"]
        weights = list(params["main"])
        # detach_params returns the weights in the order of main's trailing parameters.
        binding = dict(zip(list(main.params)[len(main.params) - len(weights):], weights))
        mod = relax.transform.BindParams("main", binding)(mod)
    return mod


def load_model(
    source: str | os.PathLike | tvm.IRModule,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[tvm.IRModule, ModelInfo]:
    """Load a model as a Relax IRModule with constant weights.

    Parameters
    ----------
    source
        A built-in name (``resnet18``, ``resnet50``, ``vgg16``, ``tiny_mixed``), a ``.onnx`` file, a
        ``torch.export`` program saved with ``torch.export.save`` (``.pt2``), or a Relax IRModule.
    input_shapes
        ``{input name: shape}``.  ONNX: fixes symbolic dimensions; built-in models: ``{"input":
        (N, C, H, W)}`` selects the batch and the (square) image size.  Ignored (with a warning)
        for torch programs and IRModules, whose shapes are fixed.  A name the model has no input
        of is an error in every case.

    Returns
    -------
    (IRModule, ModelInfo)

    Raises
    ------
    ValueError
        One line naming the source: unknown name, missing file, unreadable/corrupt file, or an
        ``input_shapes`` name that is not an input of the model (naming the model's inputs).
    """
    if isinstance(source, tvm.IRModule):
        if "main" not in [gv.name_hint for gv in source.get_global_vars()]:
            raise ValueError("the Relax IRModule has no 'main' function")
        info = _signature(source, ModelInfo("<IRModule>", "relax"))
        _check_shape_names("<IRModule>", input_shapes, info.input_names)
        if input_shapes:
            logger.warning("input_shapes is ignored for a Relax IRModule")
        return source, info
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"model source {source!r} is not a name, a path or a Relax IRModule")
    text = os.fspath(source)
    if text in BUILTIN_MODELS:
        batch, image_size = 1, None
        if input_shapes:
            if set(input_shapes) != {"input"}:  # names the model's one input
                raise ValueError(f"built-in model {text!r} has one input named 'input', got {sorted(input_shapes)}")
            shape = tuple(int(s) for s in input_shapes["input"])
            if len(shape) != 4 or shape[2] != shape[3]:
                raise ValueError(f"input shape {shape} for {text!r} must be (N, C, H, H)")
            batch, image_size = shape[0], shape[2]
        model, net = build_onnx(text, batch=batch, image_size=image_size)
        mod = from_onnx_model(model)
        return mod, _signature(mod, ModelInfo(text, "builtin", onnx_model=model, net=net))
    path = Path(text)
    if not path.exists():
        if path.suffix == "" and os.sep not in text:
            raise ValueError(f"unknown model {text!r}: use a built-in name ({', '.join(sorted(BUILTIN_MODELS))}), "
                             "a .onnx file or a .pt2 torch.export program")
        raise ValueError(f"model file {text!r} does not exist")
    if path.is_dir():
        raise ValueError(f"model path {text!r} is a directory, not a .onnx or .pt2 file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        model = _load_onnx_file(path)
        initializers = {init.name for init in model.graph.initializer}
        _check_shape_names(text, input_shapes, [i.name for i in model.graph.input if i.name not in initializers])
        try:
            mod = from_onnx_model(model, input_shapes)
        except Exception as err:
            raise ValueError(f"cannot import ONNX model {text!r} into Relax: {str(err).splitlines()[-1]}") from None
        return mod, _signature(mod, ModelInfo(text, "onnx", onnx_model=model))
    if suffix in (".pt2", ".pt", ".ep"):
        mod = _load_torch_program(path)
        info = _signature(mod, ModelInfo(text, "torch"))
        _check_shape_names(text, input_shapes, info.input_names)
        if input_shapes:
            logger.warning("input_shapes is ignored for torch.export programs (their shapes are fixed)")
        return mod, info
    raise ValueError(f"model file {text!r} has an unknown extension {suffix!r}: use .onnx or .pt2")
