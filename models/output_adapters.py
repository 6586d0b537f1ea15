"""Model outputs that are not per-class logits or a distribution, adapted to logits so that
everything downstream (labels, probabilities, CRF, calibration) sees an ordinary model.

One output channel: binary segmentation, a foreground score per pixel (as
segmentation_models_pytorch and most Keras U-Net tutorials export them), served as two classes,
background 0 and foreground 1. The channel becomes two logits, [0, z] for a logit z and
[log(1 - p), log(p)] for a sigmoid probability p: their softmax is [1 - p, p] either way. Which
of the two the channel holds is never guessed from values (logits of a weak model can all fall
in [0, 1]): it is ``--model_output``, or a Keras model's final sigmoid or linear layer;
otherwise the launcher asks for the flag.

A sigmoid per class (a multi-label head): the scores do not sum to one, and read as logits
their softmax is near uniform, a CRF unary with no say and a calibration of nothing. Where a
Keras model's final layer says so, they are served as log(p), whose softmax is p normalised.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from segbeam.inference import TOLERANCE, check_probability_range

# Probabilities are clipped this far from 0 and 1 before the log (float32 keeps 1 - 1e-7).
_EPSILON = 1e-7


def two_class_logits(scores: np.ndarray, kind: str) -> np.ndarray:
    """(N, h, w, 1) foreground scores -> (N, h, w, 2) float32 logits of [background,
    foreground]; ``kind`` is ``logits`` or ``probabilities``."""
    scores = np.asarray(scores, dtype=np.float32)
    if kind == "probabilities":  # logits declared so would be clipped to 0 and 1 unseen
        check_probability_range(float(scores.min()), float(scores.max()))
        p = np.clip(scores, _EPSILON, 1 - _EPSILON)
        return np.concatenate([np.log1p(-p), np.log(p)], axis=-1)
    return np.concatenate([np.zeros_like(scores), scores], axis=-1)


def final_activation(model) -> Optional[str]:
    """The activation of the layer that produces a Keras model's output, when it has one
    (``sigmoid``, ``softmax``, ``linear``, ...), else None."""
    history = getattr(model.outputs[0], "_keras_history", None)
    layer = getattr(history, "operation", None)
    if type(layer).__name__ == "Softmax":  # keras.layers.Softmax holds no activation
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None)


def binary_output_kind(runtime, requested: str) -> str:
    """What a one-channel model's channel holds: ``requested`` (``--model_output``) unless it
    is ``auto``, else ``probabilities`` under a Keras model's final sigmoid, ``logits`` under a
    final linear layer. Raises ValueError when nothing says."""
    if requested != "auto":
        return requested
    activation = final_activation(runtime.keras_model) if runtime.keras_model is not None \
        else None
    if activation == "sigmoid":
        return "probabilities"
    if activation == "linear":
        return "logits"
    raise ValueError(f"model {runtime.name} has one output channel (binary segmentation, "
                     f"served as classes 0 and 1) and does not say whether it holds logits or "
                     f"sigmoid probabilities; pass --model_output logits or --model_output "
                     f"probabilities")


def _two_class_keras(model, kind: str):
    """``model`` with its one channel turned into two logits inside the graph, so that the
    compiled serving functions (and the fused CRF) see a two-class model."""
    import keras
    from keras import ops

    scores = ops.cast(model.outputs[0], "float32")
    if kind == "probabilities":  # scores outside [0, 1] become NaN, which the predictor refuses
        in_range = ops.logical_and(ops.greater_equal(scores, -TOLERANCE),
                                   ops.less_equal(scores, 1 + TOLERANCE))
        p = ops.where(in_range, ops.clip(scores, _EPSILON, 1 - _EPSILON), float("nan"))
        logits = ops.concatenate([ops.log(1 - p), ops.log(p)], axis=-1)
    else:
        logits = ops.concatenate([ops.zeros_like(scores), scores], axis=-1)
    return keras.Model(model.inputs, logits, name=f"{model.name}_two_class")


class _AdaptedRuntime:
    """A ``ModelRuntime`` with other outputs; everything else is the wrapped runtime's."""

    def __init__(self, runtime):
        self._runtime = runtime

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)


class TwoClassRuntime(_AdaptedRuntime):
    """A one-channel ``ModelRuntime`` served as two classes."""

    def __init__(self, runtime, kind: str):
        super().__init__(runtime)
        self._kind = kind
        self.keras_model = None if runtime.keras_model is None else \
            _two_class_keras(runtime.keras_model, kind)
        # Where a Keras graph serves declared probabilities, a score outside [0, 1] is NaN.
        self.nan_means_out_of_range = kind == "probabilities" and self.keras_model is not None

    def outputs(self, batch: np.ndarray) -> np.ndarray:
        return two_class_logits(self._runtime.outputs(batch), self._kind)

    def num_classes(self) -> int:
        return 2


def sigmoid_logits(scores: np.ndarray) -> np.ndarray:
    """Per-class sigmoid probabilities (a multi-label head) as logits whose softmax is the
    scores normalised to sum to one: log(p)."""
    return np.log(np.clip(np.asarray(scores, dtype=np.float32), _EPSILON, 1.0))


def _sigmoid_keras(model):
    import keras
    from keras import ops

    scores = ops.clip(ops.cast(model.outputs[0], "float32"), _EPSILON, 1.0)
    return keras.Model(model.inputs, ops.log(scores), name=f"{model.name}_normalised")


class SigmoidScoresRuntime(_AdaptedRuntime):
    """A Keras model whose classes each end in a sigmoid, served as log(p)."""

    def __init__(self, runtime):
        super().__init__(runtime)
        self.keras_model = _sigmoid_keras(runtime.keras_model)

    def outputs(self, batch: np.ndarray) -> np.ndarray:
        return sigmoid_logits(self._runtime.outputs(batch))


def adapt_outputs(runtime, requested: str) -> tuple[Any, str]:
    """(the runtime to serve, the kind of its outputs): a one-channel model wrapped as two
    classes (whose outputs are logits); a Keras model with a sigmoid per class, under
    ``--model_output auto``, as normalised logits; any other as it is. ``--model_output
    logits`` for a Keras model that ends in a softmax or a sigmoid, and ``probabilities`` for
    one that ends in a linear layer, are ValueErrors."""
    activation = final_activation(runtime.keras_model) if runtime.keras_model is not None \
        else None
    if requested == "logits" and activation in ("softmax", "sigmoid"):
        raise ValueError(f"--model_output logits, but model {runtime.name} ends in a "
                         f"{activation}, so its outputs are probabilities, whose softmax would "
                         f"flatten them; pass --model_output probabilities (or auto)")
    if requested == "probabilities" and activation == "linear":
        raise ValueError(f"--model_output probabilities, but model {runtime.name} ends in a "
                         f"linear layer, so its outputs are logits; pass --model_output logits "
                         f"(or auto)")
    if runtime.num_classes() == 1:
        return TwoClassRuntime(runtime, binary_output_kind(runtime, requested)), "logits"
    if requested == "auto" and activation == "sigmoid":
        return SigmoidScoresRuntime(runtime), "logits"
    return runtime, requested
