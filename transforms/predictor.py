"""A loaded segmentation model behind methods: the Keras serving graphs (probabilities and
labels computed by the backend), the output kind (``--model_output auto`` decided on the first
real outputs), and the device a copy computes on. ``KerasSegmentationHandler`` holds one per
worker (``segbeam.transforms.inference``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Optional

import numpy as np

from segbeam.crf import labels_from_probabilities
from segbeam.inference import MODEL_OUTPUTS, check_finite, check_logits, \
    check_probability_range, in_unit_range, looks_like_probabilities, non_finite_count, \
    to_probabilities
from segbeam.models.keras_runtime import compiled_predict, device_predict
from segbeam.models.output_adapters import adapt_outputs
from segbeam.models.runtime import ModelRuntime
from segbeam.transforms.fused_crf import as_probabilities

LOG = logging.getLogger(__name__)


def _serving_model(model, kind: str, check_logits: bool = False):
    """``model`` with its post-processing inside: (float16 probabilities, labels) computed by
    the backend (multi-threaded kernels, on the device on a GPU, half the bytes to copy back)
    instead of in numpy on the host; with ``kind="labels"``, the labels alone (the argmax of
    logits and of probabilities agree, so no softmax). Each also counts the outputs that are
    NaN or +infinite, for the host to refuse. Shares the model's layers and weights."""
    import keras
    from keras import ops

    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    outputs = model(inputs)
    label_type = "uint8" if model.output_shape[-1] <= 256 else "uint16"
    bad = _non_finite(ops, outputs)
    if kind == "labels":
        return keras.Model(inputs, [ops.cast(ops.argmax(outputs, axis=-1), label_type), bad],
                           name=f"{model.name}_labels")
    probabilities = as_probabilities(outputs, kind)
    labels = ops.cast(ops.argmax(probabilities, axis=-1), label_type)
    served = [ops.cast(probabilities, "float16"), labels, bad]
    if kind == "probabilities" or check_logits:  # each image's range, checked on the host
        served += [ops.min(outputs, axis=(1, 2, 3)), ops.max(outputs, axis=(1, 2, 3))]
    if check_logits:  # and how far its pixels' sums stray from one
        served.append(_worst_sum_error(ops, outputs, axis=(1, 2)))
    return keras.Model(inputs, served, name=f"{model.name}_serving")


def _auto_kind(outputs: np.ndarray) -> tuple[str, bool]:
    """(what ``--model_output auto`` reads a model's first real outputs as, whether that
    reading is in doubt): scores in [0, 1] that do not sum to one are read as logits, as they
    may be, but they may also be a sigmoid per class, so not without a word."""
    if looks_like_probabilities(outputs):
        return "probabilities", False
    return "logits", in_unit_range(outputs)


def _non_finite(ops, outputs):
    """How many outputs of each image are NaN or +infinite
    (``segbeam.inference.non_finite_count``)."""
    bad = ops.logical_or(ops.isnan(outputs),
                         ops.logical_and(ops.isinf(outputs), ops.greater(outputs, 0)))
    return ops.sum(ops.cast(bad, "int32"), axis=(1, 2, 3))


def _worst_sum_error(ops, outputs, axis=None):
    """How far the pixels' sums over the classes stray from one, at most (per image along
    ``axis``)."""
    return ops.max(ops.abs(ops.sum(ops.cast(outputs, "float32"), axis=-1) - 1.0), axis=axis)


class SegmentationPredictor:
    """A loaded model (a ``ModelRuntime`` of any format) behind methods only, so that Beam can
    also serve it through a multiprocessing proxy (``large_model``), where attributes are not
    reachable.

    ``kind`` is what the model emits (``logits``, ``probabilities``, or ``auto``: decided on
    the first batch, then kept). A Keras model gets its post-processing compiled into its
    graph; other formats return scores that are post-processed here, in numpy. ``device``:
    the TensorFlow device this copy was loaded on; every call computes there."""

    def __init__(self, runtime: ModelRuntime, kind: str = "auto", device: Optional[str] = None):
        if kind not in MODEL_OUTPUTS:
            raise ValueError(f"unknown model output kind {kind!r}; expected one of "
                             f"{MODEL_OUTPUTS}")
        declared = kind
        runtime, kind = adapt_outputs(runtime, kind)  # binary or multi-label sigmoid heads
        # Logits declared by --model_output are checked for probabilities; auto looked.
        self._check_logits = declared == kind == "logits"
        self._nan_means_out_of_range = getattr(runtime, "nan_means_out_of_range", False)
        self._runtime = runtime
        self._kind = kind
        self._placement = device
        model = runtime.keras_model
        # Built now, so that on a GPU they live where the model was placed.
        self._serving = None if model is None else {
            k: compiled_predict(_serving_model(model, k, k == "logits" and self._check_logits))
            for k in ("logits", "probabilities", "labels")}
        # Keras builds its predict function lazily and is not re-entrant; ONNX Runtime
        # sessions and TensorFlow signatures are, so those only serialise the first look.
        self._lock = threading.Lock()
        self._kind_in_doubt = False  # see take_doubt
        self._call_lock = self._lock if model is not None else contextlib.nullcontext()
        self._device_function = None  # device_predict(model), made on first use

    def placed(self):
        """The device scope of this copy (see ``placed_on``)."""
        return placed_on(self._placement)

    def _scores(self, batch: np.ndarray) -> np.ndarray:
        with self._call_lock, self.placed():
            return self._runtime.outputs(batch)

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, C) float16 probabilities and (N, H, W) labels for a preprocessed float32
        batch (a Keras model also takes raw uint8 RGB, which its graph casts)."""
        if self._serving is not None and self._kind != "auto":
            with self._lock, self.placed():
                served = self._serving[self._kind](batch)
            self._check_finite(served[2])
            if self._kind == "probabilities":
                check_probability_range(float(np.min(served[3])), float(np.max(served[4])))
            elif self._check_logits:
                check_logits(float(np.min(served[3])), float(np.max(served[4])),
                             float(np.max(served[5])), np.shape(served[0])[-1])
            return np.asarray(served[0]), np.asarray(served[1])
        outputs = self._scores(batch)
        self._check_finite(non_finite_count(outputs))
        with self._lock:  # one look at real outputs decides the kind, then it is kept
            if self._kind == "auto":
                self._kind, self._kind_in_doubt = _auto_kind(outputs)
        probabilities = to_probabilities(outputs, self._kind)
        return probabilities.astype(np.float16), labels_from_probabilities(probabilities)

    def _check_finite(self, bad_per_image) -> None:
        check_finite(int(np.sum(bad_per_image)), self._nan_means_out_of_range)

    def device_outputs(self, batch: np.ndarray):
        """(The model's (N, h, w, C) outputs as a backend tensor, left on the device; what
        they are: logits or probabilities). Keras models only."""
        from keras import ops

        with self._lock, self.placed():
            if self._device_function is None:
                self._device_function = device_predict(self._runtime.keras_model)
            outputs = self._device_function(batch)
            self._check_finite(ops.convert_to_numpy(_non_finite(ops, outputs)))
            if self._kind == "auto":  # one look at real outputs decides, then it is kept
                self._kind, self._kind_in_doubt = _auto_kind(
                    np.asarray(ops.convert_to_numpy(outputs), np.float32))
        if self._check_logits:  # three numbers off the device, not the outputs
            check_logits(*(float(ops.convert_to_numpy(figure)) for figure in (
                ops.min(outputs), ops.max(outputs), _worst_sum_error(ops, outputs))),
                outputs.shape[-1])
        return outputs, self._kind

    def take_doubt(self) -> bool:
        """Whether ``auto`` read outputs in [0, 1] as logits since the last call (True once
        per decision), for the handler to count and warn: it runs where Beam collects
        metrics, which this copy does not behind ``large_model``'s proxy."""
        with self._lock:
            doubt, self._kind_in_doubt = self._kind_in_doubt, False
        return doubt

    def serves_keras(self) -> bool:
        return self._serving is not None

    def predict_labels(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W) labels for a preprocessed batch, without computing probabilities."""
        if self._serving is not None:
            with self._lock, self.placed():
                labels, bad = self._serving["labels"](batch)
            self._check_finite(bad)
            return np.asarray(labels)
        scores = self._scores(batch)
        self._check_finite(non_finite_count(scores))
        return labels_from_probabilities(scores)

    def fixed_input_size(self) -> Optional[tuple[int, int]]:
        return self._runtime.fixed_input_size()

    def num_classes(self) -> Optional[int]:
        return self._runtime.num_classes()


def placed_on(device: Optional[str]):
    """A TensorFlow device scope for ``device`` (None: no scope). TensorFlow places a compiled
    function's ops where it is called, not where it was traced or where the model's weights
    live, so every call into a model copy enters its GPU's scope."""
    if device is None:
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.device(device)
