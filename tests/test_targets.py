"""resolve_target: every accepted form gives the intended Target; every bad one one ValueError naming it."""

from __future__ import annotations

import pytest
from tvm.target import Target

from tvm_winograd.targets import CUDA_ARCH_TAGS, host_target, resolve_target, target_dirname

HINT = "use 'llvm', 'cuda', sm_80/sm_86/sm_89/sm_90, a TVM tag or a dict"


@pytest.mark.parametrize("text", ["llvm", "  llvm  ", '{"kind": "llvm"}', {"kind": "llvm"}])
def test_llvm_means_this_host(text):
    target = resolve_target(text)
    host = host_target()
    assert target.kind.name == "llvm"
    assert str(target.attrs["mcpu"]) == str(host.attrs["mcpu"])
    assert int(target.attrs["num-cores"]) == int(host.attrs["num-cores"])


@pytest.mark.parametrize("text,arch", [
    ("cuda", "sm_80"), ("sm_80", "sm_80"), ("sm_86", "sm_86"), ("sm_90", "sm_90a"),
    ("cuda -arch=sm_89", "sm_89"), ("nvidia/nvidia-a100", "sm_80"),
    ({"kind": "cuda", "arch": "sm_75"}, "sm_75"), ('{"kind": "cuda", "arch": "sm_80"}', "sm_80"),
])
def test_cuda_forms(text, arch):
    target = resolve_target(text)
    assert target.kind.name == "cuda" and str(target.attrs["arch"]) == arch


def test_short_arch_names_are_the_tags():
    for short, tag in CUDA_ARCH_TAGS.items():
        assert str(resolve_target(short)) == str(Target(tag))


def test_cli_strings_and_options():
    target = resolve_target("llvm -mcpu=skylake -num-cores=3")
    assert (str(target.attrs["mcpu"]), int(target.attrs["num-cores"])) == ("skylake", 3)
    assert target_dirname(target) == "llvm-skylake"
    # a cuda string with more than -arch is a config, not the tag
    target = resolve_target("cuda -arch=sm_80 -max_num_threads=512")
    assert int(target.attrs["max_num_threads"]) == 512
    same = resolve_target("sm_80")
    assert resolve_target(same) is same


@pytest.mark.parametrize("bad", ["tpu-v9", "", "   ", None, 5, ["llvm"], '{"kind": "bogus"}', "{bad json",
                                 {"kind": "bogus"}, {"kind": "llvm", "nosuch": 1}, {}, "bogus -x=1",
                                 "llvm -nosuch=3", "nvidia/nosuch", '{"kind": "llvm", "mcpu": 3}'])
def test_unknown_targets_are_one_line_naming_the_value(bad):
    with pytest.raises(ValueError) as info:
        resolve_target(bad)
    assert str(info.value) == f"unknown target {bad!r}: {HINT}"


@pytest.mark.parametrize("bad,option", [("llvm -bad", "-bad"), ("llvm -mcpu", "-mcpu")])
def test_malformed_option(bad, option):
    with pytest.raises(ValueError) as info:
        resolve_target(bad)
    assert str(info.value) == f"target option {option!r} in {bad!r} is not of the form -key=value"
