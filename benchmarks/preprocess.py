"""The handler's host-side batch preparation: images drawn onto the model's canvas, stacked,
cast to float32 and normalised (``--preprocess``), as the pipeline does it (``place_batch``
then ``preprocess``) against the textbook numpy way (a zero canvas per image, ``np.stack``,
``astype(float32)``, then the formula, e.g. ``(x / 255 - mean) / std``), per preset.

    python -m benchmarks.preprocess --input_size 360x480 --batch 16

On a GPU this is host time the model does not hide: at 360x480 the U-Net takes 0.26 ms per
image on an H200 (RESULTS.md, section 1).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import print_table, timed, write_record
from segbeam.geometry import Placement, parse_size, place_batch
from segbeam.preprocessing import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD, preprocess

FORMULAS = {
    "none": lambda x: x,
    "scale_0_1": lambda x: x / 255.0,
    "scale_-1_1": lambda x: x / 127.5 - 1.0,
    "caffe": lambda x: x[..., ::-1] - CAFFE_BGR_MEAN,
    "torch": lambda x: (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD,
}


def _stacked(images: list[np.ndarray]) -> np.ndarray:
    """Each image on its own zero canvas, then stacked: two copies of the batch."""
    canvases = []
    for image in images:
        canvas = np.zeros_like(image)
        canvas[: image.shape[0], : image.shape[1]] = image
        canvases.append(canvas)
    return np.stack(canvases)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.preprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_size", default="360x480")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20, help="the fastest call counts")
    parser.add_argument("--output", help="JSON record path (default: "
                        "benchmarks/results/preprocess.json)")
    args = parser.parse_args(argv)
    height, width = parse_size(args.input_size)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(args.batch)]
    placements = [Placement(height, width, height, width)] * args.batch
    rows = []
    # The last row: `none` for a Keras model, which gets the uint8 batch and casts in its graph.
    for name, keras_model in [(name, False) for name in FORMULAS] + [("none", True)]:
        formula = FORMULAS[name]
        textbook = lambda: formula(_stacked(images).astype(np.float32)).astype(  # noqa: E731
            np.float32)
        placed = lambda: place_batch(images, placements, (height, width))  # noqa: E731
        pipeline = placed if keras_model else lambda: preprocess(placed(), name)  # noqa: E731
        textbook_s, expected = timed(textbook, repeats=args.repeats)
        pipeline_s, result = timed(pipeline, repeats=args.repeats)
        rows.append({"preset": name + (" (Keras model: uint8 into its graph)" if keras_model
                                       else ""),
                     "formula_ms_per_image": 1000 * textbook_s / args.batch,
                     "pipeline_ms_per_image": 1000 * pipeline_s / args.batch,
                     "speed_up": textbook_s / pipeline_s,
                     "max_abs_difference": float(np.abs(result.astype(np.float32)
                                                         - expected).max())})
    print_table(rows, [("preset", "preset", ""),
                       ("formula_ms_per_image", "textbook ms/image", ".3f"),
                       ("pipeline_ms_per_image", "pipeline ms/image", ".3f"),
                       ("speed_up", "speed-up", ".2f"),
                       ("max_abs_difference", "max |difference|", ".1e")],
                f"Batch preparation, {args.batch} uint8 RGB images of {args.input_size}")
    write_record("preprocess", rows, {"input_size": args.input_size, "batch": args.batch},
                 args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
