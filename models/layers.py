"""Custom layers and initialisers shared by the architectures, written with ``keras.ops`` only
so that they run on every Keras backend. Registered as serialisable under the ``segbeam``
package: saved ``.keras`` files that use them load once this module is imported, which the
model loader (``segbeam.models.source``) does for the user."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from segbeam.preprocessing import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD

_PACKAGE = "segbeam"

NORMALIZATIONS = ("caffe", "torch", "symmetric", "unit")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ImageNormalization(layers.Layer):
    """Maps raw RGB in [0, 255] to what a backbone expects, inside the model, so that saved
    files are self-contained and the pipeline always feeds raw pixels.

    ``caffe``: RGB -> BGR minus the ImageNet mean (VGG16, ResNet50 in keras.applications);
    ``torch``: [0, 1] then ImageNet mean / std; ``symmetric``: [-1, 1] (MobileNetV2);
    ``unit``: [0, 1].
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in NORMALIZATIONS:
            raise ValueError(f"Argument `mode` must be one of {NORMALIZATIONS}. "
                             f"Received: {mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_BGR_MEAN, x.dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(IMAGENET_MEAN, x.dtype)
            std = ops.convert_to_tensor(IMAGENET_STD, x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "symmetric":
            return x / 127.5 - 1.0
        return x / 255.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BilinearUpsampling(layers.Layer):
    """Bilinear upsampling by an integer factor that also works when the spatial size is only
    known at run time (Keras's ``UpSampling2D`` needs static sizes under TensorFlow graphs)."""

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"Argument `factor` must be a positive integer. Received: {factor}")
        self.factor = factor

    def call(self, inputs):
        shape = ops.shape(inputs)
        size = (shape[1] * self.factor, shape[2] * self.factor)
        return ops.image.resize(inputs, size, interpolation="bilinear")

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        scale = lambda n: None if n is None else n * self.factor  # noqa: E731
        return (batch, scale(height), scale(width), channels)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResizeLike(layers.Layer):
    """``[x, reference]`` -> ``x`` resized bilinearly to ``reference``'s height and width.
    DeepLab's decoder and pooling branch use it, so that any input size works."""

    def call(self, inputs):
        x, reference = inputs
        shape = ops.shape(reference)
        return ops.image.resize(x, (shape[1], shape[2]), interpolation="bilinear")

    def compute_output_shape(self, input_shapes):
        x_shape, reference_shape = input_shapes
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


def _non_negative(value):
    """max(value, 0) for a static size (a Python int) or a dynamic one (a tensor)."""
    return max(value, 0) if isinstance(value, int) else ops.maximum(value, 0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MatchSize(layers.Layer):
    """``[x, reference]`` -> ``x`` cropped (or zero-padded at the bottom and right) to
    ``reference``'s height and width: Caffe's ``Crop`` layer as FCN uses it, generalised.
    Upsampling a ceil-mode feature map overshoots a skip connection by a pixel on sizes that
    are not a multiple of the stride, and floor-mode encoders undershoot; this aligns them
    at the top-left corner."""

    def call(self, inputs):
        x, reference = inputs
        have, want = ops.shape(x), ops.shape(reference)
        pad_h, pad_w = _non_negative(want[1] - have[1]), _non_negative(want[2] - have[2])
        if not (isinstance(pad_h, int) and isinstance(pad_w, int) and pad_h == pad_w == 0):
            x = ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
        return x[:, : want[1], : want[2], :]

    def compute_output_shape(self, input_shapes):
        x_shape, reference_shape = input_shapes
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


def _pad_to_even(x, fill: float):
    """Pads height and width up to even sizes with ``fill`` (ceil-mode pooling)."""
    shape = ops.shape(x)
    pad_h, pad_w = shape[1] % 2, shape[2] % 2
    if isinstance(pad_h, int) and isinstance(pad_w, int) and not (pad_h or pad_w):
        return x
    return ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], constant_values=fill)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaxPoolingWithArgmax(layers.Layer):
    """2x2, stride-2 max pooling (ceil mode: odd sizes keep their last row and column) that
    also returns which of the four window positions held the maximum, for SegNet's unpooling.

    Returns ``(pooled, indices)``; ``indices`` is int32 in 0..3, row-major within each 2x2
    window (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right), first maximum on ties.
    Window-local indices carry the same information as TensorFlow's flat argmax and need no
    backend-specific op.
    """

    def call(self, inputs):
        x = _pad_to_even(inputs, float("-inf"))
        shape = ops.shape(x)
        height, width, channels = shape[1] // 2, shape[2] // 2, shape[3]
        windows = ops.reshape(x, (-1, height, 2, width, 2, channels))
        windows = ops.transpose(windows, (0, 1, 3, 5, 2, 4))
        windows = ops.reshape(windows, (-1, height, width, channels, 4))
        pooled = ops.max(windows, axis=-1)
        indices = ops.cast(ops.argmax(windows, axis=-1), "int32")
        return pooled, indices

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        half = lambda n: None if n is None else (n + 1) // 2  # noqa: E731
        shape = (batch, half(height), half(width), channels)
        return shape, shape

    def compute_output_spec(self, inputs):
        pooled_shape, indices_shape = self.compute_output_shape(inputs.shape)
        return (keras.KerasTensor(pooled_shape, dtype=self.compute_dtype),
                keras.KerasTensor(indices_shape, dtype="int32"))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaxUnpooling(layers.Layer):
    """``[x, indices, reference]`` -> ``x`` placed back at the positions its encoder's
    ``MaxPoolingWithArgmax`` took each maximum from, zeros elsewhere, cropped to
    ``reference``'s height and width (the tensor that was pooled)."""

    def call(self, inputs):
        x, indices, reference = inputs
        shape = ops.shape(x)
        height, width, channels = shape[1], shape[2], shape[3]
        spread = ops.one_hot(indices, 4, dtype=x.dtype) * ops.expand_dims(x, -1)
        spread = ops.reshape(spread, (-1, height, width, channels, 2, 2))
        spread = ops.transpose(spread, (0, 1, 4, 2, 5, 3))
        spread = ops.reshape(spread, (-1, height * 2, width * 2, channels))
        target = ops.shape(reference)
        return spread[:, : target[1], : target[2], :]

    def compute_output_shape(self, input_shapes):
        x_shape, _, reference_shape = input_shapes
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


def upsample_filt(size: int) -> np.ndarray:
    """The (size, size) bilinear kernel FCN initialises its deconvolutions with
    (``surgery.upsample_filt`` in the FCN reference code)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    grid = np.ogrid[:size, :size]
    return ((1 - abs(grid[0] - center) / factor) * (1 - abs(grid[1] - center) / factor)
            ).astype(np.float32)


def bilinear_kernel_size(factor: int) -> int:
    """FCN's deconvolution kernel size for an upsampling ``factor``: ``2 * f - f % 2``."""
    return 2 * factor - factor % 2


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BilinearUpsamplingInitializer(keras.initializers.Initializer):
    """Initialises a ``Conv2DTranspose`` kernel (kh, kw, out, in) as bilinear upsampling of
    each channel onto itself (identity across classes), as FCN does."""

    def __call__(self, shape, dtype=None):
        kernel_h, kernel_w, out_channels, in_channels = shape
        if kernel_h != kernel_w or out_channels != in_channels:
            raise ValueError(f"a bilinear upsampling kernel must be square with as many "
                             f"outputs as inputs; received shape {shape}")
        kernel = np.zeros(shape, dtype=np.float32)
        filt = upsample_filt(kernel_h)
        for channel in range(in_channels):
            kernel[:, :, channel, channel] = filt
        return ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {}
