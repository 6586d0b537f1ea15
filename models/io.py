"""Loading a model for inference, and fingerprinting it for the run manifest.

``--model`` is either the path of a saved ``.keras`` model (any Beam filesystem) or a registry
name, with ``--weights`` naming a weights file for it. Saved models load with Keras's safe
deserialisation; this package's custom layers are registered on import, so users need not
import anything.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from typing import Optional

LOG = logging.getLogger(__name__)
SAVED_MODEL_SUFFIXES = (".keras",)


def is_saved_model(spec: str) -> bool:
    return spec.endswith(SAVED_MODEL_SUFFIXES)


def _local_copy(path: str) -> str:
    """A local path for ``path``; files on other Beam filesystems are copied to a temp file."""
    if os.path.exists(path):
        return path
    from apache_beam.io.filesystems import FileSystems

    suffix = os.path.splitext(path)[1]
    with FileSystems.open(path) as source, tempfile.NamedTemporaryFile(
            suffix=suffix, delete=False) as target:
        shutil.copyfileobj(source, target)
    return target.name


def load_model(spec: str, num_classes: Optional[int] = None,
               input_size: Optional[tuple[int, int]] = None, weights: Optional[str] = None,
               seed: int = 0):
    """Returns a ``keras.Model`` for ``spec`` (a ``.keras`` path or a registry name).

    A registry model without ``weights`` gets random weights from ``seed``, so that every worker
    builds the same model; a warning says so.
    """
    import keras

    from segbeam import models  # registers architectures and custom layers

    if is_saved_model(spec):
        if weights:
            raise ValueError(f"--weights is for registry models; {spec} already holds its "
                             f"weights")
        model = keras.saving.load_model(_local_copy(spec), compile=False, safe_mode=True)
    else:
        if num_classes is None:
            raise ValueError(f"--num_classes is required to build registry model {spec!r}")
        keras.utils.set_random_seed(seed)
        model = models.create_model(spec, num_classes=num_classes, input_size=input_size)
        if weights:
            model.load_weights(_local_copy(weights))
        else:
            LOG.warning("model %s has random weights (seed %d): pass --weights or a trained "
                        ".keras file for meaningful predictions", spec, seed)
    outputs = model.outputs
    if len(outputs) != 1 or len(outputs[0].shape) != 4:
        raise ValueError(f"model {spec} must map (N, H, W, 3) to one (N, H, W, C) output; its "
                         f"outputs are {[tuple(o.shape) for o in outputs]}")
    if num_classes is not None and outputs[0].shape[-1] != num_classes:
        raise ValueError(f"model {spec} predicts {outputs[0].shape[-1]} classes but "
                         f"--num_classes is {num_classes}")
    return model


def _sha256_of(path: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    digest = hashlib.sha256()
    with FileSystems.open(path) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(spec: str, weights: Optional[str] = None, num_classes: Optional[int] = None,
                      input_size=None, seed: int = 0) -> str:
    """A stable identity for the model a run used: the SHA-256 of the saved model or weights
    file, or for a random-initialised registry model a hash of what determines it."""
    if is_saved_model(spec):
        return "sha256:" + _sha256_of(spec)
    if weights:
        return "sha256:" + _sha256_of(weights)
    text = f"{spec}|classes={num_classes}|input={input_size}|seed={seed}|random-init"
    return "random-init:" + hashlib.sha256(text.encode()).hexdigest()
