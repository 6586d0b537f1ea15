"""--dataset presets: each dataset's classes, ignore index, label map and colours, as data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segbeam.dataset_presets import DATASETS, get_dataset, resolve_convention
from segbeam.labels import MaskLabels

# cityscapesScripts' labels.py, written out: (name, id, trainId); 255 = not evaluated.
CITYSCAPES_LABELS = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8),
    ("terrain", 22, 9), ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12),
    ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15), ("caravan", 29, 255),
    ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18)]


def _table(name: str) -> np.ndarray:
    preset = get_dataset(name)
    return MaskLabels(len(preset.class_names), preset.ignore_index,
                      label_map=preset.label_map).lookup_table()


def test_cityscapes_label_ids_map_to_the_official_train_ids():
    table = _table("cityscapes")
    for name, label_id, train_id in CITYSCAPES_LABELS:
        assert table[label_id] == train_id, name
    evaluated = sorted((t, n) for n, _, t in CITYSCAPES_LABELS if t != 255)
    assert list(get_dataset("cityscapes").class_names) == [n for _, n in evaluated]
    labels = MaskLabels(19, 255, label_map=get_dataset("cityscapes").label_map)
    _, unexpected, values = labels.prepare(np.array([[7, 26, 40]], np.uint8))
    assert (unexpected, values) == (1, (40,))  # not a Cityscapes label id


def test_ade20k_shifts_its_150_classes_down_and_ignores_other():
    preset = get_dataset("ade20k")
    assert len(preset.class_names) == len(set(preset.class_names)) == 150
    table = _table("ade20k")
    assert table[0] == 255 and table[1] == 0 and table[150] == 149
    assert (table[1:151] == np.arange(150)).all()


def test_the_other_presets():
    camvid, voc = get_dataset("camvid"), get_dataset("pascal_voc")
    assert (len(camvid.class_names), camvid.ignore_index) == (11, 11)
    assert (len(voc.class_names), voc.ignore_index) == (21, 255)
    assert list(_table("oxford_pets")[1:4]) == [0, 1, 2]
    cihp = get_dataset("cihp")
    assert len(cihp.class_names) == len(cihp.colours) == 20 and cihp.colours[2] == (255, 0, 0)
    for name, preset in DATASETS.items():
        assert len(set(preset.class_names)) == len(preset.class_names), name
        assert not any("," in n for n in preset.class_names), name  # names join with commas
        assert preset.colours is None or len(preset.colours) == len(preset.class_names), name
    with pytest.raises(ValueError, match="unknown --dataset 'coco'; presets: camvid"):
        get_dataset("coco")


def test_explicit_flags_override_a_preset():
    pets = resolve_convention("oxford_pets", None, None, None, None)
    assert pets.num_classes == 3 and pets.class_names == ["pet", "background", "border"]
    assert pets.ignore_index is None and pets.label_map == ((1, 0), (2, 1), (3, 2))
    own = resolve_convention("oxford_pets", 2, "animal,rest", 255, "1:0,2:1,3:ignore")
    assert own.class_names == ["animal", "rest"] and own.ignore_index == 255
    assert own.label_map == ((1, 0), (2, 1), (3, "ignore"))
    camvid = resolve_convention("camvid", None, None, None, None)
    assert camvid.palette[0] == (128, 128, 128) and camvid.ignore_index == 11
    assert resolve_convention("camvid", 12, None, 11, None).palette is None
    assert resolve_convention(None, 4, None, None, None).ignore_index == 255


def test_a_class_count_that_makes_the_presets_ignore_index_a_class_needs_ignore_index():
    # camvid ignores 11; with 12 classes, 11 is a class id that the preset would leave unscored
    with pytest.raises(ValueError, match="--num_classes 12 makes --dataset camvid's ignore "
                       "index 11 a class id.*pass --ignore_index"):
        resolve_convention("camvid", 12, None, None, None)
    assert resolve_convention("camvid", 12, None, -1, None).ignore_index is None
    assert resolve_convention("camvid", 10, None, None, None).ignore_index == 11
    assert resolve_convention("cityscapes", 20, None, None, None).ignore_index == 255


def test_a_run_with_a_preset_uses_its_classes_and_colours(tmp_path):
    from segbeam.pipeline.report import write_report
    from segbeam.pipeline.run import run

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"f{index}.png")
        Image.fromarray(rng.integers(0, 12, (64, 64), dtype=np.uint8)).save(
            tmp_path / "masks" / f"f{index}.png")
    outcome = run(["--input", f"{tmp_path}/images/*.png", "--masks", str(tmp_path / "masks"),
                   "--model", "tiny_fcn", "--dataset", "camvid", "--input_size", "64",
                   "--crf_iterations", "1", "--output", str(tmp_path / "out")])
    summary = outcome.summary
    assert summary["num_classes"] == 11 and summary["class_names"][3] == "road"
    assert summary["ignore_index"] == 11 and summary["labels"]["unexpected_pixels"] == 0
    assert summary["palette"][3] == [128, 64, 128]
    mask = Image.open(tmp_path / "out" / "masks" / "f0.png")
    assert mask.getpalette()[3 * 3:3 * 4] == [128, 64, 128]  # road, in CamVid's colour
    report, folder = write_report(str(tmp_path / "out"))
    assert report["palette"][3] == [128, 64, 128]
    assert "background:rgb(128, 64, 128)" in open(f"{folder}/report.html").read()  # road
    assert json.load(open(tmp_path / "out" / "manifest.json"))["settings"]["palette"]


def test_train_takes_a_preset():
    from segbeam.pipeline.train import config_from

    config = config_from(["--images", "i", "--masks", "m", "--model", "tiny_fcn",
                          "--dataset", "oxford_pets", "--input_size", "64", "--output", "o"])
    assert (config.num_classes, config.ignore_index) == (3, None)
    assert config.label_map == ((1, 0), (2, 1), (3, 2))
    plain = config_from(["--images", "i", "--masks", "m", "--model", "tiny_fcn",
                         "--num_classes", "3", "--input_size", "64", "--output", "o"])
    assert (plain.ignore_index, plain.label_map) == (None, None)
    ids = config_from(["--images", "i", "--masks", "m", "--model", "tiny_fcn", "--dataset",
                       "ade20k", "--label_map", "none", "--input_size", "64", "--output", "o"])
    assert (ids.num_classes, ids.ignore_index, ids.label_map) == (150, 255, None)


def test_cityscapes_file_names_pair_with_the_preset(tmp_path):
    """x_leftImg8bit.png takes x_gtFine_labelIds.png, not the *_color.png or *_instanceIds.png
    beside it (before, stem pairing matched nothing and every image ran without a mask)."""
    import numpy as np
    from PIL import Image

    from segbeam.dataset import Naming, find_pairs
    from segbeam.pipeline.run import run

    rng = np.random.default_rng(0)
    images, masks = tmp_path / "leftImg8bit" / "val", tmp_path / "gtFine" / "val"
    for city, frame in (("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")):
        (images / city).mkdir(parents=True)
        (masks / city).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)).save(
            images / city / f"{frame}_leftImg8bit.png")
        label_ids = np.array([7, 8, 26, 0] * 128, np.uint8).reshape(16, 32)
        Image.fromarray(label_ids).save(masks / city / f"{frame}_gtFine_labelIds.png")
        Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(
            masks / city / f"{frame}_gtFine_color.png")
        Image.fromarray(label_ids).save(masks / city / f"{frame}_gtFine_instanceIds.png")
    naming = Naming("_leftImg8bit", "_gtFine_labelIds")
    refs, dead, unclaimed = find_pairs(f"{images}/*/*_leftImg8bit.png", str(masks),
                                       naming=naming)
    assert [(r.key, r.mask_source.rsplit("/", 1)[-1]) for r in refs] == [
        ("aachen/aachen_000000_000019_leftImg8bit", "aachen_000000_000019_gtFine_labelIds.png"),
        ("bochum/bochum_000000_000313_leftImg8bit", "bochum_000000_000313_gtFine_labelIds.png")]
    assert dead == [] and unclaimed == []
    outcome = run(["--input", f"{images}/*/*_leftImg8bit.png", "--masks", str(masks),
                   "--dataset", "cityscapes", "--model", "tiny_fcn", "--input_size", "16x32",
                   "--no-crf", "--quiet", "--output", str(tmp_path / "out")])
    counts, labels = outcome.summary["counts"], outcome.summary["labels"]
    assert counts["images_with_mask"] == 2 and counts["masks_without_image"] == 0
    assert labels["unexpected_pixels"] == 0
    # road, sidewalk and car scored; label id 0 (unlabeled) ignored: 3/4 of the pixels
    assert outcome.summary["evaluation"]["raw"]["labelled_pixels"] == 2 * 16 * 32 * 3 // 4


def test_cityscapes_train_id_masks_are_not_mapped_again():
    """cityscapesScripts' *_labelTrainIds.png already hold train ids: read through the label-id
    map, road (0) became unlabeled and traffic sign (7) became road; only 255 showed, as an
    unexpected value."""
    def labels(suffix, label_map=None):
        convention = resolve_convention("cityscapes", None, None, None, label_map,
                                        mask_suffix=suffix)
        return MaskLabels(19, 255, label_map=convention.label_map)

    train_ids = np.array([[0, 7, 18, 255]], dtype=np.uint8)
    mask, count, _ = labels("_gtFine_labelTrainIds").prepare(train_ids)
    assert mask.tolist() == [[0, 7, 18, 255]] and count == 0
    assert labels("_gtFine_labelIds").prepare(np.array([[7, 26]], np.uint8))[0].tolist() == \
        [[0, 13]]
    assert labels("_gtFine_labelTrainIds", "7:0").label_map == ((7, 0),)  # explicit wins


def test_masks_that_hold_class_ids_take_label_map_none(tmp_path):
    """ADE20K masks reduced to 0..149 (255 = other), or a run's own masks, read through
    --dataset ade20k's map were shifted down again (wall ignored, every class one off); only the
    255 pixels showed, warned about as 'neither a class nor the ignore index (255)'. The warning
    now names the label map and the way out, --label_map none, which reads them as class ids."""
    from segbeam.labels import label_warnings
    from segbeam.pipeline.run import run

    from tests.conftest import write_random_pairs

    reduced = np.zeros((16, 16), np.uint8)
    reduced[:4], reduced[4:8], reduced[8:12] = 255, 1, 149
    write_random_pairs(tmp_path, [reduced, reduced])
    argv = ["--input", f"{tmp_path}/images/*.png", "--masks", str(tmp_path / "masks"),
            "--dataset", "ade20k", "--model", "tiny_fcn", "--input_size", "16", "--no-crf",
            "--quiet"]
    shifted = run(argv + ["--output", str(tmp_path / "a")])
    assert shifted.summary["labels"]["unexpected_values"] == [255]
    [warning] = label_warnings(shifted.summary, shifted.settings.label_map)
    assert "that the label map (--label_map or --dataset) does not name" in warning
    assert "pass --label_map none" in warning and "neither a class" not in warning
    as_ids = run(argv + ["--label_map", "none", "--output", str(tmp_path / "b")])
    assert as_ids.settings.label_map is None
    labels = as_ids.summary["labels"]
    assert (labels["unexpected_pixels"], labels["ignored_pixels"]) == (0, 2 * 64)
    assert as_ids.summary["evaluation"]["raw"]["labelled_pixels"] == 2 * 192
    assert label_warnings(as_ids.summary, as_ids.settings.label_map) == []
    assert resolve_convention("ade20k", None, None, None, "NONE").label_map is None
