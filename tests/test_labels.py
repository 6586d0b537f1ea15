"""Mask values the run has no class for: counted per image, summed, warned about, refused
with --strict_labels; never dropped from the figures without a word."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segbeam.decode import InvalidInputError
from segbeam.labels import MaskLabels, format_values, label_warnings, unexpected_labels
from tests.conftest import write_random_pairs


def test_unexpected_labels_are_neither_classes_nor_the_ignore_index():
    mask = np.array([[0, 1, 2, 3], [3, 255, 7, 0]], np.uint8)
    assert unexpected_labels(mask, 3, 255) == (3, (3, 7))
    assert unexpected_labels(mask, 3, None) == (4, (3, 7, 255))
    assert unexpected_labels(mask, 4, 7) == (1, (255,))
    assert unexpected_labels(mask, 256, None) == (0, ())
    prepared, *unexpected = MaskLabels(3, 255).prepare(mask)
    assert prepared is mask and unexpected == [3, (3, 7)]
    with pytest.raises(InvalidInputError, match=r"3 pixels of values \[3, 7\] .*class 0..2 or "
                                                r"the ignore index 255 \(--strict_labels\)"):
        MaskLabels(3, 255, strict=True).prepare(mask)
    assert format_values(range(12)) == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]"


def _pets_like(folder, rng, count=3):
    """Images with Oxford-IIIT-Pets-style trimaps: values 1 (pet), 2 (background), 3 (border)."""
    os.makedirs(f"{folder}/images"), os.makedirs(f"{folder}/masks")
    borders = 0
    for index in range(count):
        mask = rng.integers(1, 4, (64, 64), dtype=np.uint8)
        borders += int((mask == 3).sum())
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            f"{folder}/images/pet{index}.png")
        Image.fromarray(mask).save(f"{folder}/masks/pet{index}.png")
    return borders


def test_a_pets_trimap_scored_with_three_classes_says_what_it_could_not_score(
        tmp_path, demo_model_path):
    borders = _pets_like(str(tmp_path / "pets"), np.random.default_rng(0))
    command = [sys.executable, "-m", "segbeam.pipeline.cli", "run",
               "--input", f"{tmp_path}/pets/images/*.png", "--masks", f"{tmp_path}/pets/masks",
               "--model", demo_model_path, "--num_classes", "3", "--input_size", "64",
               "--ignore_index", "-1", "--no-crf", "--output", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = (f"{borders:,} mask pixels in 3 images hold values [3] that are neither a class "
                f"(0..2) nor the ignore index (None)")
    assert f"WARNING: {expected}" in result.stdout
    assert f"segbeam run: warning: {expected}" in result.stderr

    import json

    import pyarrow.parquet as pq

    summary = json.load(open(tmp_path / "out" / "summary.json"))
    assert summary["labels"] == {"ignore_index": None, "unexpected_pixels": borders,
                                 "images_with_unexpected": 3, "unexpected_values": [3],
                                 "images_not_checked": 0, "mask_pixels": 3 * 64 * 64,
                                 "ignored_pixels": 0}
    rows = pq.read_table(str(tmp_path / "out" / "metrics")).to_pylist()
    assert sum(r["unexpected_pixels"] for r in rows) == borders
    assert all(r["unexpected_values"] == [3] for r in rows)
    # The figures count exactly the pixels that were scored.
    assert summary["evaluation"]["raw"]["labelled_pixels"] == 3 * 64 * 64 - borders

    report = subprocess.run([sys.executable, "-m", "segbeam.pipeline.cli", "report",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert expected in open(tmp_path / "out" / "report" / "report.md").read()
    assert "warning: " + expected.split(" hold")[0] in open(
        tmp_path / "out" / "report" / "report.html").read()


def test_binary_masks_of_0_and_255_say_that_most_pixels_went_unscored(tmp_path):
    """255 is the default ignore index, so the foreground of a 0/255 binary mask is ignored on
    purpose as far as the run can tell; the run says how much went unscored, and how to map
    it, instead of reporting figures of the background alone."""
    from segbeam.pipeline.run import run

    masks = [np.full((16, 16), 255, np.uint8) for _ in range(3)]
    for mask in masks:
        mask[:4] = 0
    write_random_pairs(tmp_path, masks)
    argv = ["--input", f"{tmp_path}/images/*.png", "--masks", str(tmp_path / "masks"),
            "--model", "tiny_fcn", "--num_classes", "2", "--input_size", "16", "--no-crf",
            "--quiet"]
    summary = run(argv + ["--output", str(tmp_path / "out")]).summary
    assert summary["labels"]["mask_pixels"] == 3 * 256
    assert summary["labels"]["ignored_pixels"] == 3 * 192
    assert summary["evaluation"]["raw"]["labelled_pixels"] == 3 * 64
    assert label_warnings(summary) == [
        "75% of the mask pixels (576) are ignored (the ignore index 255, or a value "
        "--label_map ignores) and were not scored; if a class is stored as that value (binary "
        "masks of 0 and 255), map it: --label_map 0:0,255:1"]
    mapped = run(argv + ["--label_map", "0:0,255:1", "--output", str(tmp_path / "mapped")])
    assert mapped.summary["labels"]["ignored_pixels"] == 0
    assert label_warnings(mapped.summary) == []
    assert mapped.summary["evaluation"]["raw"]["labelled_pixels"] == 3 * 256


def test_training_on_binary_masks_of_0_and_255_says_that_most_pixels_carry_no_weight(
        tmp_path, caplog):
    from segbeam.models.training import _usable
    from segbeam.training_items import find_training_pairs

    masks = [np.full((16, 16), 255, np.uint8) for _ in range(2)]
    masks[0][:4] = 0
    write_random_pairs(tmp_path, masks)
    pairs = find_training_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    with caplog.at_level(logging.WARNING):
        _usable(pairs, MaskLabels(2, 255))
    assert "88% of the mask pixels (448) are ignored (the ignore index 255" in caplog.text
    assert "carry no weight" in caplog.text and "--label_map 0:0,255:1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _usable(pairs, MaskLabels(2, 255, label_map=((0, 0), (255, 1))))
    assert "ignored" not in caplog.text


def test_strict_labels_turns_such_masks_into_dead_letters(tmp_path, demo_model_path):
    from segbeam.pipeline.run import run

    _pets_like(str(tmp_path / "pets"), np.random.default_rng(1), count=2)
    Image.fromarray(np.ones((64, 64), np.uint8)).save(tmp_path / "pets" / "masks" / "pet1.png")
    outcome = run(["--input", f"{tmp_path}/pets/images/*.png", "--masks",
                   f"{tmp_path}/pets/masks", "--model", demo_model_path, "--num_classes", "3",
                   "--input_size", "64", "--ignore_index", "-1", "--no-crf", "--strict_labels",
                   "--output", str(tmp_path / "out")])
    counts = outcome.summary["counts"]
    assert (counts["inputs"], counts["segmented"], counts["dead_letters"]) == (2, 1, 1)
    assert counts["dead_letters_by_stage"] == {"decode": 1} and counts["accounted_for"]
    dead = open(next((tmp_path / "out" / "dead_letters").iterdir())).read()
    assert "pet0" in dead and "values [3]" in dead and "--strict_labels" in dead
    assert outcome.summary["labels"]["unexpected_pixels"] == 0


def test_rows_from_runs_that_did_not_count_are_reported_as_not_checked():
    from segbeam.transforms.aggregate import ConfusionSum, build_summary
    from segbeam.transforms.scoring import complete_row

    old = {"confusion_raw": [{"truth": 0, "predicted": 0, "pixels": 5}], "confusion_crf": None}
    new = {**old, "unexpected_pixels": 4, "unexpected_values": [9], "height": 3, "width": 3,
           "labelled_pixels": 5}
    combine = ConfusionSum(2)
    totals = combine.merge_accumulators([
        combine.add_input(combine.create_accumulator(), complete_row(old)),
        combine.add_input(combine.create_accumulator(), new)])
    summary = build_summary(None, totals, 2, 2, [], ["a", "b"], None)
    assert summary["labels"]["images_not_checked"] == 1
    assert summary["labels"]["unexpected_values"] == [9]
    assert (summary["labels"]["mask_pixels"], summary["labels"]["ignored_pixels"]) == (9, 0)
    assert [w.split(" ")[0] for w in label_warnings(summary)] == ["4", "1"]


def test_training_counts_unexpected_values_and_skips_them_when_strict(tmp_path, caplog):
    from segbeam.training_items import find_training_pairs
    from segbeam.models.training import _usable

    _pets_like(str(tmp_path / "pets"), np.random.default_rng(2), count=2)
    Image.fromarray(np.ones((64, 64), np.uint8)).save(tmp_path / "pets" / "masks" / "pet1.png")
    pairs = find_training_pairs(f"{tmp_path}/pets/images", f"{tmp_path}/pets/masks")
    with caplog.at_level(logging.WARNING):
        kept, _, dropped, _ = _usable(pairs, MaskLabels(3, None))
    assert (len(kept), dropped) == (2, 0)
    assert "in 1 training pairs hold values [3]" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        kept, _, dropped, _ = _usable(pairs, MaskLabels(3, None, strict=True))
    assert (len(kept), dropped) == (1, 1)
    assert "pet0.png" in caplog.text and "--strict_labels" in caplog.text


def test_rows_written_before_the_count_existed_are_reused_and_marked(tmp_path, demo_model_path):
    """Outputs of an earlier version (metrics without the two columns) stay usable under
    --skip_existing: their rows are kept, and the summary says they were not checked."""
    import glob

    import pyarrow.parquet as pq

    from segbeam.pipeline.run import run

    _pets_like(str(tmp_path / "pets"), np.random.default_rng(3), count=2)
    argv = ["--input", f"{tmp_path}/pets/images/*.png", "--masks", f"{tmp_path}/pets/masks",
            "--model", demo_model_path, "--num_classes", "3", "--input_size", "64",
            "--ignore_index", "-1", "--no-crf", "--output", str(tmp_path / "out")]
    first = run(argv)
    for path in glob.glob(f"{tmp_path}/out/metrics/*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop(["unexpected_pixels", "unexpected_values"]), path)
    second = run([*argv, "--skip_existing"])
    assert second.summary["counts"]["reused"] == 2
    assert second.summary["labels"]["images_not_checked"] == 2
    assert second.summary["evaluation"]["raw"] == first.summary["evaluation"]["raw"]
    rows = pq.read_table(str(tmp_path / "out" / "metrics")).to_pylist()
    assert [r["unexpected_pixels"] for r in rows] == [None, None]


def test_label_maps_inline_json_and_csv(tmp_path):
    from segbeam.labels import parse_label_map

    expected = ((0, "ignore"), (1, 0), (2, 1), (3, 2))
    assert parse_label_map("1:0, 2:1,3:2,0:ignore") == expected
    (tmp_path / "map.json").write_text('{"1": 0, "2": 1, "3": 2, "0": "ignore"}')
    assert parse_label_map(str(tmp_path / "map.json")) == expected
    (tmp_path / "map.csv").write_text("value,class\n1,0\n2,1\n3,2\n0,ignore\n")
    assert parse_label_map(str(tmp_path / "map.csv")) == expected
    assert parse_label_map(None) is None
    with pytest.raises(ValueError, match="'1-0' is not VALUE:CLASS"):
        parse_label_map("1-0")
    with pytest.raises(ValueError, match="cannot read --label_map file"):
        parse_label_map(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="maps 3 to 3, which is not a class"):
        MaskLabels(3, 255, label_map=((3, 3),))
    with pytest.raises(ValueError, match="maps 0 to ignore, but there is no ignore index"):
        MaskLabels(3, None, label_map=((0, "ignore"),))
    # a value given twice kept its last class without a word (a JSON object's too)
    assert parse_label_map("1:0,2:1,1:0") == ((1, 0), (2, 1))
    (tmp_path / "twice.json").write_text('{"1": 0, "2": 1, "1": "ignore"}')
    for spec in ("1:0,2:1,1:2", str(tmp_path / "twice.json")):
        with pytest.raises(ValueError, match="--label_map maps 1 twice, to 0 and to "
                                             "(2|ignore); name each value once"):
            parse_label_map(spec)
    (tmp_path / "list.json").write_text("[[1, 0]]")
    with pytest.raises(ValueError, match="is not a JSON object of VALUE: CLASS pairs"):
        parse_label_map(str(tmp_path / "list.json"))


def test_a_label_map_is_applied_and_what_it_leaves_out_is_unexpected():
    labels = MaskLabels(3, 255, label_map=((1, 0), (2, 1), (3, 2)))
    mask = np.array([[1, 2, 3], [3, 0, 9]], np.uint8)
    mapped, count, values = labels.prepare(mask)
    np.testing.assert_array_equal(mapped, [[0, 1, 2], [2, 255, 255]])
    assert (count, values) == (2, (0, 9))
    with pytest.raises(InvalidInputError, match=r"values \[0, 9\] that are not a value "
                                                r"--label_map maps \(\[1, 2, 3\]\)"):
        MaskLabels(3, 255, strict=True, label_map=labels.label_map).prepare(mask)
    # Without an ignore index, what the map leaves out lands outside the classes.
    mapped, _, _ = MaskLabels(3, None, label_map=labels.label_map).prepare(mask)
    assert mapped[1, 1] == 255


def test_pets_with_a_label_map_scores_every_pixel(tmp_path, demo_model_path):
    from segbeam.pipeline.run import run

    borders = _pets_like(str(tmp_path / "pets"), np.random.default_rng(4), count=2)
    common = ["--input", f"{tmp_path}/pets/images/*.png", "--masks", f"{tmp_path}/pets/masks",
              "--model", demo_model_path, "--num_classes", "3", "--input_size", "64",
              "--no-crf"]
    every = run([*common, "--label_map", "1:0,2:1,3:2", "--output", str(tmp_path / "a")])
    assert every.summary["labels"]["unexpected_pixels"] == 0
    assert every.summary["evaluation"]["raw"]["labelled_pixels"] == 2 * 64 * 64
    border_ignored = run([*common, "--label_map", "1:0,2:1,3:ignore", "--ignore_index", "255",
                          "--output", str(tmp_path / "b")])
    assert border_ignored.summary["labels"]["unexpected_pixels"] == 0
    assert border_ignored.summary["evaluation"]["raw"]["labelled_pixels"] == \
        2 * 64 * 64 - borders
    assert every.settings.config_fingerprint() != border_ignored.settings.config_fingerprint()


def test_training_data_goes_through_the_label_map(tmp_path):
    from segbeam.training_items import find_training_pairs
    from segbeam.models.data import SegmentationDataset

    _pets_like(str(tmp_path / "pets"), np.random.default_rng(5), count=2)
    pairs = find_training_pairs(f"{tmp_path}/pets/images", f"{tmp_path}/pets/masks")
    labels = MaskLabels(3, 255, label_map=((1, 0), (2, 1), (3, 2)))
    _, targets, weights = SegmentationDataset(pairs, 2, (64, 64), 3, 255, labels=labels)[0]
    assert set(np.unique(targets)) == {0, 1, 2} and weights.min() > 0


def test_class_names_come_from_a_list_a_preset_or_a_file(tmp_path):
    """A file of names (a toolkit's class list) was taken for one name, 'classes.txt'."""
    from segbeam.classes import resolve_class_names

    (tmp_path / "classes.txt").write_text("sky\n\nroad \ncar\n")
    (tmp_path / "classes.json").write_text('["sky", "road", "car"]')
    (tmp_path / "bad.json").write_text('{"sky": 0}')
    for spec in ("sky,road,car", str(tmp_path / "classes.txt"), str(tmp_path / "classes.json")):
        assert resolve_class_names(spec, 3) == ["sky", "road", "car"]
    assert resolve_class_names("camvid", 11)[:2] == ["sky", "building"]
    with pytest.raises(ValueError, match="gives 3 names but --num_classes is 4"):
        resolve_class_names(str(tmp_path / "classes.txt"), 4)
    with pytest.raises(ValueError, match="is not a JSON list of names"):
        resolve_class_names(str(tmp_path / "bad.json"), 1)
    with pytest.raises(ValueError, match="cannot read --class_names file .*missing.txt"):
        resolve_class_names(str(tmp_path / "missing.txt"), 3)
