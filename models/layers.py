"""Custom layers shared by the architectures. Registered as serialisable under the
``segbeam`` package, so saved ``.keras`` files that use them load after ``import models``,
which the pipeline does for the user."""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="segbeam")
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
