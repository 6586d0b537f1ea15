"""Dense-CRF refinement (Krähenbühl and Koltun, 2011) through pydensecrf's ``DenseCRF2D``.

A Gaussian (smoothness) and a bilateral (appearance) pairwise term on top of the model's
probabilities as unary potentials. The defaults are DeepLab v2's (ResNet-101) published values.

Two levers make it cheaper, both measured in ``benchmarks/crf.py`` (defaults: half
resolution, 1% class floor; ``scale=1, class_floor=0`` is the plain call):

- ``scale`` runs the CRF on a smaller copy of the image and upsamples the marginals: the two
  permutohedral lattices and every mean-field step cost in proportion to the pixels. The copy
  keeps at least ``min_side`` pixels on its short side (small images are cheap, and halving
  them leaves objects a few pixels wide: on the 96-144 px demo scenes, mIoU fell below the
  model's own instead of rising). Spatial standard deviations shrink with the image, except
  that the Gaussian (smoothness) term's is not taken below one pixel: finer than the pixel
  grid, that kernel degenerates and the term stops smoothing (on CamVid val at half
  resolution: -0.65 mIoU points against the plain call when it is scaled to 0.5 px, -0.25
  when it stays at 1 px).
- ``class_floor`` leaves out of an image's CRF the classes whose probability never reaches
  the floor anywhere in it: each mean-field step costs in proportion to the classes, and an
  image holds few of a 21-class dataset's. A pixel's most probable class is always kept (the
  floor is capped at 1 / classes); a left-out class gets zero probability.

Two backends compute the same inference (``backend``): ``pydensecrf``, the reference C++
implementation, and ``keras`` (``segbeam.crf_keras``), the same mean field and permutohedral
lattice in ``keras.ops``, on whatever device the Keras backend uses. The keras backend leaves
classes out by giving them zero probability rather than by dropping them, so that its
compiled functions keep one shape per image size; the marginals are the same.
"""

from __future__ import annotations

import numpy as np

from segbeam.crf_params import CRF_BACKENDS, CrfParams, kept_classes, reduced  # noqa: F401
from segbeam.geometry import resize_bilinear



def _pydensecrf(image: np.ndarray, probabilities: np.ndarray, params: CrfParams,
                min_probability: float) -> np.ndarray:
    """One plain ``DenseCRF2D`` inference at the arrays' own size: (H, W, C) float32 marginals."""
    import pydensecrf.densecrf as dcrf  # imported here: only CRF workers need the extension

    height, width, classes = probabilities.shape
    probs = np.clip(probabilities.astype(np.float32), min_probability, 1.0)
    unary = -np.log(probs.reshape(-1, classes).T)  # (C, H*W), as unary_from_softmax builds it
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    # C++ needs a writable, contiguous buffer.
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                             rgbim=np.require(image, np.uint8, ['C', 'W']), compat=params.bi_w)
    marginals = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    return marginals.T.reshape(height, width, classes)


def dense_crf(image: np.ndarray, probabilities: np.ndarray, params: CrfParams = CrfParams(),
              min_probability: float = 1e-5) -> np.ndarray:
    """Refines (H, W, C) class probabilities with the image's (H, W, 3) uint8 colours.

    Returns the refined (H, W, C) float32 marginals; their argmax is the refined label map.
    With ``params.scale`` < 1 or ``params.class_floor`` > 0 the CRF runs on a smaller problem
    (see the module docstring); with ``scale=1, class_floor=0`` it is the plain
    full-resolution call.
    """
    height, width, classes = probabilities.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"CRF needs an ({height}, {width}, 3) uint8 image to match its "
                         f"probabilities; received {image.shape} {image.dtype}")
    kept = kept_classes(probabilities, params.class_floor)
    if kept.size == 1:  # one class everywhere: nothing for the CRF to decide
        marginals = np.zeros((height, width, classes), dtype=np.float32)
        marginals[..., kept[0]] = 1.0
        return marginals
    if params.backend == "keras":
        from segbeam.crf_keras import shared_crf

        return np.asarray(shared_crf().refine(image, probabilities, params, min_probability),
                          dtype=np.float32)
    subset = probabilities if kept.size == classes else probabilities[..., kept]
    reduction = reduced(image, params)
    if reduction is not None:
        small_image, small_params = reduction
        refined = _pydensecrf(small_image, resize_bilinear(subset, *small_image.shape[:2]),
                              small_params, min_probability)
        refined = resize_bilinear(refined, height, width)
    else:
        refined = _pydensecrf(image, subset, params, min_probability)
    if kept.size == classes:
        return refined
    marginals = np.zeros((height, width, classes), dtype=np.float32)
    marginals[..., kept] = refined
    return marginals


def labels_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Argmax over the class axis as the smallest unsigned type that holds every class id."""
    dtype = np.uint8 if probabilities.shape[-1] <= 256 else np.uint16
    return np.argmax(probabilities, axis=-1).astype(dtype)
