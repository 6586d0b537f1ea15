"""Models saved as graphs: TensorFlow SavedModels and ONNX files, as a ``ModelRuntime``.

Both are graphs: loading one runs no Python code from the file. A SavedModel is called
through one of its signatures (``--signature``, default ``serving_default``); an ONNX model
runs in an ONNX Runtime session, on the CUDA provider where ``onnxruntime-gpu`` and a GPU are
there, else on the CPU. Either may have several outputs (``--output_key`` picks one) and
either layout (from the declared input shape, or ``--data_format``).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from segbeam.models.runtime import ModelRuntime, choose_output

LOG = logging.getLogger(__name__)
TORCH_HINT = ("torch for torchvision models (ImageNet mean/std on [0, 1] RGB); otherwise the "
              "normalisation the model was trained with")


def _dims(shape) -> tuple:
    """A declared shape with unknown dimensions as None (ONNX names them, TF leaves None)."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


class SavedModelRuntime(ModelRuntime):
    """One signature of a TensorFlow SavedModel (``path`` local)."""

    def __init__(self, path: str, name: str, signature: str = "serving_default",
                 output_key: Optional[str] = None, data_format: str = "auto"):
        try:
            from segbeam import compat

            compat.import_keras_quietly()  # TensorFlow's start-up lines stay hidden
            import tensorflow as tf
        except ImportError as error:
            raise ValueError(f"{name} is a TensorFlow SavedModel; serving it needs TensorFlow "
                             f"(pip install 'segbeam[tensorflow]')") from error
        self._tf = tf
        self.format, self.name, self.producer = "savedmodel", name, "TensorFlow SavedModel"
        try:
            self._loaded = tf.saved_model.load(path)  # keeps the signature's variables alive
        except Exception as error:  # TensorFlow raises its own types for bad folders
            raise ValueError(f"TensorFlow cannot load the SavedModel {name}: "
                             f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
                             ) from error
        signatures = dict(self._loaded.signatures)
        if signature not in signatures:
            have = ", ".join(signatures) or "none"
            raise ValueError(f"{name} has no signature {signature!r} (its signatures: {have}); "
                             f"pass --signature with one that maps images to class scores")
        self._function = signatures[signature]
        inputs = self._function.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"signature {signature!r} of {name} takes {len(inputs)} inputs "
                             f"({', '.join(inputs)}); segbeam feeds one batch of images")
        (self._input_name, spec), = inputs.items()
        self._input_dtype = spec.dtype
        outputs = self._function.structured_outputs
        if not isinstance(outputs, dict):
            outputs = {"output_0": outputs}
        self.output_names = tuple(outputs)
        index = choose_output(self.output_names, output_key, f"signature {signature!r} of "
                              f"{name}", [o.shape.as_list() for o in outputs.values()])
        self.output_name = self.output_names[index]
        self._set_shapes(_dims(spec.shape.as_list()),
                         _dims(outputs[self.output_name].shape.as_list()), data_format)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        tensor = self._tf.constant(batch.astype(self._input_dtype.as_numpy_dtype, copy=False))
        return self._function(**{self._input_name: tensor})[self.output_name].numpy()


def onnx_providers(available: list[str]) -> list[str]:
    """CUDA first where ONNX Runtime has it (``onnxruntime-gpu``), then the CPU."""
    preferred = [p for p in ("CUDAExecutionProvider",) if p in available]
    return preferred + ["CPUExecutionProvider"]


ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(double)": np.float64, "tensor(uint8)": np.uint8}


class OnnxRuntime(ModelRuntime):
    """An ONNX model in an ONNX Runtime session (``path`` local)."""

    def __init__(self, path: str, name: str, output_key: Optional[str] = None,
                 data_format: str = "auto"):
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ValueError(f"{name} is an ONNX model; serving it needs ONNX Runtime (pip "
                             f"install onnxruntime, or onnxruntime-gpu on GPU workers)"
                             ) from error
        self.format, self.name = "onnx", name
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: shape-inference chatter is not for users
        try:
            self._session = ort.InferenceSession(
                path, options, providers=onnx_providers(ort.get_available_providers()))
        except Exception as error:  # ORT raises its own exception types for bad files
            raise ValueError(f"ONNX Runtime cannot load {name}: {str(error).splitlines()[0]}"
                             ) from error
        LOG.info("serving %s on %s", name, self._session.get_providers()[0])
        meta = self._session.get_modelmeta()
        self.producer = meta.producer_name or "unknown"
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{name} takes {len(inputs)} inputs "
                             f"({', '.join(i.name for i in inputs)}); segbeam feeds one batch "
                             f"of images")
        self._input = inputs[0]
        if self._input.type not in ONNX_TYPES:
            raise ValueError(f"{name} takes {self._input.type} input; segbeam feeds float or "
                             f"uint8 images")
        outputs = self._session.get_outputs()
        self.output_names = tuple(o.name for o in outputs)
        index = choose_output(self.output_names, output_key, f"model {name}",
                              [o.shape for o in outputs])
        self.output_name = self.output_names[index]
        self._set_shapes(_dims(self._input.shape), _dims(outputs[index].shape), data_format)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        feed = {self._input.name: batch.astype(ONNX_TYPES[self._input.type], copy=False)}
        return self._session.run([self.output_name], feed)[0]

    def preprocessing_hint(self) -> str:
        if "pytorch" in self.producer.lower():
            return TORCH_HINT
        return super().preprocessing_hint()
