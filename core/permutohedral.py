"""The permutohedral lattice (Adams, Baek and Davis, 2010) in ``keras.ops`` with static shapes.

It computes what pydensecrf's ``Permutohedral`` (``permutohedral.cpp``, Krähenbühl's version)
computes, step by step, so that a dense CRF built on it agrees with pydensecrf's:

- *Elevation and simplex*: each d-dimensional feature is elevated onto the plane
  ``x_0 + ... + x_d = 0``, rounded to the nearest point whose coordinates are multiples of
  d+1 (half to even, as the SSE path rounds), and the enclosing simplex's d+1 vertices and
  the barycentric weights are found by ranking the remainders.
- *Vertices without a hash table*: a vertex is ``(r, q_0..q_{d-1})`` (its key is
  ``(d+1) q + r``). Its digits are ranked level by level: each level packs the previous
  level's dense rank with the next digits into one int32 (JAX has no int64 by default), sorts
  it, and numbers the distinct values. The last level's numbers are the vertex ids, unique by
  construction; no hashing, so no collisions.
- *Blur neighbours*: the two neighbours of a vertex along each of the d+1 lattice directions
  are looked up with ``searchsorted`` in each level's sorted distinct values, level by level.
- *Filter*: splat (barycentric weights, ``segment_sum``), d+1 blur passes with weights
  (1/2, 1, 1/2) on the neighbours that exist, slice, times pydensecrf's ``alpha``.

Every array has a static shape: the lattice is sized for its worst case, ``(d+1) N``
vertices. ``blur_neighbours(..., rows)`` sizes the vertex table: once the true vertex count is
known (often a tenth of the worst case), the blur and the lookups run on that many rows only
(see ``segbeam.crf_keras``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

INT32_LIMIT = 2 ** 31 - 1  # the largest int32: the padding of the sorted level values
_MARGIN = 2  # digits of a vertex's neighbours lie within one of the vertex's; one more spare


class Lattice(NamedTuple):
    """A permutohedral lattice over N points (all tensors; V is the vertex capacity, (d+1) N).

    offsets: (N, d+1) int32, each point's simplex vertices as rows of the value table (vertex
      id + 1; row 0 is the table's zero row, "no vertex").
    weights: (N, d+1) float32, the barycentric weights.
    size: () int32, the number of distinct vertices.
    remainders, keys: (V,) and (V, d) int32, each vertex's (r, q), vertices in id order.
    images: (V,) int32, the image each vertex belongs to (0 but for a lattice over a batch).
    distinct: per level, (V,) int32, the level's distinct values sorted (then padding).
    """

    offsets: object
    weights: object
    size: object
    remainders: object
    keys: object
    images: object
    distinct: tuple

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[0])

    @property
    def dimensions(self) -> int:
        return int(self.keys.shape[1])


def _scale_factors(d: int) -> np.ndarray:
    """pydensecrf's diagonal of E, rounded to float32 as it rounds it."""
    inv_std_dev = np.float32(math.sqrt(2.0 / 3.0) * (d + 1))
    return np.array([1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std_dev)
                     for i in range(d)], dtype=np.float32)


def _elevated_bounds(low: Sequence[float], high: Sequence[float]) -> list[tuple[float, float]]:
    """Bounds of the elevated coordinates 0..d-1 for features within [low, high]."""
    d = len(low)
    scale = _scale_factors(d).astype(np.float64)
    cf = [(low[m] * scale[m], high[m] * scale[m]) for m in range(d)]
    bounds = []
    for j in range(d):
        lo = sum(c[0] for c in cf[j:])
        hi = sum(c[1] for c in cf[j:])
        if j > 0:
            lo, hi = lo - j * cf[j - 1][1], hi - j * cf[j - 1][0]
        bounds.append((lo, hi))
    return bounds


class _Digits(NamedTuple):
    """How a vertex's (r, q_0..q_{d-1}) is written as digits and grouped into levels."""

    q_low: tuple  # per coordinate, the smallest q that can occur (digit = q - q_low)
    q_range: tuple  # per coordinate, how many values its digit takes
    levels: tuple  # per level, parts (source, divisor, base): (digit // divisor) % base;
    #                source -1 is r, -2 the image of a batch


MAX_ENTRIES = 2 ** 30  # (d+1) N: vertex references a lattice may have (int32 ranks, sentinel)


def _plan_digits(d: int, low: Sequence[float], high: Sequence[float], entries: int,
                 batch: int = 1) -> _Digits:
    """Static digit ranges from the feature bounds, and their grouping into int32 levels: the
    first level packs digits while their product fits; each later level packs the previous
    level's rank (< ``entries``) times as many digits as fit beside it. A digit too wide to sit
    beside a rank is written as several base-2^k parts, most significant first. With a
    ``batch`` of images, the image is the first digit: vertices of two images never meet."""
    if entries >= MAX_ENTRIES:
        raise ValueError(f"a lattice of {entries} vertex references is too large for the keras "
                         f"CRF backend (at most {MAX_ENTRIES - 1}); lower --crf_scale")
    q_low, q_range = [], []
    for lo, hi in _elevated_bounds(low, high):
        m_low = math.floor(lo / (d + 1)) - 1
        m_high = math.ceil(hi / (d + 1)) + 1
        q_low.append(m_low - _MARGIN)
        q_range.append(m_high - m_low + 2 * _MARGIN + 1)
    room = INT32_LIMIT // entries  # the product of the digits that fit beside a rank (>= 2)
    bits = int(math.log2(room))
    parts = ([(-2, 1, batch)] if batch > 1 else []) + [(-1, 1, d + 1)]
    for source, size in enumerate(q_range):
        if size <= room:
            parts.append((source, 1, size))
            continue
        count = -(-math.ceil(math.log2(size)) // bits)  # base-2^bits digits of size - 1
        for place in range(count - 1, -1, -1):
            divisor = 2 ** (bits * place)
            parts.append((source, divisor, min(2 ** bits, -(-size // divisor))))
    levels, current, product = [], [], 1
    for part in parts:
        limit = INT32_LIMIT if not levels else room
        if current and product * part[2] > limit:
            levels.append(tuple(current))
            current, product = [], 1
        current.append(part)
        product *= part[2]
    levels.append(tuple(current))
    return _Digits(tuple(q_low), tuple(q_range), tuple(levels))


def _level_values(ops, remainder, q, digits: _Digits, level: int, previous=None, image=None):
    """The int32 value of one level for vertices given as ``remainder`` (..., ), ``q``
    (..., d) and (in a batch) ``image`` (..., ): ``previous * product(bases) + digits``
    (mixed radix)."""
    value = previous
    for source, divisor, base in digits.levels[level]:
        if source == -2:
            digit = image
        elif source == -1:
            digit = remainder
        else:
            digit = q[..., source] - digits.q_low[source]
            if divisor > 1:
                digit = ops.floor_divide(digit, divisor)
            if divisor > 1 or base < digits.q_range[source]:
                digit = ops.mod(digit, base)
        value = digit if value is None else value * base + digit
    return value


def _simplices(ops, features, scale):
    """Per point: the remainder-0 vertex's q (N, d) int32, the ranks (N, d+1) int32 and the
    barycentric weights (N, d+1) float32, exactly as pydensecrf's SSE ``init`` computes them."""
    d = features.shape[-1]
    down = np.float32(1.0 / (d + 1))
    columns = [None] * (d + 1)
    total = ops.zeros_like(features[:, 0])
    for j in range(d, 0, -1):
        cf = features[:, j - 1] * scale[j - 1]
        columns[j] = total - np.float32(j) * cf
        total = total + cf
    columns[0] = total
    elevated = ops.stack(columns, axis=1)
    rounded = ops.round(elevated * down)  # half to even, as _mm_round_ps / cvtps do
    rem0 = rounded * np.float32(d + 1)
    shift = ops.sum(rounded, axis=1, keepdims=True)
    diff = elevated - rem0
    # rank_i: how many coordinates come before i when sorted by remainder, ties broken as
    # pydensecrf's double loop breaks them.
    later = ops.expand_dims(diff, 2) < ops.expand_dims(diff, 1)  # [n, i, j]: d_i < d_j
    upper = np.triu(np.ones((d + 1, d + 1), dtype=bool), 1)
    rank = ops.sum(ops.cast(ops.logical_and(later, upper), "float32"), axis=2) + ops.sum(
        ops.cast(ops.logical_and(ops.logical_not(later), upper), "float32"), axis=1)
    rank = rank + shift
    wrap = np.float32(d + 1) * (ops.cast(rank < 0, "float32")
                                - ops.cast(rank >= d + 1, "float32"))
    rank, rem0 = rank + wrap, rem0 + wrap
    v = (elevated - rem0) * down
    onehot = ops.cast(ops.equal(ops.expand_dims(rank, 2),
                                ops.convert_to_tensor(np.arange(d + 1, dtype=np.float32))),
                      "float32")
    by_rank = ops.sum(ops.expand_dims(v, 2) * onehot, axis=1)  # [n, k]: v of the rank-k one
    weights = [by_rank[:, d] + (np.float32(1) - by_rank[:, 0])]
    weights += [by_rank[:, d - p] - by_rank[:, d - p + 1] for p in range(1, d + 1)]
    q0 = ops.cast(ops.round(rem0[:, :d] * down), "int32")
    return q0, ops.cast(rank, "int32"), ops.stack(weights, axis=1)


def _rank_level(ops, values, entries: int):
    """Sorts one level's values: (the dense rank of each value, the distinct values sorted and
    padded with ``INT32_LIMIT`` to ``entries``, and their count).

    A sort of the values and a binary search of each value among the distinct ones, not an
    argsort: an argsort sorts (value, index) pairs, five times the time of the values alone
    on the CPU under JAX (231 against 45 ms for a CamVid frame's 1.1 M vertex references).
    Only sorts, searches, gathers and a scatter of distinct positions: Keras's segment
    reductions go through float32 on some backends (PyTorch), which would round int32 keys
    above 2^24."""
    ordered = ops.sort(values)
    new = ops.concatenate([ops.ones((1,), "int32"),
                           ops.cast(ordered[1:] != ordered[:-1], "int32")])
    sorted_rank = ops.cast(ops.cumsum(new), "int32") - 1
    count = sorted_rank[-1] + 1
    every = ops.arange(entries, dtype="int32")
    # Each rank's first sorted position: the positions that start a rank write themselves
    # there, the others into a spare slot that is dropped.
    first = ops.scatter_update(ops.zeros((entries + 1,), "int32"), ops.expand_dims(
        ops.where(new > 0, sorted_rank, entries), 1), every)[:entries]
    distinct = ops.where(every < count, ops.take(ordered, first), INT32_LIMIT)
    # Every value is below INT32_LIMIT (``_plan_digits``), so it finds itself, not padding.
    rank = ops.cast(ops.searchsorted(distinct, values), "int32")
    return rank, distinct, count


def _lookup(ops, distinct_levels, remainder, q, digits: _Digits, image=None):
    """Vertex ids of the vertices ``(remainder, q)`` (..., d) (of ``image``, in a batch), or
    -1 where there is none."""
    found, index = None, None
    for level, distinct in enumerate(distinct_levels):
        value = _level_values(ops, remainder, q, digits, level, index, image)
        position = ops.searchsorted(distinct, ops.reshape(value, (-1,)))
        position = ops.minimum(ops.cast(position, "int32"), distinct.shape[0] - 1)
        match = ops.take(distinct, position) == ops.reshape(value, (-1,))
        found = match if found is None else ops.logical_and(found, match)
        index = ops.reshape(ops.where(found, position, 0), value.shape)
    return ops.where(ops.reshape(found, index.shape), index, -1)


def build_lattice(features, low: Sequence[float], high: Sequence[float],
                  batch: int = 1) -> Lattice:
    """The lattice over ``features`` (N, d) float32, already divided by their standard
    deviations, each feature within ``[low[i], high[i]]`` (static bounds: they size the
    digits; a feature outside them is an error of the caller). With a ``batch`` of images,
    the features are theirs one after the other (N / batch points each) and the lattice is
    theirs side by side: one sort for all, each image filtered as if alone."""
    from keras import ops

    n, d = int(features.shape[0]), int(features.shape[1])
    entries = n * (d + 1)
    digits = _plan_digits(d, low, high, entries, batch)
    q0, rank, weights = _simplices(ops, features, _scale_factors(d))
    # The vertex of remainder r: q = q0 - [rank > d - r] (pydensecrf's canonical simplex).
    remainders = np.arange(d + 1, dtype=np.int32)
    q = ops.expand_dims(q0, 1) - ops.cast(ops.greater(
        ops.expand_dims(rank[:, :d], 1),
        ops.convert_to_tensor((d - remainders)[None, :, None])), "int32")
    q = ops.reshape(q, (entries, d))
    remainder = ops.reshape(ops.broadcast_to(ops.convert_to_tensor(remainders)[None],
                                             (n, d + 1)), (entries,))
    image = ops.floor_divide(ops.arange(entries, dtype="int32"), entries // batch)
    distinct_levels, previous = [], None
    for level in range(len(digits.levels)):
        values = _level_values(ops, remainder, q, digits, level, previous, image)
        previous, distinct, size = _rank_level(ops, values, entries)
        distinct_levels.append(distinct)
    # One entry per vertex, to read its key from (rows past the size: entry 0, unused). The
    # entries of a vertex share its whole key, so whichever the scatter keeps will do.
    representative = ops.scatter_update(ops.zeros((entries,), "int32"),
                                        ops.expand_dims(previous, 1),
                                        ops.arange(entries, dtype="int32"))
    return Lattice(ops.reshape(previous, (n, d + 1)) + 1, weights, ops.cast(size, "int32"),
                   ops.take(remainder, representative), ops.take(q, representative, axis=0),
                   ops.take(image, representative), tuple(distinct_levels))


def blur_neighbours(lattice: Lattice, low: Sequence[float], high: Sequence[float], rows: int,
                    batch: int = 1):
    """(d+1, 2, rows) int32: for each lattice direction, the table rows of the two
    neighbours of each of the first ``rows`` vertices (0 where the lattice has none, and for
    rows past the lattice's size). pydensecrf's ``blur_neighbors_``. ``low``, ``high``,
    ``batch``: what the lattice was built with."""
    from keras import ops

    d = lattice.dimensions
    digits = _plan_digits(d, low, high, lattice.capacity, batch)
    distinct = [level[:rows] for level in lattice.distinct]
    vertex_r, vertex_q = lattice.remainders[:rows], lattice.keys[:rows]
    vertex_image = lattice.images[:rows]
    live = ops.arange(rows) < lattice.size
    wrap_down = ops.cast(ops.expand_dims(vertex_r == 0, 1), "int32")
    wrap_up = ops.cast(ops.expand_dims(vertex_r == d, 1), "int32")
    neighbours = []
    for j in range(d + 1):
        step = np.zeros(d, dtype=np.int32)
        if j < d:
            step[j] = 1
        step = ops.convert_to_tensor(step)
        # Along direction j: key - 1 + (d+1) e_j and key + 1 - (d+1) e_j, in (r, q) terms.
        n1 = _lookup(ops, distinct, ops.mod(vertex_r - 1, d + 1),
                     vertex_q + step - wrap_down, digits, vertex_image)
        n2 = _lookup(ops, distinct, ops.mod(vertex_r + 1, d + 1),
                     vertex_q - step + wrap_up, digits, vertex_image)
        neighbours.append(ops.stack([ops.where(live, n1 + 1, 0), ops.where(live, n2 + 1, 0)]))
    return ops.stack(neighbours)


def filter_values(lattice: Lattice, neighbours, values):
    """The lattice's (approximate Gaussian) filter of ``values`` (N, C) float32: splat, blur
    along every direction, slice; pydensecrf's ``Permutohedral::compute``. ``neighbours``:
    ``blur_neighbours(lattice, rows)``, which also sets the vertex table's size. Only the
    lattice's ``offsets`` and ``weights`` are read (any object that has them will do)."""
    from keras import ops

    d = int(lattice.offsets.shape[1]) - 1
    rows = int(neighbours.shape[-1])
    table = None
    for j in range(d + 1):
        part = ops.segment_sum(ops.expand_dims(lattice.weights[:, j], 1) * values,
                               lattice.offsets[:, j], num_segments=rows + 1)
        table = part if table is None else table + part
    zero = ops.zeros((1,), "int32")
    for j in range(d + 1):
        n1 = ops.concatenate([zero, neighbours[j, 0]])
        n2 = ops.concatenate([zero, neighbours[j, 1]])
        table = table + np.float32(0.5) * (ops.take(table, n1, axis=0)
                                           + ops.take(table, n2, axis=0))
    alpha = np.float32(1.0 / (1 + 2.0 ** -d))
    out = None
    for j in range(d + 1):
        term = ops.expand_dims(lattice.weights[:, j] * alpha, 1) * ops.take(
            table, lattice.offsets[:, j], axis=0)
        out = term if out is None else out + term
    return out
