"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer and Darrell, 2015) on a VGG16 backbone.

VGG16's 13 convolutions (named as in ``keras.applications.VGG16``), its fully connected
layers recast as convolutions (``fc6``: 7x7x4096, ``fc7``: 1x1x4096, each with dropout), a
1x1 ``score_fr`` classifier, then upsampling by transposed convolutions initialised as
bilinear interpolation (kernel ``2*f - f%2``, ``upsample_filt`` weights, identity across
classes). FCN-16s fuses a 1x1 score of ``pool4``; FCN-8s also one of ``pool3``. Score layers
start at zero, as in the reference code, so a fresh skip adds nothing until trained.

Departures from the Caffe original, for any input size without its 100-pixel padding:
``fc6`` uses same padding and pooling is ceil-mode; upsampled maps are cropped at the top-left
to the skip's (and finally the input's) size, as Caffe's ``Crop`` layers do. The upsampling
kernels stay fixed, as in the released FCN models (``learnable_upsampling=True`` trains them).

``backbone_weights``: ``imagenet`` or a local weights file for the *full* VGG16 (with its
top): the convolutions copy by name and ``fc1``/``fc2`` are reshaped into ``fc6``/``fc7``.
Preprocessing: caffe (BGR minus the ImageNet mean), built in.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np
from keras import layers

from segbeam.models.backbones import check_backbone_weights
from segbeam.models.layers import BilinearUpsamplingInitializer, ImageNormalization, MatchSize, \
    bilinear_kernel_size
from segbeam.models.registry import register_model

_VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def convolutionalize(dense_kernel: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A Dense kernel (h*w*c_in, c_out) that followed a channels-last ``Flatten`` as the
    equivalent (h, w, c_in, c_out) convolution kernel (FCN's "net surgery")."""
    expected = int(np.prod(shape))
    if dense_kernel.shape[0] != expected:
        raise ValueError(f"a dense kernel with {dense_kernel.shape[0]} inputs cannot become a "
                         f"{shape} convolution ({expected} inputs)")
    return dense_kernel.reshape(*shape, dense_kernel.shape[1])


def _vgg16_features(x):
    """The VGG16 convolutions with ceil-mode pooling; returns pool3, pool4, pool5."""
    pools = []
    for stage, (filters, convs) in enumerate(_VGG16_STAGES, start=1):
        for conv in range(1, convs + 1):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                              name=f"block{stage}_conv{conv}")(x)
        x = layers.MaxPooling2D(2, strides=2, padding="same", name=f"block{stage}_pool")(x)
        pools.append(x)
    return pools[2], pools[3], pools[4]


def _upsample(x, num_classes: int, factor: int, learnable: bool, name: str):
    return layers.Conv2DTranspose(
        num_classes, bilinear_kernel_size(factor), strides=factor, padding="same",
        use_bias=False, kernel_initializer=BilinearUpsamplingInitializer(),
        trainable=learnable, name=name)(x)


def _score(x, num_classes: int, name: str):
    return layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=name)(x)


def _load_vgg16(model: keras.Model, backbone_weights: Optional[str]) -> None:
    if backbone_weights is None:
        return
    source = keras.applications.VGG16(weights=backbone_weights, include_top=True)
    for stage, (_, convs) in enumerate(_VGG16_STAGES, start=1):
        for conv in range(1, convs + 1):
            name = f"block{stage}_conv{conv}"
            model.get_layer(name).set_weights(source.get_layer(name).get_weights())
    fc1_kernel, fc1_bias = source.get_layer("fc1").get_weights()
    fc2_kernel, fc2_bias = source.get_layer("fc2").get_weights()
    model.get_layer("fc6").set_weights([convolutionalize(fc1_kernel, (7, 7, 512)), fc1_bias])
    model.get_layer("fc7").set_weights([convolutionalize(fc2_kernel, (1, 1, 4096)), fc2_bias])


def build_fcn(num_classes: int, stride: int, input_size: Optional[tuple[int, int]] = None,
              backbone_weights: Optional[str] = None, learnable_upsampling: bool = False,
              dropout: float = 0.5) -> keras.Model:
    """FCN with output ``stride`` 32, 16 or 8."""
    if stride not in (32, 16, 8):
        raise ValueError(f"Argument `stride` must be 32, 16 or 8. Received: {stride!r}")
    name = f"fcn{stride}s"
    check_backbone_weights(backbone_weights, name)
    height, width = input_size if input_size else (None, None)
    inputs = keras.Input((height, width, 3), name="image")
    x = ImageNormalization("caffe", name="normalize")(inputs)
    pool3, pool4, pool5 = _vgg16_features(x)
    x = layers.Conv2D(4096, 7, padding="same", activation="relu", name="fc6")(pool5)
    x = layers.Dropout(dropout, name="drop6")(x)
    x = layers.Conv2D(4096, 1, activation="relu", name="fc7")(x)
    x = layers.Dropout(dropout, name="drop7")(x)
    score = _score(x, num_classes, "score_fr")
    if stride <= 16:
        up = _upsample(score, num_classes, 2, learnable_upsampling, "upscore2")
        skip = _score(pool4, num_classes, "score_pool4")
        score = layers.Add(name="fuse_pool4")([MatchSize(name="crop_upscore2")([up, skip]),
                                               skip])
    if stride == 8:
        up = _upsample(score, num_classes, 2, learnable_upsampling, "upscore_pool4")
        skip = _score(pool3, num_classes, "score_pool3")
        score = layers.Add(name="fuse_pool3")([MatchSize(name="crop_upscore_pool4")([up, skip]),
                                               skip])
    up = _upsample(score, num_classes, stride, learnable_upsampling, f"upscore{stride}")
    logits = MatchSize(name="score")([up, inputs])
    model = keras.Model(inputs, logits, name=name)
    _load_vgg16(model, backbone_weights)
    return model


@register_model("fcn32s")
def fcn32s(num_classes: int, input_size: Optional[tuple[int, int]] = None,
           backbone_weights: Optional[str] = None, **kwargs) -> keras.Model:
    return build_fcn(num_classes, 32, input_size, backbone_weights, **kwargs)


@register_model("fcn16s")
def fcn16s(num_classes: int, input_size: Optional[tuple[int, int]] = None,
           backbone_weights: Optional[str] = None, **kwargs) -> keras.Model:
    return build_fcn(num_classes, 16, input_size, backbone_weights, **kwargs)


@register_model("fcn8s")
def fcn8s(num_classes: int, input_size: Optional[tuple[int, int]] = None,
          backbone_weights: Optional[str] = None, **kwargs) -> keras.Model:
    return build_fcn(num_classes, 8, input_size, backbone_weights, **kwargs)
