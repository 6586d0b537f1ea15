"""The PyTorch side of ``benchmarks.torchvision_onnx``; runs under an interpreter that has
torch and torchvision (and imports nothing of segbeam, which need not be installed there).

Builds ``torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None,
num_classes=3, aux_loss=True)`` (nothing is downloaded), settles its batch-norm statistics
on the images themselves (random weights with untouched statistics predict one class
everywhere, which would make any comparison pass), exports it with ``torch.onnx.export``
(outputs ``out`` and ``aux``, dynamic batch and size), and saves torch's own labels.

    python benchmarks/torch_export.py IMAGE_FOLDER OUTPUT_FOLDER
"""

import glob
import json
import os
import sys
import time

import numpy as np
import torch
import torchvision
from PIL import Image

DYNAMO = os.environ.get("TORCH_ONNX_EXPORTER", "dynamo") == "dynamo"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def main(images_folder: str, output: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=True)
    paths = sorted(glob.glob(os.path.join(images_folder, "*.png")))
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    batch = torch.from_numpy(((images / 255.0 - MEAN) / STD).astype(np.float32)
                             ).permute(0, 3, 1, 2).contiguous()
    for module in model.modules():  # cumulative averages over the images
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(batch), 2):
            model(batch[start:start + 2])
    model.eval()
    started = time.perf_counter()
    with torch.no_grad():
        labels = np.concatenate([model(batch[i:i + 2])["out"].argmax(1).numpy()
                                 for i in range(0, len(batch), 2)]).astype(np.uint8)
    seconds = time.perf_counter() - started
    os.makedirs(output, exist_ok=True)
    onnx_path = os.path.join(output, "fcn_resnet50.onnx")
    torch.onnx.export(model, batch[:1], onnx_path, input_names=["input"],
                      output_names=["out", "aux"], dynamo=DYNAMO, opset_version=18,
                      dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                    "out": {0: "batch", 2: "height", 3: "width"},
                                    "aux": {0: "batch", 2: "height", 3: "width"}})
    np.savez_compressed(os.path.join(output, "torch_labels.npz"), labels=labels,
                        names=np.array([os.path.basename(p) for p in paths]))
    with open(os.path.join(output, "torch.json"), "w") as handle:
        json.dump({"torch": torch.__version__, "torchvision": torchvision.__version__,
                   "images_per_second": len(batch) / seconds,
                   "class_shares": np.bincount(labels.ravel(), minlength=3).tolist()}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:3])
