"""Training on in-memory arrays: the minimal loop the demo uses.

Feeding is plain numpy, not tf.data, so it runs under any Keras backend.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def fit_on_arrays(model, images: np.ndarray, masks: np.ndarray, *, epochs: int = 10,
                  batch_size: int = 16, learning_rate: float = 1e-2,
                  ignore_index: Optional[int] = None, verbose: int = 0) -> list[float]:
    """Trains a logits model with softmax cross-entropy; pixels equal to ``ignore_index``
    carry no weight. Returns the loss after each epoch."""
    import keras

    if images.shape[:3] != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} disagree")
    weights = np.ones(masks.shape, dtype=np.float32)
    labels = masks.astype(np.int32)
    if ignore_index is not None:
        ignored = labels == ignore_index
        weights[ignored] = 0.0
        labels[ignored] = 0
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(images.astype(np.float32), labels, sample_weight=weights,
                        epochs=epochs, batch_size=batch_size, shuffle=True, verbose=verbose)
    return [float(v) for v in history.history["loss"]]
