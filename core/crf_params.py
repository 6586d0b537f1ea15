"""The dense CRF's settings (``CrfParams``) and the arithmetic both backends share: which
classes take part (``kept_classes``) and the reduced-resolution copy (``reduced``). See
``segbeam.crf`` for what each setting does and how the savings were measured."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from segbeam.config import Effect, setting

CRF_BACKENDS = ("pydensecrf", "keras")


@dataclasses.dataclass(frozen=True)
class CrfParams:
    """iterations: mean-field steps. pos_*: the Gaussian term's weight and spatial standard
    deviation (pixels). bi_*: the bilateral term's weight, spatial and colour standard
    deviations (pixels, intensity levels). scale: the fraction of the image's resolution the
    CRF runs at (1: full), never below min_side pixels on the short side. class_floor:
    classes below this probability everywhere are left out (0: keep all). backend: which
    implementation computes it (``CRF_BACKENDS``; labels differ only on near ties). Every
    field changes the refined labels. Checked on construction."""

    iterations: int = setting(Effect.OUTPUT, 10)
    pos_w: float = setting(Effect.OUTPUT, 3.0)
    pos_xy_std: float = setting(Effect.OUTPUT, 1.0)
    bi_w: float = setting(Effect.OUTPUT, 4.0)
    bi_xy_std: float = setting(Effect.OUTPUT, 67.0)
    bi_rgb_std: float = setting(Effect.OUTPUT, 3.0)
    scale: float = setting(Effect.OUTPUT, 0.5)
    class_floor: float = setting(Effect.OUTPUT, 0.01)
    min_side: int = setting(Effect.OUTPUT, 128)
    backend: str = setting(Effect.OUTPUT, "pydensecrf", omit_default=True)

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"CRF iterations must be at least 1; received {self.iterations}")
        for name in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"CRF {name} must be positive and finite; received "
                                 f"{getattr(self, name)}")
        for name in ("pos_w", "bi_w"):  # a negative weight rewards label changes
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"CRF {name} must be 0 or more and finite; received "
                                 f"{getattr(self, name)}")
        if not 0 < self.scale <= 1:
            raise ValueError(f"CRF scale must be in (0, 1]; received {self.scale}")
        if not 0 <= self.class_floor < 1:
            raise ValueError(f"CRF class_floor must be in [0, 1); received {self.class_floor}")
        if self.min_side < 1:
            raise ValueError(f"CRF min_side must be at least 1; received {self.min_side}")
        if self.backend not in CRF_BACKENDS:
            raise ValueError(f"CRF backend must be one of {', '.join(CRF_BACKENDS)}; received "
                             f"{self.backend!r}")

    def replace(self, **changes) -> "CrfParams":
        return dataclasses.replace(self, **changes)


def reduced(image: np.ndarray, params: CrfParams):
    """Where ``params.scale`` (with ``min_side``) asks for a smaller CRF: the image resized
    (bilinear) and the parameters with spatial stds scaled to it, the Gaussian's not below one
    pixel (see ``segbeam.crf``); None where the CRF runs at full resolution."""
    height, width = image.shape[:2]
    scale = max(params.scale, min(1.0, params.min_side / min(height, width)))
    if scale >= 1:
        return None
    small = (max(1, round(height * scale)), max(1, round(width * scale)))
    factor = (small[0] / height + small[1] / width) / 2
    small_image = np.asarray(Image.fromarray(image).resize(small[::-1], Image.BILINEAR))
    return small_image, params.replace(
        pos_xy_std=max(params.pos_xy_std * factor, min(params.pos_xy_std, 1.0)),
        bi_xy_std=params.bi_xy_std * factor)


def class_threshold(class_floor: float, classes: int) -> float:
    """The peak probability a class needs to take part in the CRF: ``class_floor`` capped at
    1 / classes, so that every pixel's most probable class stays (both backends use it)."""
    return min(class_floor, 1.0 / classes)


def kept_classes(probabilities: np.ndarray, class_floor: float) -> np.ndarray:
    """The class ids whose probability reaches ``class_floor`` somewhere (see
    ``class_threshold``)."""
    classes = probabilities.shape[-1]
    if class_floor <= 0:
        return np.arange(classes)
    peaks = probabilities.reshape(-1, classes).max(axis=0)
    return np.flatnonzero(peaks >= class_threshold(class_floor, classes))
