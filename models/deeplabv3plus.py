"""DeepLabV3+ (Chen et al., 2018) on a ResNet50 backbone.

- Backbone: ResNet50 v1 (bottleneck blocks, stride on the first 1x1 convolution), built here
  with every layer named as in ``keras.applications.ResNet50`` so that ImageNet (or local)
  weights copy by name. At ``output_stride`` 16 the last stage (conv5) keeps stride 1 and uses
  atrous rate 2; at 8, conv4 also keeps stride 1 (rate 2) and conv5 uses rate 4.
- ASPP on the backbone output: image pooling (global average, 1x1 conv, upsampled back), a 1x1
  branch and three 3x3 atrous branches at rates 6/12/18 (12/24/36 at output stride 8), all 256
  channels with batch norm and ReLU, concatenated and projected by a 1x1 conv to 256.
- Decoder: the ASPP output upsampled 4x (bilinearly, to the low-level map's size) and fused
  with the 48-channel 1x1 projection of the stride-4 features (``conv2_block3_out``), two 3x3
  convolutions of 256, a 1x1 classifier, bilinear upsampling to the input size.

Any input size works. Preprocessing: caffe (BGR minus the ImageNet mean, as ResNet50's
ImageNet weights expect), built in.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import layers

from segbeam.models.backbones import check_backbone_weights, load_backbone
from segbeam.models.layers import ImageNormalization, ResizeLike
from segbeam.models.registry import register_model

_BN_EPSILON = 1.001e-5  # keras.applications.ResNet50's
# (name, filters, blocks, stride) of ResNet50's four stages
_RESNET50_STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2),
                    ("conv5", 512, 3, 2))


def _bottleneck(x, filters: int, stride: int, dilation: int, shortcut_conv: bool, name: str):
    if shortcut_conv:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation,
                      name=f"{name}_2_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_2_bn")(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def resnet50_features(x, output_stride: int):
    """ResNet50 up to conv5; returns (stride-4 features, final features, names of layers with
    weights)."""
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    current_stride, dilation, low_level = 4, 1, None
    for stage, filters, blocks, stride in _RESNET50_STAGES:
        if stride > 1 and current_stride * stride > output_stride:
            dilation *= stride  # keep the resolution, widen the receptive field instead
            stride = 1
        current_stride *= stride
        for block in range(1, blocks + 1):
            x = _bottleneck(x, filters, stride if block == 1 else 1, dilation, block == 1,
                            f"{stage}_block{block}")
        if stage == "conv2":
            low_level = x
    return low_level, x


def _conv_bn_relu(x, filters: int, kernel: int, name: str, dilation: int = 1):
    x = layers.Conv2D(filters, kernel, padding="same", dilation_rate=dilation, use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def aspp(x, rates: tuple[int, int, int], filters: int = 256):
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = _conv_bn_relu(pooled, filters, 1, "aspp_pool_proj")
    branches = [ResizeLike(name="aspp_pool_upsample")([pooled, x]),
                _conv_bn_relu(x, filters, 1, "aspp_1x1")]
    branches += [_conv_bn_relu(x, filters, 3, f"aspp_rate{rate}", dilation=rate)
                 for rate in rates]
    x = layers.Concatenate(name="aspp_concat")(branches)
    return _conv_bn_relu(x, filters, 1, "aspp_project")


@register_model("deeplabv3plus")
def deeplabv3plus(num_classes: int, input_size: Optional[tuple[int, int]] = None,
                  backbone_weights: Optional[str] = None, output_stride: int = 16,
                  dropout: float = 0.1) -> keras.Model:
    if output_stride not in (8, 16):
        raise ValueError(f"Argument `output_stride` must be 8 or 16. Received: "
                         f"{output_stride!r}")
    check_backbone_weights(backbone_weights, "deeplabv3plus")
    height, width = input_size if input_size else (None, None)
    inputs = keras.Input((height, width, 3), name="image")
    x = ImageNormalization("caffe", name="normalize")(inputs)
    low_level, features = resnet50_features(x, output_stride)
    rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    x = aspp(features, rates)
    x = layers.Dropout(dropout, name="aspp_dropout")(x)
    low = _conv_bn_relu(low_level, 48, 1, "decoder_low_level")
    x = ResizeLike(name="decoder_upsample")([x, low])
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = _conv_bn_relu(x, 256, 3, "decoder_conv1")
    x = _conv_bn_relu(x, 256, 3, "decoder_conv2")
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    logits = ResizeLike(name="logits")([x, inputs])
    model = keras.Model(inputs, logits, name="deeplabv3plus")
    backbone = [layer.name for layer in model.layers if layer.weights and
                layer.name.split("_")[0] in ("conv1", "conv2", "conv3", "conv4", "conv5")]
    load_backbone(model, keras.applications.ResNet50, backbone_weights, backbone,
                  include_top=False, input_shape=(None, None, 3))
    return model
