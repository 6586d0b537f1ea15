"""A run that scores masks under another label convention than the one its model was trained
under (recorded by ``segbeam train`` in ``training.json``) warns: otherwise trimaps stored as
1..3 and scored as class ids 1..3 against a model that learned 0..2 give figures of shifted
classes, with no error anywhere."""

import json

import numpy as np
import pytest

from segbeam.models.training_record import convention_mismatches, scale_mismatch, \
    training_record_path
from tests.conftest import write_random_pairs


def test_the_record_sits_beside_the_models_train_saves():
    assert training_record_path("gs://b/runs/pets/best.keras") == "gs://b/runs/pets/training.json"
    assert training_record_path("/r/pets/checkpoints/last.keras") == "/r/pets/training.json"


def test_each_label_setting_that_differs_is_named():
    trained = json.loads(json.dumps({"num_classes": 12, "ignore_index": 11,
                                     "label_map": [[1, 0], [2, 1]],
                                     "mask_colours": [[[0, 0, 0], 11]]}))
    assert convention_mismatches(trained, 11, ((1, 0), (2, 1)), None) == []  # class-id masks
    assert convention_mismatches(trained, 255, None, ((((1, 1, 1)), 0),)) == [
        "--ignore_index: 11 in training, 255 in this run",
        "--label_map: 2 entries (1:0, 2:1) in training, none in this run",
        "--mask_palette: 1 entry ((0, 0, 0):11) in training, 1 entry ((1, 1, 1):0) in this run"]
    assert convention_mismatches({}, 255, None, None) == []  # recorded before these fields
    # Outside the classes, an ignore index and none both leave every class scored.
    assert convention_mismatches({"num_classes": 11, "ignore_index": None}, 255, None, None) \
        == convention_mismatches({"num_classes": 11, "ignore_index": 11}, None, None, None) == []
    assert convention_mismatches({"num_classes": 11, "ignore_index": None}, 0, None, None) == [
        "--ignore_index: none in training, 0 in this run"]


def test_a_run_under_another_convention_than_training_warns(tmp_path):
    from segbeam.pipeline.run import run
    from segbeam.pipeline.terminal import format_report
    from segbeam.pipeline.train import train_command

    rng = np.random.default_rng(3)
    write_random_pairs(tmp_path, [rng.integers(1, 4, (16, 16), dtype=np.uint8)
                                  for _ in range(4)])
    images, masks = str(tmp_path / "images"), str(tmp_path / "masks")
    assert train_command(["--images", images, "--masks", masks, "--dataset", "oxford_pets",
                          "--model", "tiny_fcn", "--input_size", "16", "--epochs", "1",
                          "--batch_size", "4", "--output", str(tmp_path / "pets"),
                          "--quiet"]) == 0
    argv = ["--input", f"{images}/*.png", "--masks", masks, "--model",
            str(tmp_path / "pets" / "model.keras"), "--no-crf", "--quiet"]
    same = run(argv + ["--dataset", "oxford_pets", "--output", str(tmp_path / "same")])
    assert "warnings" not in same.manifest
    plain = run(argv + ["--num_classes", "3", "--output", str(tmp_path / "plain")])
    [warning] = plain.manifest["warnings"]
    assert "model.keras was trained under another label convention (training.json" in warning
    assert "--ignore_index" not in warning  # none and 255 both score classes 0..2 alike
    assert "--label_map: 3 entries (1:0, 2:1, 3:2) in training, none in this run" in warning
    assert f"WARNING: {warning}" in format_report(plain)
    with open(tmp_path / "plain" / "manifest.json") as handle:
        assert json.load(handle)["warnings"] == [warning]
    from segbeam.pipeline.report import write_report

    write_report(str(tmp_path / "plain"))
    assert "trained under another label convention" in \
        (tmp_path / "plain" / "report" / "report.md").read_text()

    # Trained at 16x16; 40x40 images fed at their own size are 2.5x the scale it learned.
    (tmp_path / "large").mkdir()
    write_random_pairs(tmp_path / "large", [np.ones((40, 40), np.uint8)])
    large = ["--input", str(tmp_path / "large" / "images"), "--dataset", "oxford_pets",
             "--model", str(tmp_path / "pets" / "model.keras"), "--no-crf", "--quiet"]
    [warning] = run(large + ["--output", str(tmp_path / "large_out")]).manifest["warnings"]
    assert "model.keras was trained on images scaled to cover 16x16; this run feeds each " \
           "image at its own size (the first: 40x40), 2.5x the scale it learned; pass " \
           "--input_size 16x16 unless that is meant" in warning
    told = run(large + ["--input_size", "16", "--output", str(tmp_path / "told")])
    assert "warnings" not in told.manifest

    # The architecture normalises inside its graph: --preprocess would do it twice.
    with pytest.raises(ValueError, match="model.keras, a tiny_fcn model that segbeam trained, "
                                         r"takes raw RGB in \[0, 255\]"):
        run(large + ["--preprocess", "torch", "--output", str(tmp_path / "twice")])
    assert not (tmp_path / "twice").exists()

    from segbeam.models.inspect import inspect_model
    from segbeam.models.source import ModelSource

    described = dict(inspect_model(ModelSource(str(tmp_path / "pets" / "model.keras"))))
    assert described["trained with"] == (
        "--input_size 16x16, --ignore_index -1, --label_map 3 entries (1:0, 2:1, 3:2) "
        "(training.json beside it; a run warns where it differs)")


def test_a_scale_training_showed_the_model_is_no_mismatch():
    trained = {"input_size": [120, 160], "augment": True, "scale_min": 0.75, "scale_max": 1.25}
    assert scale_mismatch(trained, (120, 160)) is None
    assert scale_mismatch(trained, (140, 170)) is None  # 1/0.857: inside 0.75..1.25
    assert "(the first: 360x480), 3x the scale" in scale_mismatch(trained, (360, 480))
    assert "0.5x the scale" in scale_mismatch(trained, (60, 80))
    assert scale_mismatch({**trained, "augment": False}, (140, 170)) is None
    assert scale_mismatch({}, (360, 480)) is None and scale_mismatch(trained, (0, 0)) is None


def test_image_size_is_the_size_decoding_gives_after_exif_rotation(tmp_path):
    from PIL import Image

    from segbeam.models.training_record import image_size

    upright, turned = tmp_path / "upright.jpg", tmp_path / "turned.jpg"
    Image.new("RGB", (48, 20)).save(upright)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 48x20 landscape, shown turned a quarter: 20 wide, 48 high
    Image.new("RGB", (48, 20)).save(turned, exif=exif)
    assert image_size(str(upright)) == (20, 48)
    assert image_size(str(turned)) == (48, 20)
    assert image_size(str(tmp_path / "missing.jpg")) == (0, 0)
