"""Numeric flags of ``segbeam run`` outside their range are errors that name the flag, never a
run that goes on with a value that cannot mean what the user meant (``--max_image_pixels 0``
made every image a dead letter; ``--ignore_index 300`` can match no 8-bit mask value, and
``--ignore_index -100`` (PyTorch's "none") was taken as -1 without a word; a negative CRF
weight rewards label changes; ``--seed -1`` and a malformed resource hint failed only on the
workers, with a traceback)."""

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from segbeam.pipeline.options import SegmentationOptions, settings_from


def _settings(*extra):
    argv = ["--input", "/data/*.png", "--model", "tiny_fcn", "--num_classes", "3", *extra]
    return settings_from(PipelineOptions(argv).view_as(SegmentationOptions))


@pytest.mark.parametrize("flag, wrong, right, message", [
    ("--max_image_pixels", "0", "1000", "--max_image_pixels must be at least 1; received 0"),
    ("--model_copies", "0", "2", "--model_copies must be at least 1; received 0"),
    ("--ignore_index", "300", "255", r"--ignore_index must be a mask value \(0..255\) or -1"),
    ("--ignore_index", "-100", "-1", r"--ignore_index must be a mask value \(0..255\) or -1 "
                                     r"for none; received -100"),
    ("--crf_iterations", "0", "1", "CRF iterations must be at least 1; received 0"),
    ("--size_multiple", "0", "8", "--size_multiple must be at least 1; received 0"),
    ("--batch_size", "0", "4", r"need 1 <= --min_batch_size \(1\) <= --batch_size \(0\)"),
    ("--seed", "-1", "7", r"--seed must be in 0\.\.4294967295; received -1"),
    ("--crf_pos_w", "-1", "0", "CRF pos_w must be 0 or more and finite; received -1.0"),
    ("--crf_bi_w", "nan", "10", "CRF bi_w must be 0 or more and finite; received nan"),
    ("--crf_bi_rgb_std", "inf", "13", "CRF bi_rgb_std must be positive and finite"),
    ("--crf_min_ram", "abc", "8GB", "--crf_min_ram 'abc' is not a valid resource hint"),
    ("--inference_min_ram", "-1", "16GB", "--inference_min_ram '-1' is not a valid resource")])
def test_a_numeric_flag_out_of_range_is_an_error_naming_it(flag, wrong, right, message):
    _settings(flag, right)
    with pytest.raises(ValueError, match=message):
        _settings(flag, wrong)


def test_no_ignore_index_is_minus_one():
    assert _settings("--ignore_index", "-1").ignore_index is None
    assert _settings("--ignore_index", "0").ignore_index == 0


@pytest.mark.parametrize("flag, value, applies", [
    ("--mask_column", "mask", "parquet"), ("--key_column", "name", "parquet"),
    ("--image_column", "img", "parquet"), ("--mask_ext", "seg.png", "webdataset")])
def test_a_container_flag_for_other_input_is_an_error(flag, value, applies):
    """--mask_column with image files was ignored: a run that scored nothing it was told to."""
    with pytest.raises(ValueError, match=f"{flag} applies to {applies} shards, but the input is "
                                         f"read as images"):
        _settings(flag, value)
    shards = {"parquet": "/data/*.parquet", "webdataset": "/data/*.tar"}[applies]
    argv = ["--input", shards, "--model", "tiny_fcn", "--num_classes", "3", flag, value]
    settings_from(PipelineOptions(argv).view_as(SegmentationOptions))


def test_segbeam_train_refuses_container_flags_for_other_input():
    from segbeam.pipeline.train import config_from

    argv = ["--images", "i", "--masks", "m", "--model", "tiny_fcn", "--num_classes", "3",
            "--input_size", "32", "--output", "o"]
    config_from(argv)
    with pytest.raises(ValueError, match="--mask_column applies to parquet shards"):
        config_from(argv + ["--mask_column", "mask"])
    shards = argv[4:] + ["--shards"]
    with pytest.raises(ValueError, match="the input is read as tfrecord"):
        config_from(shards + ["s/*.tfrecord", "--mask_ext", "seg.png"])
    config_from(shards + ["s/*.parquet", "--mask_column", "mask"])
    with pytest.raises(ValueError, match="--mask_suffix pairs image files with mask files"):
        config_from(shards + ["s/*.tfrecord", "--mask_suffix", "_m"])


@pytest.mark.parametrize("extra, message", [
    (["--momentum", "0.5"], "--momentum applies to --optimizer sgd; adam takes none"),
    (["--no_augment", "--no_flip"], "--no_flip sets the random augmentation, which "
                                    "--no_augment turns off"),
    (["--no_augment", "--scale_max", "2"], "--scale_max sets the random augmentation")])
def test_segbeam_train_refuses_flags_that_others_make_void(extra, message):
    """--momentum under adam and --no_flip or a scale range under --no_augment were ignored."""
    from segbeam.pipeline.train import config_from

    argv = ["--images", "i", "--masks", "m", "--model", "tiny_fcn", "--num_classes", "3",
            "--input_size", "32", "--output", "o"]
    with pytest.raises(ValueError, match=message):
        config_from(argv + extra)
    assert config_from(argv + ["--optimizer", "sgd", "--momentum", "0.5"]).momentum == 0.5
    assert not config_from(argv + ["--no_flip", "--scale_max", "2"]).flip
    assert not config_from(argv + ["--no_augment"]).augment


def test_pairing_suffixes_with_shards_are_an_error():
    """--mask_suffix pairs files by name; shards carry their masks, so it was ignored."""
    argv = ["--input", "/data/*.tfrecord", "--model", "tiny_fcn", "--num_classes", "3"]
    settings_from(PipelineOptions(argv).view_as(SegmentationOptions))
    for flag in ("--mask_suffix", "--image_suffix"):
        with pytest.raises(ValueError, match=f"{flag} pairs image files with mask files"):
            settings_from(PipelineOptions(argv + [flag, "_x"]).view_as(SegmentationOptions))
    _settings("--mask_suffix", "_mask", "--masks", "/data")  # image files: fine


@pytest.mark.parametrize("flag, value", [
    ("--crf_iterations", "5"), ("--crf_bi_w", "10"), ("--crf_scale", "1"),
    ("--crf_backend", "keras"), ("--crf_processes", "2"), ("--crf_min_ram", "8GB")])
def test_a_crf_flag_with_no_crf_is_an_error(flag, value):
    """--no-crf --crf_iterations 5 ran without a CRF and said nothing about the flag."""
    assert _settings(flag, value).crf is not None
    assert _settings("--no-crf").crf is None
    with pytest.raises(ValueError, match=f"{flag} sets the dense CRF, which --no-crf turns off"):
        _settings("--no-crf", flag, value)


def test_a_crf_min_side_at_full_resolution_is_an_error():
    """--crf_scale 1 makes no reduced copy, so --crf_min_side was ignored."""
    assert _settings("--crf_min_side", "64").crf.min_side == 64
    assert _settings("--crf_scale", "1").crf.scale == 1
    with pytest.raises(ValueError, match="--crf_scale 1 runs the CRF at full resolution"):
        _settings("--crf_scale", "1", "--crf_min_side", "64")


def test_scoring_flags_that_act_on_no_mask_are_errors():
    """--calibration with the CRF (whose figures are always computed), and --calibration or
    --strict_labels for images read without --masks, were accepted and did nothing."""
    assert _settings("--no-crf", "--calibration", "--masks", "/m").calibration
    assert _settings("--strict_labels", "--masks", "/m").strict_labels
    with pytest.raises(ValueError, match="--calibration adds calibration figures to runs with "
                                         "--no-crf; with the CRF they are always computed"):
        _settings("--calibration", "--masks", "/m")
    for flags in (["--strict_labels"], ["--no-crf", "--calibration"]):
        with pytest.raises(ValueError, match=f"{flags[-1]} acts on masks, but the images are "
                                             f"read without --masks"):
            _settings(*flags)
    shards = ["--input", "/data/*.tfrecord", "--model", "tiny_fcn", "--num_classes", "3",
              "--strict_labels"]  # shards carry their masks
    assert settings_from(PipelineOptions(shards).view_as(SegmentationOptions)).strict_labels


def test_raw_masks_with_no_crf_is_an_error():
    """masks_raw/ was written as a byte-for-byte copy of masks/."""
    assert _settings("--write_raw_masks").layout.write_raw_masks
    with pytest.raises(ValueError, match="with --no-crf, masks/ holds them already"):
        _settings("--no-crf", "--write_raw_masks")


def test_sizing_flags_that_the_input_size_makes_void_are_errors():
    """With --input_size (or a model's fixed input) every image is fed at that size, and
    without one each at its own: --size_multiple or --resize_mode letterbox was ignored."""
    multiple = _settings("--size_multiple", "16").inference
    multiple.check_input_size(None, None)
    with pytest.raises(ValueError, match="with --input_size 64x96 every image is fed at that"):
        multiple.check_input_size((64, 96), None)
    with pytest.raises(ValueError, match="the model takes 32x32 only, so every image is fed"):
        multiple.check_input_size(None, (32, 32))
    letterbox = _settings("--resize_mode", "letterbox").inference
    letterbox.check_input_size((64, 96), None)
    letterbox.check_input_size(None, (32, 32))
    with pytest.raises(ValueError, match="neither --input_size nor the model fixes one"):
        letterbox.check_input_size(None, None)
    _settings().inference.check_input_size((64, 96), (64, 96))  # the defaults: never void


def test_preprocess_for_a_registry_model_is_an_error():
    """Registry models normalise raw RGB inside their graph; --preprocess torch normalised it
    first as well, and the run segmented images it had shifted and shrunk, without a word."""
    assert _settings("--preprocess", "none").inference.preprocess == "none"
    with pytest.raises(ValueError, match=r"--preprocess torch would normalise the input a "
                                         r"second time: tiny_fcn takes raw RGB in \[0, 255\] "
                                         r"and normalises it inside its graph \(built in"):
        _settings("--preprocess", "torch")


def test_a_mask_suffix_without_masks_is_an_error():
    """It named mask files among no masks, and was ignored."""
    with pytest.raises(ValueError, match="--mask_suffix _mask names mask files, but no --masks"):
        _settings("--mask_suffix", "_mask")
    assert _settings("--mask_suffix", "_mask", "--masks", "/data").mask_suffix == "_mask"
    argv = ["--input", "/data/*.png", "--model", "tiny_fcn", "--dataset", "cityscapes"]
    preset = settings_from(PipelineOptions(argv).view_as(SegmentationOptions))
    assert preset.mask_suffix == "_gtFine_labelIds"  # the preset's, without --masks: fine


@pytest.mark.parametrize("argv, message", [
    (["--signature", "serve"], "--signature applies with --inspect PATH only"),
    (["--unsafe_model_loading", "--no_counts"], "--unsafe_model_loading applies with --inspect"),
    (["--inspect", "m.onnx", "--num_classes", "3"], "--num_classes applies to the listing, not "
                                                    "to --inspect")])
def test_segbeam_models_refuses_flags_of_its_other_mode(argv, message, capsys):
    """The listing ignored --inspect's flags, and --inspect the listing's."""
    from segbeam.pipeline.cli import main

    assert main(["models", *argv]) == 2
    assert f"segbeam models: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("output", ["/data/out[1]", "/data/out*", "gs://bucket/run?"])
def test_an_output_folder_named_with_a_glob_character_is_an_error(output):
    """A run into ``out[1]`` ended in an internal error, Beam's delete of the launcher's write
    probe reading the name as a pattern; its history glob would have read a folder ``out1``
    beside it as this run's earlier results."""
    _settings("--output", "/data/out-1")
    with pytest.raises(ValueError, match=r"holds a glob character \(\* \? \[\)"):
        _settings("--output", output)


@pytest.mark.parametrize("argv, line", [
    (["run", "--input", "x", "--batch_size", "x"],
     "segbeam run: error: argument --batch_size: invalid int value: 'x'; see `segbeam run "
     "--help`"),
    (["run", "--input", "x", "--dry_run"],
     "segbeam run: error: argument --dry_run: expected one argument (one of Beam's flags)"),
    (["shard", "--input", "x", "--output", "y", "--runner"],
     "segbeam shard: error: argument --runner: expected one argument (one of Beam's flags)"),
    (["train", "--epochs", "x"],
     "segbeam train: error: argument --epochs: invalid int value: 'x'; see `segbeam train "
     "--help`"),
    (["report"],
     "segbeam report: error: the following arguments are required: run; see `segbeam report "
     "--help`"),
    (["models", "--inspect"],
     "segbeam models: error: argument --inspect: expected one argument; see `segbeam models "
     "--help`")])
def test_a_malformed_flag_value_is_one_line(argv, line, capsys):
    """argparse printed the command's whole usage above the error (forty lines); a malformed
    value of one of Beam's flags printed Beam's usage, 180 lines, under the name segbeam."""
    from segbeam.pipeline.cli import main

    try:
        code = main(argv)
    except SystemExit as stopped:  # argparse's own exit
        code = stopped.code
    assert (code, capsys.readouterr().err.splitlines()) == (2, [line])
