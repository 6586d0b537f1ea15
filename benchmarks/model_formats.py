"""One architecture served from each format: .keras (Keras on its backend), a SavedModel
(TensorFlow) and ONNX (ONNX Runtime), through the pipeline's model handler.

    python -m benchmarks.model_formats --model unet --input_size 360x480

The registry model is built once with seeded random weights and saved as ``.keras``, then
exported by Keras itself (``model.export()``: a SavedModel, and ONNX through tf2onnx). Each
format runs in a fresh process (``benchmarks.inference``'s handler variants) over the same
images: with probabilities kept (a run with the CRF) and labels only (``--no-crf``). Rates
are side by side from one run; the ratio is to the ``.keras`` row of the same variant.
"""

from __future__ import annotations

import argparse
import os

from benchmarks.common import print_table, run_child, write_record
from benchmarks.inference import model_file
from segbeam.geometry import parse_size

FORMATS = ("keras", "savedmodel", "onnx")


def exported(keras_path: str, model_format: str, size: tuple[int, int]) -> str:
    """``keras_path`` in ``model_format``, exported once beside it."""
    if model_format == "keras":
        return keras_path
    stem = keras_path[:-len(".keras")]
    path = f"{stem}.onnx" if model_format == "onnx" else f"{stem}_savedmodel"
    if not os.path.exists(path):
        import numpy as np

        from segbeam.models.source import load_model

        model = load_model(keras_path)  # with segbeam's custom layers registered
        model(np.zeros((1, *size, 3), np.float32))  # the ONNX exporter traces a called model
        model.export(path, format="onnx" if model_format == "onnx" else "tf_saved_model",
                     verbose=False)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_formats",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet", help="a registry name (random weights)")
    parser.add_argument("--num_classes", type=int, default=11)
    parser.add_argument("--input_size", default="360x480")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", help="JSON record path (default: "
                        "benchmarks/results/model_formats-MODEL-HxW.json)")
    args = parser.parse_args(argv)
    keras_path = model_file(args.model, args.num_classes)
    rows = []
    for variant in ("handler", "handler --no-crf"):
        for model_format in FORMATS:
            path = exported(keras_path, model_format, parse_size(args.input_size))
            print(f"running {variant} on {model_format} ...", flush=True)
            row = run_child("benchmarks.inference", [
                "--model", path, "--input_size", args.input_size, "--images", str(args.images),
                "--repeats", str(args.repeats), "--variant", variant,
                "--batch", str(args.batch)])
            rows.append({"format": model_format, **row})
        keras_rate = rows[-len(FORMATS)]["images_per_s"]
        for row in rows[-len(FORMATS):]:
            row["vs_keras"] = row["images_per_s"] / keras_rate
    print_table(rows, [("variant", "variant", ""), ("format", "format", ""),
                       ("images_per_s", "images/s", ".2f"), ("ms_per_image", "ms/image", ".1f"),
                       ("vs_keras", "vs .keras", ".2f"), ("device", "device", "")],
                f"{args.model} at {args.input_size}, batch {args.batch}, {args.images} images")
    write_record("model_formats", rows, {"model": args.model, "input_size": args.input_size},
                 args.output or None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
