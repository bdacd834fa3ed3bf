"""Target resolution: what users type -> a ``tvm.target.Target`` TVM 0.27 accepts.

TVM 0.27 rejects the old CLI string form (``"llvm -mcpu=znver4"``); it takes a kind name, a tag or a
dict.  Users (and our CLI) may still type the short forms below, which are resolved here, once.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

import tvm
from tvm.target import Target

__all__ = ["resolve_target", "host_target", "is_cuda", "CUDA_ARCH_TAGS", "target_dirname"]

#: Short names for the CUDA architectures this project builds for, mapped to TVM tags.
CUDA_ARCH_TAGS = {
    "sm_80": "nvidia/nvidia-a100",
    "sm_86": "nvidia/geforce-rtx-3090",
    "sm_89": "nvidia/geforce-rtx-4090",
    "sm_90": "nvidia/nvidia-h100",
}


@lru_cache(maxsize=None)
def host_target() -> Target:
    """The llvm target for this machine: its CPU model and its core count (MetaSchedule needs both)."""
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Target({"kind": "llvm", "mcpu": cpu, "num-cores": cores})


def _from_cli_string(text: str) -> dict:
    """``"llvm -mcpu=znver4 -num-cores=2"`` -> ``{"kind": "llvm", "mcpu": "znver4", "num-cores": 2}``."""
    kind, *opts = text.split()
    out: dict = {"kind": kind}
    for opt in opts:
        if not opt.startswith("-") or "=" not in opt:
            raise ValueError(f"target option {opt!r} in {text!r} is not of the form -key=value")
        key, value = opt.lstrip("-").split("=", 1)
        out[key] = int(value) if value.isdigit() else value
    return out


def _unknown(target: object) -> ValueError:
    return ValueError(f"unknown target {target!r}: use 'llvm', 'cuda', sm_80/sm_86/sm_89/sm_90, a TVM tag or a dict")


def _target_config(target: object) -> str | dict:
    """What ``Target(...)`` is called with for ``target`` (a tag/kind name or a config dict).

    Raises ``ValueError`` (the one-line message of :func:`resolve_target`) for input of the wrong form.
    """
    if isinstance(target, str) and target.strip().startswith("{"):
        try:
            target = json.loads(target)  # "{..." is a dict or not JSON
        except ValueError:
            raise _unknown(target) from None
    if isinstance(target, dict):
        config = dict(target)
        if config.get("kind") == "llvm":  # this host's CPU and core count unless given
            host = host_target()
            config.setdefault("mcpu", str(host.attrs["mcpu"]))
            config.setdefault("num-cores", int(host.attrs["num-cores"]))
        return config
    if not isinstance(target, str) or not target.strip():
        raise _unknown(target)
    text = target.strip()
    if text == "cuda":
        return CUDA_ARCH_TAGS["sm_80"]
    if text in CUDA_ARCH_TAGS:
        return CUDA_ARCH_TAGS[text]
    if " " in text:
        config = _from_cli_string(text)
        if set(config) == {"kind", "arch"} and config["kind"] == "cuda" and config["arch"] in CUDA_ARCH_TAGS:
            return CUDA_ARCH_TAGS[config["arch"]]
        return _target_config(config)
    return text


def resolve_target(target: object = "llvm") -> Target:
    """Resolve ``target`` (a Target, dict, JSON string, tag, ``"llvm"``, ``"cuda"``, ``"sm_90"``,
    ``"cuda -arch=sm_80"`` or ``"llvm -mcpu=..."``) to a :class:`tvm.target.Target`.

    ``"llvm"`` means this host's CPU with its core count; ``"cuda"`` means sm_80 (A100 limits).
    Raises ``ValueError`` naming the target when TVM does not know it.
    """
    if isinstance(target, Target):
        return target
    config = _target_config(target)
    if config == "llvm":
        return host_target()
    try:
        return Target(config)
    except Exception:  # TVM raises ValueError (or its own error types) for unknown kinds, tags and options
        raise _unknown(target) from None


def is_cuda(target: Target) -> bool:
    return target.kind.name == "cuda"


def target_dirname(target: Target) -> str:
    """A directory name for per-target data: ``llvm-znver4`` or ``cuda-sm_80``."""
    if is_cuda(target):
        return f"cuda-{target.attrs.get('arch', 'sm_80')}"
    cpu = target.attrs.get("mcpu", "generic")
    return f"{target.kind.name}-{cpu}"
