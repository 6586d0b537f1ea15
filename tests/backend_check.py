"""Builds every registered architecture at 360x480 (CamVid's size, no multiple of the models'
strides, not square) for 21 classes, runs a forward pass and checks SegNet's unpooling
against the numpy reference, under whichever Keras backend ``KERAS_BACKEND`` selects. (The
class count sets only the last layers' filters, and no architecture special-cases a size
or a count: a second case, 128x128 for 2 classes, added a minute under JAX and checked
nothing this one does not.) Run as ``python -m tests.backend_check``; prints one JSON object
per check (``test_backends.py`` runs it once per backend)."""

from __future__ import annotations

import gc
import json
import sys

import numpy as np

CASES = (((360, 480), 21),)  # (size, classes)


def _report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def check_unpooling() -> None:
    import keras

    from segbeam.models.layers import MaxPoolingWithArgmax, MaxUnpooling
    from tests.pooling_reference import max_pool_with_argmax, unpool

    x = np.random.default_rng(0).integers(-3, 4, size=(2, 5, 7, 3)).astype(np.float32)
    pooled, indices = MaxPoolingWithArgmax()(x)
    unpooled = keras.ops.convert_to_numpy(MaxUnpooling()([pooled, indices, x]))
    expected_pooled, argmax = max_pool_with_argmax(x)
    _report(check="unpooling",
            ok=bool(np.array_equal(keras.ops.convert_to_numpy(pooled), expected_pooled)
                    and np.array_equal(unpooled, unpool(expected_pooled, argmax, x.shape))))


def check_architectures(names) -> None:
    import keras

    from segbeam import models

    for name in names:
        for size, classes in CASES:
            model = models.create_model(name, num_classes=classes, input_size=size)
            batch = np.random.default_rng(0).uniform(0, 255, (1, *size, 3)).astype("float32")
            logits = keras.ops.convert_to_numpy(model(batch, training=False))
            _report(check="forward", model=name, size=list(size), classes=classes,
                    shape=list(logits.shape), finite=bool(np.isfinite(logits).all()))
            del model
            keras.backend.clear_session()
            gc.collect()


def main(argv) -> None:
    import keras

    from segbeam import models

    _report(check="backend", backend=keras.backend.backend())
    check_unpooling()
    names = argv or [spec.name for spec in models.list_models()]
    check_architectures(names)


if __name__ == "__main__":
    main(sys.argv[1:])
