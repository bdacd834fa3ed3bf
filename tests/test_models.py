"""Built-in models (ONNX graphs vs the equivalent PyTorch modules) and model loading errors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tvm_winograd.frontend import load_model
from tvm_winograd.models import build_net, build_onnx, to_onnx, to_torch


def _ort(model, feed):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


# Small resolutions keep this file fast; the architectures are the same at 224.
SIZES = {"tiny_mixed": None, "resnet18": 64, "resnet50": 64, "vgg16": 32}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_onnx_runs_and_activations_stay_order_one(name):
    """He init + folded BN + scaled residual branches: logits are O(1), neither vanishing nor exploding."""
    model, net = build_onnx(name, image_size=SIZES[name])
    out = _ort(model, net.input_feed())
    assert out.shape == (1, net.channels[net.output])
    assert np.all(np.isfinite(out))
    assert 0.05 < float(out.std()) < 50.0, f"{name}: logit std {out.std():.3g} is not O(1)"


@pytest.mark.parametrize("name", sorted(SIZES))
def test_torch_module_equals_onnx(name):
    """The optional PyTorch module has the same weights and semantics as the ONNX graph.

    Both run fp32 direct convolutions; differences come from summation order only, so they are a
    few fp32 ulps of the accumulated magnitudes: 1e-4 relative to the largest logit is generous."""
    torch = pytest.importorskip("torch")
    model, net = build_onnx(name, image_size=SIZES[name])
    feed = net.input_feed()
    ref = _ort(model, feed)
    with torch.no_grad():
        got = to_torch(net)(torch.from_numpy(feed["input"])).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))


def test_models_are_seeded():
    a = build_net("resnet18", image_size=32, seed=3)
    b = build_net("resnet18", image_size=32, seed=3)
    c = build_net("resnet18", image_size=32, seed=4)
    wa, wb, wc = (n.layers[0].weights["weight"] for n in (a, b, c))
    assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)


def test_architectures_have_the_expected_convolutions():
    """ResNet-18: 20 convs (17 3x3/7x7 + 3 1x1 shortcuts); ResNet-50: 53; VGG-16: 13 3x3."""
    count = lambda net: sum(layer.op == "conv" for layer in net.layers)  # noqa: E731
    assert count(build_net("resnet18", image_size=32)) == 20
    assert count(build_net("resnet50", image_size=32)) == 53
    vgg = build_net("vgg16", image_size=32)
    assert count(vgg) == 13 and all(l.attrs["kernel"] == 3 for l in vgg.layers if l.op == "conv")


def test_build_net_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        build_net("resnet19")
    with pytest.raises(ValueError, match="batch"):
        build_net("resnet18", batch=0)
    with pytest.raises(ValueError, match="too small"):
        build_net("vgg16", image_size=16)


def test_load_builtin_and_onnx_file(tmp_path):
    mod, info = load_model("tiny_mixed")
    assert info.format == "builtin" and info.input_names == ["input"]
    assert info.input_shapes["input"] == (1, 8, 16, 16)
    model, _ = build_onnx("resnet18", image_size=32)
    path = tmp_path / "r18.onnx"
    path.write_bytes(model.SerializeToString())
    mod, info = load_model(path)
    assert info.format == "onnx" and info.input_shapes["input"] == (1, 3, 32, 32)
    mod, info = load_model("resnet18", {"input": (2, 3, 32, 32)})
    assert info.input_shapes["input"] == (2, 3, 32, 32)


def test_load_onnx_with_dynamic_batch_and_fixed_shape(tmp_path):
    net = build_net("tiny_mixed")
    path = tmp_path / "dyn.onnx"
    path.write_bytes(to_onnx(net, dynamic_batch=True).SerializeToString())
    _, info = load_model(path)
    assert isinstance(info.input_shapes["input"][0], str)  # symbolic batch
    _, info = load_model(path, {"input": (3, 8, 16, 16)})
    assert info.input_shapes["input"] == (3, 8, 16, 16)


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'alexnet'"):
        load_model("alexnet")
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xfe" * 10)
    with pytest.raises(ValueError, match="corrupt.onnx"):
        load_model(corrupt)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(build_onnx("tiny_mixed")[0].SerializeToString()[:700])
    with pytest.raises(ValueError, match="truncated.onnx"):
        load_model(truncated)
    other = tmp_path / "model.h5"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown extension"):
        load_model(other)
    with pytest.raises(ValueError, match="one input named 'input'"):
        load_model("tiny_mixed", {"data": (1, 8, 16, 16)})


def test_load_torch_export_program(tmp_path):
    """A saved ``torch.export`` program loads with its weights bound as constants."""
    torch = pytest.importorskip("torch")
    net = build_net("tiny_mixed")
    program = torch.export.export(to_torch(net), (torch.from_numpy(net.input_feed()["input"]),))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, str(path))
    mod, info = load_model(path)
    assert info.format == "torch" and len(info.input_names) == 1
    assert len(mod["main"].params) == 1  # weights are bound, not parameters
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.pt2"):
        load_model(bad)
