import math

import numpy as np
import pytest

from segbeam.metrics import (confusion_matrix, dense_confusion, per_class_iou,
                                sparse_confusion, summarise_confusion)


def test_confusion_matrix_by_hand():
    truth = np.array([[0, 0, 1], [1, 2, 255]])
    prediction = np.array([[0, 1, 1], [1, 0, 2]])
    expected = np.array([[1, 1, 0],   # truth 0: one right, one called 1
                         [0, 2, 0],   # truth 1: both right
                         [1, 0, 0]])  # truth 2: called 0; the 255 pixel is ignored
    np.testing.assert_array_equal(confusion_matrix(prediction, truth, 3, 255), expected)


def test_out_of_range_truth_is_excluded_like_ignore():
    truth = np.array([0, 7, 1])
    prediction = np.array([0, 0, 0])
    np.testing.assert_array_equal(confusion_matrix(prediction, truth, 2, None),
                                  [[1, 0], [1, 0]])


def test_figures_by_hand():
    # truth 0: 1 right, 1 -> class 1; truth 1: 2 right; truth 2: 1 -> class 0
    confusion = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    figures = summarise_confusion(confusion)
    # IoU: c0 = 1/(2+2-1) = 1/3; c1 = 2/(2+3-2) = 2/3; c2 = 0/(1+0-0) = 0
    np.testing.assert_allclose(figures["iou"], [1 / 3, 2 / 3, 0.0])
    assert figures["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert figures["pixel_accuracy"] == pytest.approx(3 / 5)
    assert figures["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # frequencies 2/5, 2/5, 1/5
    assert figures["fwiou"] == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 2 / 3)
    np.testing.assert_allclose(figures["dice"], [2 / 4, 4 / 5, 0.0])


def test_absent_classes_are_nan_not_zero():
    truth = np.array([0, 0, 1, 1])
    prediction = np.array([0, 0, 1, 0])
    iou = per_class_iou(confusion_matrix(prediction, truth, 4))
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    figures = summarise_confusion(confusion_matrix(prediction, truth, 4))
    assert figures["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # classes 2, 3 left out


def test_an_ignore_index_that_is_a_class_id_has_no_figures_of_its_own():
    # Class 0 is background, ignored: its pixels are not scored, but a pixel of class 1
    # called 0 is still an error for class 1.
    truth = np.array([0, 0, 1, 1, 2, 2])
    prediction = np.array([0, 1, 0, 1, 2, 2])
    confusion = confusion_matrix(prediction, truth, 3, ignore_index=0)
    figures = summarise_confusion(confusion, ignore_index=0)
    assert math.isnan(figures["iou"][0]) and math.isnan(figures["dice"][0])
    np.testing.assert_allclose(figures["iou"][1:], [1 / 2, 1.0])  # c1: 1 / (2 + 2 - 1)
    assert figures["miou"] == pytest.approx((1 / 2 + 1.0) / 2)
    assert figures["pixel_accuracy"] == pytest.approx(3 / 4)
    assert figures["mean_dice"] == pytest.approx((2 / 3 + 1.0) / 2)
    # Without it, class 0's IoU counted as 0 (predicted once, never true) in every mean.
    assert summarise_confusion(confusion)["miou"] == pytest.approx((0 + 1 / 2 + 1.0) / 3)
    # An ignore index outside the classes changes nothing.
    assert summarise_confusion(confusion, 255)["miou"] == summarise_confusion(confusion)["miou"]


def test_no_labelled_pixels_gives_nan_figures():
    figures = summarise_confusion(np.zeros((3, 3), dtype=np.int64))
    assert math.isnan(figures["miou"]) and math.isnan(figures["pixel_accuracy"])


def test_dataset_miou_is_from_summed_confusion_not_mean_of_images():
    a = confusion_matrix(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1]), 2)
    b = confusion_matrix(np.array([1]), np.array([1]), 2)
    mean_of_images = (summarise_confusion(a)["miou"] + summarise_confusion(b)["miou"]) / 2
    dataset = summarise_confusion(a + b)["miou"]
    assert dataset == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert dataset != pytest.approx(mean_of_images)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miou_agrees_with_keras_meaniou_on_random_data(seed):
    import keras

    rng = np.random.default_rng(seed)
    classes = 6
    truth = rng.integers(0, classes, size=(4, 32, 32))
    prediction = np.where(rng.random(truth.shape) < 0.6, truth,
                          rng.integers(0, classes, size=truth.shape))
    truth[:, :3] = 255  # ignored rows
    ours = summarise_confusion(confusion_matrix(prediction, truth, classes, 255))["miou"]
    metric = keras.metrics.MeanIoU(num_classes=classes, ignore_class=255)
    metric.update_state(truth.ravel(), prediction.ravel())
    assert ours == pytest.approx(float(metric.result()), abs=1e-6)


def test_sparse_confusion_round_trips_and_rejects_foreign_cells(rng):
    confusion = confusion_matrix(rng.integers(0, 4, (20, 30)), rng.integers(0, 4, (20, 30)), 5)
    cells = sparse_confusion(confusion)
    assert len(cells) == np.count_nonzero(confusion)  # class 4 never occurs: no cells for it
    np.testing.assert_array_equal(dense_confusion(cells, 5), confusion)
    assert dense_confusion([], 5).sum() == 0
    with pytest.raises(ValueError, match="outside 3 classes"):
        dense_confusion(cells, 3)


def test_a_run_leaves_an_ignored_class_id_out_of_every_figure(tmp_path, tiny_model_path):
    import pyarrow.parquet as pq

    from segbeam.pipeline.run import run
    from tests.conftest import write_random_pairs

    rng = np.random.default_rng(4)
    write_random_pairs(tmp_path, [rng.integers(0, 3, (24, 32), dtype=np.uint8)
                                  for _ in range(3)])
    outcome = run(["--input", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                   "--model", tiny_model_path, "--num_classes", "3", "--ignore_index", "0",
                   "--crf_iterations", "2", "--output", str(tmp_path / "out")])
    rows = pq.read_table(str(tmp_path / "out" / "metrics")).to_pylist()
    assert any(row["confusion_raw"] and any(c["predicted"] == 0 for c in row["confusion_raw"])
               for row in rows)  # the model does predict the ignored class
    for variant in ("raw", "crf"):
        figures = outcome.summary["evaluation"][variant]
        per_class = figures["per_class"]
        assert per_class[0]["iou"] is None and per_class[0]["dice"] is None
        assert per_class[0]["boundary_f1"] is None and per_class[0]["boundary_iou"] is None
        scored = [c["iou"] for c in per_class[1:] if c["iou"] is not None]
        assert figures["miou"] == pytest.approx(sum(scored) / len(scored))
        for row in rows:
            assert row[f"iou_{variant}"][0] is None
