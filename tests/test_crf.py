import numpy as np
import pytest

from transforms.crf import CrfParams, dense_crf, labels_from_probabilities


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
    refined = dense_crf(image, probabilities, CrfParams(iterations=10))
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
        CrfParams(iterations=0).validate()


def test_labels_use_the_smallest_type():
    assert labels_from_probabilities(np.zeros((2, 2, 300))).dtype == np.uint16
    assert labels_from_probabilities(np.zeros((2, 2, 3))).dtype == np.uint8
