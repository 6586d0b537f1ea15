"""What ``segbeam train`` recorded beside a model it saved (``training.json``), read back when a
run serves that model. A run that scores masks under another label convention than the one
the model learned (another ignore index, label map or mask colours) gives figures of other
classes, and one that feeds images at another scale than training did (no ``--input_size``)
gives a model's worst figures; neither raises an error anywhere. The launcher warns instead
of staying silent."""

from __future__ import annotations

import json
import posixpath
from typing import Optional

TRAINING_JSON = "training.json"

# (TrainingConfig field, the flag that sets it in both commands)
_CONVENTION = (("ignore_index", "--ignore_index"), ("label_map", "--label_map"),
               ("mask_colours", "--mask_palette"))
_SHOWN = 4  # entries of a map named in a message


def training_record_path(model_path: str) -> str:
    """Where ``segbeam train`` wrote ``training.json`` for a model it saved: beside
    ``model.keras`` and ``best.keras``, one level up from ``checkpoints/last.keras``."""
    folder = posixpath.dirname(model_path.rstrip("/"))
    if posixpath.basename(folder) == "checkpoints":
        folder = posixpath.dirname(folder)
    return posixpath.join(folder, TRAINING_JSON)


def read_training_config(model_path: str) -> Optional[dict]:
    """The training configuration recorded for ``model_path`` (local or a Beam filesystem
    path), or None where there is none or it cannot be read as one."""
    from segbeam.layout import exists, read_bytes

    path = training_record_path(model_path)
    try:
        if not exists(path):
            return None
        config = json.loads(read_bytes(path)).get("config")
    except (OSError, ValueError, AttributeError):
        return None
    return config if isinstance(config, dict) else None


_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that transpose or turn by 90 degrees


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file as the pipeline decodes it, from its header: sides
    swapped where its EXIF orientation turns it a quarter (as decoding does); (0, 0) where it
    cannot be read (the pipeline then says why, as a dead letter)."""
    from PIL import Image

    from segbeam.layout import open_file

    try:
        with open_file(path) as handle, Image.open(handle) as image:
            height, width = image.height, image.width
            orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - any unreadable file: no size, no warning
        return 0, 0
    return (width, height) if orientation in _QUARTER_TURNS else (height, width)


def _canonical(value):
    return json.loads(json.dumps(value))  # tuples and lists alike, as training.json holds them


def convention_mismatches(trained: dict, ignore_index: Optional[int],
                          label_map: Optional[tuple], mask_colours: Optional[tuple]) -> list[str]:
    """A sentence for each label setting that differs between the training configuration
    ``trained`` and the run's, where the difference changes which pixels count as which
    class. An ignore index outside the classes, or none, leaves every class scored either
    way (a value beyond the classes counts as unexpected, and is not scored, without one).
    Mask colours count only where both give some: colours decide nothing for class-id
    masks."""
    run = {"ignore_index": ignore_index, "label_map": label_map, "mask_colours": mask_colours}
    classes = trained.get("num_classes") or 0
    differences = []
    for field, flag in _CONVENTION:
        if field not in trained:
            continue
        then, now = _canonical(trained[field]), _canonical(run[field])
        if field == "mask_colours" and (then is None or now is None):
            continue
        if field == "ignore_index" and not any(v is not None and v < classes
                                               for v in (then, now)):
            continue
        if then != now:
            differences.append(f"{flag}: {_describe(field, then)} in training, "
                               f"{_describe(field, now)} in this run")
    return differences


def scale_mismatch(trained: dict, image_size: tuple[int, int]) -> Optional[str]:
    """Where a run feeds an image of ``image_size`` at its own size: how far that lies from
    the scale training showed the model (each image scaled to cover ``input_size``, times a
    factor in its --scale_min..--scale_max with augmentation), in a phrase; None within it."""
    size = trained.get("input_size")
    if not size or not all(image_size):
        return None
    cover = max(size[0] / image_size[0], size[1] / image_size[1])  # training's factor
    low, high = (trained.get("scale_min", 0.75), trained.get("scale_max", 1.25)) \
        if trained.get("augment", True) else (0.8, 1.25)
    if cover * low <= 1 <= cover * high:  # its own size is a scale training showed it
        return None
    return (f"trained on images scaled to cover {size[0]}x{size[1]}; this run feeds each image "
            f"at its own size (the first: {image_size[0]}x{image_size[1]}), {1 / cover:.2g}x "
            f"the scale it learned; pass --input_size {size[0]}x{size[1]} unless that is meant")


def training_warnings(spec: str, trained: dict, scores_masks: bool,
                      ignore_index: Optional[int], label_map: Optional[tuple],
                      mask_colours: Optional[tuple],
                      fed_size: Optional[tuple[int, int]]) -> list[str]:
    """A run's warnings from the training record of its model ``spec``: masks scored (where
    ``scores_masks``) under another label convention, and images fed at their own size
    (``fed_size``, the first's; None where the run sets the size) at another scale."""
    warnings = []
    differences = convention_mismatches(trained, ignore_index, label_map, mask_colours)
    if differences and scores_masks:
        warnings.append(f"{spec} was trained under another label convention ({TRAINING_JSON} "
                        f"beside it; {'; '.join(differences)}): its figures here score mask "
                        f"values as other classes than it learned; pass the flags it was "
                        f"trained with (or its --dataset) unless this is meant")
    scale = scale_mismatch(trained, fed_size) if fed_size else None
    if scale:
        warnings.append(f"{spec} was {scale}")
    return warnings


def training_summary(trained: dict) -> str:
    """The settings a run should share with the training, in a phrase (``segbeam models
    --inspect``)."""
    size = trained.get("input_size")
    parts = [f"--input_size {size[0]}x{size[1]}"] if size else []
    for field, flag in _CONVENTION:
        if field in trained and (trained[field] is not None or field == "ignore_index"):
            value = _canonical(trained[field])
            parts.append(f"{flag} {_describe(field, value) if value is not None else -1}")
    return ", ".join(parts)


def _describe(field: str, value) -> str:
    if value is None:
        return "none"
    if field == "ignore_index":
        return str(value)
    shown = [f"{tuple(source) if isinstance(source, list) else source}:{target}"
             for source, target in value[:_SHOWN]]
    entries = f"{len(value)} {'entry' if len(value) == 1 else 'entries'}"
    return f"{entries} ({', '.join(shown)}{', ...' if len(value) > _SHOWN else ''})"
