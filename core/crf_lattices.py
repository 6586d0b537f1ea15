"""The pieces of the keras CRF backend (``segbeam.crf_keras``), on a batch of images of one
size: the Gaussian and bilateral features, their lattices and kernels (the lattice, its blur
neighbours, pydensecrf's normaliser), the mean field, and the bilinear resize, all in
``keras.ops`` with static shapes.

A batch of B images is refined as one: the bilateral lattice is built over all of them with
the image as the first digit of every vertex (``segbeam.permutohedral``), so that their
vertices never meet; the Gaussian kernel, the same for every image of one size, filters them
side by side as channels. Each image's marginals are what it gives alone; the batch pays one
sort, one read of the lattice's size and one compiled call instead of B.
"""

from __future__ import annotations

from typing import NamedTuple

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


def bilateral_features(ops, images, sxy: float, srgb: float, size=None):
    """(B H W, 5) float32 for (B, H, W, 3) images: column / sxy, row / sxy, then R, G, B /
    srgb, image after image."""
    batch, height, width = (int(n) for n in images.shape[:3])
    colour = ops.reshape(ops.cast(images, "float32"), (batch * height * width, 3))
    position = gaussian_features(ops, height, width, sxy, size)
    if batch > 1:
        position = ops.tile(position, (batch, 1))
    return ops.concatenate([position, colour / np.float32(srgb)], axis=1)


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


def kernel(lattice: Lattice, bounds: tuple, rows: int, valid, batch: int = 1) -> Kernel:
    """``lattice``'s kernel on a vertex table of ``rows`` rows (at least its size); ``bounds``,
    ``batch``: what it was built with."""
    from keras import ops

    neighbours = blur_neighbours(lattice, *bounds, rows, batch)
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


def bilateral_lattice(images, size, params) -> Lattice:
    """The bilateral lattice of (B, H, W, 3) uint8 canvases, each holding an image of ``size``
    in its top-left corner, padded by repeating its edge (features that add no vertex): one
    lattice, the images' vertices kept apart."""
    from keras import ops

    batch, height, width = (int(n) for n in images.shape[:3])
    return build_lattice(bilateral_features(ops, images, params.bi_xy_std, params.bi_rgb_std,
                                            size), *bilateral_bounds(height, width, params),
                         batch)


def _valid(ops, size, height: int, width: int):
    """(H W, 1) float32: 1 on the image's pixels of an (H, W) canvas, 0 on the padding."""
    rows = ops.cast(ops.arange(height) < size[0], "float32")
    columns = ops.cast(ops.arange(width) < size[1], "float32")
    return ops.reshape(ops.expand_dims(rows, 1) * ops.expand_dims(columns, 0),
                       (height * width, 1))


def _side_by_side(ops, values, batch: int):
    """(B P, C) values of B images as (P, B C): one image's filter applied to all at once."""
    points, classes = int(values.shape[0]) // batch, int(values.shape[1])
    values = ops.transpose(ops.reshape(values, (batch, points, classes)), (1, 0, 2))
    return ops.reshape(values, (points, batch * classes))


def _one_after_another(ops, values, batch: int):
    """The inverse of ``_side_by_side``."""
    points, classes = int(values.shape[0]), int(values.shape[1]) // batch
    values = ops.transpose(ops.reshape(values, (points, batch, classes)), (1, 0, 2))
    return ops.reshape(values, (batch * points, classes))


def _gaussian_filter(ops, gaussian: Kernel, values, batch: int):
    """The Gaussian kernel of one image size applied to each of B images' (B P, C) values."""
    if batch == 1:
        return filter_values(gaussian, gaussian.neighbours, values)
    return _one_after_another(ops, filter_values(gaussian, gaussian.neighbours,
                                                 _side_by_side(ops, values, batch)), batch)


def mean_field(probabilities, kept, size, gaussian: Kernel, bilateral: Lattice, params,
               min_probability: float, rows: int, height: int, width: int, batch: int = 1):
    """Marginals (B H W, C) float32 after ``params.iterations`` mean-field steps, from the
    probabilities (B H W, C) of B images on (H, W) canvases, each holding an image of
    ``size`` (h, w), and a (B, C) bool mask of the classes taking part (the others get
    probability 0, as if left out). The padding's values are zeroed before every splat, so it
    changes no sum: each image's marginals are what it gives alone; the padding's are
    meaningless. ``gaussian``: the Gaussian kernel of this size (of one image); ``bilateral``:
    the batch's lattice; ``rows``: the vertex rows its table uses (at least its size)."""
    from keras import ops

    points, classes = height * width, int(probabilities.shape[-1])
    unary = -ops.log(ops.clip(ops.cast(probabilities, "float32"), min_probability, 1.0))
    kept = ops.broadcast_to(ops.expand_dims(kept, 1), (batch, points, classes))
    unary = ops.where(ops.reshape(kept, (batch * points, classes)), unary, LEFT_OUT)
    valid = _valid(ops, size, height, width)
    gaussian_norm = gaussian.norm if batch == 1 else ops.tile(gaussian.norm, (batch, 1))
    if batch > 1:
        valid = ops.tile(valid, (batch, 1))
    bilateral = kernel(bilateral, bilateral_bounds(height, width, params), rows, valid, batch)

    def step(_, q):
        logits = -unary + np.float32(params.pos_w) * (gaussian_norm * _gaussian_filter(
            ops, gaussian, gaussian_norm * valid * q, batch))
        logits = logits + np.float32(params.bi_w) * (bilateral.norm * filter_values(
            bilateral, bilateral.neighbours, bilateral.norm * valid * q))
        return ops.softmax(logits, axis=-1)

    return ops.fori_loop(0, params.iterations, step, ops.softmax(-unary, axis=-1))


def resize_bilinear(values, height: int, width: int):
    """``segbeam.geometry.resize_bilinear`` in ``keras.ops``: the same half-pixel-centre
    weights and indices, applied along rows then columns, to an (h, w, C) tensor or a batch
    of them (B, h, w, C)."""
    from keras import ops

    from segbeam.geometry import _linear_weights

    out = ops.cast(values, "float32")
    in_h, in_w = int(values.shape[-3]), int(values.shape[-2])
    if in_h != height:
        low, high, frac = _linear_weights(height, in_h)
        frac = ops.convert_to_tensor(frac[:, None, None])
        out = ops.take(out, low, axis=-3) * (1 - frac) + ops.take(out, high, axis=-3) * frac
    if in_w != width:
        low, high, frac = _linear_weights(width, in_w)
        frac = ops.convert_to_tensor(frac[None, :, None])
        out = ops.take(out, low, axis=-2) * (1 - frac) + ops.take(out, high, axis=-2) * frac
    return out


