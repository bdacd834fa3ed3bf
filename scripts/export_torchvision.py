"""Export torchvision architectures to ONNX for the model-set benchmark (models we did not write).

    python scripts/export_torchvision.py -o tv_models                  # the default set
    python scripts/export_torchvision.py -o tv_models --models mobilenet_v2 convnext_tiny
    python scripts/bench_models.py --models tv_models/*.onnx --rounds 5 --out-md model_set.md

torchvision 0.28.0 is the release built for the pinned torch 2.13.0 (``pip install torchvision==0.28.0``;
only its model definitions are used, not its C++ operators).  Weights are torchvision's random
initialisation under a fixed seed (no download; speed and agreement with onnxruntime do not depend on
trained weights), batch 1, 224x224 (the super-resolution net: 1x1x224x224), opset 17, constants folded.
ESPCN and the U-Net are defined here (torchvision has neither).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

#: The default set: every family the whole-model issue names, plus the three classics.
MODELS = ("alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3",
          "mobilenet_v2", "regnet_y_400mf", "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "squeezenet1_0",
          "vgg11_bn", "vgg16", "fcn_resnet50", "espcn", "unet")

#: Models this script defines itself (torchvision has no such architecture).
OWN = ("espcn", "unet")


def _espcn(torch):
    """ESPCN (Shi et al. 2016) for 3x upscaling: 5x5 64, 3x3 32, 3x3 9 convs with tanh, pixel shuffle."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 64, 5, padding=2), nn.Tanh(), nn.Conv2d(64, 32, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(32, 9, 3, padding=1), nn.PixelShuffle(3))


def _unet(torch, base: int = 32, depth: int = 4):
    """U-Net (Ronneberger et al. 2015) with padded convolutions, as the segmentation libraries write it:
    per level two 3x3 conv + BN + ReLU, 2x2 max pool down, 2x2 stride-2 transposed conv up and the skip
    concatenated; ``base`` channels at the top (32 .. 512 at depth 4), a 1x1 head to 2 classes."""
    nn = torch.nn

    def block(cin: int, cout: int):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    chans = [base * 2**i for i in range(depth + 1)]

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.downs = nn.ModuleList([block(3 if i == 0 else chans[i - 1], chans[i]) for i in range(depth)])
            self.bottom = block(chans[depth - 1], chans[depth])
            self.ups = nn.ModuleList([nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2)
                                      for i in reversed(range(depth))])
            self.decs = nn.ModuleList([block(2 * chans[i], chans[i]) for i in reversed(range(depth))])
            self.head = nn.Conv2d(chans[0], 2, 1)

        def forward(self, x):
            skips = []
            for down in self.downs:
                x = down(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottom(x)
            for up, dec, skip in zip(self.ups, self.decs, reversed(skips)):
                x = dec(torch.cat([up(x), skip], 1))
            return self.head(x)

    model = UNet()
    for m in model.modules():  # trained-looking batch norms (the defaults are the identity)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
    return model


def import_torchvision():
    """``torchvision``, for its model definitions only.  A torchvision wheel whose C++ operators do not
    load beside this torch (``operator torchvision::nms does not exist``) fails in its fake-tensor
    registrations, which the models never use: those are skipped and the import retried."""
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision
        print(f"note: torchvision's C++ operators did not load ({err}); its model definitions are used",
              file=sys.stderr)
    return torchvision


def build(name: str):
    """``(module, input shape)`` of architecture ``name`` with seeded random weights, in eval mode."""
    import torch

    torchvision = import_torchvision()

    torch.manual_seed(0)
    if name == "espcn":
        return _espcn(torch).eval(), (1, 1, 224, 224)
    if name == "unet":
        return _unet(torch).eval(), (1, 3, 224, 224)
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
        torchvision = import_torchvision()
    except ImportError:
        print("error: torchvision is not installed (pip install torchvision==0.28.0)", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        if name not in OWN and name != "fcn_resnet50":
            if name not in torchvision.models.list_models():
                print(f"error: unknown torchvision model {name!r}", file=sys.stderr)
                return 2
        path = export(name, out)
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
