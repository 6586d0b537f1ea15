"""Mistyped or unfitting paths fail in the launcher, in one line that names them, before any
work: a missing model or weights file, weights saved from another model, an --input_size the
architecture cannot take, and --masks that match nothing (which would otherwise give a run that
scores nothing without a word)."""

import warnings

import numpy as np
import pytest

from segbeam.models.source import ModelSource, load_all_weights
from segbeam.pipeline.cli import main
from tests.conftest import write_random_pairs


def test_a_missing_model_or_weights_file_is_named(tmp_path):
    for spec in ("model.keras", "model.h5", "model.onnx"):
        with pytest.raises(ValueError, match=f"model '.*{spec}' does not exist; check the path"):
            ModelSource(str(tmp_path / spec), num_classes=3)
    with pytest.raises(ValueError, match="--weights file '.*w.weights.h5' does not exist"):
        ModelSource("tiny_fcn", str(tmp_path / "w.weights.h5"), num_classes=3)
    with pytest.raises(ValueError, match="--weights file '.*' is a folder, not a file"):
        ModelSource("tiny_fcn", str(tmp_path), num_classes=3)


def test_a_missing_file_on_cloud_storage_is_named(gcs_bucket):
    gcs = gcs_bucket()
    with pytest.raises(ValueError, match="model 'gs://.*/m.keras' does not exist"):
        ModelSource(f"{gcs}/m.keras", num_classes=3)


def _run(tmp_path, *extra):
    return main(["run", "--input", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                 "--model", "tiny_fcn", "--num_classes", "3", "--no-crf",
                 "--output", str(tmp_path / "out"), *extra])


def test_weights_of_another_class_count_fail_in_the_launcher(tmp_path, capsys):
    import keras

    from segbeam import models

    write_random_pairs(tmp_path, [np.zeros((8, 8), np.uint8)])
    models.create_model("tiny_fcn", num_classes=4).save_weights(str(tmp_path / "w.weights.h5"))
    assert _run(tmp_path, "--weights", str(tmp_path / "w.weights.h5")) == 2
    error = capsys.readouterr().err
    assert "do not load into model tiny_fcn" in error and "value.shape=(1, 1, 32, 4)" in error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert not (tmp_path / "out").exists()
    keras.utils.set_random_seed(0)
    models.create_model("tiny_fcn", num_classes=3).save_weights(str(tmp_path / "w.weights.h5"))
    assert _run(tmp_path, "--weights", str(tmp_path / "w.weights.h5")) == 0


def test_an_input_size_the_architecture_cannot_take_fails_in_the_launcher(tmp_path, capsys):
    """U-Net's MobileNetV2 encoder needs 32x32: the check ran only on the workers, where it
    printed a Beam traceback for each."""
    write_random_pairs(tmp_path, [np.zeros((8, 8), np.uint8)])
    code = main(["run", "--input", str(tmp_path / "images"), "--model", "unet",
                 "--num_classes", "3", "--input_size", "16", "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and "model unet cannot be built for --input_size 16x16" in error
    assert "at least 32x32" in error and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_masks_that_match_nothing_fail_in_the_launcher(tmp_path, capsys):
    write_random_pairs(tmp_path, [np.zeros((8, 8), np.uint8)])
    code = main(["run", "--input", str(tmp_path / "images"), "--masks",
                 str(tmp_path / "masks_typo"), "--model", "tiny_fcn", "--num_classes", "3",
                 "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and "--masks '" in error and "masks_typo' matches no file" in error
    assert not (tmp_path / "out").exists()
    code = main(["run", "--input", str(tmp_path / "images"), "--masks",
                 str(tmp_path / "masks" / "i0.png"), "--model", "tiny_fcn", "--num_classes",
                 "3", "--output", str(tmp_path / "out")])
    assert code == 2 and "i0.png' is a file; pass the folder" in capsys.readouterr().err


class _PartlyLoading:
    """A model whose load_weights warns as Keras 3 does when a file lacks a nested part."""

    def load_weights(self, path):
        warnings.warn("Skipping nested container at '_operations_by_depth/container_1': no "
                      "matching group found in the saved file. Affected layers will retain "
                      "their freshly-initialized weights.", UserWarning)


def test_weights_that_leave_layers_at_random_values_are_an_error():
    with pytest.raises(ValueError, match="leave part of model m at its random initial values"):
        load_all_weights(_PartlyLoading(), "w.h5", "w.h5", "m")


def test_masks_that_pair_with_no_image_say_how_they_could(tmp_path):
    """Masks named x_mask.png beside images x.png pair with nothing: the run scored nothing,
    said so only as a count of masks without an image."""
    from segbeam.pipeline.run import run
    from segbeam.pipeline.terminal import format_report

    write_random_pairs(tmp_path, [np.zeros((8, 8), np.uint8)] * 2)
    for mask in (tmp_path / "masks").iterdir():
        mask.rename(mask.with_name(f"{mask.stem}_mask.png"))
    argv = ["--input", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
            "--model", "tiny_fcn", "--num_classes", "3", "--no-crf", "--quiet"]
    report = format_report(run(argv + ["--output", str(tmp_path / "out")]))
    assert "2 mask files matched no input image" in report
    assert "WARNING: no input found its mask, so nothing was scored" in report
    assert "pass --mask_suffix _mask" in report
    paired = run(argv + ["--mask_suffix", "_mask", "--output", str(tmp_path / "out2")])
    assert paired.summary["counts"]["images_with_mask"] == 2
    assert "no input found its mask" not in format_report(paired)
    for mask in (tmp_path / "masks").iterdir():  # every file in one folder
        mask.rename(tmp_path / "images" / mask.name)
    argv[1:4] = [str(tmp_path / "images"), "--masks", str(tmp_path / "images")]
    mixed = run(argv + ["--output", str(tmp_path / "out3")])
    assert mixed.summary["counts"]["segmented"] == 4  # each mask taken for an image
    assert "WARNING: no input found its mask, so nothing was scored" in format_report(mixed)
    from segbeam.pipeline.report import write_report

    write_report(str(tmp_path / "out3"))
    assert "no input found its mask" in (tmp_path / "out3" / "report" / "report.md").read_text()
