import numpy as np
import pytest

from segbeam.models.layers import (BilinearUpsamplingInitializer, ImageNormalization, MatchSize,
                           MaxPoolingWithArgmax, MaxUnpooling, bilinear_kernel_size,
                           upsample_filt)
from tests.pooling_reference import max_pool_with_argmax, unpool


def test_upsample_filt_matches_hand_computed_kernels():
    # size 4 (factor 2): centre 1.5, weights 1 - |i - 1.5| / 2 along each axis
    row4 = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(upsample_filt(4), np.outer(row4, row4))
    # size 3 (odd): centre 1, factor 2
    row3 = np.array([0.5, 1.0, 0.5])
    np.testing.assert_allclose(upsample_filt(3), np.outer(row3, row3))
    assert [bilinear_kernel_size(f) for f in (2, 3, 8, 16, 32)] == [4, 5, 16, 32, 64]


def test_bilinear_initializer_is_identity_across_classes_and_upsamples_constants():
    import keras

    kernel = np.asarray(BilinearUpsamplingInitializer()((4, 4, 3, 3)))
    np.testing.assert_allclose(kernel[:, :, 1, 1], upsample_filt(4))
    assert not kernel[:, :, 0, 1].any() and not kernel[:, :, 2, 0].any()
    layer = keras.layers.Conv2DTranspose(3, 4, strides=2, padding="same", use_bias=False,
                                         kernel_initializer=BilinearUpsamplingInitializer())
    values = np.zeros((1, 4, 5, 3), np.float32)
    values[..., 1] = 2.0
    out = np.asarray(layer(values))
    assert out.shape == (1, 8, 10, 3)
    # Away from the border, bilinear upsampling of a constant map is the same constant.
    np.testing.assert_allclose(out[0, 1:-1, 1:-1, 1], 2.0, atol=1e-6)
    assert not out[..., 0].any()
    with pytest.raises(ValueError, match="square with as many outputs as inputs"):
        BilinearUpsamplingInitializer()((4, 4, 2, 3))


@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (1, 5, 7, 2), (2, 1, 3, 1), (1, 9, 4, 4)])
def test_pooling_and_unpooling_match_the_numpy_reference(shape):
    rng = np.random.default_rng(0)
    # Small integers make ties common, which checks the first-maximum rule too.
    x = rng.integers(-3, 4, size=shape).astype(np.float32)
    pooled, indices = MaxPoolingWithArgmax()(x)
    expected_pooled, argmax = max_pool_with_argmax(x)
    np.testing.assert_array_equal(np.asarray(pooled), expected_pooled)
    assert np.asarray(indices).min() >= 0 and np.asarray(indices).max() <= 3
    unpooled = MaxUnpooling()([pooled, indices, x])
    np.testing.assert_array_equal(np.asarray(unpooled), unpool(expected_pooled, argmax, shape))


def test_match_size_crops_or_pads_at_the_top_left():
    x = np.arange(2 * 5 * 6 * 1, dtype=np.float32).reshape(2, 5, 6, 1)
    cropped = np.asarray(MatchSize()([x, np.zeros((2, 3, 4, 7), np.float32)]))
    np.testing.assert_array_equal(cropped, x[:, :3, :4])
    padded = np.asarray(MatchSize()([x, np.zeros((2, 6, 8, 7), np.float32)]))
    assert padded.shape == (2, 6, 8, 1)
    np.testing.assert_array_equal(padded[:, :5, :6], x)
    assert not padded[:, 5:].any() and not padded[:, :, 6:].any()


@pytest.mark.parametrize("mode, preset", [("caffe", "caffe"), ("torch", "torch"),
                                          ("symmetric", "scale_-1_1"), ("unit", "scale_0_1")])
def test_in_model_normalisation_matches_the_pipeline_presets(mode, preset):
    from segbeam.preprocessing import preprocess

    batch = np.random.default_rng(1).integers(0, 256, size=(2, 3, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ImageNormalization(mode)(batch)),
                               preprocess(batch, preset), rtol=1e-5, atol=1e-4)
