"""Which kind of model a ``--model`` value names, and the file handling every format shares.

Formats, detected from the path (never from a flag, so a value cannot be read two ways):

- ``keras``: a Keras 3 ``.keras`` file;
- ``h5``: a legacy Keras 2 / tf.keras full-model ``.h5`` / ``.hdf5`` file;
- ``savedmodel``: a TensorFlow SavedModel folder (it holds ``saved_model.pb``), as
  ``model.export()``, ``tf.saved_model.save`` and TF-Hub write them;
- ``onnx``: an ``.onnx`` file (PyTorch's ``torch.onnx.export``, tf2onnx, ...), run by ONNX
  Runtime;
- ``registry``: the name of an architecture of this package (see ``segbeam models``).

Also here: the layout of an image tensor from its declared shape, and files and folders on any
Beam filesystem (local copies, content hashes). No Keras, no TensorFlow.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

FORMATS = ("keras", "h5", "savedmodel", "onnx", "registry")
FILE_SUFFIXES = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".onnx": "onnx"}
SAVED_MODEL_FILE = "saved_model.pb"
_COPY_PREFIX = "segbeam-model-"  # the temp folder of a model copied from another filesystem
DATA_FORMATS = ("auto", "channels_last", "channels_first")
UNDERSTOOD = ("a Keras 3 .keras file, a legacy Keras .h5/.hdf5 model, a TensorFlow SavedModel "
              "folder (it holds saved_model.pb), an .onnx file, or a registry name (see "
              "`segbeam models`)")
# Suffixes of formats users bring that segbeam does not read, with what to do instead.
CONVERT_HINTS = {
    ".pt": "export the PyTorch model with torch.onnx.export and pass the .onnx file",
    ".pth": "export the PyTorch model with torch.onnx.export and pass the .onnx file",
    ".ckpt": "export the model (PyTorch: torch.onnx.export; TensorFlow: model.export) first",
    ".tflite": "pass the SavedModel or .keras model it was converted from",
    ".pb": "pass the SavedModel folder that holds saved_model.pb; frozen TF1 graphs are not "
           "read (convert them to ONNX with tf2onnx)",
}


def _exists(path: str) -> bool:
    if "://" not in path:
        return os.path.exists(path)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def savedmodel_folder(spec: str) -> Optional[str]:
    """The SavedModel folder ``spec`` names (the folder, or its ``saved_model.pb``), else None."""
    if posixpath.basename(spec.rstrip("/")) == SAVED_MODEL_FILE:
        return spec.rstrip("/")[:-len(SAVED_MODEL_FILE)].rstrip("/") or "."
    if "://" not in spec and not os.path.isdir(spec):
        return None
    folder = spec.rstrip("/") or "/"
    return folder if _exists(posixpath.join(folder, SAVED_MODEL_FILE)) else None


def looks_like_path(spec: str) -> bool:
    """True when ``spec`` names a file or folder rather than a registry name."""
    return ("/" in spec or os.sep in spec or "://" in spec or os.path.exists(spec)
            or os.path.splitext(spec)[1].lower() in FILE_SUFFIXES)


def detect_format(spec: str, registry_names: Sequence[str]) -> str:
    """The format of ``spec``; a ValueError names the formats understood when none matches."""
    suffix = os.path.splitext(spec.rstrip("/"))[1].lower()
    if suffix in FILE_SUFFIXES and not spec.endswith("/"):
        return FILE_SUFFIXES[suffix]
    if spec in registry_names:  # before paths: a folder of that name in the cwd is not meant
        return "registry"
    if not looks_like_path(spec):
        raise ValueError(f"unknown model {spec!r}: expected {UNDERSTOOD}; registry names are "
                         f"{', '.join(registry_names)}")
    if savedmodel_folder(spec) is not None:
        return "savedmodel"
    hint = CONVERT_HINTS.get(suffix)
    if hint:
        raise ValueError(f"model {spec!r} is not a format segbeam reads: {hint} (formats read: "
                         f"{UNDERSTOOD})")
    if "://" not in spec and not os.path.exists(spec):
        raise ValueError(f"model {spec!r} does not exist (expected {UNDERSTOOD})")
    raise ValueError(f"model {spec!r} is not a format segbeam reads: expected {UNDERSTOOD}")


def image_layout(shape: Sequence, data_format: str = "auto", what: str = "the model") -> str:
    """``channels_last`` or ``channels_first`` for a declared 4-D image input shape (unknown
    dimensions as None or names), as ``data_format`` says or as the 3 colour channels show."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"--data_format must be one of {', '.join(DATA_FORMATS)}; received "
                         f"{data_format!r}")
    if len(shape) != 4:
        raise ValueError(f"{what} takes input of shape {tuple(shape)}; segbeam feeds batches "
                         f"of RGB images, (N, H, W, 3) or (N, 3, H, W)")
    layout = data_format if data_format != "auto" else _channel_axis(shape, what)
    channels = input_channels(shape, layout)
    if channels not in (1, 3):
        raise ValueError(f"{what} takes {channels}-channel input (shape {tuple(shape)}, "
                         f"{layout}); segbeam feeds RGB images (3 channels), or their "
                         f"luminance to a model of 1: give the model an RGB input")
    return layout


def input_channels(shape: Sequence, layout: str) -> int:
    """The channel count a declared input shape fixes: 1 (a grayscale model, fed the
    luminance of RGB) or another; 3 where the shape leaves it open."""
    channels = shape[3] if layout == "channels_last" else shape[1]
    return channels if isinstance(channels, int) else 3


LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


def luminance(rgb: np.ndarray) -> np.ndarray:
    """The luma of (..., 3) RGB as (..., 1) float32 (Pillow's ``convert("L")`` without its
    rounding): what a one-channel model is fed. A gray image read as RGB (its value in each
    channel) gives its value back, to float32's rounding."""
    return (np.asarray(rgb, np.float32) * np.asarray(LUMA_WEIGHTS, np.float32)).sum(
        -1, keepdims=True)


def _channel_axis(shape: Sequence, what: str) -> str:
    """The layout whose channel axis the declared shape shows: the axis of 3 (RGB); else a
    small count (1, 4: a grayscale or RGBA model) beside an axis left open or larger."""
    for found in (lambda d: d == 3, lambda d: isinstance(d, int) and d <= 4):
        last, first = found(shape[3]), found(shape[1])
        if last and not first:
            return "channels_last"
        if first and not last:
            return "channels_first"
    raise ValueError(f"cannot tell from input shape {tuple(shape)} of {what} whether channels "
                     f"come first or last; pass --data_format channels_last or channels_first")


def fixed_size(shape: Sequence, layout: str) -> Optional[tuple[int, int]]:
    """(height, width) when the declared input shape fixes both, else None."""
    height, width = (shape[1], shape[2]) if layout == "channels_last" else (shape[2], shape[3])
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    return None


def _files_below(folder: str) -> list[tuple[str, str]]:
    """(path relative to ``folder``, full path) of every file below it, sorted."""
    if "://" not in folder:
        found = []
        for root, _, names in os.walk(folder):
            for name in names:
                full = os.path.join(root, name)
                found.append((os.path.relpath(full, folder).replace(os.sep, "/"), full))
        return sorted(found)
    from apache_beam.io.filesystems import FileSystems

    prefix = folder.rstrip("/") + "/"
    metadata = FileSystems.match([prefix + "**"])[0].metadata_list
    return sorted((m.path[len(prefix):], m.path) for m in metadata)


def sha256_of_file(path: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_folder(folder: str) -> str:
    """One hash over every file's relative path and content hash: a SavedModel's identity."""
    digest = hashlib.sha256()
    for relative, full in _files_below(folder):
        digest.update(f"{relative}\0{sha256_of_file(full)}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def fetched(path: str, fetch: Callable[[str], str]) -> Iterator[str]:
    """``fetch(path)``: ``path`` itself where it is local, else a copy in a temp folder of its
    own (``local_file``, ``local_onnx``, ``local_folder``), removed on leaving. Load the model
    inside: once it is in memory nothing reads the copy, and each load would otherwise leave one
    behind (a run opens its model in the launcher and in every worker)."""
    local = fetch(path)
    try:
        yield local
    finally:
        if local != path:
            shutil.rmtree(local if os.path.isdir(local) else os.path.dirname(local),
                          ignore_errors=True)


def local_file(path: str) -> str:
    """A local path for ``path``; a file on another Beam filesystem is copied into a temp
    folder of its own, under its own name (see ``fetched``)."""
    if "://" not in path:
        return path
    target = os.path.join(tempfile.mkdtemp(prefix=_COPY_PREFIX), posixpath.basename(path))
    _copy(path, target)
    return target


def onnx_external_data(path: str) -> list[str]:
    """The files (relative to the model's folder) in which an ONNX model (``path`` local)
    keeps its weights: exporters write large models that way, torch.onnx's default exporter
    always (``model.onnx`` beside ``model.onnx.data``)."""
    try:
        import onnx
    except ImportError as error:
        raise ValueError(f"reading the ONNX model {path} needs the onnx package (pip install "
                         f"'segbeam[onnx]')") from error
    model = onnx.load_model(path, load_external_data=False)
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attribute in node.attribute:
            tensors += ([attribute.t] if attribute.HasField("t") else []) + list(attribute.tensors)
    locations = sorted({entry.value for tensor in tensors
                        if tensor.data_location == onnx.TensorProto.EXTERNAL
                        for entry in tensor.external_data if entry.key == "location"})
    for location in locations:
        if os.path.isabs(location) or ".." in location.replace("\\", "/").split("/"):
            raise ValueError(f"ONNX model {path} keeps weights in {location!r}, outside its "
                             f"folder; segbeam reads external data beside the model only")
    return locations


def local_onnx(path: str) -> str:
    """A local path for an ONNX model, with its external data files beside it (copied from
    another Beam filesystem into one temp folder, as ONNX Runtime expects them)."""
    if "://" not in path:
        return path
    target = os.path.join(tempfile.mkdtemp(prefix=_COPY_PREFIX), posixpath.basename(path))
    _copy(path, target)
    folder = posixpath.dirname(path)
    for location in onnx_external_data(target):
        destination = os.path.join(os.path.dirname(target), *location.split("/"))
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        _copy(posixpath.join(folder, location), destination)
    return target


def _copy(source_path: str, destination: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(source_path, compression_type="uncompressed") as source, \
            open(destination, "wb") as out:
        shutil.copyfileobj(source, out)


def local_folder(folder: str) -> str:
    """A local path for ``folder``; a folder on another Beam filesystem is copied below a temp
    folder, file by file."""
    if "://" not in folder:
        return folder
    target = tempfile.mkdtemp(prefix=_COPY_PREFIX)
    for relative, full in _files_below(folder):
        destination = os.path.join(target, *relative.split("/"))
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        _copy(full, destination)
    return target
