"""Input normalisations a model may expect, applied by the inference stage to raw RGB pixels.

Models built by this project normalise inside their graph and take raw [0, 255] RGB
(``none``). A user's own model may expect one of the usual conventions instead.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

# Shared with the in-model ``ImageNormalization`` layer (models/layers.py).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


class Normalisation(NamedTuple):
    """``output = input[channels] * scale + offset``, per channel: every preset is one affine
    map of RGB (or BGR), applied in one pass over the batch plus one in place per term."""

    bgr: bool  # channels reversed first
    scale: Optional[np.ndarray]  # per channel; None: 1
    offset: Optional[np.ndarray]  # per channel; None: 0


def _affine(scale=None, offset=None, bgr: bool = False) -> Normalisation:
    as_vector = lambda v: None if v is None else np.broadcast_to(  # noqa: E731
        np.asarray(v, np.float32), (3,))
    return Normalisation(bgr, as_vector(scale), as_vector(offset))


PREPROCESSORS: dict[str, Normalisation] = {
    "none": _affine(),  # raw RGB in [0, 255]
    "scale_0_1": _affine(1 / 255.0),  # RGB in [0, 1]
    "scale_-1_1": _affine(1 / 127.5, -1.0),  # RGB in [-1, 1] (MobileNet, Inception)
    # BGR minus the ImageNet mean (VGG, ResNet in keras.applications)
    "caffe": _affine(None, -CAFFE_BGR_MEAN, bgr=True),
    # RGB in [0, 1], ImageNet mean / std
    "torch": _affine(1 / (255.0 * IMAGENET_STD), -IMAGENET_MEAN / IMAGENET_STD),
}


def preprocess(batch: np.ndarray, name: str) -> np.ndarray:
    """The named normalisation of an (N, H, W, 3) batch of raw RGB (uint8 or float), as a new
    float32 array (``batch`` is not changed; ``none`` on a float32 batch returns it as is).

    Written for speed on the host: the per-channel terms run over rows of W * 3 values (a
    trailing axis of 3 makes numpy's inner loop three values long), in place."""
    try:
        normalisation = PREPROCESSORS[name]
    except KeyError:
        raise ValueError(f"unknown preprocessing {name!r}; expected one of "
                         f"{', '.join(PREPROCESSORS)}") from None
    if not normalisation.bgr and normalisation.scale is None and normalisation.offset is None:
        return batch.astype(np.float32, copy=False)
    output = np.empty(batch.shape, np.float32)
    if normalisation.bgr:  # channel by channel: a reversed trailing axis copies slowly
        for channel in range(3):
            output[..., channel] = batch[..., 2 - channel]
    else:
        output[...] = batch
    rows = output.reshape(-1, batch.shape[-2] * batch.shape[-1])
    for term, apply in ((normalisation.scale, np.multiply), (normalisation.offset, np.add)):
        if term is not None:
            apply(rows, np.tile(term, batch.shape[-2]), out=rows)
    return output
