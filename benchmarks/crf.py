"""CRF benchmark: pydensecrf called plainly at full resolution versus the pipeline's CRF stage.

Part 1, on CamVid val (../shared/data/camvid/val) with one trained model: per-image time and
dataset mIoU of the plain call and of the stage over a grid of settings (resolution, class
floor, iterations): the speed/accuracy curve. Part 2: per-image time of the plain call and of
the stage's defaults for image sizes 360x480, 512x512, 1024x1024 and 2, 11, 21 classes.

    python -m benchmarks.crf --model runs/unet/best.keras --input_size 128x160

Without --model, a U-Net is trained on CamVid train for --train_minutes first (cached under
benchmarks/.cache/). Both parts run single-threaded, one image at a time, as the stage does.
``--part backends`` runs part 3 instead: the keras backend against the plain pydensecrf call
(equivalence and speed; see ``benchmarks/crf_backends.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from benchmarks.common import CAMVID, ROOT, camvid_pairs, print_table, write_record
from segbeam.crf import CrfParams, labels_from_probabilities
from segbeam.metrics import confusion_matrix, summarise_confusion
from segbeam.records import SegmentationRecord
from segbeam.refinement import refine_record

CAMVID_CLASSES, CAMVID_IGNORE = 11, 11
CACHE = os.path.join(ROOT, "benchmarks", ".cache")


def plain_crf(image: np.ndarray, probabilities: np.ndarray, params: CrfParams) -> np.ndarray:
    """The notebook way: unary_from_softmax, DenseCRF2D at full resolution, argmax."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    height, width, classes = probabilities.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(unary_from_softmax(
        np.ascontiguousarray(probabilities.transpose(2, 0, 1), dtype=np.float32)))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                             rgbim=np.array(image, order="C"), compat=params.bi_w)
    marginals = np.asarray(crf.inference(params.iterations)).reshape(classes, height, width)
    return np.argmax(marginals, axis=0).astype(np.uint8)


def stage_crf(image: np.ndarray, probabilities: np.ndarray, params: CrfParams) -> np.ndarray:
    """The pipeline's CRF stage on one record (float16 probabilities in, labels out)."""
    record = SegmentationRecord("k", "s", image=image, probabilities=probabilities)
    return refine_record(record, params).crf_labels


def _trained_model(minutes: float) -> str:
    path = os.path.join(CACHE, "unet", "best.keras")
    if os.path.exists(path):
        return path
    print(f"no --model given: training a U-Net on CamVid train for {minutes:g} min "
          f"into {os.path.relpath(os.path.dirname(path), ROOT)}/", flush=True)
    subprocess.run([sys.executable, "-m", "segbeam.pipeline.cli", "train", "--model", "unet",
                    "--images", os.path.join(CAMVID, "train"),
                    "--masks", os.path.join(CAMVID, "trainannot"),
                    "--val_images", os.path.join(CAMVID, "val"),
                    "--val_masks", os.path.join(CAMVID, "valannot"),
                    "--num_classes", "11", "--ignore_index", "11", "--input_size", "128x160",
                    "--class_weights", "median_frequency", "--batch_size", "8",
                    "--epochs", "500", "--max_minutes", str(minutes),
                    "--output", os.path.dirname(path), "--overwrite"], check=True)
    return path


def predict_val(model: str, input_size: tuple[int, int], limit: int | None):
    """CamVid val images, masks and the model's float16 probabilities at full resolution,
    computed by the pipeline's own inference handler."""
    from segbeam.geometry import parse_size
    from segbeam.models.source import ModelSource
    from segbeam.transforms.inference import KerasSegmentationHandler

    pairs = camvid_pairs("val", limit)
    handler = KerasSegmentationHandler(ModelSource(model, num_classes=CAMVID_CLASSES,
                                                   input_size=parse_size(input_size)))
    predictor = handler.load_model()
    images, masks, probabilities = [], [], []
    for start in range(0, len(pairs), 8):
        batch = [SegmentationRecord(os.path.basename(p), p,
                                    image=np.asarray(Image.open(p).convert("RGB")))
                 for p, _ in pairs[start:start + 8]]
        for record, (_, mask) in zip(handler.run_inference(batch, predictor), pairs[start:]):
            images.append(record.image)
            masks.append(np.asarray(Image.open(mask)))
            probabilities.append(record.probabilities)
    return images, masks, probabilities


def _evaluate(name, crf, images, masks, probabilities, params) -> dict:
    confusion = np.zeros((CAMVID_CLASSES, CAMVID_CLASSES), dtype=np.int64)
    seconds = 0.0
    if crf:
        crf(images[0], probabilities[0], params)  # warm-up, untimed
    for image, mask, probs in zip(images, masks, probabilities):
        start = time.perf_counter()
        labels = crf(image, probs, params) if crf else labels_from_probabilities(probs)
        seconds += time.perf_counter() - start
        confusion += confusion_matrix(labels, mask, CAMVID_CLASSES, CAMVID_IGNORE)
    figures = summarise_confusion(confusion)
    return {"variant": name, "scale": params.scale if crf else None,
            "class_floor": params.class_floor if crf else None,
            "iterations": params.iterations if crf else None,
            "ms_per_image": 1000 * seconds / len(images) if crf else None,
            "miou": 100 * figures["miou"], "pixel_accuracy": 100 * figures["pixel_accuracy"]}


GRID = [(1.0, 0.0, 10), (1.0, 0.01, 10), (1.0, 0.0, 5), (0.75, 0.01, 10), (0.6, 0.01, 10),
        (0.5, 0.01, 10), (0.5, 0.01, 5), (0.4, 0.01, 10), (0.33, 0.01, 10), (0.25, 0.01, 10)]


def naive_half_resolution(image: np.ndarray, probabilities: np.ndarray,
                          params: CrfParams) -> np.ndarray:
    """Half resolution with every spatial std scaled, the Gaussian's too (to 0.5 px): what the
    stage avoids, shown for comparison."""
    from segbeam.crf import _pydensecrf
    from segbeam.geometry import resize_bilinear

    height, width = probabilities.shape[:2]
    small = (round(height * params.scale), round(width * params.scale))
    small_image = np.asarray(Image.fromarray(image).resize(small[::-1], Image.BILINEAR))
    scaled = params.replace(pos_xy_std=params.pos_xy_std * params.scale,
                             bi_xy_std=params.bi_xy_std * params.scale)
    marginals = _pydensecrf(small_image, resize_bilinear(probabilities, *small), scaled, 1e-5)
    return labels_from_probabilities(resize_bilinear(marginals, height, width))


def accuracy_curve(images, masks, probabilities) -> list[dict]:
    rows = [_evaluate("no CRF (model's labels)", None, images, masks, probabilities,
                      CrfParams())]
    plain = _evaluate("plain pydensecrf, full resolution", plain_crf, images, masks,
                      probabilities, CrfParams())
    rows.append(plain)
    defaults = CrfParams()
    for scale, floor, iterations in GRID:
        # The curve explores resolution itself: no min_side floor (360 px * 0.25 < 128).
        is_default = (scale, floor, iterations) == (defaults.scale, defaults.class_floor,
                                                     defaults.iterations)
        params = defaults if is_default else CrfParams(
            iterations=iterations, scale=scale, class_floor=floor, min_side=1)
        default = "  (default)" if is_default else ""
        rows.append(_evaluate(f"stage scale={scale:g} floor={floor:g} it={iterations}{default}",
                              stage_crf, images, masks, probabilities, params))
    rows.append(_evaluate("naive scale=0.5, Gaussian std scaled too", naive_half_resolution,
                          images, masks, probabilities, defaults))
    for row in rows[2:]:
        row["speedup"] = plain["ms_per_image"] / row["ms_per_image"]
        row["miou_change"] = row["miou"] - plain["miou"]
    rows[0]["miou_change"] = rows[0]["miou"] - plain["miou"]
    return rows


def _class_variant(probabilities: np.ndarray, classes: int, rng) -> np.ndarray:
    """Real CamVid probabilities as a 2-, 11- or 21-class output: 2 merges the classes into
    background / road-level classes; 21 adds 10 classes the image does not hold, with the small
    probabilities a softmax gives an absent class (1e-5 to 1e-3)."""
    probs = probabilities.astype(np.float32)
    if classes == 2:
        ground = [3, 4, 8, 9, 10]  # road, pavement, car, pedestrian, bicyclist
        merged = np.stack([np.delete(probs, ground, axis=-1).sum(-1),
                           probs[..., ground].sum(-1)], axis=-1)
        return merged
    if classes == 21:
        absent = 10 ** rng.uniform(-5, -3, size=probs.shape[:2] + (10,)).astype(np.float32)
        probs = np.concatenate([probs * (1 - absent.sum(-1, keepdims=True)), absent], -1)
    return probs


def size_grid(images, probabilities, per_cell: int, params: CrfParams) -> list[dict]:
    from segbeam.geometry import resize_bilinear

    rng = np.random.default_rng(0)
    rows = []
    for height, width in ((360, 480), (512, 512), (1024, 1024)):
        for classes in (2, 11, 21):
            timings = {"plain": 0.0, "stage": 0.0}
            agreement = []
            for image, probs in list(zip(images, probabilities))[:per_cell]:
                scaled = np.asarray(Image.fromarray(image).resize((width, height),
                                                                  Image.BILINEAR))
                variant = _class_variant(resize_bilinear(probs, height, width), classes, rng)
                half = variant.astype(np.float16)  # what the inference stage hands over
                if not any(timings.values()):  # warm-up, untimed
                    plain_crf(scaled, variant, CrfParams())
                    stage_crf(scaled, half, params)
                labels = {}
                for name, crf in (("plain", plain_crf), ("stage", stage_crf)):
                    start = time.perf_counter()
                    labels[name] = crf(scaled, half if name == "stage" else variant,
                                       CrfParams() if name == "plain" else params)
                    timings[name] += time.perf_counter() - start
                agreement.append(float(np.mean(labels["plain"] == labels["stage"])))
            rows.append({"size": f"{height}x{width}", "classes": classes,
                         "plain_ms": 1000 * timings["plain"] / per_cell,
                         "stage_ms": 1000 * timings["stage"] / per_cell,
                         "speedup": timings["plain"] / timings["stage"],
                         "agreement": 100 * float(np.mean(agreement))})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained CamVid .keras model (11 classes)")
    parser.add_argument("--input_size", default="128x160",
                        help="the model's input size, as for `segbeam run`")
    parser.add_argument("--train_minutes", type=float, default=10,
                        help="without --model: how long to train one")
    parser.add_argument("--images", type=int, default=None, help="first N val images only")
    parser.add_argument("--per_cell", type=int, default=3,
                        help="images timed per size x classes cell (part 2)")
    parser.add_argument("--many_sizes", type=int, default=24,
                        help="part 3d: images of as many sizes (0 leaves the part out)")
    parser.add_argument("--crf_batch", type=int, default=4,
                        help="part 3c: images of one size the keras backend refines together")
    parser.add_argument("--part", choices=("stage", "backends"), default="stage",
                        help="stage: parts 1 and 2; backends: part 3 (keras vs pydensecrf)")
    parser.add_argument("--output", help="JSON record path (default benchmarks/results/crf.json, "
                                         "crf_backends.json for part 3)")
    args = parser.parse_args(argv)
    if not camvid_pairs("val"):
        parser.error(f"CamVid not found at {os.path.normpath(CAMVID)}; this benchmark measures "
                     f"mIoU on its val split")
    model = args.model or _trained_model(args.train_minutes)
    images, masks, probabilities = predict_val(model, args.input_size, args.images)
    print(f"{len(images)} CamVid val images, model {model}", flush=True)
    if args.part == "backends":
        return compare_backends(model, images, masks, probabilities, args)

    curve = accuracy_curve(images, masks, probabilities)
    print_table(curve, [("variant", "variant", ""), ("ms_per_image", "ms/image", ".0f"),
                        ("speedup", "speed-up", ".2f"), ("miou", "mIoU", ".2f"),
                        ("miou_change", "vs plain", "+.2f"),
                        ("pixel_accuracy", "pixel acc.", ".2f")],
                f"Part 1: CamVid val ({len(images)} images at 360x480), DeepLab CRF weights")
    default = CrfParams()
    grid = size_grid(images, probabilities, args.per_cell, default)
    print_table(grid, [("size", "size", ""), ("classes", "classes", "d"),
                       ("plain_ms", "plain ms", ".0f"), ("stage_ms", "stage ms", ".0f"),
                       ("speedup", "speed-up", ".2f"),
                       ("agreement", "same label as plain %", ".2f")],
                f"Part 2: plain call vs the stage's defaults (scale={default.scale:g}, "
                f"class_floor={default.class_floor:g}, iterations={default.iterations})")
    chosen = next(row for row in curve if row["variant"].endswith("(default)"))
    summary = {"model": model, "images": len(images), "default": dataclasses.asdict(default),
               "default_speedup_camvid": chosen["speedup"],
               "default_miou_change": chosen["miou_change"],
               "min_speedup_over_sizes": min(row["speedup"] for row in grid)}
    print(f"\nthe stage's defaults: {chosen['speedup']:.2f}x the plain call on CamVid val, "
          f"mIoU {chosen['miou_change']:+.2f} points; {summary['min_speedup_over_sizes']:.2f}x "
          f"or more over every size and class count")
    write_record("crf", {"curve": curve, "sizes": grid}, summary, args.output)
    return 0


def compare_backends(model, images, masks, probabilities, args) -> int:
    from benchmarks import crf_backends as part3

    device = part3.keras_device()
    camvid = part3.equivalence(images, masks, probabilities, plain_crf, CAMVID_CLASSES,
                               CAMVID_IGNORE)
    print_table([camvid], [("images", "images", "d"), ("agreement", "same label %", ".4f"),
                           ("worst_image_agreement", "worst image %", ".4f"),
                           ("changed_by_crf", "CRF changed %", ".2f"),
                           ("miou_raw", "mIoU raw", ".2f"), ("miou_plain", "mIoU pydensecrf",
                                                             ".3f"),
                           ("miou_keras", "mIoU keras", ".3f"),
                           ("miou_difference", "difference", "+.3f")],
                f"Part 3a: keras backend ({device}) vs plain pydensecrf, CamVid val, full "
                f"resolution")
    synthetic = part3.scaled_inputs(images, probabilities, 512, 512, 21, args.per_cell * 2,
                                    seed=1)
    synthetic_row = part3.equivalence([i for i, _ in synthetic], None,
                                      [p for _, p in synthetic], plain_crf, 21, 255)
    print_table([synthetic_row], [("images", "images", "d"), ("agreement", "same label %",
                                                              ".4f"),
                                  ("worst_image_agreement", "worst image %", ".4f"),
                                  ("changed_by_crf", "CRF changed %", ".2f")],
                "Part 3b: the same on 512x512x21 inputs")
    print("\nPart 3c: per-image time, side by side (median)", flush=True)
    sizes = part3.speed(images, probabilities, plain_crf, args.per_cell, args.crf_batch)
    print_table(sizes, [("size", "size", ""), ("plain_ms", "pydensecrf ms", ".0f"),
                        ("keras_ms", "keras ms", ".0f"), ("speedup", "speed-up", ".2f"),
                        ("keras_labels_ms", "labels on device ms", ".0f"),
                        ("speedup_labels", "speed-up", ".2f"),
                        ("keras_kernel_built_ms", "kernel built ms", ".0f"),
                        ("speedup_kernel_built", "speed-up", ".2f"),
                        ("same_labels_every_way", "same", ""),
                        ("keras_batch_ms", f"batch of {args.crf_batch} ms", ".0f"),
                        ("speedup_batch", "speed-up", ".2f"),
                        ("batch_same_labels", "same as alone %", ".3f"),
                        ("keras_first_call_s", "first call s", ".1f"),
                        ("agreement", "same label %", ".3f")],
                f"Part 3c: keras backend ({device}) vs plain pydensecrf (one core)")
    mixed = part3.many_sizes(images, probabilities, args.many_sizes) if args.many_sizes else None
    if mixed:
        print_table([mixed], [("sizes", "sizes", "d"), ("canvas_canvases", "canvases", "d"),
                              ("canvas_compiled", "compiled", "d"),
                              ("canvas_s", "total s", ".1f"),
                              ("own_size_compiled", "compiled, own size", "d"),
                              ("own_size_s", "total s, own size", ".1f"),
                              ("agreement", "same label % (worst image)", ".4f")],
                    f"Part 3d: keras backend ({device}), {mixed['images']} images of as many "
                    f"sizes, on canvases vs each on its own size (compiles included)")
    summary = {"model": model, "keras_device": device,
               "camvid_agreement": camvid["agreement"],
               "camvid_miou_difference": camvid["miou_difference"],
               "synthetic_agreement": synthetic_row["agreement"],
               "speedups": {row["size"]: row["speedup"] for row in sizes},
               "speedups_labels": {row["size"]: row["speedup_labels"] for row in sizes},
               "speedups_kernel_built": {row["size"]: row["speedup_kernel_built"]
                                         for row in sizes},
               "speedups_batch": {row["size"]: row["speedup_batch"] for row in sizes},
               "many_sizes_seconds": mixed and {"canvas": mixed["canvas_s"],
                                                "own_size": mixed["own_size_s"]}}
    write_record("crf", {"camvid": camvid, "synthetic_512x512x21": synthetic_row,
                         "sizes": sizes, "many_sizes": mixed}, summary,
                 args.output or os.path.join(ROOT, "benchmarks", "results",
                                             f"crf_backends_{device.split()[0]}.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
