"""The model flags of ``segbeam run`` (what model, how it is fed and called) and their reading
into ``ModelSource`` and ``InferenceSettings`` (apart from ``pipeline.options``, which holds the
other flags)."""

from __future__ import annotations

import argparse
import contextlib
import re
from typing import Optional

from segbeam.geometry import RESIZE_MODES, parse_size
from segbeam.inference import DEFAULT_SIZE_MULTIPLE, MODEL_OUTPUTS, InferenceSettings
from segbeam.models.formats import DATA_FORMATS
from segbeam.models.registry import check_preprocess
from segbeam.models.source import ModelSource, is_model_path
from segbeam.pipeline.flags import UsageError, absolute_local
from segbeam.preprocessing import PREPROCESSORS


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model and inference")
    model.add_argument("--model", default=None,
                       help="A saved model on any Beam filesystem: .keras, legacy .h5, a "
                            "TensorFlow SavedModel folder or .onnx (the format comes from "
                            "the path; `segbeam models --inspect PATH` shows what segbeam "
                            "sees), or a registry name (see `segbeam models`) with "
                            "--weights.")
    model.add_argument("--signature", default="serving_default",
                       help="The SavedModel signature to call.")
    model.add_argument("--output_key", default=None,
                       help="The output holding the class scores, for a model with "
                            "several (torchvision's out/aux, a signature's dict).")
    model.add_argument("--data_format", default="auto", choices=DATA_FORMATS,
                       help="The model's layout; auto reads it from the declared input "
                            "shape ((N, 3, H, W) is channels_first, as PyTorch exports).")
    model.add_argument("--unsafe_model_loading", action="store_true", default=False,
                       help="Load a legacy .h5 model that holds Python code (Lambda "
                            "layers); that code runs, so only for files you trust.")
    model.add_argument("--custom_objects", default=None, metavar="FILE.py",
                       help="The Python file that defines a saved Keras model's custom "
                            "layers (or functions); it runs before the model loads, on every "
                            "worker. Only for files you trust.")
    model.add_argument("--weights", default=None,
                       help="Weights file (.weights.h5) for a registry model.")
    model.add_argument("--num_classes", type=int, default=None,
                       help="Number of classes the model predicts. A saved model whose "
                            "output fixes its channel count gives it (a one-channel model "
                            "serves 2); a registry name needs it (or a --dataset preset).")
    model.add_argument("--input_size", default=None,
                       help="Model input as N or HxW; default: the model's fixed input, "
                            "else images batch by size, padded to --size_multiple.")
    model.add_argument("--resize_mode", default="resize", choices=RESIZE_MODES,
                       help="resize: stretch to the input; letterbox: keep the aspect "
                            "ratio and pad; pad: no scaling (models that take any size).")
    model.add_argument("--size_multiple", type=int, default=DEFAULT_SIZE_MULTIPLE,
                       help="Where images are fed at their own size (no --input_size, a "
                            "model that takes any size): round each batch's canvas up to "
                            "this (the model's total stride).")
    model.add_argument("--preprocess", default="none", choices=tuple(PREPROCESSORS),
                       help="Normalisation the model expects; none: raw RGB in [0, 255] "
                            "(this project's models normalise inside their graph).")
    model.add_argument("--model_output", default="auto", choices=MODEL_OUTPUTS,
                       help="What the model emits; auto detects per batch.")
    model.add_argument("--batch_size", type=int, default=8,
                       help="Largest inference batch.")
    model.add_argument("--min_batch_size", type=int, default=1,
                       help="Smallest inference batch Beam waits to form.")
    model.add_argument("--large_model", action="store_true", default=False,
                       help="Share one model per machine across SDK processes (Beam's "
                            "large_model): one copy per GPU instead of one per process.")
    model.add_argument("--model_copies", type=int, default=None,
                       help="Models per machine, shared across its SDK processes (as "
                            "--large_model shares one); e.g. one per GPU. Default: one per "
                            "process, or with --large_model one per accelerator.")
    model.add_argument("--seed", type=int, default=0,
                       help="Initialisation seed of a registry model without --weights.")


def model_settings(o, num_classes: int) -> tuple[ModelSource, InferenceSettings]:
    """The model and how it is fed, from the parsed flags ``o``; errors say what to change."""
    if not 0 <= o.seed < 2 ** 32:
        raise UsageError(f"--seed must be in 0..{2 ** 32 - 1}; received {o.seed}")
    model_copies = o.model_copies
    if o.large_model and model_copies is None:
        model_copies = _accelerator_count(o.inference_accelerator)  # one model per GPU
    source = ModelSource(absolute_local(o.model) if o.model and is_model_path(o.model)
                         else o.model, absolute_local(o.weights), num_classes,
                         parse_size(o.input_size), o.seed, o.signature, o.output_key,
                         o.data_format, o.unsafe_model_loading,
                         absolute_local(o.custom_objects))
    inference = InferenceSettings(o.resize_mode, o.size_multiple, o.preprocess, o.model_output,
                                  o.batch_size, o.min_batch_size, o.large_model, model_copies)
    if not source.saved:
        check_preprocess(source.spec, inference.preprocess)
    return source, inference


def classes_of_saved_model(o) -> Optional[int]:
    """The class count a saved model (``--model`` a file or folder) serves, for a run without
    ``--num_classes``: its output's channels, a one-channel model as two classes. None for a
    registry name, or an output whose channel count its shape leaves open. The model is opened
    as the launcher's check opens it, so a model segbeam cannot serve fails here in one line."""
    from segbeam.models.output_adapters import adapt_outputs

    source, inference = model_settings(o, None)
    if not source.saved:
        return None
    served, _ = adapt_outputs(open_in_launcher(source, keep=True), inference.model_output)
    return served.num_classes()


_KEPT: dict = {}  # saved models the launcher opened, by loading identity, inside opened_once()
_KEEPING: list = []


@contextlib.contextmanager
def opened_once():
    """Within it, the launcher loads a saved model once for its checks (the class count, then
    whether it can be served), not once per check: a model of hundreds of MB, or one read from
    Cloud Storage, is not read twice. Nothing is kept after it (the workers load their own)."""
    _KEEPING.append(True)
    try:
        yield
    finally:
        _KEEPING.pop()
        _KEPT.clear()


def open_in_launcher(source: ModelSource, keep: bool = False):
    """``source.open(announce=False)``, reusing a model an earlier check kept inside
    ``opened_once()``; ``keep`` keeps it for the next check."""
    identity = source.loading_identity() if source.saved else None
    runtime = _KEPT.pop(identity, None) if identity else None
    runtime = source.checked(runtime) if runtime is not None else source.open(announce=False)
    if keep and identity and _KEEPING:
        _KEPT[identity] = runtime
    return runtime


def _accelerator_count(accelerator: Optional[str]) -> Optional[int]:
    match = re.search(r"(?:^|;)count:(\d+)", accelerator or "")
    return int(match.group(1)) if match else None
