import numpy as np
import pytest
from PIL import Image

from segbeam.geometry import (Placement, pad_canvas, place_batch, placement_for, plan_batch,
                                 resize_bilinear, restore_probabilities)


def test_letterbox_placement_by_hand():
    # 360x480 into 256x256: scale = min(256/360, 256/480) = 0.5333 -> 192x256
    assert placement_for(360, 480, (256, 256), "letterbox") == Placement(360, 480, 192, 256)
    assert placement_for(360, 480, (256, 256), "resize") == Placement(360, 480, 256, 256)
    assert placement_for(100, 50, (128, 128), "pad") == Placement(100, 50, 100, 50)
    with pytest.raises(ValueError, match="does not fit"):
        placement_for(300, 50, (128, 128), "pad")


def test_pad_canvas_rounds_up_to_the_stride():
    assert pad_canvas([(100, 50), (33, 130)], 32) == (128, 160)
    canvas, placements = plan_batch([(100, 50), (33, 130)], "pad", None, 32)
    assert canvas == (128, 160) and placements[1] == Placement(33, 130, 33, 130)
    with pytest.raises(ValueError, match="needs an input size"):
        plan_batch([(10, 10)], "resize", None)


def test_place_batch_pads_with_zeros_and_resizes(rng=np.random.default_rng(0)):
    small = rng.integers(1, 256, size=(3, 5, 3), dtype=np.uint8)
    full = rng.integers(1, 256, size=(4, 8, 3), dtype=np.uint8)
    large = rng.integers(1, 256, size=(8, 16, 3), dtype=np.uint8)
    out = place_batch([small, full, large], [Placement(3, 5, 3, 5), Placement(4, 8, 4, 8),
                                             Placement(8, 16, 2, 4)], (4, 8))
    assert out.shape == (3, 4, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :3, :5], small)
    assert out[0, 3:].max() == 0 and out[0, :, 5:].max() == 0
    np.testing.assert_array_equal(out[1], full)
    np.testing.assert_array_equal(out[2, :2, :4], np.asarray(Image.fromarray(large).resize(
        (4, 2), Image.BILINEAR)))
    assert out[2, 2:].max() == 0 and out[2, :, 4:].max() == 0
    alone = place_batch([full], [Placement(4, 8, 4, 8)], (4, 8))
    np.testing.assert_array_equal(alone[0], full)


@pytest.mark.parametrize("source, target", [((4, 6), (9, 13)), ((16, 12), (5, 7)),
                                            ((7, 7), (7, 20))])
def test_bilinear_resize_matches_tensorflow(source, target):
    import tensorflow as tf

    rng = np.random.default_rng(1)
    values = rng.random((*source, 5)).astype(np.float32)
    ours = resize_bilinear(values, *target)
    theirs = tf.image.resize(values, target, method="bilinear", antialias=False).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_restore_crops_the_content_then_resizes():
    canvas = np.zeros((4, 4, 2), dtype=np.float32)
    canvas[:2, :4, 1] = 1.0  # content: top half; padding below has class 0
    canvas[:2, :4, 0] = 0.0
    canvas[2:, :, 0] = 1.0
    restored = restore_probabilities(canvas, Placement(6, 12, 2, 4))
    assert restored.shape == (6, 12, 2)
    np.testing.assert_allclose(restored[..., 1], 1.0)  # no padding leaked back in
