"""What the inference stage needs to know, and the pure handling of a model's outputs.

``InferenceSettings`` holds how images reach the model (canvas fitting, normalisation), what the
model emits, and how Beam batches and shares it; it validates itself on construction. The
functions turn raw model outputs into probabilities. No Beam, no Keras.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from segbeam.config import Effect, setting
from segbeam.geometry import RESIZE_MODES
from segbeam.preprocessing import PREPROCESSORS

MODEL_OUTPUTS = ("auto", "logits", "probabilities")
DEFAULT_SIZE_MULTIPLE = 32  # the total stride of most segmentation networks


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """resize_mode: how an image is fitted to the canvas (see ``segbeam.geometry``).
    size_multiple: what ``pad`` rounds the canvas up to (the model's total stride). preprocess:
    the normalisation applied to raw RGB (see ``segbeam.preprocessing``). model_output:
    ``logits``, ``probabilities`` or ``auto`` (detected on the first batch). batch_size /
    min_batch_size: Beam's batching bounds. large_model / model_copies: Beam's sharing of one
    model across processes."""

    resize_mode: str = setting(Effect.OUTPUT, "resize")
    size_multiple: int = setting(Effect.OUTPUT, DEFAULT_SIZE_MULTIPLE)
    preprocess: str = setting(Effect.OUTPUT, "none")
    model_output: str = setting(Effect.OUTPUT, "auto")
    batch_size: int = setting(Effect.NONE, 8)
    min_batch_size: int = setting(Effect.NONE, 1)
    large_model: bool = setting(Effect.NONE, False)
    model_copies: Optional[int] = setting(Effect.NONE, None)

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"--resize_mode must be one of {', '.join(RESIZE_MODES)}; "
                             f"received {self.resize_mode!r}")
        if self.model_output not in MODEL_OUTPUTS:
            raise ValueError(f"--model_output must be one of {', '.join(MODEL_OUTPUTS)}; "
                             f"received {self.model_output!r}")
        if self.preprocess not in PREPROCESSORS:
            raise ValueError(f"--preprocess must be one of {', '.join(PREPROCESSORS)}; "
                             f"received {self.preprocess!r}")
        if self.batch_size < 1 or not 1 <= self.min_batch_size <= self.batch_size:
            raise ValueError(f"need 1 <= --min_batch_size ({self.min_batch_size}) <= "
                             f"--batch_size ({self.batch_size})")
        if self.size_multiple < 1:
            raise ValueError(f"--size_multiple must be at least 1; received "
                             f"{self.size_multiple}")
        if self.model_copies is not None and self.model_copies < 1:
            raise ValueError(f"--model_copies must be at least 1; received "
                             f"{self.model_copies}")

    def check_input_size(self, input_size: Optional[tuple[int, int]],
                         model_size: Optional[tuple[int, int]]) -> None:
        """Raises ValueError where a sizing flag is void, rather than ignore it:
        --size_multiple where every image is fed at a fixed size (--input_size's, or the
        model's input), --resize_mode letterbox where each is fed at its own."""
        fixed = input_size or model_size
        if fixed and self.size_multiple != DEFAULT_SIZE_MULTIPLE:
            where = (f"with --input_size {fixed[0]}x{fixed[1]}" if input_size else
                     f"the model takes {fixed[0]}x{fixed[1]} only, so")
            raise ValueError(f"--size_multiple rounds the canvas of images fed at their own "
                             f"size; {where} every image is fed at that size: drop "
                             f"--size_multiple")
        if not fixed and self.resize_mode == "letterbox":
            raise ValueError("--resize_mode letterbox fits images to an input size, but neither "
                             "--input_size nor the model fixes one (each image is fed at its "
                             "own size): pass --input_size HxW, or drop --resize_mode")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


TOLERANCE = 1e-3  # how far from [0, 1], and from a sum of one, probabilities may stray


def looks_like_probabilities(values: np.ndarray, tolerance: float = TOLERANCE) -> bool:
    """True when every pixel's values are non-negative and sum to one."""
    if values.min() < -tolerance or values.max() > 1 + tolerance:
        return False
    return bool(np.all(np.abs(values.sum(axis=-1) - 1.0) < tolerance * values.shape[-1]))


# What ``--model_output auto`` does with outputs in [0, 1] that do not sum to one per pixel.
UNIT_RANGE_COUNTER = "outputs_in_unit_range_read_as_logits"
UNIT_RANGE_AS_LOGITS = (
    "the model's outputs all lie in [0, 1] but do not sum to one per pixel: --model_output "
    "auto read them as logits, whose softmax fed the CRF and the calibration figures; if they "
    "are probabilities (a sigmoid per class), pass --model_output probabilities, which "
    "normalises them")


def in_unit_range(values: np.ndarray, tolerance: float = TOLERANCE) -> bool:
    """True when every value lies in [0, 1]: probabilities, or scores of a sigmoid per class
    (which do not sum to one), more likely than logits."""
    return bool(values.min() >= -tolerance and values.max() <= 1 + tolerance)


def non_finite_count(outputs) -> int:
    """How many of a model's outputs are NaN or +infinity (-infinity is a logit of a
    probability of zero)."""
    outputs = np.asarray(outputs)
    return int(np.count_nonzero(np.isnan(outputs) | np.isposinf(outputs)))


def check_finite(bad: int, out_of_range: bool = False) -> None:
    """Raises ValueError where a model's outputs held ``bad`` NaN or +infinite values: an
    overflow (float16 past 65504), a diverged training, a division by zero. Their argmax
    still gives labels, arbitrary ones, which would be written and scored without a word.
    ``out_of_range``: the outputs are a one-channel model's declared probabilities, made NaN
    in its graph where they lie outside [0, 1]."""
    if bad and out_of_range:
        raise ValueError(f"--model_output probabilities, but {bad} of the model's outputs are "
                         f"outside [0, 1] (or NaN): they are not probabilities; pass "
                         f"--model_output logits (or auto)")
    if bad:
        raise _non_finite_error(f"{bad} NaN or infinite values")


def _non_finite_error(what: str) -> ValueError:
    return ValueError(f"the model's outputs hold {what}, from which labels would be "
                      f"arbitrary; check the model (an overflow in float16, weights diverged "
                      f"in training)")


def check_probability_range(low: float, high: float) -> None:
    """Raises ValueError where outputs from ``low`` to ``high`` cannot be the probabilities
    that ``--model_output probabilities`` declares (logits, most often)."""
    if -TOLERANCE <= low and high <= 1 + TOLERANCE:
        return
    if np.isnan(low) or np.isnan(high):
        raise _non_finite_error("NaN values")
    raise ValueError(f"--model_output probabilities, but the model's outputs range from "
                     f"{low:.4g} to {high:.4g}, outside [0, 1]: they are not probabilities; "
                     f"pass --model_output logits (or auto)")


def check_logits(low: float, high: float, worst_sum_error: float, channels: int) -> None:
    """Raises ValueError where outputs that ``--model_output logits`` declares are
    probabilities: in [0, 1] and summing to one at every pixel (``worst_sum_error``: the
    largest distance of a pixel's sum from one), as ``looks_like_probabilities`` reads them.
    Their softmax would flatten them ([0.9, 0.05, 0.05] becomes [0.52, 0.24, 0.24]): the labels
    would stand, the CRF's unary and the calibration figures would not, without a word."""
    if -TOLERANCE <= low and high <= 1 + TOLERANCE and worst_sum_error < TOLERANCE * channels:
        raise ValueError("--model_output logits, but the model's outputs are probabilities (in "
                         "[0, 1], summing to one at every pixel): their softmax would flatten "
                         "them for the CRF and the calibration figures; pass --model_output "
                         "probabilities (or auto)")


def normalise_probabilities(values: np.ndarray) -> np.ndarray:
    """Per-pixel scores in [0, 1] scaled to sum to one (a sigmoid per class gives scores that
    do not; read as they are, calibration figures and the CRF's unary would be off); a pixel
    whose scores are all 0 becomes uniform. float32."""
    values = np.clip(np.asarray(values, dtype=np.float32), 0, None)
    totals = values.sum(axis=-1, keepdims=True)
    uniform = np.float32(1 / values.shape[-1])
    return np.divide(values, totals, out=np.full_like(values, uniform), where=totals > 0)


def to_probabilities(outputs: np.ndarray, kind: str = "auto") -> np.ndarray:
    """Model outputs (logits or probabilities, as ``kind`` says or as detected) as float32
    probabilities. Declared probabilities outside [0, 1] are an error; ones that do not sum
    to one are normalised."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if kind == "auto" and looks_like_probabilities(outputs):
        return outputs
    if kind == "probabilities":
        check_probability_range(float(outputs.min()), float(outputs.max()))
        return outputs if looks_like_probabilities(outputs) else \
            normalise_probabilities(outputs)
    if kind not in MODEL_OUTPUTS:
        raise ValueError(f"unknown model output kind {kind!r}; expected one of {MODEL_OUTPUTS}")
    if kind == "logits" and outputs.shape[-1] > 1:
        check_logits(float(outputs.min()), float(outputs.max()),
                     float(np.abs(outputs.sum(axis=-1) - 1.0).max()), outputs.shape[-1])
    return softmax(outputs.copy())


_OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "out of memory", "OOM when allocating",
                  "Failed to allocate memory", "failed to allocate")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says that the device or the host ran out of memory, as TensorFlow
    (``ResourceExhaustedError``), JAX/XLA (``RESOURCE_EXHAUSTED``), ONNX Runtime, PyTorch and
    numpy (``MemoryError``) report it."""
    if isinstance(error, MemoryError) or type(error).__name__ == "ResourceExhaustedError":
        return True
    message = str(error)
    return any(marker in message for marker in _OUT_OF_MEMORY)
