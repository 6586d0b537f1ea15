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

import dataclasses

import numpy as np
from PIL import Image

from segbeam.config import Effect, setting
from segbeam.geometry import resize_bilinear

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
            if getattr(self, name) <= 0:
                raise ValueError(f"CRF {name} must be positive; received {getattr(self, name)}")
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
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                             rgbim=np.require(image, np.uint8, ['C', 'W']),  # C++ needs a writable buffer
                             compat=params.bi_w)
    marginals = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    return marginals.T.reshape(height, width, classes)


def reduced(image: np.ndarray, params: CrfParams):
    """Where ``params.scale`` (with ``min_side``) asks for a smaller CRF: the image resized
    (bilinear) and the parameters with spatial stds scaled to it, the Gaussian's not below one
    pixel (see the module docstring); None where the CRF runs at full resolution."""
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


def kept_classes(probabilities: np.ndarray, class_floor: float) -> np.ndarray:
    """The class ids whose probability reaches ``class_floor`` somewhere (the floor is capped at
    1 / classes, so every pixel's most probable class stays)."""
    classes = probabilities.shape[-1]
    if class_floor <= 0:
        return np.arange(classes)
    peaks = probabilities.reshape(-1, classes).max(axis=0)
    return np.flatnonzero(peaks >= min(class_floor, 1.0 / classes))


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
