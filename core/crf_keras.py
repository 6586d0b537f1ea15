"""Dense-CRF inference in ``keras.ops``: pydensecrf's ``DenseCRF2D`` with a Gaussian and a
bilateral term, on whatever device the Keras backend uses (tested under TensorFlow, JAX and
PyTorch; ``keras.ops`` only, no backend-specific op).

The same inference as ``DenseCRF::inference``: Potts compatibility, symmetric kernel
normalisation (``1 / sqrt(K 1)`` on both sides), the unary ``-log(max(p, floor))``, and
``Q <- softmax(-U + w_g K_g(Q) + w_b K_b(Q))`` for the given number of steps, with both kernels
computed by the permutohedral lattice exactly as pydensecrf builds it
(``segbeam.permutohedral``). Labels agree with pydensecrf's on all but a few pixels whose
classes are near ties (float sums in another order).

Two compiled steps per image: the bilateral lattice (from the image), then the mean field on
a vertex table cut to that lattice's true size, rounded up to one of a few sizes per octave so
that images of one size share a handful of compiled functions. Between the two only the
lattice's size (a scalar) reaches the host; the tensors stay where the backend put them. The
Gaussian kernel (lattice, blur neighbours, normaliser) depends on the image's size alone: it
is built once per size and kept (a few sizes, least recently used first out). Images are
refined on a canvas (each side rounded up by at most an eighth, the padding taking no part),
so that images of many sizes share a few canvases per octave, and so a few compiled
functions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple, Optional

import numpy as np

from segbeam.permutohedral import Lattice, blur_neighbours, build_lattice, filter_values

LEFT_OUT = np.float32(1e30)  # the unary of a class left out of the CRF: probability 0


def gaussian_features(ops, height: int, width: int, sxy: float, size=None):
    """(H W, 2) float32: column / sxy, row / sxy, row-major (``DenseCRF2D``'s order). With
    ``size`` (the image's true (h, w), a tensor) on a larger (height, width) canvas, the
    canvas's padding repeats the image's last column and row, as ``np.pad(mode="edge")``."""
    x = ops.arange(width, dtype="float32")
    y = ops.arange(height, dtype="float32")
    if size is not None:
        x = ops.minimum(x, ops.cast(size[1] - 1, "float32"))
        y = ops.minimum(y, ops.cast(size[0] - 1, "float32"))
    x, y = x / np.float32(sxy), y / np.float32(sxy)
    grid = ops.stack([ops.broadcast_to(ops.expand_dims(x, 0), (height, width)),
                      ops.broadcast_to(ops.expand_dims(y, 1), (height, width))], axis=-1)
    return ops.reshape(grid, (height * width, 2))


def bilateral_features(ops, image, sxy: float, srgb: float, size=None):
    """(H W, 5) float32: column / sxy, row / sxy, then R, G, B / srgb."""
    height, width = int(image.shape[0]), int(image.shape[1])
    colour = ops.reshape(ops.cast(image, "float32"), (height * width, 3)) / np.float32(srgb)
    return ops.concatenate([gaussian_features(ops, height, width, sxy, size), colour], axis=1)


def round_up_an_eighth(size: int) -> int:
    """``size`` rounded up to the next of eight values per octave (at most 1/8 more): 16, 18,
    ..., 30, 32, 36, ..., 60, 64, 72, ... (exact below 16)."""
    step = 2 ** max(0, int(size).bit_length() - 4)
    return -(-int(size) // step) * step


def canvas_for(height: int, width: int) -> tuple[int, int]:
    """The canvas an image of this size is refined on: each side rounded up by at most an
    eighth, so that a worker compiles the CRF for a few canvases per octave of image sizes
    rather than once per size (the padding takes no part: see ``KerasDenseCrf.field``)."""
    return round_up_an_eighth(height), round_up_an_eighth(width)


def _bucket(size: int, capacity: int) -> int:
    """``size`` rounded up to at most 1/8 more (a few table sizes per octave), within
    ``capacity``."""
    return int(min(capacity, max(16, round_up_an_eighth(size))))


class Kernel(NamedTuple):
    """A lattice ready to filter with (tensors): its points' vertex rows and barycentric
    weights, the blur neighbours of its first vertices (which set the vertex table's size),
    and pydensecrf's symmetric normaliser per point."""

    offsets: object
    weights: object
    neighbours: object
    norm: object


def _bytes(kernel: Kernel) -> int:
    """The device memory a kernel holds (every tensor of it has 4-byte elements)."""
    return 4 * sum(int(np.prod(tensor.shape)) for tensor in kernel)


def _normaliser(ops, lattice, neighbours, valid):
    """pydensecrf's NORMALIZE_SYMMETRIC factor, 1 / sqrt(K 1), per point (N, 1); ``valid``
    (N, 1) is 1 on the image's points and 0 on a canvas's padding."""
    return ops.rsqrt(filter_values(lattice, neighbours, valid) + np.float32(1e-20))


def kernel(lattice: Lattice, bounds: tuple, rows: int, valid) -> Kernel:
    """``lattice``'s kernel on a vertex table of ``rows`` rows (at least its size); ``bounds``:
    the (low, high) it was built with."""
    from keras import ops

    neighbours = blur_neighbours(lattice, *bounds, rows)
    return Kernel(lattice.offsets, lattice.weights, neighbours,
                  _normaliser(ops, lattice, neighbours, valid))


def gaussian_bounds(height: int, width: int, sxy: float) -> tuple:
    """The static bounds (low, high) of the Gaussian features on an (H, W) canvas."""
    return [0.0, 0.0], [(width - 1) / sxy, (height - 1) / sxy]


def bilateral_bounds(height: int, width: int, params) -> tuple:
    """The static bounds (low, high) of the bilateral features on an (H, W) canvas."""
    return [0.0] * 5, ([(width - 1) / params.bi_xy_std, (height - 1) / params.bi_xy_std]
                       + [255.0 / params.bi_rgb_std] * 3)


def gaussian_lattice(size, height: int, width: int, sxy: float) -> Lattice:
    """The Gaussian lattice of an (H, W) canvas holding an image of ``size`` (h, w) (an int32
    tensor) in its top-left corner: the padding's positions repeat the image's edge, so it
    adds no vertex."""
    from keras import ops

    return build_lattice(gaussian_features(ops, height, width, sxy, size),
                         *gaussian_bounds(height, width, sxy))


def bilateral_lattice(image, size, params) -> Lattice:
    """The bilateral lattice of an (H, W, 3) uint8 canvas holding an image of ``size`` in its
    top-left corner, padded by repeating its edge (features that add no vertex)."""
    from keras import ops

    height, width = int(image.shape[0]), int(image.shape[1])
    return build_lattice(bilateral_features(ops, image, params.bi_xy_std, params.bi_rgb_std,
                                            size), *bilateral_bounds(height, width, params))


def _valid(ops, size, height: int, width: int):
    """(H W, 1) float32: 1 on the image's pixels of an (H, W) canvas, 0 on the padding."""
    rows = ops.cast(ops.arange(height) < size[0], "float32")
    columns = ops.cast(ops.arange(width) < size[1], "float32")
    return ops.reshape(ops.expand_dims(rows, 1) * ops.expand_dims(columns, 0),
                       (height * width, 1))


def mean_field(probabilities, kept, size, gaussian: Kernel, bilateral: Lattice, params,
               min_probability: float, rows: int, height: int, width: int):
    """Marginals (H W, C) float32 after ``params.iterations`` mean-field steps, from
    probabilities (H W, C) on an (H, W) canvas holding an image of ``size`` (h, w) and a (C,)
    bool mask of the classes taking part (the others get probability 0, as if left out).
    The padding's values are zeroed before every splat, so it changes no sum: the image's
    marginals are what the image alone gives; the padding's are meaningless. ``gaussian``:
    the Gaussian kernel of this size; ``rows``: the vertex rows the bilateral table uses (at
    least its lattice's size)."""
    from keras import ops

    unary = -ops.log(ops.clip(ops.cast(probabilities, "float32"), min_probability, 1.0))
    unary = ops.where(ops.expand_dims(kept, 0), unary, LEFT_OUT)
    valid = _valid(ops, size, height, width)
    bilateral = kernel(bilateral, bilateral_bounds(height, width, params), rows, valid)
    terms = [(k, np.float32(weight), k.norm * valid)
             for k, weight in ((gaussian, params.pos_w), (bilateral, params.bi_w))]

    def step(_, q):
        logits = -unary
        for k, weight, splat in terms:
            logits = logits + weight * (k.norm * filter_values(k, k.neighbours, splat * q))
        return ops.softmax(logits, axis=-1)

    return ops.fori_loop(0, params.iterations, step, ops.softmax(-unary, axis=-1))


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


def resize_bilinear(values, height: int, width: int):
    """``segbeam.geometry.resize_bilinear`` in ``keras.ops``: the same half-pixel-centre
    weights and indices, applied along rows then columns, to an (h, w, C) tensor."""
    from keras import ops

    from segbeam.geometry import _linear_weights

    out = ops.cast(values, "float32")
    in_h, in_w = int(values.shape[0]), int(values.shape[1])
    if in_h != height:
        low, high, frac = _linear_weights(height, in_h)
        frac = ops.convert_to_tensor(frac[:, None, None])
        out = ops.take(out, low, axis=0) * (1 - frac) + ops.take(out, high, axis=0) * frac
    if in_w != width:
        low, high, frac = _linear_weights(width, in_w)
        frac = ops.convert_to_tensor(frac[None, :, None])
        out = ops.take(out, low, axis=1) * (1 - frac) + ops.take(out, high, axis=1) * frac
    return out


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

    def field(self, image: np.ndarray, probabilities, params, min_probability: float, kept):
        """(H, W, C) marginals (a tensor) of the CRF at the arrays' own size; ``kept``: a (C,)
        bool mask (array or tensor) of the classes taking part. The image is placed on its
        canvas, padded by repeating its edge (features that add no lattice vertex) with the
        padding left out of every sum, and the marginals are cut back to the image."""
        from keras import ops

        height, width, classes = (int(n) for n in probabilities.shape)
        canvas_h, canvas_w = self._canvas(height, width)
        size = np.array([height, width], dtype=np.int32)
        gaussian = self.gaussian_kernel((canvas_h, canvas_w), size, params.pos_xy_std,
                                        str(getattr(probabilities, "device", "")))
        if (canvas_h, canvas_w) != (height, width):
            image = np.pad(image, ((0, canvas_h - height), (0, canvas_w - width), (0, 0)),
                           mode="edge")
            probabilities = ops.pad(probabilities, ((0, canvas_h - height),
                                                    (0, canvas_w - width), (0, 0)))
        settings = (params.iterations, params.pos_w, params.pos_xy_std, params.bi_w,
                    params.bi_xy_std, params.bi_rgb_std, float(min_probability))
        build = self._function(("bilateral lattice", canvas_h, canvas_w, settings),
                               lambda: lambda img, shape: bilateral_lattice(img, shape, params))
        bilateral = build(image, size)
        rows = _bucket(int(bilateral.size), bilateral.capacity)
        field = self._function(
            ("field", canvas_h, canvas_w, classes, int(gaussian.neighbours.shape[-1]), rows,
             settings),
            lambda: lambda probs, mask, shape, g, b: mean_field(
                probs, mask, shape, g, b, params, min_probability, rows, canvas_h, canvas_w))
        result = field(ops.reshape(probabilities, (canvas_h * canvas_w, classes)), kept, size,
                       gaussian, bilateral)
        return ops.reshape(result, (canvas_h, canvas_w, classes))[:height, :width]

    def refine(self, image: np.ndarray, probabilities, params, min_probability: float = 1e-5):
        """What ``segbeam.crf.dense_crf`` computes, with the probabilities and the result as
        tensors where the backend keeps them (a GPU's memory): the class floor as a mask, the
        reduced resolution (the image resized on the host, as the pydensecrf path does; the
        probabilities and marginals resized by ``resize_bilinear``)."""
        from keras import ops

        from segbeam.crf_params import class_threshold, reduced

        height, width, classes = (int(n) for n in probabilities.shape)
        probabilities = ops.cast(probabilities, "float32")
        if params.class_floor > 0:
            peaks = ops.max(ops.reshape(probabilities, (-1, classes)), axis=0)
            kept = ops.greater_equal(peaks, np.float32(class_threshold(params.class_floor,
                                                                       classes)))
        else:
            kept = np.ones(classes, dtype=bool)
        reduction = reduced(image, params)
        if reduction is None:
            return self.field(image, probabilities, params, min_probability, kept)
        small_image, small_params = reduction
        marginals = self.field(small_image, resize_bilinear(probabilities,
                                                            *small_image.shape[:2]),
                               small_params, min_probability, kept)
        return resize_bilinear(marginals, height, width)


_SHARED: Optional[KerasDenseCrf] = None


def shared_crf() -> KerasDenseCrf:
    """This process's ``KerasDenseCrf`` (its compiled functions are reused by every call)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = KerasDenseCrf()
    return _SHARED
