"""Host-side input normalisation: the pipeline's ``preprocess`` against the textbook numpy
formula (``(x / 255 - mean) / std`` on a float32 batch), per preset, on one batch.

    python -m benchmarks.preprocess --input_size 360x480 --batch 16

Both start from the uint8 batch the handler stacks; the formula's time includes its cast to
float32, as the handler's did. On a GPU this is host time the model does not hide: at
360x480 the U-Net takes 0.26 ms per image on an H200 (RESULTS.md, section 1).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import print_table, timed, write_record
from segbeam.geometry import parse_size
from segbeam.preprocessing import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD, preprocess

FORMULAS = {
    "none": lambda x: x,
    "scale_0_1": lambda x: x / 255.0,
    "scale_-1_1": lambda x: x / 127.5 - 1.0,
    "caffe": lambda x: x[..., ::-1] - CAFFE_BGR_MEAN,
    "torch": lambda x: (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD,
}


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
    batch = np.random.default_rng(0).integers(0, 256, (args.batch, height, width, 3), np.uint8)
    rows = []
    for name, formula in FORMULAS.items():
        textbook = lambda: formula(batch.astype(np.float32)).astype(np.float32)  # noqa: E731
        textbook_s, expected = timed(textbook, repeats=args.repeats)
        pipeline_s, result = timed(preprocess, batch, name, repeats=args.repeats)
        rows.append({"preset": name,
                     "formula_ms_per_image": 1000 * textbook_s / args.batch,
                     "pipeline_ms_per_image": 1000 * pipeline_s / args.batch,
                     "speed_up": textbook_s / pipeline_s,
                     "max_abs_difference": float(np.abs(result - expected).max())})
    print_table(rows, [("preset", "preset", ""),
                       ("formula_ms_per_image", "formula ms/image", ".3f"),
                       ("pipeline_ms_per_image", "preprocess ms/image", ".3f"),
                       ("speed_up", "speed-up", ".2f"),
                       ("max_abs_difference", "max |difference|", ".1e")],
                f"Input normalisation, batch {args.batch} of {args.input_size} uint8 RGB")
    write_record("preprocess", rows, {"input_size": args.input_size, "batch": args.batch},
                 args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
