"""Dense-CRF inference in ``keras.ops``: pydensecrf's ``DenseCRF2D`` with a Gaussian and a
bilateral term, on whatever device the Keras backend uses (tested under TensorFlow, JAX and
PyTorch; ``keras.ops`` only, no backend-specific op).

The same inference as ``DenseCRF::inference``: Potts compatibility, symmetric kernel
normalisation (``1 / sqrt(K 1)`` on both sides), the unary ``-log(max(p, floor))``, and
``Q <- softmax(-U + w_g K_g(Q) + w_b K_b(Q))`` for the given number of steps, with both kernels
computed by the permutohedral lattice exactly as pydensecrf builds it
(``segbeam.permutohedral``). Labels agree with pydensecrf's on all but a few pixels whose
classes are near ties (float sums in another order).

Two compiled steps per batch of images of one size (``refine_many``; ``refine`` is a batch of
one): the bilateral lattice (from the images), then the mean field on a vertex table cut to
that lattice's true size, rounded up to one of a few sizes per octave so that batches of one
size share a handful of compiled functions. Between the two only the lattice's size (a
scalar) reaches the host; the tensors stay where the backend put them. Batches are split into
powers of two (a few compiled functions, not one per batch size). The
Gaussian kernel (lattice, blur neighbours, normaliser) depends on the image's size alone: it
is built once per size and kept (a few sizes, least recently used first out). Images are
refined on a canvas (each side rounded up by at most an eighth, the padding taking no part),
so that images of many sizes share a few canvases per octave, and so a few compiled
functions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np

from segbeam import permutohedral
from segbeam.crf_lattices import (Kernel, _bucket, _bytes, _valid, bilateral_lattice,
                                  canvas_for, gaussian_bounds, gaussian_lattice, kernel,
                                  mean_field, resize_bilinear)

__all__ = ["KerasDenseCrf", "shared_crf", "canvas_for", "resize_bilinear", "powers_of_two"]


def largest_batch(height: int, width: int) -> int:
    """The most (H, W) canvases one bilateral lattice may hold (its 6 vertex references per
    pixel must stay below ``permutohedral.MAX_ENTRIES``; 85 at 1024x2048), at least 1."""
    return max(1, (permutohedral.MAX_ENTRIES - 1) // (6 * height * width))


def powers_of_two(count: int) -> list[int]:
    """``count`` as a sum of distinct powers of two, largest first (13 -> 8, 4, 1): the batch
    sizes a batch of ``count`` images is refined in."""
    return [1 << bit for bit in range(count.bit_length() - 1, -1, -1) if count >> bit & 1]


def _compile(function):
    """``function`` compiled by the backend: ``jax.jit``, a TensorFlow graph, or as is."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, reduce_retracing=False)
    return function


class KerasDenseCrf:
    """The keras backend of the CRF: compiled functions per canvas (``canvas_for``) and
    settings, built on first use and kept (one object per worker process), and the Gaussian
    kernels of the image sizes seen last, as many as fit in ``kernel_bytes`` (per device:
    they stay on the device that built them; 122 MB for a 1024x2048 image, about 10 MB for
    360x480)."""

    def __init__(self, canvas=canvas_for, kernel_bytes: int = 1 << 30):
        self._canvas = canvas
        self._functions: dict = {}
        self._kernels: OrderedDict = OrderedDict()
        self._kernel_bytes = kernel_bytes
        self._gaussian_rows: dict = {}  # (canvas, sxy) -> the Gaussian vertex table's rows
        self._lock = threading.Lock()
        self.kernels_built = 0  # Gaussian kernels built (a kernel found kept is not)

    def _function(self, key, make):
        with self._lock:
            function = self._functions.get(key)
            if function is None:
                function = self._functions[key] = _compile(make())
            return function

    @property
    def compiled(self) -> int:
        """How many functions this object has compiled: per canvas, the Gaussian lattice and
        kernel (its vertex table sized for the whole canvas), the bilateral lattice, and one
        mean field per bilateral vertex-table size."""
        return len(self._functions)

    @property
    def canvases(self) -> list[tuple[int, int]]:
        """The canvases this object has compiled the CRF for."""
        return sorted({key[1:3] for key in self._functions})

    def gaussian_kernel(self, canvas: tuple[int, int], size: np.ndarray, sxy: float,
                        device: str = "") -> Kernel:
        """The Gaussian kernel of an image of ``size`` (h, w) on ``canvas``: kept from an
        earlier image of that size on this ``device``, else built (two compiled steps: the
        lattice, then its kernel on a vertex table of the canvas's size, so that one function
        serves every image size of the canvas) and kept."""
        from keras import ops

        key = (canvas, int(size[0]), int(size[1]), float(sxy), device)
        with self._lock:
            kept = self._kernels.get(key)
            if kept is not None:
                self._kernels.move_to_end(key)
                return kept
        height, width = canvas
        build = self._function(("gaussian lattice", height, width, sxy),
                               lambda: lambda shape: gaussian_lattice(shape, height, width, sxy))
        lattice = build(size)
        rows = self._gaussian_rows.get((canvas, sxy))
        if rows is None:  # an image's lattice is part of its whole canvas's: one size serves all
            whole = build(np.array(canvas, dtype=np.int32))
            rows = self._gaussian_rows.setdefault((canvas, sxy),
                                                  _bucket(int(whole.size), whole.capacity))
        bounds = gaussian_bounds(height, width, sxy)
        finish = self._function(("gaussian kernel", height, width, sxy, rows), lambda: (
            lambda lat, shape: kernel(lat, bounds, rows, _valid(ops, shape, height, width))))
        built = finish(lattice, size)
        with self._lock:
            self.kernels_built += 1
            self._kernels[key] = built
            while self._kernels and sum(map(_bytes, self._kernels.values())) \
                    > self._kernel_bytes:
                self._kernels.popitem(last=False)  # the least recently used first
        return built

    def field(self, images: np.ndarray, probabilities, params, min_probability: float, kept):
        """(B, H, W, C) marginals (a tensor) of the CRF at the arrays' own size, for (B, H, W,
        3) images and their (B, H, W, C) probabilities; ``kept``: a (B, C) bool mask (array
        or tensor) of the classes taking part. The images are placed on their canvas, padded
        by repeating their edge (features that add no lattice vertex) with the padding left
        out of every sum, and the marginals are cut back to the images."""
        from keras import ops

        batch, height, width, classes = (int(n) for n in probabilities.shape)
        canvas_h, canvas_w = self._canvas(height, width)
        if batch > largest_batch(canvas_h, canvas_w):  # in halves, each within the limit
            half = batch // 2
            return ops.concatenate([
                self.field(images[:half], probabilities[:half], params, min_probability,
                           kept[:half]),
                self.field(images[half:], probabilities[half:], params, min_probability,
                           kept[half:])], axis=0)
        size = np.array([height, width], dtype=np.int32)
        gaussian = self.gaussian_kernel((canvas_h, canvas_w), size, params.pos_xy_std,
                                        str(getattr(probabilities, "device", "")))
        if (canvas_h, canvas_w) != (height, width):
            pad = ((0, 0), (0, canvas_h - height), (0, canvas_w - width), (0, 0))
            images, probabilities = np.pad(images, pad, mode="edge"), ops.pad(probabilities, pad)
        settings = (params.iterations, params.pos_w, params.pos_xy_std, params.bi_w,
                    params.bi_xy_std, params.bi_rgb_std, float(min_probability))
        build = self._function(("bilateral lattice", canvas_h, canvas_w, batch, settings),
                               lambda: lambda img, shape: bilateral_lattice(img, shape, params))
        bilateral = build(images, size)
        rows = _bucket(int(bilateral.size), bilateral.capacity)
        field = self._function(
            ("field", canvas_h, canvas_w, batch, classes, int(gaussian.neighbours.shape[-1]),
             rows, settings),
            lambda: lambda probs, mask, shape, g, b: mean_field(
                probs, mask, shape, g, b, params, min_probability, rows, canvas_h, canvas_w,
                batch))
        result = field(ops.reshape(probabilities, (batch * canvas_h * canvas_w, classes)), kept,
                       size, gaussian, bilateral)
        return ops.reshape(result, (batch, canvas_h, canvas_w, classes))[:, :height, :width]

    def refine_many(self, images: Sequence[np.ndarray], probabilities, params,
                    min_probability: float = 1e-5):
        """What ``segbeam.crf.dense_crf`` computes for each of B images of one size, from
        their (B, H, W, C) probabilities, as a (B, H, W, C) tensor where the backend keeps
        it (a GPU's memory): the class floor as a mask per image, the reduced resolution (the
        images resized on the host, as the pydensecrf path does; the probabilities and
        marginals resized by ``resize_bilinear``). The images are refined together, in
        batches of powers of two; each one's marginals are what it gives alone."""
        from keras import ops

        if len({np.shape(image) for image in images}) != 1:
            raise ValueError("refine_many takes images of one size; got "
                             f"{sorted({np.shape(image) for image in images})}")
        if len(images) > 1 and len(powers_of_two(len(images))) > 1:
            parts, start = [], 0
            for count in powers_of_two(len(images)):
                parts.append(self.refine_many(images[start:start + count],
                                              probabilities[start:start + count], params,
                                              min_probability))
                start += count
            return ops.concatenate(parts, axis=0)
        return self._refine_batch(np.stack(images), probabilities, params, min_probability)

    def _refine_batch(self, images: np.ndarray, probabilities, params, min_probability: float):
        from keras import ops

        from segbeam.crf_params import class_threshold, reduced

        batch, height, width, classes = (int(n) for n in probabilities.shape)
        probabilities = ops.cast(probabilities, "float32")
        if params.class_floor > 0:
            peaks = ops.max(ops.reshape(probabilities, (batch, -1, classes)), axis=1)
            kept = ops.greater_equal(peaks, np.float32(class_threshold(params.class_floor,
                                                                       classes)))
        else:
            kept = np.ones((batch, classes), dtype=bool)
        reductions = [reduced(image, params) for image in images]
        if reductions[0] is None:
            return self.field(images, probabilities, params, min_probability, kept)
        small_images = np.stack([small for small, _ in reductions])
        small_params = reductions[0][1]
        marginals = self.field(small_images, resize_bilinear(probabilities,
                                                             *small_images.shape[1:3]),
                               small_params, min_probability, kept)
        return resize_bilinear(marginals, height, width)

    def refine(self, image: np.ndarray, probabilities, params, min_probability: float = 1e-5):
        """``refine_many`` for one image: its (H, W, C) marginals from (H, W, C)
        probabilities."""
        from keras import ops

        probabilities = ops.expand_dims(ops.convert_to_tensor(probabilities), 0)
        return self.refine_many([image], probabilities, params, min_probability)[0]


_SHARED: Optional[KerasDenseCrf] = None


def shared_crf() -> KerasDenseCrf:
    """This process's ``KerasDenseCrf`` (its compiled functions are reused by every call)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = KerasDenseCrf()
    return _SHARED
