"""Inference benchmark: a per-image ``model.predict(np.expand_dims(img, 0))`` loop, as the
source notebooks do, versus the pipeline's model handler with batching, and the model's raw
rate on a batch already on the device (so that the handler's own overhead shows).

    python -m benchmarks.inference --model unet --input_size 360x480
    KERAS_BACKEND=jax python -m benchmarks.inference ...      # e.g. on a GPU without TensorFlow
    KERAS_BACKEND=jax python -m benchmarks.inference --fused_crf ...   # + model and CRF fused

With --fused_crf, two more variants run the handler with the keras CRF backend fused after
the model on the device (``segbeam.transforms.fused_crf``; forced on a CPU too): at the CRF
stage's defaults, and plain (full resolution, every class), against the model's raw rate.

Each variant runs in a fresh process (its own peak memory, no warm-up shared with another
variant) over the same images, CamVid val frames beside the repository (else generated
scenes), and keeps the fastest of --repeats passes. A registry name is built with seeded
random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from benchmarks.common import (RESULTS, ROOT, camvid_pairs, print_table, report_to_parent,
                               run_child, timed, write_record)

CACHE = os.path.join(ROOT, "benchmarks", ".cache")


def _images(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    from PIL import Image

    pairs = camvid_pairs("val", count)
    if pairs:  # fewer frames than asked for (a subset carried to a device): used in turn
        frames = [np.asarray(Image.open(p).convert("RGB").resize(size[::-1], Image.BILINEAR))
                  for p, _ in pairs]
        return [frames[i % len(frames)] for i in range(count)]
    from segbeam.pipeline.demo import synthetic_scene

    rng = np.random.default_rng(0)
    return [synthetic_scene(rng, *size)[0] for _ in range(count)]


def model_file(name: str, classes: int) -> str:
    """A saved .keras file for ``name``: itself if it is one, else the registry model built
    once with seeded random weights."""
    if name.endswith(".keras"):
        return os.path.abspath(name)
    path = os.path.join(CACHE, f"{name}-{classes}.keras")
    if not os.path.exists(path):
        import keras

        from segbeam import models

        keras.utils.set_random_seed(0)
        os.makedirs(CACHE, exist_ok=True)
        models.create_model(name, num_classes=classes).save(path)
    return path


def _device(model_path: str = "") -> str:
    """Where the model ran: the Keras backend and its platform, or for the graph formats the
    runtime that serves them."""
    import keras

    from segbeam.models.formats import savedmodel_folder

    backend = keras.backend.backend()
    if model_path.endswith(".onnx"):
        import onnxruntime

        from segbeam.models.graph_runtimes import onnx_providers

        return "onnxruntime:" + onnx_providers(onnxruntime.get_available_providers())[0]
    if os.path.isdir(model_path) and savedmodel_folder(model_path):
        backend = "tensorflow"
    if backend == "jax":
        import jax

        return f"jax:{jax.devices()[0].platform}"
    if backend == "tensorflow":
        import tensorflow as tf

        return "tensorflow:" + ("gpu" if tf.config.list_physical_devices("GPU") else "cpu")
    return backend


def _loop(model_path: str, images: list[np.ndarray], _batch: int):
    """The notebook way: one predict() call per image, then argmax."""
    from segbeam.models.source import load_model

    model = load_model(model_path)
    model.predict(np.expand_dims(images[0], 0), verbose=0)  # warm-up: builds predict()

    def one_pass():
        for image in images:
            np.argmax(model.predict(np.expand_dims(image, 0), verbose=0)[0], axis=-1)
    return one_pass


def _handler(model_path: str, images: list[np.ndarray], batch: int,
             keep_probabilities: bool = True, crf=None):
    """The pipeline's handler: batch, fit to the canvas, predict, softmax, map back, labels
    (with ``keep_probabilities=False``, as in a run without the CRF: labels alone; with
    ``crf``, CrfParams of the keras backend, the CRF fused after the model)."""
    from segbeam.inference import InferenceSettings
    from segbeam.models.source import ModelSource
    from segbeam.records import SegmentationRecord
    from segbeam.transforms.fused_crf import FusedCrf
    from segbeam.transforms.inference import KerasSegmentationHandler

    records = [SegmentationRecord(f"k{i}", "s", image=image) for i, image in enumerate(images)]
    size = images[0].shape[:2]
    handler = KerasSegmentationHandler(ModelSource(model_path, input_size=size),
                                       InferenceSettings(batch_size=batch),
                                       keep_probabilities=keep_probabilities,
                                       fused_crf=FusedCrf(crf) if crf else None,
                                       fuse=True if crf else None)
    predictor = handler.load_model()
    for _ in range(2):  # warm-up: the first batch decides the output kind, the second compiles
        handler.run_inference(records[:batch], predictor)

    def one_pass():
        for first in range(0, len(records), batch):
            handler.run_inference(records[first:first + batch], predictor)
    return one_pass


def _raw(model_path: str, images: list[np.ndarray], batch: int):
    """The model alone, on batches already on the device in its input format."""
    import keras

    from segbeam.models.source import load_model

    model = load_model(model_path)
    batches = [np.stack(images[i:i + batch]).astype(np.float32)
               for i in range(0, len(images), batch)]
    backend = keras.backend.backend()
    if backend == "jax":  # forward and argmax jitted on the device; labels come back
        import jax
        import jax.numpy as jnp

        forward = jax.jit(lambda x: jnp.argmax(model(x, training=False), axis=-1))
        batches = [jax.device_put(b) for b in batches]
        sync = lambda y: y.block_until_ready()  # noqa: E731
    elif backend == "tensorflow":
        import tensorflow as tf

        forward = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1))
        batches = [tf.constant(b) for b in batches]
        sync = lambda y: y.numpy()  # noqa: E731
    else:
        forward, sync = (lambda x: np.argmax(model(x, training=False), -1)), (lambda y: y)
    sync(forward(batches[0]))  # warm-up: traces and compiles

    def one_pass():
        for item in batches:
            sync(forward(item))
    return one_pass


def _handler_labels(model_path: str, images: list[np.ndarray], batch: int):
    return _handler(model_path, images, batch, keep_probabilities=False)


def _handler_fused(model_path: str, images: list[np.ndarray], batch: int):
    from segbeam.crf import CrfParams

    return _handler(model_path, images, batch, crf=CrfParams(backend="keras"))


def _handler_fused_plain(model_path: str, images: list[np.ndarray], batch: int):
    from segbeam.crf import CrfParams

    return _handler(model_path, images, batch,
                    crf=CrfParams(backend="keras", scale=1.0, class_floor=0.0))


# "handler" is what a run with the CRF does (probabilities kept for it); "handler --no-crf"
# computes the same labels as the loop and nothing more; the fused variants add the CRF.
VARIANTS = {"loop": _loop, "handler": _handler, "handler --no-crf": _handler_labels,
            "raw": _raw, "fused crf": _handler_fused, "fused crf plain": _handler_fused_plain}


def child(args) -> None:
    """One variant, in this process; prints its JSON result as the last line."""
    from segbeam.geometry import parse_size

    images = _images(args.images, parse_size(args.input_size))
    one_pass = VARIANTS[args.variant](args.model, images, args.batch)
    seconds, _ = timed(one_pass, repeats=args.repeats)  # the best of several passes
    report_to_parent(variant=args.variant, batch=args.batch, images=len(images), seconds=seconds,
                     images_per_s=len(images) / seconds,
                     ms_per_image=1000 * seconds / len(images), device=_device(args.model))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet",
                        help="a registry name (random weights) or a .keras file")
    parser.add_argument("--num_classes", type=int, default=11)
    parser.add_argument("--input_size", default="360x480")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch_sizes", default="1,4,8,16")
    parser.add_argument("--repeats", type=int, default=3,
                        help="passes over the images per variant; the fastest counts")
    parser.add_argument("--output", help="JSON record path (default: "
                        "benchmarks/results/inference-MODEL-HxW.json)")
    parser.add_argument("--fused_crf", action="store_true",
                        help="also time the handler with the keras CRF fused after the model")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child runs
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        child(args)
        return 0
    model = model_file(args.model, args.num_classes)
    common = ["--model", model, "--input_size", args.input_size, "--images", str(args.images),
              "--repeats", str(args.repeats)]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    variants = ("handler", "handler --no-crf", "raw") + (
        ("fused crf", "fused crf plain") if args.fused_crf else ())
    plan = [("loop", 1)] + [(variant, b) for variant in variants for b in batches]
    rows = []
    for variant, batch in plan:
        print(f"running {variant} (batch {batch}) ...", flush=True)
        rows.append(run_child("benchmarks.inference",
                              [*common, "--variant", variant, "--batch", str(batch)]))
        print(f"  {rows[-1]['images_per_s']:.2f} images/s, {rows[-1]['ms_per_image']:.1f} "
              f"ms/image on {rows[-1]['device']}", flush=True)
    loop = rows[0]["images_per_s"]
    for row in rows:
        row["vs_loop"] = row["images_per_s"] / loop
    print_table(rows, [("variant", "variant", ""), ("batch", "batch", "d"),
                       ("images_per_s", "images/s", ".2f"), ("ms_per_image", "ms/image", ".1f"),
                       ("vs_loop", "vs loop", ".2f"), ("peak_rss_mib", "peak RSS MiB", ".0f"),
                       ("device", "device", "")],
                f"Inference: {args.model}, {args.num_classes} classes, {args.input_size}, "
                f"{rows[0]['images']} images")
    summary = {"model": args.model, "input_size": args.input_size, "device": rows[0]["device"]}
    print()
    measured = [("handler", "handler"), ("handler --no-crf", "handler_no_crf")]
    if args.fused_crf:
        measured += [("fused crf", "fused_crf"), ("fused crf plain", "fused_crf_plain")]
    for variant, prefix in measured:
        best = max((r for r in rows if r["variant"] == variant), key=lambda r: r["images_per_s"])
        raw = next(r for r in rows if r["variant"] == "raw" and r["batch"] == best["batch"])
        summary.update({f"{prefix}_best_batch": best["batch"],
                        f"{prefix}_vs_loop": best["images_per_s"] / loop,
                        f"{prefix}_vs_raw": best["images_per_s"] / raw["images_per_s"]})
        print(f"{variant} (best batch {best['batch']}): {best['images_per_s'] / loop:.2f}x the "
              f"per-image loop, {100 * best['images_per_s'] / raw['images_per_s']:.0f}% of the "
              f"model's raw rate at that batch")
    model_name = os.path.splitext(os.path.basename(args.model))[0]
    write_record("inference", rows, summary, args.output or os.path.join(
        RESULTS, f"inference-{model_name}-{args.input_size}.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
