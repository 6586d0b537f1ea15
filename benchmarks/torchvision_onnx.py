"""A real PyTorch export served by segbeam: torchvision's FCN-ResNet50 through ONNX Runtime.

    python -m benchmarks.torchvision_onnx --torch_python /path/to/venv-with-torch/bin/python

torch and torchvision are not in segbeam's environment (the CPU wheels are large), so the
PyTorch side (``benchmarks/torch_export.py``) runs under another interpreter that has them:
it builds ``fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=True)``
(nothing is downloaded), exports it with ``torch.onnx.export`` and saves torch's own labels.
Then ``segbeam run --model fcn_resnet50.onnx --output_key out --preprocess torch`` segments
the same images, and the masks are compared with torch's pixel by pixel. Both of torch's
exporters are tried: ``dynamo`` (the default since PyTorch 2.9; weights in an external
``.onnx.data`` file) and ``torchscript``. Images: CamVid val frames beside the repository
(else generated scenes), at their own 360x480.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from benchmarks.common import ROOT, camvid_pairs, print_table, write_record

EXPORTERS = ("dynamo", "torchscript")


def _write_images(folder: str, count: int) -> str:
    os.makedirs(folder, exist_ok=True)
    pairs = camvid_pairs("val", count)
    if pairs:
        for path, _ in pairs:
            Image.open(path).convert("RGB").save(os.path.join(folder, os.path.basename(path)))
        return "CamVid val"
    from segbeam.pipeline.demo import synthetic_scene

    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(synthetic_scene(rng, 360, 480)[0]).save(
            os.path.join(folder, f"scene{index:03d}.png"))
    return "generated scenes"


def _run(command: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    return time.perf_counter() - started


def compare(exporter: str, images: str, work: str, torch_python: str) -> dict:
    exported = os.path.join(work, exporter)
    _run([torch_python, os.path.join(ROOT, "benchmarks", "torch_export.py"), images, exported],
         {"TORCH_ONNX_EXPORTER": exporter})
    output = os.path.join(exported, "segbeam")
    seconds = _run([sys.executable, "-m", "segbeam.pipeline.cli", "run", "--input",
                    os.path.join(images, "*.png"), "--model",
                    os.path.join(exported, "fcn_resnet50.onnx"), "--output_key", "out",
                    "--num_classes", "3", "--preprocess", "torch", "--input_size", "360x480",
                    "--batch_size", "2", "--no-crf", "--output", output])
    expected = np.load(os.path.join(exported, "torch_labels.npz"))
    with open(os.path.join(exported, "torch.json")) as handle:
        torch_side = json.load(handle)
    agreements, pixels, agreeing = [], 0, 0
    for name, labels in zip(expected["names"], expected["labels"]):
        served = np.asarray(Image.open(os.path.join(output, "masks", str(name))))
        same = int((served == labels).sum())
        agreements.append(same / labels.size)
        pixels, agreeing = pixels + labels.size, agreeing + same
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(exported, "*.onnx*")))
    return {"exporter": exporter, "files": " + ".join(files), "images": len(agreements),
            "agreement_pct": 100 * agreeing / pixels, "worst_image_pct": 100 * min(agreements),
            "torch_class_shares": torch_side["class_shares"],
            "segbeam_run_seconds": round(seconds, 1), "torch": torch_side["torch"],
            "torchvision": torch_side["torchvision"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch_python", required=True,
                        help="an interpreter with torch and torchvision installed")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--exporters", default=",".join(EXPORTERS))
    parser.add_argument("--output", default=None, help="record path (default: results/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="segbeam-torchvision-") as work:
        images = os.path.join(work, "images")
        source = _write_images(images, args.images)
        rows = [compare(e, images, work, args.torch_python) for e in args.exporters.split(",")]
    print_table(rows, [("exporter", "exporter", "s"), ("files", "files", "s"),
                       ("images", "images", "d"), ("agreement_pct", "agree %", ".4f"),
                       ("worst_image_pct", "worst image %", ".4f"),
                       ("segbeam_run_seconds", "segbeam run s", ".1f")],
                f"torchvision fcn_resnet50 -> ONNX -> segbeam run, vs torch ({source})")
    write_record("torchvision_onnx", rows, {"images": source, "target_pct": 99.9}, args.output)


if __name__ == "__main__":
    main()
