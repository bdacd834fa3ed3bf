"""Export torchvision architectures to ONNX for the model-set benchmark (models we did not write).

    python scripts/export_torchvision.py -o tv_models                  # the default set
    python scripts/export_torchvision.py -o tv_models --models mobilenet_v2 convnext_tiny
    python scripts/bench_models.py --models tv_models/*.onnx --rounds 5 --out-md model_set.md

torchvision 0.28.0 is the release built for the pinned torch 2.13.0 (``pip install torchvision==0.28.0``;
only its model definitions are used, not its C++ operators).  Weights are torchvision's random
initialisation under a fixed seed (no download; speed and agreement with onnxruntime do not depend on
trained weights), batch 1, 224x224 (the super-resolution net: 1x1x224x224), opset 17, constants folded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: The default set: every family the whole-model issue names, plus the three classics.
MODELS = ("alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3",
          "mobilenet_v2", "regnet_y_400mf", "resnet18", "resnet50", "resnext50_32x4d", "squeezenet1_0",
          "vgg11_bn", "vgg16", "fcn_resnet50", "espcn")


def _espcn(torch):
    """ESPCN (Shi et al. 2016) for 3x upscaling: 5x5 64, 3x3 32, 3x3 9 convs with tanh, pixel shuffle."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 64, 5, padding=2), nn.Tanh(), nn.Conv2d(64, 32, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(32, 9, 3, padding=1), nn.PixelShuffle(3))


def build(name: str):
    """``(module, input shape)`` of architecture ``name`` with seeded random weights, in eval mode."""
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "espcn":
        return _espcn(torch).eval(), (1, 1, 224, 224)
    kwargs = {}
    if name in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": False, "init_weights": True}
    if name == "fcn_resnet50":
        kwargs = {"weights_backbone": None, "aux_loss": False}
        model = torchvision.models.segmentation.fcn_resnet50(**kwargs)
    else:
        model = torchvision.models.get_model(name, **kwargs)
    size = 299 if name == "inception_v3" else 224
    return model.eval(), (1, 3, size, size)


def export(name: str, out_dir: Path) -> Path:
    import torch

    model, shape = build(name)
    if name == "fcn_resnet50":  # a dict of outputs: the ONNX graph gets its "out" tensor
        inner = model

        class Out(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x)["out"]

        model = Out().eval()
    path = out_dir / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(*shape),), str(path), input_names=["input"], output_names=["output"],
                          opset_version=17, do_constant_folding=True, dynamo=False)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out-dir", required=True)
    p.add_argument("--models", nargs="+", default=list(MODELS), help=f"default: {' '.join(MODELS)}")
    args = p.parse_args(argv)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("error: torchvision is not installed (pip install torchvision==0.28.0)", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        if name != "espcn" and name != "fcn_resnet50":
            import torchvision

            if name not in torchvision.models.list_models():
                print(f"error: unknown torchvision model {name!r}", file=sys.stderr)
                return 2
        path = export(name, out)
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
