"""The model a run uses: where it comes from, how it is loaded, and its identity.

``ModelSource`` names a model once: a saved model of any format ``segbeam.models.formats``
reads (on any Beam filesystem) or a registry name with optional weights, how to call it
(signature, output, layout), the class count and input size it is used with, and the seed of
a random initialisation. It validates itself on construction (the format is detected then, so
a path segbeam cannot read fails before any work), opens itself on a worker (``open()``: a
``ModelRuntime`` of the right kind), and fingerprints itself for the run manifest and
``--skip_existing`` (``fingerprint()``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Optional

from segbeam.config import Effect, setting
from segbeam.models.formats import (DATA_FORMATS, detect_format, fetched, local_file,
                                    local_folder, local_onnx, looks_like_path,
                                    onnx_external_data, savedmodel_folder, sha256_of_file,
                                    sha256_of_folder)

LOG = logging.getLogger(__name__)
KERAS_FORMATS = ("keras", "h5", "registry")
_FORMAT_NAMES = {"keras": "a .keras model", "h5": "an .h5 model", "savedmodel": "a SavedModel",
                 "onnx": "an ONNX model", "registry": "a registry model"}


def _registry_names() -> list[str]:
    from segbeam.models.registry import CATALOGUE

    return [spec.name for spec in CATALOGUE]


def is_model_path(spec: str) -> bool:
    """True when ``spec`` names a saved model (a file or folder), False for a registry name."""
    return spec not in _registry_names() and looks_like_path(spec)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """spec: a saved model (``.keras``, ``.h5``, SavedModel folder, ``.onnx``) or a registry
    name (see ``segbeam models``). weights: a weights file for a registry model. num_classes:
    the classes the model predicts (checked on load; required to build a registry model).
    input_size: (height, width) to build a registry model for, and the canvas images are fitted
    to. seed: the initialisation of a registry model without weights, so that every worker
    builds the same one. signature: the SavedModel signature to call. output_key: the output
    that holds the class scores, for models with several. data_format: the model's layout,
    ``auto`` to read it from the declared input shape. unsafe_model_loading: allow a legacy
    ``.h5`` file that holds Python code (``Lambda`` layers) to run it. custom_objects: the
    Python file that defines a saved Keras model's custom layers (``models.custom_objects``):
    its text is read here and travels with the source to the workers."""

    spec: str = setting(Effect.MODEL)
    weights: Optional[str] = setting(Effect.MODEL, None)
    num_classes: Optional[int] = setting(Effect.OUTPUT, None)
    input_size: Optional[tuple[int, int]] = setting(Effect.OUTPUT, None)
    seed: int = setting(Effect.MODEL, 0)
    signature: str = setting(Effect.MODEL, "serving_default")
    output_key: Optional[str] = setting(Effect.MODEL, None)
    data_format: str = setting(Effect.MODEL, "auto")
    unsafe_model_loading: bool = setting(Effect.NONE, False)
    custom_objects: Optional[str] = setting(Effect.MODEL, None)

    def __post_init__(self):
        if not self.spec:
            raise ValueError("--model is required: a saved model (.keras, .h5, SavedModel "
                             "folder, .onnx) or a registry name (see `segbeam models`)")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"--num_classes must be at least 2; received {self.num_classes} "
                             f"(a binary model's one output channel is served as 2 classes, "
                             f"background 0 and foreground 1)")
        if self.data_format not in DATA_FORMATS:
            raise ValueError(f"--data_format must be one of {', '.join(DATA_FORMATS)}; "
                             f"received {self.data_format!r}")
        object.__setattr__(self, "format", detect_format(self.spec, _registry_names()))
        if self.saved and self.format != "savedmodel":
            _require_file(self.spec, "model")
        if self.weights:
            _require_file(self.weights, "--weights file")
        if self.custom_objects:
            from segbeam.models.custom_objects import read_custom_objects

            _require_file(self.custom_objects, "--custom_objects file")
            object.__setattr__(self, "custom_code", read_custom_objects(self.custom_objects))
        if self.saved and self.weights:
            raise ValueError(f"--weights is for registry models; {self.spec} already holds its "
                             f"weights")
        void = self._void_flags()
        if void:
            flag, applies = void[0]
            raise ValueError(f"{flag} applies to {applies}; {self.spec} is "
                             f"{_FORMAT_NAMES[self.format]}"
                             f"{' with --weights' if self.weights else ''}: drop {flag}")
        if self.input_size is not None:
            object.__setattr__(self, "input_size", tuple(self.input_size))

    def _void_flags(self) -> list[tuple[str, str]]:
        """(flag, what it applies to) for each flag set away from its default that this
        model's format ignores (each would otherwise be accepted without effect)."""
        return [(flag, applies) for flag, changed, used, applies in (
            ("--signature", self.signature != "serving_default", self.format == "savedmodel",
             "SavedModel folders"),
            ("--output_key", self.output_key is not None, self.saved,
             "saved models with several outputs"),
            ("--data_format", self.data_format != "auto", self.saved,
             "saved models (registry models take channels-last input)"),
            ("--seed", self.seed != 0, not self.saved and not self.weights,
             "registry models without --weights (it draws their random weights)"),
            ("--unsafe_model_loading", self.unsafe_model_loading,
             self.saved and self.format in KERAS_FORMATS, "saved Keras models (.keras, .h5)"),
            ("--custom_objects", self.custom_objects is not None,
             self.saved and self.format in KERAS_FORMATS, "saved Keras models (.keras, .h5)"))
            if changed and not used]

    @property
    def saved(self) -> bool:
        """True for a saved model (file or folder), False for a registry name."""
        return self.format != "registry"

    def open(self, announce: bool = True):
        """The model as a ``ModelRuntime`` (``segbeam.models.runtime``), loaded once per
        worker. A registry model without weights gets random weights from ``seed``; a warning
        says so (unless not ``announce``: the launcher's check leaves it to the workers)."""
        return self.checked(self._runtime(announce))

    def loading_identity(self) -> "ModelSource":
        """What decides the model a saved source loads: this source less the settings that
        ``checked`` compares the loaded model with."""
        return dataclasses.replace(self, num_classes=None, input_size=None)

    def _runtime(self, announce: bool):
        if self.format == "onnx":
            from segbeam.models.graph_runtimes import OnnxRuntime

            with fetched(self.spec, local_onnx) as local:
                runtime = OnnxRuntime(local, self.spec, self.output_key, self.data_format)
        elif self.format == "savedmodel":
            from segbeam.models.graph_runtimes import SavedModelRuntime

            with fetched(savedmodel_folder(self.spec), local_folder) as local:
                runtime = SavedModelRuntime(local, self.spec, self.signature, self.output_key,
                                            self.data_format)
        else:
            from segbeam.models.keras_runtime import KerasRuntime
            from segbeam.models.registry import get_spec

            preprocessing = get_spec(self.spec).preprocessing if not self.saved else ""
            runtime = KerasRuntime(self._load_keras(announce), self.spec, self.format,
                                   self.output_key, self.data_format, preprocessing)
        return runtime

    def checked(self, runtime):
        """``runtime`` where it agrees with ``--input_size`` and ``--num_classes``; a
        ValueError saying how it differs otherwise."""
        fixed, wanted = runtime.fixed_input_size(), self.input_size
        if fixed and wanted and fixed != wanted:
            raise ValueError(f"model {self.spec} takes {fixed[0]}x{fixed[1]} input but "
                             f"--input_size is {wanted[0]}x{wanted[1]}; drop --input_size or "
                             f"make them agree")
        declared = runtime.num_classes()
        binary = declared == 1 and self.num_classes == 2  # served as two (output_adapters)
        if self.num_classes is not None and declared is not None \
                and declared != self.num_classes and not binary:
            raise ValueError(f"model {self.spec} predicts {declared} classes but "
                             f"--num_classes is {self.num_classes}" + (
                                 " (a one-channel model is served as 2 classes, background 0 "
                                 "and foreground 1: pass --num_classes 2)" if declared == 1
                                 else ""))
        return runtime

    def load(self):
        """The ``keras.Model`` of a Keras format (``.keras``, ``.h5``, registry), as saved: for
        training, fine-tuning and scripts. Serving goes through ``open()``."""
        if self.format not in KERAS_FORMATS:
            raise ValueError(f"{self.spec} is a {self.format} model: segbeam can serve it "
                             f"(segbeam run) but not load it as a Keras model")
        model = self._load_keras()
        outputs = model.outputs
        if len(outputs) != 1 or len(outputs[0].shape) != 4:
            raise ValueError(f"model {self.spec} must map (N, H, W, 3) to one (N, H, W, C) "
                             f"output; its outputs are {[tuple(o.shape) for o in outputs]}")
        if self.num_classes is not None and outputs[0].shape[-1] != self.num_classes:
            raise ValueError(f"model {self.spec} predicts {outputs[0].shape[-1]} classes but "
                             f"--num_classes is {self.num_classes}")
        return model

    def _load_keras(self, announce: bool = True):
        from segbeam import compat, models
        from segbeam.models.keras_runtime import load_keras_file

        if self.saved:
            with fetched(self.spec, local_file) as local:
                return load_keras_file(local, self.spec, self.format,
                                       self.unsafe_model_loading, self._custom_objects())
        keras = compat.import_keras_quietly()
        if self.num_classes is None:
            raise ValueError(f"--num_classes is required to build registry model "
                             f"{self.spec!r}")
        keras.utils.set_random_seed(self.seed)
        if self.input_size is None:
            model = models.create_model(self.spec, num_classes=self.num_classes)
        else:
            model = models.create_model_for_size(self.spec, self.num_classes, self.input_size)
        if self.weights:
            with fetched(self.weights, local_file) as local:
                load_all_weights(model, local, self.weights, self.spec)
        elif announce:
            LOG.warning(self.random_weights_warning())
        return model

    def _custom_objects(self) -> Optional[dict]:
        if not self.custom_objects:
            return None
        from segbeam.models.custom_objects import custom_objects

        return custom_objects(self.custom_code, self.custom_objects)

    def random_weights_warning(self) -> Optional[str]:
        """What a registry model without --weights (random weights) should be said to be: its
        figures are chance level, and a run's end must say so, not only its first log line."""
        if self.saved or self.weights:
            return None
        return (f"model {self.spec} has random weights (seed {self.seed}), so its masks and "
                f"figures are chance level: pass --weights or a trained model file for "
                f"meaningful predictions")

    def fingerprint(self) -> str:
        """A stable identity: the SHA-256 of the saved model file, of a SavedModel folder's
        files, or of the weights file, or for a random-initialised registry model a hash of
        what determines it; then how the model is called, where that differs from the
        defaults (so existing fingerprints stay valid)."""
        if self.format == "savedmodel":
            identity = "sha256:" + sha256_of_folder(savedmodel_folder(self.spec))
        elif self.format == "onnx":
            identity = "sha256:" + sha256_of_file(self.spec)
            folder = self.spec.rsplit("/", 1)[0] if "/" in self.spec else "."
            with fetched(self.spec, local_file) as local:
                locations = onnx_external_data(local)
            for location in locations:
                identity += f"+{location}:{sha256_of_file(f'{folder}/{location}')}"
        elif self.saved:
            identity = "sha256:" + sha256_of_file(self.spec)
        elif self.weights:
            identity = "sha256:" + sha256_of_file(self.weights)
        else:
            text = (f"{self.spec}|classes={self.num_classes}|input={self.input_size}"
                    f"|seed={self.seed}|random-init")
            identity = "random-init:" + hashlib.sha256(text.encode()).hexdigest()
        calls = [f"{name}={getattr(self, name)}" for name, default in (
            ("signature", "serving_default"), ("output_key", None), ("data_format", "auto"))
            if getattr(self, name) != default]
        if self.custom_objects:  # the layers' code decides the outputs as the weights do
            from segbeam.models.custom_objects import code_digest

            calls.append(f"custom_objects=sha256:{code_digest(self.custom_code)}")
        return "|".join([identity, *calls])


def _require_file(path: str, what: str) -> None:
    """A ValueError naming ``path`` when it is no file (local, or on any Beam filesystem): a
    mistyped path is named as such, not as a file the loader cannot read."""
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        try:
            found = FileSystems.exists(path)
        except Exception:  # noqa: BLE001 - unreachable storage: loading says what failed
            return
        if not found:
            raise ValueError(f"{what} {path!r} does not exist; check the path")
    elif os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a folder, not a file")
    elif not os.path.exists(path):
        raise ValueError(f"{what} {path!r} does not exist; check the path")


def _brief(error: Exception, limit: int = 300) -> str:
    """An error's message on one line, without the arrays Keras prints into some."""
    text = " ".join(str(error).split())
    for cut in (" Target variable:", " List of objects"):
        text = text.split(cut)[0]
    return text if len(text) <= limit else text[:limit] + "..."


def load_all_weights(model, path: str, name: str, spec: str, flag: str = "--weights") -> None:
    """Loads a weights file (or a saved ``.keras`` model's weights) into a registry model, all
    of it or not at all: Keras only warns when it skips a part of the model that the file
    lacks (those layers keep their random initial values); here that is an error, as is any
    failure, in one line naming ``flag``."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except Exception as error:  # noqa: BLE001 - Keras raises several types
            raise ValueError(f"{flag} {name} do not load into model {spec}: "
                             f"{_brief(error)}") from None
    skipped = [str(w.message) for w in caught if "freshly-initialized" in str(w.message)]
    if skipped:
        raise ValueError(f"{flag} {name} leave part of model {spec} at its random initial "
                         f"values ({_brief(skipped[0], 200)}); were they saved from another "
                         f"architecture or class count?")
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)


def load_model(spec: str, num_classes: Optional[int] = None,
               input_size: Optional[tuple[int, int]] = None, weights: Optional[str] = None,
               seed: int = 0, unsafe_model_loading: bool = False):
    """``ModelSource(...).load()`` in one call (for scripts and tests): a ``keras.Model``."""
    return ModelSource(spec, weights, num_classes, input_size, seed,
                       unsafe_model_loading=unsafe_model_loading).load()

