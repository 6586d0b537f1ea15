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
}


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


if __name__ == "__main__":
    main()
