"""Input normalisations a model may expect, applied by the inference stage to raw RGB pixels.

Models built by this project normalise inside their graph and take raw [0, 255] RGB
(``none``). A user's own model may expect one of the usual conventions instead.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# Shared with the in-model ``ImageNormalization`` layer (models/layers.py).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def _none(batch: np.ndarray) -> np.ndarray:
    return batch


def _unit(batch: np.ndarray) -> np.ndarray:
    return batch / 255.0


def _symmetric(batch: np.ndarray) -> np.ndarray:
    return batch / 127.5 - 1.0


def _caffe(batch: np.ndarray) -> np.ndarray:
    return batch[..., ::-1] - CAFFE_BGR_MEAN


def _torch(batch: np.ndarray) -> np.ndarray:
    return (batch / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


PREPROCESSORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": _none,  # raw RGB in [0, 255]
    "scale_0_1": _unit,  # RGB in [0, 1]
    "scale_-1_1": _symmetric,  # RGB in [-1, 1] (MobileNet, Inception)
    "caffe": _caffe,  # BGR minus the ImageNet mean (VGG, ResNet in keras.applications)
    "torch": _torch,  # RGB in [0, 1], ImageNet mean / std
}


def preprocess(batch: np.ndarray, name: str) -> np.ndarray:
    """Applies the named normalisation to an (N, H, W, 3) float32 batch of raw RGB."""
    try:
        return PREPROCESSORS[name](batch.astype(np.float32, copy=False)).astype(np.float32)
    except KeyError:
        raise ValueError(f"unknown preprocessing {name!r}; expected one of "
                         f"{', '.join(PREPROCESSORS)}") from None
