"""A loop-by-loop numpy reference for SegNet's pooling with indices and its unpooling, in
TensorFlow's convention (``tf.nn.max_pool_with_argmax``: flat index (y * W + x) * C + c, first
maximum on ties), with ceil-mode windows so that odd sizes keep their last row/column."""

from __future__ import annotations

import numpy as np


def max_pool_with_argmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    batch, height, width, channels = x.shape
    out_h, out_w = (height + 1) // 2, (width + 1) // 2
    pooled = np.zeros((batch, out_h, out_w, channels), x.dtype)
    argmax = np.zeros((batch, out_h, out_w, channels), np.int64)
    for n in range(batch):
        for i in range(out_h):
            for j in range(out_w):
                for c in range(channels):
                    best, where = -np.inf, -1
                    for y in range(2 * i, min(2 * i + 2, height)):
                        for xx in range(2 * j, min(2 * j + 2, width)):
                            if x[n, y, xx, c] > best:
                                best, where = x[n, y, xx, c], (y * width + xx) * channels + c
                    pooled[n, i, j, c], argmax[n, i, j, c] = best, where
    return pooled, argmax


def unpool(values: np.ndarray, argmax: np.ndarray, shape: tuple[int, int, int, int]
           ) -> np.ndarray:
    out = np.zeros(shape, values.dtype)
    for n in range(shape[0]):
        np.put(out[n], argmax[n].ravel(), values[n].ravel())
    return out
