import numpy as np
import pytest

import segbeam.crf
from segbeam.crf import CrfParams, dense_crf, kept_classes, labels_from_probabilities

PLAIN = CrfParams(scale=1.0, class_floor=0.0)  # the plain full-resolution call


def _two_region_scene(rng):
    """Left half dark, right half bright; probabilities noisy and shifted 3 pixels right."""
    height, width = 24, 32
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, width // 2:] = 220
    truth = np.zeros((height, width), dtype=np.int64)
    truth[:, width // 2:] = 1
    probabilities = np.zeros((height, width, 2), dtype=np.float32)
    probabilities[:, : width // 2 + 3, 0] = 0.65  # boundary misplaced by 3 pixels
    probabilities[:, width // 2 + 3:, 0] = 0.35
    probabilities[..., 0] = np.clip(probabilities[..., 0]
                                    + rng.normal(0, 0.12, size=(height, width)), 0.05, 0.95)
    probabilities[..., 1] = 1 - probabilities[..., 0]
    return image, probabilities, truth


def test_crf_snaps_labels_to_the_colour_edge(rng):
    image, probabilities, truth = _two_region_scene(rng)
    before = (labels_from_probabilities(probabilities) == truth).mean()
    refined = dense_crf(image, probabilities, PLAIN)
    after = (labels_from_probabilities(refined) == truth).mean()
    assert refined.shape == probabilities.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(axis=-1), 1.0, atol=1e-4)
    assert before < 0.85
    assert after > 0.98


def test_crf_keeps_confident_uniform_predictions(rng):
    image = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    probabilities = np.full((10, 12, 3), 0.01, dtype=np.float32)
    probabilities[..., 2] = 0.98
    labels = labels_from_probabilities(dense_crf(image, probabilities))
    assert (labels == 2).all()


def test_crf_accepts_read_only_float16_inputs(rng):
    image = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    image.setflags(write=False)
    probabilities = np.full((6, 7, 2), 0.5, dtype=np.float16)
    assert dense_crf(image, probabilities).shape == (6, 7, 2)


def test_crf_rejects_mismatched_shapes_and_bad_params():
    with pytest.raises(ValueError, match="uint8 image to match"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((5, 4, 2), 0.5, np.float32))
    with pytest.raises(ValueError, match="iterations"):
        CrfParams(iterations=0)


def test_labels_use_the_smallest_type():
    assert labels_from_probabilities(np.zeros((2, 2, 300))).dtype == np.uint16
    assert labels_from_probabilities(np.zeros((2, 2, 3))).dtype == np.uint8


def test_class_floor_keeps_every_pixels_best_class_and_zeroes_the_rest(rng):
    probabilities = rng.dirichlet(np.ones(3) * 0.3, size=(6, 8)).astype(np.float32)
    absent = np.full((6, 8, 2), 1e-4, np.float32)
    probabilities = np.concatenate([probabilities * (1 - 2e-4), absent], axis=-1)
    assert list(kept_classes(probabilities, 1e-3)) == [0, 1, 2]
    assert list(kept_classes(probabilities, 0.0)) == [0, 1, 2, 3, 4]
    # The floor is capped at 1 / classes: no pixel can lose its most probable class.
    uniform = np.full((2, 2, 4), 0.25, np.float32)
    assert list(kept_classes(uniform, 0.9)) == [0, 1, 2, 3]
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    full = dense_crf(image, probabilities, PLAIN.replace(iterations=5))
    pruned = dense_crf(image, probabilities, PLAIN.replace(iterations=5, class_floor=1e-3))
    assert (pruned[..., 3:] == 0).all()
    np.testing.assert_array_equal(labels_from_probabilities(pruned),
                                  labels_from_probabilities(full))


def test_one_class_left_means_nothing_to_refine(rng):
    probabilities = np.full((4, 5, 3), 0.001, np.float32)
    probabilities[..., 1] = 0.998
    marginals = dense_crf(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), probabilities,
                          CrfParams(class_floor=0.01))
    assert (marginals[..., 1] == 1).all() and marginals.sum() == 20


def test_reduced_resolution_still_snaps_to_the_edge(rng):
    image, probabilities, truth = _two_region_scene(rng)
    image = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)  # 96 x 128: room to scale down
    probabilities = np.repeat(np.repeat(probabilities, 4, axis=0), 4, axis=1)
    truth = np.repeat(np.repeat(truth, 4, axis=0), 4, axis=1)
    before = (labels_from_probabilities(probabilities) == truth).mean()
    refined = dense_crf(image, probabilities, CrfParams(scale=0.5, min_side=32))
    assert refined.shape == probabilities.shape
    np.testing.assert_allclose(refined.sum(axis=-1), 1.0, atol=1e-3)
    assert before < 0.85 and (labels_from_probabilities(refined) == truth).mean() > 0.97


def test_reduced_resolution_scales_the_kernels_but_not_the_gaussian_below_a_pixel(
        rng, monkeypatch):
    seen = []
    real = segbeam.crf._pydensecrf
    monkeypatch.setattr(segbeam.crf, "_pydensecrf",
                        lambda image, probs, params, floor: seen.append(
                            (image.shape, params)) or real(image, probs, params, floor))
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    probabilities = rng.dirichlet(np.ones(3), size=(60, 80)).astype(np.float32)
    dense_crf(image, probabilities, CrfParams(min_side=16))  # half resolution
    dense_crf(image, probabilities, CrfParams(pos_xy_std=3.0, scale=0.25, min_side=8))
    dense_crf(image, probabilities, CrfParams())  # 60 px high: at most 60 / 128 -> full size
    dense_crf(image, probabilities, CrfParams(min_side=40))  # 40 of 60 px: scale 2/3
    (shape, half), (_, quarter), (full_shape, _), (two_thirds, _) = seen
    assert shape == (30, 40, 3) and full_shape == (60, 80, 3) and two_thirds == (40, 53, 3)
    assert (half.pos_xy_std, half.bi_xy_std) == (1.0, 33.5)  # 0.5 px would collapse the term
    assert (quarter.pos_xy_std, quarter.bi_xy_std) == (1.0, 16.75)  # 3 px * 0.25, floored
    assert half.bi_rgb_std == 3.0  # colour is not spatial: unchanged


def test_scale_and_floor_are_validated_on_construction():
    for bad in ({"scale": 0}, {"scale": 1.5}, {"class_floor": 1.0}, {"min_side": 0}):
        with pytest.raises(ValueError, match="scale|class_floor|min_side"):
            CrfParams(**bad)
