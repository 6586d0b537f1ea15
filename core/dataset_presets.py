"""``--dataset NAME``: the label conventions of common datasets, as one table of data.

Each preset names the classes (their count follows), the ignore index, the label map from the
values its masks store to class ids (``segbeam.labels``), the colours the classes are drawn in
(mask PNGs, report overlays and legends), and the colours of the dataset's colour-coded masks
(``segbeam.mask_colours``). Explicit flags override a preset.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from segbeam.classes import CAMVID_COLOURS, resolve_class_names
from segbeam.classes import PRESETS as CLASS_NAME_PRESETS
from segbeam.labels import IGNORE, parse_label_map
from segbeam.mask_colours import parse_mask_palette


class DatasetPreset(NamedTuple):
    description: str
    class_names: tuple
    ignore_index: Optional[int]
    label_map: Optional[tuple] = None  # (stored value, class id or "ignore") pairs
    colours: Optional[tuple] = None  # RGB per class id; None: PASCAL VOC's colour map
    mask_colours: Optional[tuple] = None  # ((r, g, b), stored value): colour-coded masks
    image_suffix: str = ""  # file-name suffixes beside the stem an image and its mask share
    mask_suffix: str = ""
    # Masks whose suffix ends so already hold class ids (Cityscapes' *_labelTrainIds.png, which
    # cityscapesScripts writes): the label map is not applied to them.
    class_id_suffix: str = ""


# Cityscapes' label ids and the train ids they map to (cityscapesScripts' labels.py): the 19
# evaluated classes; every other id (unlabeled, ego vehicle, ..., parking, rail track, guard
# rail, bridge, tunnel, polegroup, caravan, trailer) is left out as 255.
CITYSCAPES_TRAIN_IDS = ((7, 0), (8, 1), (11, 2), (12, 3), (13, 4), (17, 5), (19, 6), (20, 7),
                        (21, 8), (22, 9), (23, 10), (24, 11), (25, 12), (26, 13), (27, 14),
                        (28, 15), (31, 16), (32, 17), (33, 18))
CITYSCAPES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
              "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
              "bus", "train", "motorcycle", "bicycle")
CITYSCAPES_COLOURS = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
                      (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
                      (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
                      (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
                      (0, 0, 230), (119, 11, 32))

# The colours of Cityscapes' *_color.png, per label id 0..33 (cityscapesScripts' labels.py).
# Ids 0-4 share black, polegroup (18) shares pole's grey and license plate car's blue: a colour
# reads as the first id that has it (0, 17, 26), so the colour masks cannot tell those apart;
# *_labelIds.png can.
CITYSCAPES_ID_COLOURS = (
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0), (81, 0, 81),
    (128, 64, 128), (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70),
    (102, 102, 156), (190, 153, 153), (180, 165, 180), (150, 100, 100), (150, 120, 90),
    (153, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35),
    (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32))


def first_value_per_colour(colours) -> tuple:
    """((r, g, b), value) pairs from colours listed per value; the first value keeps a colour
    that several share."""
    pairs: dict = {}
    for value, colour in enumerate(colours):
        pairs.setdefault(tuple(colour), value)
    return tuple(sorted(pairs.items()))


# CamVid's colour labels: the 11 classes' colours (SegNet's sidewalk colour and CamVid's own
# 0,0,192 both), black for void. CamVid's other 21 original colours are not classes here, so
# they are counted as unexpected; pass --mask_palette to map them.
CAMVID_MASK_COLOURS = tuple(sorted(
    first_value_per_colour(CAMVID_COLOURS) + (((0, 0, 192), 4), ((0, 0, 0), 11))))

# ADE20K SceneParsing's 150 classes; masks store 0 for "other" and 1..150 for the classes.
ADE20K = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag")

# CIHP (Crowd Instance-level Human Parsing): 20 classes, 0 = background, with its colour map.
CIHP = ("background", "hat", "hair", "glove", "sunglasses", "upperclothes", "dress", "coat",
        "socks", "pants", "torso skin", "scarf", "skirt", "face", "left arm", "right arm",
        "left leg", "right leg", "left shoe", "right shoe")
CIHP_COLOURS = ((0, 0, 0), (128, 0, 0), (255, 0, 0), (0, 85, 0), (170, 0, 51), (255, 85, 0),
                (0, 0, 85), (0, 119, 221), (85, 85, 0), (0, 85, 85), (85, 51, 0), (52, 86, 128),
                (0, 128, 0), (0, 0, 255), (51, 170, 221), (0, 255, 255), (85, 255, 170),
                (170, 255, 85), (255, 255, 0), (255, 170, 0))

DATASETS = {
    "camvid": DatasetPreset(
        "CamVid, SegNet's 11 classes; 11 = void (ignored)", tuple(CLASS_NAME_PRESETS["camvid"]),
        11, colours=tuple(CAMVID_COLOURS), mask_colours=CAMVID_MASK_COLOURS),
    "pascal_voc": DatasetPreset(
        "PASCAL VOC 2012: background + 20 classes; 255 = object borders (ignored)",
        tuple(CLASS_NAME_PRESETS["voc"]), 255),
    "cityscapes": DatasetPreset(
        "Cityscapes *_labelIds.png: label ids -> the 19 train ids, every other id ignored",
        CITYSCAPES, 255, CITYSCAPES_TRAIN_IDS + tuple(
            (label, IGNORE) for label in range(34) if label not in dict(CITYSCAPES_TRAIN_IDS)),
        CITYSCAPES_COLOURS, first_value_per_colour(CITYSCAPES_ID_COLOURS),
        "_leftImg8bit", "_gtFine_labelIds", "labelTrainIds"),
    "ade20k": DatasetPreset(
        "ADE20K SceneParsing: 150 classes stored as 1..150 (shifted down by one); 0 = other "
        "(ignored)", ADE20K, 255, ((0, IGNORE),) + tuple((v, v - 1) for v in range(1, 151))),
    "oxford_pets": DatasetPreset(
        "Oxford-IIIT Pets trimaps: 1 pet, 2 background, 3 border -> classes 0..2",
        ("pet", "background", "border"), None, ((1, 0), (2, 1), (3, 2))),
    "cihp": DatasetPreset(
        "CIHP human parsing: 20 classes, 0 = background", CIHP, 255, colours=CIHP_COLOURS,
        mask_colours=first_value_per_colour(CIHP_COLOURS)),
}


def get_dataset(name: str) -> DatasetPreset:
    preset = DATASETS.get(name.strip().lower())
    if preset is None:
        raise ValueError(f"unknown --dataset {name!r}; presets: {', '.join(DATASETS)}")
    return preset


class LabelConvention(NamedTuple):
    """What a run's masks mean, resolved from the flags and the preset."""

    num_classes: Optional[int]
    class_names: Optional[list]
    ignore_index: Optional[int]
    label_map: Optional[tuple]
    palette: Optional[tuple]
    mask_colours: Optional[tuple] = None
    image_suffix: str = ""
    mask_suffix: str = ""


NO_LABEL_MAP = "none"  # --label_map none: masks already hold class ids (a preset's map is off)


def resolve_convention(dataset: Optional[str], num_classes: Optional[int],
                       class_names: Optional[str], ignore_index: Optional[int],
                       label_map: Optional[str], mask_palette: Optional[str] = None,
                       image_suffix: Optional[str] = None, mask_suffix: Optional[str] = None
                       ) -> LabelConvention:
    """Explicit flags first, then the ``--dataset`` preset, then the defaults (ignore index
    255, ``class_i`` names). ``ignore_index`` is None when not given and -1 for none.
    ``class_names`` is None while the class count is unknown."""
    preset = get_dataset(dataset) if dataset else None
    if num_classes is None and preset:
        num_classes = len(preset.class_names)
    if ignore_index is None:
        ignore_index = preset.ignore_index if preset else 255
        if preset and ignore_index is not None and ignore_index < num_classes:
            raise ValueError(
                f"--num_classes {num_classes} makes --dataset {dataset}'s ignore index "
                f"{ignore_index} a class id, so class {ignore_index} would go unscored; pass "
                f"--ignore_index (the value to ignore, or -1 for none)")
    if ignore_index is not None and not -1 <= ignore_index <= 255:
        raise ValueError(f"--ignore_index must be a mask value (0..255) or -1 for none; "
                         f"received {ignore_index}")
    ignore_index = None if ignore_index is None or ignore_index < 0 else ignore_index
    if label_map and label_map.strip().lower() == NO_LABEL_MAP:
        mapping, label_map = None, NO_LABEL_MAP  # the masks hold class ids: no preset's map
    else:
        mapping = parse_label_map(label_map) if label_map else \
            (preset.label_map if preset else None)
    names, palette = None, None
    if num_classes is not None:
        fits = preset is not None and len(preset.class_names) == num_classes
        if class_names is None and fits:
            names = list(preset.class_names)
        else:
            names = resolve_class_names(class_names, num_classes)
        if fits:
            palette = tuple(preset.colours) if preset.colours else None
    colours = parse_mask_palette(mask_palette) if mask_palette else \
        (preset.mask_colours if preset else None)
    if image_suffix is None:
        image_suffix = preset.image_suffix if preset else ""
    if mask_suffix is None:
        mask_suffix = preset.mask_suffix if preset else ""
    if preset and preset.class_id_suffix and label_map is None \
            and mask_suffix.lower().endswith(preset.class_id_suffix.lower()):
        mapping = None  # train-id masks: mapping label ids onto them would scramble classes
    return LabelConvention(num_classes, names, ignore_index, mapping, palette, colours,
                           image_suffix, mask_suffix)
