"""The model a run uses: where it comes from, how it is loaded, and its identity.

``ModelSource`` names a model once: the path of a saved ``.keras`` model (any Beam filesystem)
or a registry name with optional weights, the class count and input size it is used with, and
the seed of a random initialisation. It validates itself on construction, loads itself on a
worker (``load()``), and fingerprints itself for the run manifest and ``--skip_existing``
(``fingerprint()``). Saved models load with Keras's safe deserialisation; this package's custom
layers register on import, so users need not import anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from typing import Optional

from segbeam.config import Effect, setting

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


def _sha256_of(path: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    digest = hashlib.sha256()
    with FileSystems.open(path) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """spec: a saved ``.keras`` path or a registry name (see ``segbeam models``). weights: a
    weights file for a registry model. num_classes: the classes the model predicts (checked on
    load; required to build a registry model). input_size: (height, width) to build a registry
    model for, and the canvas images are fitted to. seed: the initialisation of a registry
    model without weights, so that every worker builds the same one."""

    spec: str = setting(Effect.MODEL)
    weights: Optional[str] = setting(Effect.MODEL, None)
    num_classes: Optional[int] = setting(Effect.OUTPUT, None)
    input_size: Optional[tuple[int, int]] = setting(Effect.OUTPUT, None)
    seed: int = setting(Effect.MODEL, 0)

    def __post_init__(self):
        if not self.spec:
            raise ValueError("--model is required: a .keras file or a registry name "
                             "(see `segbeam models`)")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"--num_classes must be at least 2; received {self.num_classes}")
        if self.saved and self.weights:
            raise ValueError(f"--weights is for registry models; {self.spec} already holds its "
                             f"weights")
        if self.input_size is not None:
            object.__setattr__(self, "input_size", tuple(self.input_size))

    @property
    def saved(self) -> bool:
        """True for a saved model file, False for a registry name."""
        return is_saved_model(self.spec)

    def load(self):
        """Returns the ``keras.Model``. A registry model without weights gets random weights
        from ``seed``; a warning says so."""
        from segbeam import compat, models

        keras = compat.import_keras_quietly()
        from segbeam.models import layers  # noqa: F401  (registers the custom layers)

        if self.saved:
            model = keras.saving.load_model(_local_copy(self.spec), compile=False,
                                            safe_mode=True)
        else:
            if self.num_classes is None:
                raise ValueError(f"--num_classes is required to build registry model "
                                 f"{self.spec!r}")
            keras.utils.set_random_seed(self.seed)
            model = models.create_model(self.spec, num_classes=self.num_classes,
                                        input_size=self.input_size)
            if self.weights:
                model.load_weights(_local_copy(self.weights))
            else:
                LOG.warning("model %s has random weights (seed %d): pass --weights or a "
                            "trained .keras file for meaningful predictions", self.spec,
                            self.seed)
        outputs = model.outputs
        if len(outputs) != 1 or len(outputs[0].shape) != 4:
            raise ValueError(f"model {self.spec} must map (N, H, W, 3) to one (N, H, W, C) "
                             f"output; its outputs are {[tuple(o.shape) for o in outputs]}")
        if self.num_classes is not None and outputs[0].shape[-1] != self.num_classes:
            raise ValueError(f"model {self.spec} predicts {outputs[0].shape[-1]} classes but "
                             f"--num_classes is {self.num_classes}")
        return model

    def fingerprint(self) -> str:
        """A stable identity: the SHA-256 of the saved model or weights file, or for a
        random-initialised registry model a hash of what determines it."""
        if self.saved:
            return "sha256:" + _sha256_of(self.spec)
        if self.weights:
            return "sha256:" + _sha256_of(self.weights)
        text = (f"{self.spec}|classes={self.num_classes}|input={self.input_size}"
                f"|seed={self.seed}|random-init")
        return "random-init:" + hashlib.sha256(text.encode()).hexdigest()


def load_model(spec: str, num_classes: Optional[int] = None,
               input_size: Optional[tuple[int, int]] = None, weights: Optional[str] = None,
               seed: int = 0):
    """``ModelSource(...).load()`` in one call (for scripts and tests)."""
    return ModelSource(spec, weights, num_classes, input_size, seed).load()

