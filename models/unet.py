"""U-Net with a MobileNetV2 encoder and a pix2pix-style decoder (the TensorFlow segmentation
tutorial's model).

Encoder: ``keras.applications.MobileNetV2`` tapped at ``block_1_expand_relu`` (stride 2),
``block_3_expand_relu`` (4), ``block_6_expand_relu`` (8), ``block_13_expand_relu`` (16) and
``block_16_project`` (32); ``freeze_encoder`` keeps it fixed (sensible with ImageNet weights).
Decoder: per stage a 3x3 stride-2 transposed convolution, batch norm, optional dropout and
ReLU (pix2pix's ``upsample``), concatenated with the matching encoder map; a final stride-2
transposed convolution gives logits at input size.

``bn_momentum`` sets the encoder's batch-norm moving-average momentum. ``keras.applications``
uses 0.999, which suits fine-tuning from ImageNet statistics but leaves a model trained from
scratch with its initial statistics for thousands of steps (its validation predictions are
then constant); Keras's usual 0.99 is the default here.

Any input size works (maps are aligned at the top-left where sizes differ by a pixel); sizes
that are a multiple of 32 need no alignment. Preprocessing: [-1, 1], built in.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import layers

from segbeam.models.backbones import check_backbone_weights
from segbeam.models.layers import ImageNormalization, MatchSize
from segbeam.models.registry import register_model

SKIP_LAYERS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
               "block_13_expand_relu", "block_16_project")
DECODER_FILTERS = (512, 256, 128, 64)


def _pix2pix_upsample(x, filters: int, dropout: float, name: str):
    x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", use_bias=False,
                               kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02),
                               name=f"{name}_deconv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


@register_model("unet")
def unet(num_classes: int, input_size: Optional[tuple[int, int]] = None,
         backbone_weights: Optional[str] = None, freeze_encoder: bool = False,
         dropout: float = 0.0, alpha: float = 1.0, bn_momentum: float = 0.99) -> keras.Model:
    check_backbone_weights(backbone_weights, "unet")
    height, width = input_size if input_size else (None, None)
    base = keras.applications.MobileNetV2(input_shape=(height, width, 3), include_top=False,
                                          weights=backbone_weights, alpha=alpha)
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = bn_momentum
    encoder = keras.Model(base.input, [base.get_layer(n).output for n in SKIP_LAYERS],
                          name="mobilenetv2_encoder")
    encoder.trainable = not freeze_encoder
    inputs = keras.Input((height, width, 3), name="image")
    x = ImageNormalization("symmetric", name="normalize")(inputs)
    *skips, x = encoder(x)
    for stage, (filters, skip) in enumerate(zip(DECODER_FILTERS, reversed(skips)), start=1):
        x = _pix2pix_upsample(x, filters, dropout, f"decoder{stage}")
        x = MatchSize(name=f"decoder{stage}_align")([x, skip])
        x = layers.Concatenate(name=f"decoder{stage}_concat")([x, skip])
    x = layers.Conv2DTranspose(num_classes, 3, strides=2, padding="same", name="classifier")(x)
    logits = MatchSize(name="logits")([x, inputs])
    return keras.Model(inputs, logits, name="unet")
