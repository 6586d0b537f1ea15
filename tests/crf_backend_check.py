"""Runs the keras CRF backend against pydensecrf on small scenes under whichever Keras backend
``KERAS_BACKEND`` selects. Run as ``python -m tests.crf_backend_check``; prints one JSON
object per scene (``test_crf_keras.py`` runs it once per backend)."""

from __future__ import annotations

import json

import numpy as np
from scipy.ndimage import gaussian_filter

from segbeam.crf import CrfParams, dense_crf
from segbeam.permutohedral import _plan_digits


def scene(height: int, width: int, classes: int, seed: int, noise: float = 6.0):
    """A blocky image (regions of flat colour plus ``noise``) and probabilities that follow
    the regions only roughly: noise around a shifted copy of the regions' classes, so that
    the CRF has labels to move (each case checks it moved some)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, min(classes, 5), size=(4, 5))
    truth = np.kron(blocks, np.ones((-(-height // 4), -(-width // 5)), int))[:height, :width]
    palette = rng.integers(0, 256, size=(classes, 3))
    image = np.clip(palette[truth] + rng.normal(0, noise, (height, width, 3)), 0, 255)
    shifted = np.roll(truth, 3, axis=1)
    logits = np.eye(classes)[shifted] + gaussian_filter(
        rng.normal(0, 1.5, (height, width, classes)), (1.0, 1.0, 0))
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(-1, keepdims=True)
    return image.astype(np.uint8), probabilities.astype(np.float32)


CASES = {
    # name: (height, width, classes, image noise, CrfParams changes)
    "two_classes": (24, 32, 2, 6.0, {}),
    "five_classes": (30, 40, 5, 6.0, {}),
    # Classes 5..20 never reach the floor: pydensecrf drops them, the keras backend masks them.
    "class_floor_21": (26, 34, 21, 6.0, {"class_floor": 0.2}),
    # A colour std of a quarter level: the bilateral keys need three int32 levels.
    "fine_colour_std": (30, 40, 4, 0.0, {"bi_rgb_std": 0.25, "bi_xy_std": 5.0}),
    "half_resolution": (64, 80, 3, 6.0, {"scale": 0.5, "min_side": 16}),
    # 37 x 53 is refined on a 40 x 56 canvas.
    "on_a_canvas": (37, 53, 4, 6.0, {}),
}

# Sizes that share the 40 x 56 canvas; the canvas check runs each on it and on its own size.
CANVAS_SIZES = ((37, 53), (39, 56), (40, 54), (40, 56))


def _traces(function) -> int:
    """How many times a compiled function was traced (-1 where the backend cannot say)."""
    if hasattr(function, "experimental_get_tracing_count"):  # tf.function
        return function.experimental_get_tracing_count()
    if hasattr(function, "_cache_size"):  # jax.jit
        return function._cache_size()
    return -1


def canvas_check() -> dict:
    """Images of several sizes on one canvas against each on a canvas of its own size: the
    padding must change nothing, one compiled function per lattice must serve them all, and
    a Gaussian kernel kept from an earlier image must give what a new one gives."""
    from keras import ops

    from segbeam.crf_keras import KerasDenseCrf

    shared, exact = KerasDenseCrf(), KerasDenseCrf(canvas=lambda height, width: (height, width))
    keeping_none = KerasDenseCrf(kernel_bytes=0)
    # Dark images (levels 8 to 14) and a wide colour std: padding of another colour (black)
    # would add vertices beside the image's, through which the blur would carry values.
    params = CrfParams(scale=1.0, class_floor=0.0, iterations=5, bi_rgb_std=10.0)
    differences, agreements, kept_differences, scenes = [], [], [], []
    for seed, (height, width) in enumerate(CANVAS_SIZES):
        image, probabilities = scene(height, width, 4, 10 + seed)
        scenes.append((image // 64 * 2 + 8, probabilities))
    kept = np.ones(4, dtype=bool)

    def field(crf, image, probabilities):
        return ops.convert_to_numpy(crf.field(image[None], probabilities[None], params, 1e-5,
                                              kept[None]))[0]

    for image, probabilities in scenes:
        on_canvas, alone = field(shared, image, probabilities), field(exact, image, probabilities)
        differences.append(float(np.abs(on_canvas - alone).max()))
        agreements.append(float(np.mean(on_canvas.argmax(-1) == alone.argmax(-1))))
    built_once = shared.kernels_built
    for image, probabilities in scenes:  # again: each size's kernel is kept from the first
        again = field(shared, image, probabilities)
        kept_differences.append(float(np.abs(
            again - field(keeping_none, image, probabilities)).max()))
    traces = {key[0]: _traces(f) for key, f in shared._functions.items()
              if key[0].endswith("lattice")}
    return {"check": "canvas", "canvases": shared.canvases, "exact_canvases": len(exact.canvases),
            "lattice_traces": traces, "max_marginal_difference": max(differences),
            "min_agreement": min(agreements), "kernels_built": [built_once,
                                                                shared.kernels_built],
            "kernels_built_keeping_none": keeping_none.kernels_built,
            "kept_kernel_difference": max(kept_differences)}


def batch_check() -> dict:
    """Three images of one size refined together (as batches of 2 and 1) against each alone,
    at full and half resolution, and the first image's marginals refined beside two other
    images: a batch must not carry values from one image to another."""
    from keras import ops

    from segbeam.crf_keras import KerasDenseCrf

    crf = KerasDenseCrf()
    scenes = [scene(37, 53, 4, 30 + seed) for seed in range(3)]
    images = [image for image, _ in scenes]
    probabilities = np.stack([probs for _, probs in scenes])
    report = {"check": "batch", "max_marginal_difference": 0.0, "min_agreement": 1.0}
    for params in (CrfParams(iterations=5, class_floor=0.3, scale=1.0),
                   CrfParams(iterations=5, class_floor=0.0, scale=0.5, min_side=16)):
        together = ops.convert_to_numpy(crf.refine_many(images, probabilities, params))
        for image, probs, batched in zip(images, probabilities, together):
            alone = ops.convert_to_numpy(crf.refine(image, probs, params))
            report["max_marginal_difference"] = max(report["max_marginal_difference"],
                                                    float(np.abs(batched - alone).max()))
            report["min_agreement"] = min(report["min_agreement"], float(np.mean(
                batched.argmax(-1) == alone.argmax(-1))))
    params = CrfParams(iterations=5, class_floor=0.0, scale=1.0)
    beside = [ops.convert_to_numpy(crf.refine_many([images[0], images[other]],
                                                   probabilities[[0, other]], params))[0]
              for other in (1, 2)]
    report["neighbour_difference"] = float(np.abs(beside[0] - beside[1]).max())
    report["compiled_batch_sizes"] = sorted({key[3] for key in crf._functions
                                             if key[0] == "bilateral lattice"})
    return report


def main() -> None:
    import keras

    print(json.dumps({"check": "backend", "backend": keras.backend.backend()}), flush=True)
    for seed, (name, (height, width, classes, noise, changes)) in enumerate(CASES.items()):
        image, probabilities = scene(height, width, classes, seed, noise)
        params = CrfParams(scale=1.0, class_floor=0.0, iterations=5).replace(**changes)
        reference = dense_crf(image, probabilities, params)
        keras_result = dense_crf(image, probabilities, params.replace(backend="keras"))
        labels = reference.argmax(-1)
        bilateral_levels = len(_plan_digits(5, [0.0] * 5, [
            (width - 1) / params.bi_xy_std, (height - 1) / params.bi_xy_std]
            + [255 / params.bi_rgb_std] * 3, height * width * 6).levels)
        print(json.dumps({
            "check": "scene", "name": name, "classes": classes,
            "agreement": float(np.mean(keras_result.argmax(-1) == labels)),
            "changed_by_crf": float(np.mean(probabilities.argmax(-1) != labels)),
            "max_marginal_difference": float(np.abs(keras_result - reference).max()),
            "sums_to_one": bool(np.allclose(keras_result.sum(-1), 1, atol=1e-4)),
            "left_out_zero": bool(np.array_equal(reference == 0, keras_result == 0)),
            "bilateral_levels": bilateral_levels}), flush=True)
    print(json.dumps(canvas_check()), flush=True)
    print(json.dumps(batch_check()), flush=True)


if __name__ == "__main__":
    main()
