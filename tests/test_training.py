"""Training data (pairs, shards, augmentation, class weights), the trainer, and `segbeam
train` feeding `segbeam run`."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segbeam.training_items import find_shard_entries, find_training_pairs, load_item
from segbeam.models.data import (SegmentationDataset, augment_pair, class_statistics,
                                 median_frequency_weights, resize_pair, weight_table)
from segbeam.records import ImageRef

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_pairs(folder, count, height=40, width=48, seed=0, stem="scene"):
    from segbeam.pipeline.demo import synthetic_scene

    rng = np.random.default_rng(seed)
    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, mask = synthetic_scene(rng, height, width)
        Image.fromarray(image).save(images / f"{stem}{i:03d}.png")
        Image.fromarray(mask).save(masks / f"{stem}{i:03d}.png")
    return str(images), str(masks)


def test_median_frequency_weights_match_a_hand_computation():
    masks = [np.array([[0, 0], [0, 1]], np.uint8), np.array([[0, 2], [2, 2]], np.uint8)]
    pixels, present_in = class_statistics(masks, 4)
    assert pixels.tolist() == [4, 1, 3, 0] and present_in.tolist() == [8, 4, 4, 0]
    # freq = 4/8, 1/4, 3/4; median 0.5; class 3 never appears
    np.testing.assert_allclose(median_frequency_weights(pixels, present_in),
                               [1.0, 2.0, 0.5 / 0.75, 0.0])


def test_weight_table_zeroes_the_ignore_index_and_non_classes():
    table = weight_table(np.array([0.5, 2.0, 1.0]), 3, ignore_index=255)
    assert table[:3].tolist() == [0.5, 2.0, 1.0]
    assert table[3] == 0 and table[255] == 0
    assert weight_table(None, 3, ignore_index=1)[:3].tolist() == [1.0, 0.0, 1.0]


def test_resize_pair_keeps_mask_values_and_augment_keeps_image_and_mask_aligned():
    mask = np.zeros((10, 12), np.uint8)
    mask[:, :5] = 1
    mask[7:, 8:] = 3
    image = np.stack([mask * 60] * 3, axis=-1).astype(np.uint8)
    _, small = resize_pair(image, mask, (7, 9))
    assert set(np.unique(small)) <= {0, 1, 3}
    rng = np.random.default_rng(0)
    flipped_seen = False
    for _ in range(8):
        out_image, out_mask = augment_pair(image, mask, (10, 12), rng)
        np.testing.assert_array_equal(out_image[..., 0], out_mask * 60)
        flipped_seen |= bool(out_mask[0, -1] == 1)
    assert flipped_seen
    # Zoomed out: the view is padded with black and the fill label.
    out_image, out_mask = augment_pair(image, mask, (10, 12), rng, scale_range=(0.5, 0.5),
                                       flip=False, fill_label=255)
    assert (out_mask == 255).sum() == 10 * 12 - 5 * 6
    assert not out_image[out_mask == 255].any()
    # Zoomed in: a crop of a 2x enlargement, still class ids only.
    _, out_mask = augment_pair(image, mask, (10, 12), rng, scale_range=(2.0, 2.0))
    assert out_mask.shape == (10, 12) and set(np.unique(out_mask)) <= {0, 1, 3}


@pytest.mark.parametrize("ignore_index", [2, 255, None])
def test_the_training_miou_is_the_run_s_miou(ignore_index):
    """The mIoU Keras reports per epoch equals segbeam.metrics' on the same pixels, also when
    the ignore index is a class id the model predicts (Keras's MeanIoU counted it as 0)."""
    from segbeam.metrics import confusion_matrix, summarise_confusion
    from segbeam.models.training import miou_metric

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, (2, 8, 8))
    truth[0, :2] = 255
    predicted = np.where(rng.random(truth.shape) < 0.7, truth % 255, rng.integers(0, 3,
                                                                                 truth.shape))
    logits = np.eye(3, dtype="float32")[predicted] * 5.0
    metric = miou_metric(3, ignore_index)
    metric.update_state(truth.astype("int32"), logits)
    expected = summarise_confusion(confusion_matrix(predicted, truth, 3, ignore_index),
                                   ignore_index)["miou"]
    assert float(metric.result()) == pytest.approx(expected, abs=1e-5)


def test_dataset_batches_weights_and_ignored_pixels(tmp_path):
    images, masks = _write_pairs(tmp_path, 5)
    items = find_training_pairs(images, masks)
    assert len(items) == 5
    assert all(isinstance(item, ImageRef) and item.mask_source for item in items)
    dataset = SegmentationDataset(items, batch_size=2, size=(32, 32), num_classes=3,
                                  ignore_index=2, class_weights=np.array([1.0, 3.0, 5.0]))
    assert len(dataset) == 3
    x, y, w = dataset[0]
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32 and x.max() > 1
    assert y.shape == (2, 32, 32) and y.dtype == np.int32
    assert set(np.unique(w[y == 0])) == {1.0} and set(np.unique(w[y == 1])) <= {3.0}
    assert (y == 2).any() and not w[y == 2].any()
    assert dataset[2][0].shape[0] == 1  # the last, partial batch


def test_images_without_masks_are_left_out_and_none_matching_is_an_error(tmp_path):
    images, masks = _write_pairs(tmp_path, 3)
    os.remove(os.path.join(masks, "scene001.png"))
    assert [os.path.basename(p.source) for p in find_training_pairs(images, masks)] == [
        "scene000.png", "scene002.png"]
    with pytest.raises(ValueError, match="no images match"):
        find_training_pairs(str(tmp_path / "nothing" / "*.png"), masks)
    empty = tmp_path / "empty_masks"
    empty.mkdir()
    with pytest.raises(ValueError, match="none of the 3 images.*pass --mask_suffix _mask"):
        find_training_pairs(images, str(empty))


def test_training_pairs_as_the_pipeline_does_and_says_why_a_pair_is_left_out(tmp_path, caplog):
    """A stem with two masks is ambiguous: training used to keep the first mask without a word;
    now it leaves the pair out, as `segbeam run` dead-letters it, with the same reason."""
    from segbeam.dataset import find_pairs

    images, masks = _write_pairs(tmp_path, 3)
    with open(os.path.join(masks, "scene001.png"), "rb") as handle:
        with open(os.path.join(masks, "scene001.jpg"), "wb") as twin:
            twin.write(handle.read())
    with caplog.at_level("WARNING"):
        pairs = find_training_pairs(images, masks)
    assert [os.path.basename(p.source) for p in pairs] == ["scene000.png", "scene002.png"]
    _, dead, _ = find_pairs(os.path.join(images, "*"), masks)
    assert [(d.key, d.stage) for d in dead] == [("scene001", "pair")]
    warned = [r.getMessage() for r in caplog.records if "training pair skipped" in
              r.getMessage()]
    assert len(warned) == 1 and "scene001.png" in warned[0] and dead[0].reason in warned[0]


def test_shards_from_segbeam_shard_feed_training(tmp_path):
    from segbeam.pipeline.shard import shard

    images, masks = _write_pairs(tmp_path, 4)
    shard(["--input", os.path.join(images, "*.png"), "--masks", masks,
           "--output", str(tmp_path / "shards" / "train"), "--num_shards", "2"])
    entries = find_shard_entries(str(tmp_path / "shards" / "train-*"))
    assert len(entries) == 4
    loaded = sorted((load_item(entry) for entry in entries), key=lambda pair: pair[0].sum())
    expected = sorted((load_item(pair) for pair in find_training_pairs(images, masks)),
                      key=lambda pair: pair[0].sum())
    for (image, mask), (want_image, want_mask) in zip(loaded, expected):
        np.testing.assert_array_equal(image, want_image)
        np.testing.assert_array_equal(mask, want_mask)


def test_training_lowers_the_loss_and_writes_a_loadable_model(tmp_path):
    from segbeam.models.source import load_model
    from segbeam.models.training import TrainingConfig, train

    images, masks = _write_pairs(tmp_path, 24, height=32, width=32)
    config = TrainingConfig(model="segnet_basic", num_classes=3, output=str(tmp_path / "run"),
                            input_size=(32, 32), images=images, masks=masks, val_split=0.25,
                            batch_size=6, epochs=5, learning_rate=3e-3, augment=False,
                            class_weights="median_frequency", verbose=0)
    result = train(config)
    losses = result.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    assert len(result.history["val_miou"]) == 5 and (result.train_items, result.val_items) == \
        (18, 6)
    assert len(result.class_weights) == 3 and min(result.class_weights) > 0
    for name in ("model.keras", "best.keras", "checkpoints/last.keras", "history.csv",
                 "training.json"):
        assert os.path.exists(os.path.join(config.output, name)), name
    model = load_model(result.model_path, num_classes=3)
    assert model.output_shape == (None, None, None, 3)


def test_training_can_start_from_an_earlier_trainings_weights(tmp_path):
    """Training always started from random weights: a run stopped by --max_minutes, or a
    model to fine-tune on new data, began again from nothing."""
    import keras

    from segbeam.models.training import TrainingConfig, train

    images, masks = _write_pairs(tmp_path, 4, height=32, width=32)

    def config(output, **extra):
        return TrainingConfig(model="tiny_fcn", num_classes=3, output=str(tmp_path / output),
                              input_size=(32, 32), images=images, masks=masks, batch_size=4,
                              epochs=1, augment=False, verbose=0, **extra)

    def trained(path):  # batch-norm statistics move without a learning rate; these do not
        return [w.numpy() for w in keras.saving.load_model(path).trainable_weights]

    first = train(config("first", seed=1))
    earlier = trained(first.model_path)
    # a learning rate of almost nothing keeps what the model started from
    again = train(config("first", seed=2, init_weights=str(tmp_path / "first" / "checkpoints"
                                                            / "last.keras"),
                         learning_rate=1e-12, overwrite=True))
    for before, after in zip(earlier, trained(again.model_path)):
        np.testing.assert_allclose(after, before, atol=1e-6)
    fresh = trained(train(config("fresh", seed=2, learning_rate=1e-12)).model_path)
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(fresh, earlier))
    # another class count, a missing file, a backbone besides: one line each, before any data
    for extra, message in (
            ({"num_classes": 4}, "--init_weights .*model.keras do not load into model "
                                 "tiny_fcn"),
            ({"init_weights": str(tmp_path / "nothing.keras")}, "is no file; check the path"),
            ({"backbone_weights": "imagenet"}, "drop --backbone_weights")):
        settings = config("other", init_weights=first.model_path)
        for name, value in extra.items():
            setattr(settings, name, value)
        with pytest.raises(ValueError, match=message):
            train(settings)


def test_a_resumed_training_ends_as_an_uninterrupted_one(tmp_path):
    """A training stopped by --max_minutes (or a lost machine) could only start again from its
    weights (--init_weights), the optimizer afresh and the epochs counted from 1. --resume
    goes on from the last checkpoint, optimizer state, data order and augmentation included,
    and ends where an uninterrupted training ends."""
    import csv

    import keras

    from segbeam.models.training import TrainingConfig, train

    images, masks = _write_pairs(tmp_path, 6, height=32, width=32)

    def config(output, **extra):
        return TrainingConfig(**{**dict(
            model="tiny_fcn", num_classes=3, output=str(tmp_path / output),
            input_size=(32, 32), images=images, masks=masks, batch_size=2, val_split=0.34,
            epochs=3, verbose=0), **extra})

    def weights(path):
        model = keras.saving.load_model(path)
        return model.get_weights(), int(keras.ops.convert_to_numpy(model.optimizer.iterations))

    def history(output):
        with open(tmp_path / output / "history.csv", newline="") as handle:
            return list(csv.DictReader(handle))

    straight = train(config("straight"))
    train(config("stopped", epochs=1))
    resumed = train(config("stopped", resume=True, max_minutes=30))
    (expected, steps), (found, resumed_steps) = weights(straight.model_path), \
        weights(resumed.model_path)
    assert resumed_steps == steps == 6  # 2 batches a pass, 3 passes
    for a, b in zip(expected, found):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert [row["epoch"] for row in history("stopped")] == ["0", "1", "2"]
    assert [row["loss"] for row in history("stopped")] == [row["loss"]
                                                           for row in history("straight")]
    assert resumed.history["loss"] == straight.history["loss"]
    assert weights(str(tmp_path / "stopped" / "best.keras"))[0][0].shape == expected[0].shape
    # Without validation Keras's CSVLogger writes NA for the validation columns.
    train(config("no_validation", epochs=1, val_split=0.0))
    train(config("no_validation", epochs=2, val_split=0.0, resume=True))
    assert [row["epoch"] for row in history("no_validation")] == ["0", "1"]
    # The folder moved (a preempted machine's disk copied elsewhere) and the data spelled
    # another way: the same training, which --resume had refused as other settings.
    os.rename(tmp_path / "no_validation", tmp_path / "moved")
    train(config("moved", epochs=3, val_split=0.0, resume=True,
                 images=images.replace(str(tmp_path), f"{tmp_path}/./"),
                 masks=os.path.relpath(masks)))
    assert [row["epoch"] for row in history("moved")] == ["0", "1", "2"]

    for settings, message in (
            (config("stopped", resume=True), "has done 3 of --epochs 3 already; raise "
                                             "--epochs"),
            (config("stopped", resume=True, epochs=4, learning_rate=0.01),
             "these settings differ: --learning_rate 0.01 \\(it started with 0.001\\)"),
            (config("empty", resume=True), "holds no checkpoints/last.keras or "
                                           "checkpoints/config.json")):
        with pytest.raises(ValueError, match=message):
            train(settings)
    # The same flags naming other pairs (a file added to the folder; a list edited) would
    # have mixed two data sets in one model: refused, with the counts.
    _write_pairs(tmp_path, 1, height=32, width=32, seed=5, stem="added")
    with pytest.raises(ValueError, match="the flags now name other pairs: 5 training and 2 "
                                         "validation pairs \\(it started with 4 and 2"):
        train(config("stopped", resume=True, epochs=4))
    os.remove(os.path.join(images, "added000.png"))
    os.remove(os.path.join(masks, "added000.png"))
    for folder in (images, masks):  # as many pairs, one of them another file
        os.rename(os.path.join(folder, "scene005.png"), os.path.join(folder, "scene099.png"))
    with pytest.raises(ValueError, match="4 training and 2 validation pairs \\(it started "
                                         "with 4 and 2, or as many but other files\\)"):
        train(config("stopped", resume=True, epochs=4))
    for folder in (images, masks):
        os.rename(os.path.join(folder, "scene099.png"), os.path.join(folder, "scene005.png"))
    # The checkpoint is replaced by rename: a save that fails part-way leaves the last one.
    from segbeam.models.training_resume import atomic_checkpoint

    last = tmp_path / "stopped" / "checkpoints" / "last.keras"
    before = last.read_bytes()
    model = keras.saving.load_model(str(last))
    callback = atomic_checkpoint(str(last))
    callback.set_model(model)

    def cut_short(path, **_):
        with open(path, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("the machine stopped")

    model.save = cut_short
    with pytest.raises(OSError, match="the machine stopped"):
        callback.on_epoch_end(3)
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["config.json", "last.keras",
                                                             "pairs.json"]
    last.write_bytes(b"cut short")
    with pytest.raises(ValueError, match="last.keras cannot be loaded .*it may have been cut "
                                         "short while written"):
        train(config("stopped", resume=True, epochs=4))
    from segbeam.pipeline.cli import main

    assert main(["train", "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "32",
                 "--images", images, "--masks", masks, "--output", str(tmp_path / "stopped"),
                 "--resume", "--overwrite"]) == 2


def test_bad_training_flags_are_refused_before_any_work(tmp_path):
    from segbeam.models.training import TrainingConfig, parse_class_weights, train

    with pytest.raises(ValueError, match="needs 3 non-negative numbers"):
        parse_class_weights("1,2", 3)
    with pytest.raises(ValueError, match="'none', 'median_frequency' or 3"):
        parse_class_weights("balanced", 3)
    with pytest.raises(ValueError, match="--optimizer must be one of"):
        train(TrainingConfig(model="segnet_basic", num_classes=3, output=str(tmp_path),
                             input_size=(32, 32), images="x", masks="y", optimizer="rmsprop"))
    # Validation flags that contradict each other: --val_split was ignored without a word.
    for extra, message in [({"val_images": "v"}, "--val_images and --val_masks go together"),
                           ({"val_masks": "v"}, "--val_images and --val_masks go together"),
                           ({"val_images": "v", "val_masks": "w", "val_split": 0.2},
                            "or --val_split, not both"),
                           ({"shards": "s"}, "pass --shards or --images/--masks, not both")]:
        with pytest.raises(ValueError, match=message):
            train(TrainingConfig(model="segnet_basic", num_classes=3, output=str(tmp_path),
                                 input_size=(32, 32), images="x", masks="y", **extra))
    # Sizes an architecture cannot take failed at the first batch, after all data was read.
    for model, size, message in [("unet", (16, 16), "unet cannot be built for --input_size "
                                  r"16x16 \(Input size must be at least 32x32"),
                                 ("tiny_fcn", (33, 47), "tiny_fcn cannot be built for "
                                  "--input_size 33x47"),
                                 ("tiny_fcn", (7, 7), "tiny_fcn maps --input_size 7x7 to 8x8"),
                                 # not a matter of size: the name is unknown
                                 ("tiny_fnc", (32, 32), "^unknown model 'tiny_fnc'; known")]:
        with pytest.raises(ValueError, match=message):
            train(TrainingConfig(model=model, num_classes=3, output=str(tmp_path),
                                 input_size=size, images="x", masks="y"))
    # Backbone weights that are no weights file: h5py's OSError, after all data was read.
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not HDF5")
    for model, weights, message in [
            ("unet", str(broken), "backbone weights .*broken.h5 are not a weights file Keras"),
            ("segnet_basic", "imagenet", "segnet_basic trains from scratch")]:
        with pytest.raises(ValueError, match=message):  # images "x" would not be found
            train(TrainingConfig(model=model, num_classes=3, output=str(tmp_path),
                                 input_size=(32, 32), images="x", masks="y",
                                 backbone_weights=weights))


def test_train_refuses_an_output_it_cannot_write_and_masks_that_match_nothing(tmp_path,
                                                                            capsys):
    """An --output that is a file was an internal error (NotADirectoryError) after the data
    was read; a mistyped --masks was named as images without masks; a mistyped --images, with
    its masks mistyped too, was named as the masks."""
    from segbeam.pipeline.cli import main

    images, masks = _write_pairs(tmp_path, 2, height=32, width=32)
    taken = tmp_path / "taken"
    taken.write_text("mine")
    argv = ["train", "--images", images, "--model", "tiny_fcn", "--num_classes", "3",
            "--input_size", "32", "--epochs", "1", "--quiet"]
    for flags, message in (
            (["--masks", masks, "--output", str(taken)], f"--output {taken} is a file"),
            (["--masks", str(tmp_path / "typo"), "--output", str(tmp_path / "o")],
             f"--masks '{tmp_path / 'typo'}' matches no file; check the path"),
            (["--masks", masks, "--val_images", images, "--val_masks", f"{masks}/scene000.png",
              "--output", str(tmp_path / "o")], "--val_masks .* is a file; pass the folder"),
            # images mistyped too: named first (the --masks typo was reported)
            (["--images", str(tmp_path / "typo_i"), "--masks", str(tmp_path / "typo"),
              "--output", str(tmp_path / "o")],
             f"--images '{tmp_path / 'typo_i'}' matches no file; check the path"),
            (["--masks", masks, "--val_images", str(tmp_path / "typo_v"), "--val_masks",
              str(tmp_path / "typo"), "--output", str(tmp_path / "o")],
             f"--val_images '{tmp_path / 'typo_v'}' matches no file")):
        own = argv[:1] + argv[3:] if flags[0] == "--images" else argv  # its --images instead
        assert main(own + flags) == 2
        assert re.search(f"segbeam train: error: {message}", capsys.readouterr().err)
    assert taken.read_text() == "mine" and not (tmp_path / "o").exists()


def test_a_val_split_that_leaves_nothing_to_train_on_says_so(tmp_path):
    from segbeam.models.training import TrainingConfig, train

    images, masks = _write_pairs(tmp_path, 1, height=32, width=32)
    with pytest.raises(ValueError, match="--val_split 0.5 holds out all 1 usable pairs"):
        train(TrainingConfig(model="tiny_fcn", num_classes=3, output=str(tmp_path / "run"),
                             input_size=(32, 32), images=images, masks=masks, val_split=0.5))


def test_validation_pairs_that_are_training_pairs_are_named(caplog):
    from segbeam.models.training import _warn_shared

    items = [ImageRef(f"k{i}", f"/d/k{i}.png", f"/m/k{i}.png") for i in range(4)]
    with caplog.at_level("WARNING"):
        _warn_shared(items, items[2:] + [ImageRef("v", "/v/v.png", "/m/v.png")])
    assert "2 of the 3 validation pairs are also training pairs (first: /d/k2.png)" in \
        caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        _warn_shared(items[:2], items[2:])
    assert not caplog.text


@pytest.mark.parametrize("flag, value, rule", [
    ("--epochs", "-2", "at least 1"), ("--epochs", "0", "at least 1"),
    ("--batch_size", "0", "at least 1"), ("--workers", "0", "at least 1"),
    ("--learning_rate", "0", "positive"), ("--momentum", "1", r"in \[0, 1\)"),
    ("--val_split", "-0.1", r"in \[0, 1\)"), ("--max_minutes", "-5", "positive"),
    ("--seed", "-1", r"in 0\.\.4294967295")])
def test_numeric_training_flags_out_of_range_are_errors(flag, value, rule):
    from segbeam.pipeline.train import config_from

    argv = ["--images", "i", "--masks", "m", "--model", "tiny_fcn", "--num_classes", "3",
            "--input_size", "32", "--output", "o"]
    config_from(argv)  # in range: accepted
    with pytest.raises(ValueError, match=f"{flag} must be {rule}; received"):
        config_from([*argv, flag, value])


def _segbeam(args, env=None, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "segbeam.pipeline.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_segbeam_train_under_jax_produces_a_model_that_segbeam_run_uses(tmp_path):
    """Training feeds numpy through a PyDataset, so it runs under JAX too; the .keras file it
    writes is then served by the pipeline under the default backend."""
    backend = "jax" if importlib.util.find_spec("jax") else "tensorflow"
    images, masks = _write_pairs(tmp_path / "train", 64, height=48, width=48)
    trained = _segbeam(["train", "--model", "tiny_fcn", "--images", images, "--masks",
                        masks, "--num_classes", "3", "--input_size", "48", "--epochs", "8",
                        "--batch_size", "8", "--learning_rate", "1e-2", "--no_augment",
                        "--output", str(tmp_path / "model"), "--quiet"],
                       env={"KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"})
    assert trained.returncode == 0, trained.stderr[-3000:]
    report = json.loads(trained.stdout)
    with open(tmp_path / "model" / "training.json") as handle:
        assert json.load(handle)["backend"] == backend
    assert report["epochs"] == 8 and report["final"]["loss"] > 0

    val_images, val_masks = _write_pairs(tmp_path / "val", 6, height=40, width=56, seed=9,
                                         stem="val")
    ran = _segbeam(["run", "--input", os.path.join(val_images, "*.png"), "--masks", val_masks,
                    "--model", report["model"], "--num_classes", "3", "--output",
                    str(tmp_path / "out"), "--resize_mode", "pad"])
    assert ran.returncode == 0, ran.stderr[-3000:]
    with open(tmp_path / "out" / "summary.json") as handle:
        summary = json.load(handle)
    assert summary["counts"]["outputs"] == 6 and summary["counts"]["dead_letters"] == 0
    # Trained for a few epochs on the same kind of scenes: far better than chance (1/3).
    assert summary["evaluation"]["raw"]["miou"] > 0.4, summary["evaluation"]["raw"]


def test_the_wall_time_budget_stops_after_the_epoch_that_spends_it(tmp_path):
    from segbeam.models.training import TrainingConfig, train

    images, masks = _write_pairs(tmp_path, 8, height=32, width=32)
    result = train(TrainingConfig(model="tiny_fcn", num_classes=3, output=str(tmp_path / "run"),
                                  input_size=(32, 32), images=images, masks=masks,
                                  batch_size=4, epochs=5, max_minutes=0.0, verbose=0))
    assert result.stopped_early and len(result.history["loss"]) == 1
    assert result.best_path is None and os.path.exists(result.model_path)


def test_an_earlier_training_under_output_is_refused_or_replaced_when_asked(tmp_path):
    """A second training into one --output replaced the first's model without a word, and a
    best.keras from the first stood beside a new training without validation."""
    from segbeam.models.training import TrainingConfig, train

    (tmp_path / "checkpoints").mkdir()
    for name in ("best.keras", "checkpoints/last.keras", "training.json"):
        (tmp_path / name).write_text("earlier")
    config = TrainingConfig(model="tiny_fcn", num_classes=3, output=str(tmp_path),
                            input_size=(32, 32), images=str(tmp_path / "none"), masks="m")
    with pytest.raises(ValueError, match=r"holds an earlier training \(best.keras, "
                                         r"checkpoints/last.keras, training.json\); pass "
                                         r"another --output, or --overwrite"):
        train(config)
    assert (tmp_path / "best.keras").read_text() == "earlier"
    config.overwrite = True
    with pytest.raises(ValueError, match="matches no file|no image"):  # then reads the data
        train(config)
    assert not any((tmp_path / name).exists() for name in
                   ("best.keras", "checkpoints/last.keras", "training.json"))


def test_training_warns_about_16_bit_images_that_come_out_dark(tmp_path, caplog):
    """As `segbeam run` does: 12-bit data in 16-bit files trained on near-black images."""
    from segbeam.decode import dark_high_depth_warning
    from segbeam.labels import MaskLabels
    from segbeam.models.training import _usable

    images, masks = _write_pairs(tmp_path, 3)
    gray = np.asarray(Image.open(os.path.join(images, "scene000.png")).convert("L"), np.uint16)
    Image.fromarray(gray * 16).save(os.path.join(images, "scene000.png"))  # 12-bit data
    Image.fromarray(gray * 257).save(os.path.join(images, "scene001.png"))  # the full range
    with caplog.at_level("WARNING"):
        kept, _, dropped, _ = _usable(find_training_pairs(images, masks), MaskLabels(3))
    assert (len(kept), dropped) == (3, 0)
    assert [r.getMessage() for r in caplog.records if "16-bit" in r.getMessage()] == [
        f"training: {dark_high_depth_warning(1)}"]


def test_training_warns_about_images_their_exif_orientation_turns_apart_from_masks(
        tmp_path, caplog):
    """A phone photo upside down by its EXIF tag, its mask made from the stored pixels: the
    model learned from a mask turned against its image, without a word."""
    from segbeam.decode import mask_turned_apart_warning
    from segbeam.labels import MaskLabels
    from segbeam.models.training import _usable

    images, masks = _write_pairs(tmp_path, 3)
    exif = Image.Exif()
    exif[0x0112] = 3  # a half turn: the shape is kept, so nothing else can tell
    path = os.path.join(images, "scene001.png")
    Image.open(path).save(path, exif=exif)
    with caplog.at_level("WARNING"):
        kept, _, _, _ = _usable(find_training_pairs(images, masks), MaskLabels(3))
    assert len(kept) == 3
    assert [r.getMessage() for r in caplog.records if "EXIF" in r.getMessage()] == [
        f"training: {mask_turned_apart_warning(1, 'learned from')}"]


def test_best_keras_is_saved_by_rename_and_only_for_a_better_epoch(tmp_path):
    """best.keras was written in place by Keras's ModelCheckpoint: a machine stopped
    mid-save left the best model of a training cut short."""
    import keras

    from segbeam.models.training_resume import atomic_checkpoint

    best = tmp_path / "best.keras"
    saved = []

    class Model:
        def get_weights(self):
            return [np.zeros(2)]

        def save(self, path, **_):
            if saved and saved[-1] == "fail":
                with open(path, "wb") as handle:
                    handle.write(b"half a model")
                raise OSError("the machine stopped")
            with open(path, "w") as handle:
                handle.write(str(len(saved)))
            saved.append(path)

    callback = atomic_checkpoint(str(best), monitor="val_miou", best=0.25)
    callback.set_model(Model())
    for epoch, value in enumerate([0.2, 0.3, float("nan"), 0.3, None, 0.4]):
        callback.on_epoch_end(epoch, {} if value is None else {"val_miou": value})
    assert len(saved) == 2 and callback.best == 0.4  # 0.3 then 0.4: above 0.25, each better
    before = best.read_bytes()
    saved.append("fail")
    with pytest.raises(OSError, match="the machine stopped"):
        callback.on_epoch_end(6, {"val_miou": 0.9})
    assert best.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.keras"]
    assert isinstance(callback, keras.callbacks.Callback)


def test_a_training_that_diverges_stops_and_says_so_saving_no_model_of_nan(tmp_path, capsys):
    """A learning rate far too high: the loss became NaN in the first epoch, and training
    went on through every epoch, saved model.keras and checkpoints/last.keras with NaN
    weights, printed a chance-level mIoU and exited 0; training.json held NaN, not JSON."""
    from segbeam.models.training_resume import atomic_checkpoint
    from segbeam.pipeline.cli import main

    images, masks = _write_pairs(tmp_path, 8, height=32, width=32)
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny_fcn", "--num_classes", "3", "--images", images,
                 "--masks", masks, "--input_size", "32x32", "--batch_size", "4", "--epochs",
                 "3", "--learning_rate", "1e30", "--quiet", "--output", str(out)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"segbeam train: error: training diverged: the loss became NaN or "
                        r"infinite at epoch 1, batch \d, and the weights with it; model.keras "
                        r"was not written \(checkpoints/last.keras holds the last epoch whose "
                        r"loss was finite, if one was\); lower --learning_rate \(1e\+30\) and "
                        r"train again with --overwrite", line), line
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "history.csv"]
    assert not (out / "checkpoints" / "last.keras").exists()

    # An epoch whose last update made the weights NaN, its loss still finite: not saved.
    saved = []

    class Model:
        weights = [np.ones(3)]

        def get_weights(self):
            return self.weights

        def save(self, path, **_):
            open(path, "w").close()
            saved.append(path)

    checkpoint = atomic_checkpoint(str(tmp_path / "last.keras"))
    checkpoint.set_model(Model())
    checkpoint.on_epoch_end(0, {"loss": 0.5})
    Model.weights = [np.array([1.0, np.nan])]
    checkpoint.on_epoch_end(1, {"loss": 0.4})
    Model.weights = [np.ones(3)]
    checkpoint.on_epoch_end(2, {"loss": float("inf")})
    assert len(saved) == 1


def test_pairs_with_no_pixel_to_score_are_refused_not_scored_as_zero(tmp_path, capsys):
    """Validation masks none of whose pixels is a class (255 everywhere, no ignore index):
    training reported val_loss 0.0 and val_miou 0.0 each epoch, over no pixel, chose
    best.keras on them and exited 0; the warning called them training pairs."""
    from segbeam.models.training import TrainingConfig, train
    from segbeam.pipeline.cli import main

    images, masks = _write_pairs(tmp_path / "train", 4, height=32, width=32)
    val_images, val_masks = _write_pairs(tmp_path / "val", 2, height=32, width=32, seed=1)
    for name in os.listdir(val_masks):
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(os.path.join(val_masks, name))
    argv = ["train", "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "32x32",
            "--epochs", "1", "--quiet"]
    assert main([*argv, "--images", images, "--masks", masks, "--val_images", val_images,
                 "--val_masks", val_masks, "--output", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "segbeam train: error: none of the 2 validation pairs has a mask pixel to score: every "
        "pixel is the ignore index or a value that is not a class ([255]); check "
        "--num_classes, --ignore_index and --label_map against the masks"]
    assert not (tmp_path / "run" / "best.keras").exists()

    # The same masks to train on, under an ignore index: nothing to learn from.
    assert main([*argv, "--images", val_images, "--masks", val_masks, "--ignore_index", "255",
                 "--output", str(tmp_path / "run2")]) == 2
    assert "none of the 2 training pairs has a mask pixel to score" in capsys.readouterr().err

    # Held out by --val_split: only the pairs it holds out count.
    for name in os.listdir(val_images):
        os.replace(os.path.join(val_images, name), os.path.join(images, "v" + name))
        os.replace(os.path.join(val_masks, name), os.path.join(masks, "v" + name))
    seed = next(seed for seed in range(1000)  # one that holds out the last two (v...)
                if set(np.random.default_rng(seed).permutation(6)[:2]) == {4, 5})
    with pytest.raises(ValueError, match="^none of the 2 --val_split 0.34 validation pairs"):
        train(TrainingConfig(model="tiny_fcn", num_classes=3, input_size=(32, 32),
                             images=images, masks=masks, ignore_index=255, epochs=1,
                             output=str(tmp_path / "run3"), val_split=0.34, seed=seed))


def test_train_model_takes_an_architecture_and_says_how_to_start_from_a_saved_one(
        tmp_path, tiny_model_path, capsys):
    """A saved model's path as --model was "unknown model ... (or pass the path of a saved
    .keras model)": the advice of segbeam run, where a path is what the user had passed."""
    from segbeam.pipeline.cli import main

    images, masks = _write_pairs(tmp_path, 2, height=32, width=32)
    argv = ["train", "--num_classes", "3", "--images", images, "--masks", masks,
            "--input_size", "32x32", "--output", str(tmp_path / "run")]
    assert main([*argv, "--model", tiny_model_path]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"segbeam train: error: {tiny_model_path!r} is a saved model, but "
                           f"segbeam train --model takes an architecture to build (")
    assert line.endswith(f"pass that architecture and --init_weights {tiny_model_path}")
    assert main([*argv, "--model", "tiny_fnc"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "segbeam train: error: unknown model 'tiny_fnc'; did you mean tiny_fcn?"]
    assert not (tmp_path / "run").exists()
