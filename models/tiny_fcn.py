"""``tiny_fcn``: a small fully-convolutional encoder-decoder for demos, tests and smoke runs.

Three stride-2 stages of 3x3 convolutions with batch norm, a skip connection from stride 2,
bilinear upsampling back to the input size. About 30k parameters: it trains in seconds on a CPU.
Preprocessing is built in (raw RGB in [0, 255] scaled to [0, 1]), so saved files are
self-contained. Takes any input size that is a multiple of 8.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import layers

from segbeam.models.layers import BilinearUpsampling
from segbeam.models.registry import register_model


def _conv_block(x, filters: int, strides: int, name: str):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    # A short moving-average horizon: the model trains for few steps.
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


@register_model("tiny_fcn")
def tiny_fcn(num_classes: int, input_size: Optional[tuple[int, int]] = None,
             backbone_weights: Optional[str] = None, width: int = 16) -> keras.Model:
    if backbone_weights is not None:
        raise ValueError(f"tiny_fcn has no pretrained backbone: drop --backbone_weights "
                         f"(backbone_weights must be None); received {backbone_weights!r}")
    height, width_px = input_size if input_size else (None, None)
    inputs = keras.Input((height, width_px, 3), name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    stride2 = _conv_block(x, width, 2, "enc1")
    x = _conv_block(stride2, width * 2, 2, "enc2")
    x = _conv_block(x, width * 4, 2, "enc3")
    x = _conv_block(x, width * 4, 1, "context")
    x = BilinearUpsampling(4, name="up4")(x)
    x = layers.Concatenate(name="skip")([x, stride2])
    x = _conv_block(x, width * 2, 1, "dec1")
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    logits = BilinearUpsampling(2, name="logits")(x)
    return keras.Model(inputs, logits, name="tiny_fcn")
