"""Dense-CRF refinement (Krähenbühl and Koltun, 2011) through pydensecrf's ``DenseCRF2D``.

A Gaussian (smoothness) and a bilateral (appearance) pairwise term on top of the model's
probabilities as unary potentials. The defaults are DeepLab v2's (ResNet-101) published values.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class CrfParams(NamedTuple):
    """iterations: mean-field steps. pos_*: the Gaussian term's weight and spatial standard
    deviation (pixels). bi_*: the bilateral term's weight, spatial and colour standard
    deviations (pixels, intensity levels)."""

    iterations: int = 10
    pos_w: float = 3.0
    pos_xy_std: float = 1.0
    bi_w: float = 4.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0

    def validate(self) -> "CrfParams":
        if self.iterations < 1:
            raise ValueError(f"CRF iterations must be at least 1; received {self.iterations}")
        for name in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CRF {name} must be positive; received {getattr(self, name)}")
        return self


def dense_crf(image: np.ndarray, probabilities: np.ndarray, params: CrfParams = CrfParams(),
              min_probability: float = 1e-5) -> np.ndarray:
    """Refines (H, W, C) class probabilities with the image's (H, W, 3) uint8 colours.

    Returns the refined (H, W, C) float32 marginals; their argmax is the refined label map.
    """
    import pydensecrf.densecrf as dcrf  # imported here: only CRF workers need the extension

    height, width, classes = probabilities.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"CRF needs an ({height}, {width}, 3) uint8 image to match its "
                         f"probabilities; received {image.shape} {image.dtype}")
    probs = np.clip(probabilities.astype(np.float32), min_probability, 1.0)
    unary = -np.log(probs.reshape(-1, classes).T)  # (C, H*W), as unary_from_softmax builds it
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                             rgbim=np.require(image, np.uint8, ['C', 'W']),  # C++ needs a writable buffer
                             compat=params.bi_w)
    marginals = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    return marginals.T.reshape(height, width, classes)


def labels_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Argmax over the class axis as the smallest unsigned type that holds every class id."""
    dtype = np.uint8 if probabilities.shape[-1] <= 256 else np.uint16
    return np.argmax(probabilities, axis=-1).astype(dtype)
