"""Part 3 of the CRF benchmark: the keras backend (``segbeam.crf_keras``) against the plain
pydensecrf call, same parameters (DeepLab v2's), full resolution, 10 iterations.

- Equivalence on CamVid val with the trained model: the share of pixels whose labels agree,
  and dataset mIoU of each; the same on synthetic 512x512x21 inputs.
- Speed, side by side in one run: per-image time of each at 360x480x11 (CamVid), 512x512x21
  and 1024x2048x19 (CamVid frames and their probabilities upsampled, with the 21- and
  19-class outputs' absent classes given a softmax's small probabilities). The keras backend's
  first call per size compiles; it is timed apart and left out of the per-image figure. The
  keras backend is timed three ways: as the CPU stage calls it (marginals read back, argmax
  in numpy), as the fused path does (argmax on the device, only labels read back), and the
  latter with no Gaussian kernel kept, built for every image (what a size seen once costs;
  the kernel is the image size's alone), and a fourth: a batch of images of one size refined
  together (``KerasDenseCrf.refine_many``: one lattice for the batch, labels read back),
  per image, with the share of labels that are the same as each image refined alone.
- Many sizes: CamVid frames resized to as many heights (width 480, as a dataset whose images
  share their long side), refined by the keras backend on its canvases and on canvases of
  each image's own size, side by side: compiled functions and total time, compiles included.

    python -m benchmarks.crf --part backends --model runs/unet/best.keras

The Keras backend is ``KERAS_BACKEND`` (the record says which, and on which device).
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from segbeam.crf import CrfParams, dense_crf, labels_from_probabilities
from segbeam.metrics import confusion_matrix, summarise_confusion

PLAIN = CrfParams(scale=1.0, class_floor=0.0)  # DeepLab v2's kernels, full resolution


def keras_crf(image: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The keras backend on the same inputs and parameters as the plain call."""
    return labels_from_probabilities(dense_crf(image, probabilities.astype(np.float32),
                                               PLAIN.replace(backend="keras")))


def keras_device() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return f"jax {jax.__version__} on {jax.devices()[0].device_kind}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"tensorflow {tf.__version__} on {'GPU' if gpus else 'CPU'}"
    return backend


def _miou(labels, masks, classes, ignore) -> float:
    confusion = sum(confusion_matrix(label, mask, classes, ignore)
                    for label, mask in zip(labels, masks))
    return 100 * summarise_confusion(confusion)["miou"]


def equivalence(images, masks, probabilities, plain_crf, classes: int, ignore: int) -> dict:
    """Labels of both backends on every image: pixel agreement, per-image worst, mIoU."""
    plain, fast, agreement, times = [], [], [], {"plain": 0.0, "keras": 0.0}
    keras_crf(images[0], probabilities[0])  # compiles for this size, untimed
    for image, probs in zip(images, probabilities):
        start = time.perf_counter()
        plain.append(plain_crf(image, probs.astype(np.float32), PLAIN))
        times["plain"] += time.perf_counter() - start
        start = time.perf_counter()
        fast.append(keras_crf(image, probs))
        times["keras"] += time.perf_counter() - start
        agreement.append(float(np.mean(plain[-1] == fast[-1])))
    raw = [labels_from_probabilities(p) for p in probabilities]
    row = {"images": len(images), "agreement": 100 * float(np.mean(agreement)),
           "worst_image_agreement": 100 * min(agreement),
           "changed_by_crf": 100 * float(np.mean([np.mean(r != p) for r, p in zip(raw, plain)])),
           "plain_ms": 1000 * times["plain"] / len(images),
           "keras_ms": 1000 * times["keras"] / len(images)}
    if masks is not None:
        row.update(miou_raw=_miou(raw, masks, classes, ignore),
                   miou_plain=_miou(plain, masks, classes, ignore),
                   miou_keras=_miou(fast, masks, classes, ignore))
        row["miou_difference"] = row["miou_keras"] - row["miou_plain"]
    return row


def with_classes(probabilities: np.ndarray, classes: int, rng) -> np.ndarray:
    """Probabilities over ``classes`` classes: the given ones, then absent classes with the
    small probabilities a softmax gives them (1e-5 to 1e-3)."""
    probs = probabilities.astype(np.float32)
    extra = classes - probs.shape[-1]
    if extra <= 0:
        return probs
    absent = 10 ** rng.uniform(-5, -3, size=probs.shape[:2] + (extra,)).astype(np.float32)
    return np.concatenate([probs * (1 - absent.sum(-1, keepdims=True)), absent], -1)


def scaled_inputs(images, probabilities, height: int, width: int, classes: int, count: int,
                  seed: int = 0):
    """CamVid frames and their probabilities resized to ``height`` x ``width``, with
    ``classes`` classes."""
    from segbeam.geometry import resize_bilinear

    rng = np.random.default_rng(seed)
    pairs = []
    for image, probs in list(zip(images, probabilities))[:count]:
        scaled = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        pairs.append((scaled, with_classes(resize_bilinear(probs.astype(np.float32), height,
                                                           width), classes, rng)))
    return pairs


def many_sizes(images, probabilities, count: int) -> dict:
    """``count`` frames at as many heights from 240 to 476 (width 480), each refined by two
    fresh keras CRFs, one on canvases (``canvas_for``), one on each image's own size:
    compiled functions, canvases, total seconds (compiles included) and label agreement."""
    from keras import ops

    from segbeam.crf_keras import KerasDenseCrf

    heights = np.linspace(240, 476, count).astype(int)
    crfs = {"canvas": KerasDenseCrf(), "own_size": KerasDenseCrf(canvas=lambda h, w: (h, w))}
    seconds = dict.fromkeys(crfs, 0.0)
    agreement = []
    for index, height in enumerate(heights):
        image, probs = scaled_inputs(images[index % len(images):], probabilities[
            index % len(images):], int(height), 480, 11, 1, seed=index)[0]
        labels = {}
        for name, crf in crfs.items():
            start = time.perf_counter()
            labels[name] = np.asarray(ops.convert_to_numpy(ops.argmax(
                crf.refine(image, probs, PLAIN), axis=-1)))
            seconds[name] += time.perf_counter() - start
        agreement.append(float(np.mean(labels["canvas"] == labels["own_size"])))
    row = {"images": count, "sizes": len(set(heights)), "agreement": 100 * min(agreement)}
    for name, crf in crfs.items():
        row.update({f"{name}_compiled": crf.compiled, f"{name}_canvases": len(crf.canvases),
                    f"{name}_s": seconds[name]})
    return row


def _labels_of(crf, image: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The keras backend through ``crf`` (a ``KerasDenseCrf``), its labels read back."""
    from keras import ops

    marginals = crf.refine(image, probabilities.astype(np.float32), PLAIN)
    return np.asarray(ops.convert_to_numpy(ops.argmax(marginals, axis=-1))).astype(np.uint8)


def _batch_labels(crf, pairs) -> np.ndarray:
    """The keras backend on a batch of (image, probabilities) of one size, refined together,
    labels read back."""
    from keras import ops

    marginals = crf.refine_many([image for image, _ in pairs],
                                np.stack([probs for _, probs in pairs]).astype(np.float32),
                                PLAIN)
    return np.asarray(ops.convert_to_numpy(ops.argmax(marginals, axis=-1))).astype(np.uint8)


def speed(images, probabilities, plain_crf, per_size: int, batch: int = 4) -> list[dict]:
    """Per-image time (median) of the plain pydensecrf call and of three ways through the
    keras backend, side by side on the same inputs: as the CPU stage does (marginals read
    back, argmax in numpy), as the fused path does (argmax on the device, labels read back),
    and the latter with no Gaussian kernel kept (built for every image); then the fused way
    on a ``batch`` of the same inputs (repeated to fill it) refined together, per image."""
    from segbeam.crf_keras import KerasDenseCrf

    rows = []
    for height, width, classes in ((360, 480, 11), (512, 512, 21), (1024, 2048, 19)):
        pairs = scaled_inputs(images, probabilities, height, width, classes, per_size)
        keeping, rebuilding = KerasDenseCrf(), KerasDenseCrf(kernel_bytes=0)
        start = time.perf_counter()
        keras_crf(*pairs[0])
        first = time.perf_counter() - start
        for crf in (keeping, rebuilding):
            _labels_of(crf, *pairs[0])  # compiles, untimed
        ways = {"plain": lambda i, p: plain_crf(i, p, PLAIN), "stage": keras_crf,
                "labels": lambda i, p: _labels_of(keeping, i, p),
                "rebuilt": lambda i, p: _labels_of(rebuilding, i, p)}
        timings = {name: [] for name in ways}
        agreement, same = [], []
        for image, probs in pairs:
            labels = {}
            for name, way in ways.items():
                start = time.perf_counter()
                labels[name] = way(image, probs)
                timings[name].append(time.perf_counter() - start)
            agreement.append(float(np.mean(labels["stage"] == labels["plain"])))
            same.append(all(np.array_equal(labels["stage"], labels[name])
                            for name in ("labels", "rebuilt")))
        ms = {name: 1000 * float(np.median(times)) for name, times in timings.items()}
        together = [pairs[index % len(pairs)] for index in range(batch)]
        _batch_labels(keeping, together)  # compiles for this batch size, untimed
        start = time.perf_counter()
        batched = _batch_labels(keeping, together)
        ms["batch"] = 1000 * (time.perf_counter() - start) / batch
        alone = [_labels_of(keeping, *pair) for pair in together]
        batch_same = float(np.mean([np.mean(a == b) for a, b in zip(alone, batched)]))
        rows.append({"size": f"{height}x{width}x{classes}", "images": len(pairs),
                     "plain_ms": ms["plain"], "keras_ms": ms["stage"],
                     "keras_first_call_s": first, "speedup": ms["plain"] / ms["stage"],
                     "keras_labels_ms": ms["labels"],
                     "speedup_labels": ms["plain"] / ms["labels"],
                     "keras_kernel_built_ms": ms["rebuilt"],
                     "speedup_kernel_built": ms["plain"] / ms["rebuilt"],
                     "same_labels_every_way": all(same),
                     "batch": batch, "keras_batch_ms": ms["batch"],
                     "speedup_batch": ms["plain"] / ms["batch"],
                     "batch_same_labels": 100 * batch_same,
                     "agreement": 100 * float(np.mean(agreement))})
        print(f"  {rows[-1]}", flush=True)
    return rows
