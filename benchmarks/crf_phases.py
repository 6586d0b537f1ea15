"""Where the keras CRF's time goes: each compiled step of ``KerasDenseCrf`` timed apart, on
the device Keras runs on, for images refined one at a time and in batches of one size.

The steps are the Gaussian lattice and its kernel (built once per image size and kept, or
for every batch with no kernel kept), the bilateral lattice (with the read of its size that
sizes the mean field's vertex table), and the mean field; ``other`` is the rest of a batch's
time: the eager operations between them (casts, padding, cutting back) and the argmax and
read-back of labels, as the fused path does. A step's time is taken from its call to its
result being ready (JAX: ``block_until_ready``; under TensorFlow on a GPU the steps are only
dispatched, so read the totals alone). Every time is the median over ``--repeats`` batches
after one untimed batch that compiles.

    KERAS_BACKEND=jax python -m benchmarks.crf_phases --sizes 360x480x11 1024x2048x19 \\
        --batches 1 16

Inputs are CamVid val frames (``benchmarks.common.CAMVID``) resized to each size, or, where
CamVid is absent, synthetic scenes; probabilities are made from their masks (the true class
likely, the others not), since the CRF's time does not depend on their values. Parameters
are DeepLab v2's at full resolution, 10 iterations, as in ``benchmarks.crf_backends``.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
from PIL import Image

from benchmarks.common import camvid_pairs, print_table, write_record
from benchmarks.crf_backends import PLAIN, keras_device
from segbeam.crf_keras import KerasDenseCrf

STEPS = ("gaussian lattice", "gaussian kernel", "bilateral lattice", "field")


def _ready(result) -> None:
    """Waits until ``result`` (a tensor or a tuple of them) has been computed."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        jax.block_until_ready(result)


class TimedCrf(KerasDenseCrf):
    """``KerasDenseCrf`` whose compiled steps record how long each call took, by step."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seconds: dict = collections.defaultdict(float)

    def _function(self, key, make):
        compiled = super()._function(key, make)

        def timed(*args):
            start = time.perf_counter()
            result = compiled(*args)
            _ready(result)
            self.seconds[key[0]] += time.perf_counter() - start
            return result

        return timed


def scenes(height: int, width: int, classes: int, count: int, seed: int = 0):
    """``count`` (image, probabilities) pairs of one size: CamVid val frames where present,
    else synthetic scenes; probabilities 0.7 on the mask's class, the rest shared out with
    noise."""
    from segbeam.pipeline.demo import synthetic_scene

    rng = np.random.default_rng(seed)
    paths = camvid_pairs("val", count)
    pairs = []
    for index in range(count):
        if paths:
            image_path, mask_path = paths[index % len(paths)]
            image = Image.open(image_path).convert("RGB").resize((width, height),
                                                                 Image.BILINEAR)
            mask = Image.open(mask_path).resize((width, height), Image.NEAREST)
            image, mask = np.asarray(image), np.asarray(mask).astype(np.int64) % classes
        else:
            image, mask = synthetic_scene(rng, height, width)
        logits = rng.normal(0.0, 0.5, (height, width, classes)).astype(np.float32)
        logits[np.arange(height)[:, None], np.arange(width)[None], mask] += 3.0
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        pairs.append((image, (probs / probs.sum(-1, keepdims=True)).astype(np.float32)))
    return pairs, ("CamVid val" if paths else "synthetic")


def _batch(crf: TimedCrf, pairs) -> float:
    """Seconds to refine ``pairs`` together and read their labels back."""
    from keras import ops

    start = time.perf_counter()
    marginals = crf.refine_many([image for image, _ in pairs],
                                np.stack([probs for _, probs in pairs]), PLAIN)
    ops.convert_to_numpy(ops.cast(ops.argmax(marginals, axis=-1), "uint8"))
    return time.perf_counter() - start


def phases(height: int, width: int, classes: int, batch: int, keep_kernel: bool,
           repeats: int) -> dict:
    """One row: per-batch median seconds of each step and in all, per image in ms."""
    pairs, source = scenes(height, width, classes, batch)
    crf = TimedCrf(kernel_bytes=(1 << 30) if keep_kernel else 0)
    _batch(crf, pairs)  # compiles
    totals, steps = [], collections.defaultdict(list)
    for _ in range(repeats):
        crf.seconds.clear()
        totals.append(_batch(crf, pairs))
        for step in STEPS:
            steps[step].append(crf.seconds.get(step, 0.0))
    per_image = {step: 1000 * float(np.median(steps[step])) / batch for step in STEPS}
    total = 1000 * float(np.median(totals)) / batch
    return {"size": f"{height}x{width}x{classes}", "inputs": source, "batch": batch,
            "kernel": "kept" if keep_kernel else "built per batch",
            **{f"{step.replace(' ', '_')}_ms": ms for step, ms in per_image.items()},
            "other_ms": total - sum(per_image.values()), "total_ms": total,
            "images_per_s": 1000 / total}


def _size(text: str) -> tuple[int, int, int]:
    try:
        height, width, classes = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxWxC such as 360x480x11, got {text!r}")
    return height, width, classes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_size, nargs="+", default=[(360, 480, 11)],
                        help="image sizes and classes, HxWxC")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4],
                        help="images refined together")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per row")
    parser.add_argument("--output", help="JSON record path (default "
                        "benchmarks/results/crf_phases.json)")
    args = parser.parse_args(argv)
    print(f"keras CRF steps on {keras_device()}", flush=True)
    rows = []
    for height, width, classes in args.sizes:
        for batch in args.batches:
            for keep_kernel in (True, False):
                rows.append(phases(height, width, classes, batch, keep_kernel, args.repeats))
                print(f"  {rows[-1]}", flush=True)
    print_table(rows, [("size", "size", ""), ("batch", "batch", "d"), ("kernel", "kernel", ""),
                       *[(f"{step.replace(' ', '_')}_ms", step, ".2f") for step in STEPS],
                       ("other_ms", "other", ".2f"), ("total_ms", "ms per image", ".2f"),
                       ("images_per_s", "images/s", ".1f")],
                "keras CRF, per image (ms), median over batches")
    write_record("crf_phases", rows, {"device": keras_device()}, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
