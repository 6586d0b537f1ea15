"""Class-name presets for ``--class_names``."""

from __future__ import annotations

from typing import Optional

PRESETS = {
    # SegNet's CamVid split; id 11 ("void") is the ignore index.
    "camvid": ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence",
               "car", "pedestrian", "bicyclist"],
    "voc": ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
            "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
            "sheep", "sofa", "train", "tvmonitor"],
}


def resolve_class_names(spec: Optional[str], num_classes: int) -> list[str]:
    """``spec`` is a preset name, a comma-separated list, a file of names (``.txt``: one per
    line; ``.json``: a list), or None (``class_0`` ...)."""
    if not spec:
        return [f"class_{i}" for i in range(num_classes)]
    names = PRESETS.get(spec.strip().lower()) or _names_in_file(spec) or \
        [n.strip() for n in spec.split(",")]
    if len(names) != num_classes:
        raise ValueError(f"--class_names gives {len(names)} names but --num_classes is "
                         f"{num_classes}; give one name per class (or a preset: "
                         f"{', '.join(PRESETS)})")
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"--class_names must be distinct and non-empty; received {names}")
    return names


def _names_in_file(spec: str) -> Optional[list[str]]:
    """The class names a ``.txt`` (one per line, blank lines skipped) or ``.json`` (a list)
    file holds; None for a spec that names no such file."""
    suffix = spec.lower().rsplit(".", 1)[-1]
    if suffix not in ("txt", "json"):
        return None
    import json

    from segbeam.layout import read_bytes

    try:
        text = read_bytes(spec).decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read --class_names file {spec}: {error}") from None
    if suffix == "txt":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        names = json.loads(text)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"--class_names file {spec} is not a JSON list of names")
    return [n.strip() for n in names]


# The SegNet tutorial's CamVid colours, ids 0..10; void (11) is black.
CAMVID_COLOURS = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                  (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
                  (0, 128, 192)]


def class_colours(class_names: list[str], palette: Optional[list] = None
                  ) -> list[tuple[int, int, int]]:
    """Display colours per class id: ``palette`` where the run had one (``--dataset``);
    CamVid's own for the CamVid classes; otherwise PASCAL VOC's bit-interleaved colour map
    (VOC's own for its 21 classes; deterministic for any other list)."""
    if palette and len(palette) == len(class_names):
        return [tuple(int(v) for v in colour) for colour in palette]
    if class_names == PRESETS["camvid"]:
        return list(CAMVID_COLOURS)
    from segbeam.masks_png import voc_palette

    return [tuple(int(v) for v in colour) for colour in voc_palette(max(len(class_names),
                                                                          1))]
