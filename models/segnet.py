"""SegNet (Badrinarayanan, Kendall and Cipolla, 2017) and its small SegNet-Basic variant.

The decoder upsamples with the max-pooling indices of the matching encoder stage
(``MaxPoolingWithArgmax`` / ``MaxUnpooling``), which keeps boundaries sharp without learning
upsampling weights.

- ``segnet``: the 13 convolutions of VGG16 (3x3, batch norm, ReLU) in 5 stages with 2x2
  pooling, a mirrored decoder, a 1x1 classifier. The encoder's convolutions are named as in
  ``keras.applications.VGG16``, so ``backbone_weights`` can initialise them from VGG16, as the
  paper does. Preprocessing: caffe (BGR minus the ImageNet mean), built in.
- ``segnet_basic``: 4 encoder blocks (7x7x64 conv, batch norm, ReLU, 2x2 pooling), 4 decoder
  blocks (unpooling, 7x7x64 conv, batch norm, no ReLU), a 1x1 classifier: the paper's
  from-scratch CamVid model. Preprocessing: [0, 1], built in.

Any input size works (pooling is ceil-mode, unpooling crops back to the encoder's size).
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import layers

from segbeam.models.backbones import check_backbone_weights, load_backbone
from segbeam.models.layers import ImageNormalization, MaxPoolingWithArgmax, MaxUnpooling
from segbeam.models.registry import register_model

# (filters, convolutions) per VGG16 stage
_VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def _conv_bn(x, filters: int, kernel: int, name: str, relu: bool = True):
    x = layers.Conv2D(filters, kernel, padding="same", name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _inputs(input_size: Optional[tuple[int, int]]):
    height, width = input_size if input_size else (None, None)
    return keras.Input((height, width, 3), name="image")


@register_model("segnet")
def segnet(num_classes: int, input_size: Optional[tuple[int, int]] = None,
           backbone_weights: Optional[str] = None) -> keras.Model:
    check_backbone_weights(backbone_weights, "segnet")
    inputs = _inputs(input_size)
    x = ImageNormalization("caffe", name="normalize")(inputs)
    encoder_names, pools = [], []
    for stage, (filters, convs) in enumerate(_VGG16_STAGES, start=1):
        for conv in range(1, convs + 1):
            name = f"block{stage}_conv{conv}"
            encoder_names.append(name)
            x = _conv_bn(x, filters, 3, name)
        before = x
        x, indices = MaxPoolingWithArgmax(name=f"block{stage}_pool")(x)
        pools.append((before, indices))
    # The decoder mirrors the encoder; each stage's last conv maps to the next stage's width.
    for stage in range(len(_VGG16_STAGES), 0, -1):
        filters, convs = _VGG16_STAGES[stage - 1]
        out_filters = _VGG16_STAGES[stage - 2][0] if stage > 1 else 64
        before, indices = pools[stage - 1]
        x = MaxUnpooling(name=f"decoder{stage}_unpool")([x, indices, before])
        for conv in range(convs, 0, -1):
            x = _conv_bn(x, filters if conv > 1 else out_filters, 3, f"decoder{stage}_conv{conv}")
    logits = layers.Conv2D(num_classes, 1, name="classifier")(x)
    model = keras.Model(inputs, logits, name="segnet")
    load_backbone(model, keras.applications.VGG16, backbone_weights, encoder_names,
                  include_top=False, input_shape=(None, None, 3))
    return model


@register_model("segnet_basic")
def segnet_basic(num_classes: int, input_size: Optional[tuple[int, int]] = None,
                 backbone_weights: Optional[str] = None, filters: int = 64,
                 kernel_size: int = 7) -> keras.Model:
    if backbone_weights is not None:
        raise ValueError(f"segnet_basic trains from scratch: drop --backbone_weights "
                         f"(backbone_weights must be None); received {backbone_weights!r}")
    inputs = _inputs(input_size)
    x = ImageNormalization("unit", name="normalize")(inputs)
    pools = []
    for block in range(1, 5):
        x = _conv_bn(x, filters, kernel_size, f"encoder{block}_conv")
        before = x
        x, indices = MaxPoolingWithArgmax(name=f"encoder{block}_pool")(x)
        pools.append((before, indices))
    for block in range(4, 0, -1):
        before, indices = pools[block - 1]
        x = MaxUnpooling(name=f"decoder{block}_unpool")([x, indices, before])
        x = _conv_bn(x, filters, kernel_size, f"decoder{block}_conv", relu=False)
    logits = layers.Conv2D(num_classes, 1, name="classifier")(x)
    return keras.Model(inputs, logits, name="segnet_basic")
