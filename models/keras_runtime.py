"""Keras models as a ``ModelRuntime``: ``.keras`` files, legacy ``.h5`` files, registry models.

``.keras`` files load with Keras's safe deserialisation. A legacy ``.h5`` model is read for
Python code first (``Lambda`` layers, serialised functions): such a file is refused unless the
user passes ``--unsafe_model_loading``, because loading it would run code from the file.
"""

from __future__ import annotations

import json
import zipfile
from typing import Any, Optional

import numpy as np

from segbeam.models.formats import LUMA_WEIGHTS
from segbeam.models.registry import normalised_twice
from segbeam.models.runtime import ModelRuntime, choose_output

# Layer classes whose configuration carries Python code (bytecode or a function's source).
CODE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda")
UNSAFE_FLAG = "--unsafe_model_loading"
# Layers that scale a model's own input (a model that begins with one takes raw pixels).
INPUT_SCALING_LAYERS = ("ImageNormalization", "Rescaling", "Normalization")


def _code_layers(config: Any, found: Optional[list] = None) -> list[str]:
    """Names of the layers in a Keras model configuration that hold Python code."""
    found = [] if found is None else found
    if isinstance(config, dict):
        if config.get("class_name") in CODE_LAYERS:
            name = (config.get("config") or {}).get("name", "?")
            found.append(f"{config['class_name']} layer {name!r}")
        elif config.get("function_type") == "lambda":
            found.append("a serialised Python function")
        for value in config.values():
            _code_layers(value, found)
    elif isinstance(config, list):
        for value in config:
            _code_layers(value, found)
    return found


def check_h5(path: str, name: str, unsafe: bool) -> None:
    """Raises a ValueError when the ``.h5`` file is not a full model, or holds Python code and
    ``unsafe`` is False."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            config = handle.attrs.get("model_config")
    except OSError as error:  # h5py: "file signature not found" and the like
        raise ValueError(f"{name} is not an HDF5 file that h5py can open ({error}); check that "
                         f"it was saved whole, or downloaded completely") from None
    if config is None:
        raise ValueError(f"{name} holds weights only, not a model: pass the architecture's "
                         f"registry name as --model and this file as --weights, or save the "
                         f"whole model (model.save)")
    code = _code_layers(json.loads(config.decode() if isinstance(config, bytes) else config))
    if code and not unsafe:
        raise ValueError(f"{name} contains Python code ({', '.join(code[:3])}) that loading "
                         f"would run; if you trust the file, pass {UNSAFE_FLAG}")


def load_keras_file(path: str, name: str, model_format: str, unsafe: bool = False,
                    custom_objects: Optional[dict] = None):
    """The ``keras.Model`` in a ``.keras`` or ``.h5`` file (``path`` local); ``custom_objects``:
    the classes and functions of ``--custom_objects``, by name."""
    from segbeam import compat

    keras = compat.import_keras_quietly()
    from segbeam.models import layers  # noqa: F401  (registers the custom layers)

    if model_format == "h5":
        check_h5(path, name, unsafe)
    elif not zipfile.is_zipfile(path):  # Keras would say "File not found" of it
        raise ValueError(f"{name} is not a .keras file (a zip archive that model.save writes); "
                         f"check that it was saved whole, or downloaded completely")
    try:
        return keras.saving.load_model(path, custom_objects=custom_objects, compile=False,
                                       safe_mode=not unsafe)
    except Exception as error:  # Keras, h5py and zipfile each raise their own types
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if "safe_mode" in str(error) or "unsafe" in str(error).lower():
            raise ValueError(f"{name} contains Python code that loading would run; if you "
                             f"trust the file, pass {UNSAFE_FLAG}") from error
        hint = "" if custom_objects else "; a model with custom layers needs " \
            "--custom_objects FILE.py, the file that defines them"
        raise ValueError(f"Keras cannot load {name}: {type(error).__name__}: {message} (a "
                         f"model saved by another Keras version may need exporting to ONNX "
                         f"or a SavedModel{hint})") from error


def _nhwc_single_output(model, index: int, layout: str, channels: int = 3):
    """``model`` as NHWC RGB in, one NHWC output out (the same layers and weights); a model
    of one input channel takes the luminance of the RGB (``formats.luminance``)."""
    import keras
    from keras import ops

    if layout == "channels_last" and len(model.outputs) == 1 and channels == 3:
        return model
    if layout == "channels_last":
        height, width = tuple(model.inputs[0].shape[1:3])
    else:
        height, width = tuple(model.inputs[0].shape[2:4])
    inputs = keras.Input(shape=(height, width, 3), name="image")
    x = inputs
    if channels == 1:
        x = ops.sum(x * ops.convert_to_tensor(LUMA_WEIGHTS, x.dtype), axis=-1, keepdims=True)
    x = ops.transpose(x, (0, 3, 1, 2)) if layout == "channels_first" else x
    outputs = model(x)
    if isinstance(outputs, dict):
        outputs = outputs[list(model.output_names)[index]]
    elif isinstance(outputs, (list, tuple)):
        outputs = outputs[index]
    if layout == "channels_first":
        outputs = ops.transpose(outputs, (0, 2, 3, 1))
    return keras.Model(inputs, outputs, name=f"{model.name}_nhwc")


def _tensorflow_predict(model):
    """``model`` under TensorFlow as one ``tf.function`` per image size and dtype (any batch
    size), each traced once, returning TensorFlow tensors."""
    import tensorflow as tf

    functions = {}

    def run(batch):
        key = (batch.shape[1:], batch.dtype.str)
        function = functions.get(key)
        if function is None:
            spec = tf.TensorSpec((None, *batch.shape[1:]), tf.as_dtype(batch.dtype))
            function = functions.setdefault(key, tf.function(
                lambda x: model(x, training=False), input_signature=[spec]))
        return function(tf.convert_to_tensor(batch))
    return run


def compiled_predict(model):
    """``model`` as a compiled function of a numpy batch, returning numpy.

    Under TensorFlow, Keras's ``predict_on_batch`` traces with ``reduce_retracing``: at the
    second input size it retraces with unknown height and width, where resize ops fail
    (``OperatorNotAllowedInGraphError``), so batches of varying sizes (``--resize_mode pad``,
    batching by size) broke every model that resizes inside. A ``tf.function`` per image size
    (any batch size) avoids that, each traced once. Can go when Keras's predict function
    handles dynamic spatial sizes under TensorFlow."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return model.predict_on_batch
    predict = _tensorflow_predict(model)

    def run(batch):
        outputs = predict(batch)
        if isinstance(outputs, (list, tuple)):
            return [np.asarray(o) for o in outputs]
        return np.asarray(outputs)
    return run


def device_predict(model):
    """``model`` (one output) as a compiled function of a numpy batch that returns the
    backend's own tensor, left where the backend computed it (a GPU's memory), for work that
    follows on the device (the fused CRF)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_predict(model)
    if backend == "jax":
        import jax

        function = jax.jit(lambda trainable, fixed, x: model.stateless_call(
            trainable, fixed, x, training=False)[0])
        return lambda batch: function([v.value for v in model.trainable_variables],
                                      [v.value for v in model.non_trainable_variables], batch)
    import torch

    def run(batch):
        with torch.no_grad():
            return model(keras.ops.convert_to_tensor(batch), training=False)
    return run


def keras_on_accelerator() -> bool:
    """Whether the Keras backend computes on an accelerator (a GPU or TPU) in this process."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    import torch

    return bool(torch.cuda.is_available())


class KerasRuntime(ModelRuntime):
    """A ``keras.Model`` (any layout, one or several outputs) served through Keras."""

    def __init__(self, model, name: str, model_format: str = "keras",
                 output_key: Optional[str] = None, data_format: str = "auto",
                 preprocessing: str = ""):
        self.format, self.name = model_format, name
        self.producer = f"Keras ({model.name})"
        self._preprocessing = preprocessing
        self.output_names = tuple(getattr(model, "output_names", None) or
                                  [f"output_{i}" for i in range(len(model.outputs))])
        index = choose_output(self.output_names, output_key, f"model {name}",
                              [o.shape for o in model.outputs])
        self.output_name = self.output_names[index] if len(self.output_names) > 1 else ""
        self._set_shapes(model.inputs[0].shape, model.outputs[index].shape, data_format)
        self.batch_limit = None  # Keras models take any batch size
        self.keras_model = _nhwc_single_output(model, index, self.layout, self.input_channels)
        self._predict = compiled_predict(self.keras_model)
        self._layer_types = [type(layer).__name__ for layer in model.layers
                             if type(layer).__name__ != "InputLayer"][:3]

    def _run(self, batch):
        raise AssertionError("a Keras runtime runs through keras_model")

    def outputs(self, batch):
        return np.asarray(self._predict(batch), dtype=np.float32)

    def _input_scaling(self) -> Optional[str]:
        """The type of the layer among the model's first three that scales its input."""
        return next((t for t in self._layer_types if t in INPUT_SCALING_LAYERS), None)

    def preprocessing_hint(self) -> str:
        if self._preprocessing:
            return self._preprocessing
        scaling = self._input_scaling()
        if scaling:
            return f"none: the model scales its own input (a {scaling} layer)"
        return super().preprocessing_hint()

    def preprocess_warning(self, preprocess: str) -> Optional[str]:
        scaling = self._input_scaling() if preprocess != "none" else None
        if scaling == "ImageNormalization":  # segbeam's own: it takes raw RGB in [0, 255]
            raise ValueError(normalised_twice(preprocess, f"{self.name} begins with segbeam's "
                                                          f"ImageNormalization layer, which "
                                                          f"takes raw RGB in [0, 255]"))
        if scaling:
            return (f"--preprocess {preprocess} normalises the input, but {self.name} scales "
                    f"its own (a {scaling} layer among its first): unless that layer expects "
                    f"--preprocess {preprocess}'s output, pass --preprocess none")
        return None
