#!/usr/bin/env python3
"""Export torchvision's wide_resnet50_2 (the PatchCore paper's backbone), cut after layer3, to ONNX
with the two feature taps as outputs, and write the shelfwatch backbone descriptor beside it.

Needs torch and torchvision (pip install torch torchvision); downloads the ImageNet weights once.

    python3 export_wide_resnet50_2.py --out ./wide_resnet50_2.onnx
    shelfwatch fit <images> --backbone ./wide_resnet50_2.onnx --backbone-id ./wide_resnet50_2.json -o model.onnx

Taps: layer2 (stride 8, 512 channels) and layer3 (stride 16, 1024 channels); each patch vector is
pooled to 1024 dims per tap and the concatenation to 1024 dims, as patchcore-inspection does.
"""
import argparse
import hashlib
import inspect
import json
import pathlib

import torch
import torchvision


class Taps(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.stem = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layer2 = net.layer2
        self.layer3 = net.layer3

    def forward(self, x):
        f2 = self.layer2(self.stem(x))
        return f2, self.layer3(f2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="wide_resnet50_2.onnx")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()
    weights = torchvision.models.Wide_ResNet50_2_Weights.IMAGENET1K_V1
    model = Taps(torchvision.models.wide_resnet50_2(weights=weights)).eval()
    x = torch.zeros(1, 3, args.input_size, args.input_size)
    out = pathlib.Path(args.out)
    # shelfwatch needs ONE self-contained file (the descriptor's sha256 covers that file only).
    # PyTorch >= 2.9 exports with the weights in a separate "<out>.data" file unless told otherwise.
    extra = {"external_data": False} if "external_data" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(
        model, x, str(out), input_names=["image"], output_names=["layer2", "layer3"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "layer2": {0: "batch"}, "layer3": {0: "batch"}},
        opset_version=args.opset, do_constant_folding=True, **extra,
    )
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    descriptor = {
        "id": "wide_resnet50_2-layer3",
        "sha256": digest,
        "input": "image",
        "inputSize": args.input_size,
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "taps": [
            {"tensor": "layer2", "stride": 8, "channels": 512},
            {"tensor": "layer3", "stride": 16, "channels": 1024},
        ],
        "pretrainEmbedDim": 1024,
        "embedDim": 1024,
        "fileName": out.name,
        "license": "BSD-3-Clause (torchvision weights)",
        "description": "torchvision wide_resnet50_2 ImageNet weights, cut after layer3 (PatchCore paper backbone)",
    }
    desc_path = out.with_suffix(".json")
    desc_path.write_text(json.dumps(descriptor, indent=2) + "\n")
    print(f"wrote {out} (sha256 {digest}) and {desc_path}")


if __name__ == "__main__":
    main()
