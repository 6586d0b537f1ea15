"""Boundary F1 and boundary IoU on hand-made masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from segbeam.boundary import bf_tolerance, boundary_f1, boundary_iou_counts, boundary_pixels


def _halves(height, width, split):
    labels = np.zeros((height, width), np.uint8)
    labels[:, split:] = 1
    return labels


def test_boundary_pixels_are_the_pixels_next_to_another_class_not_the_border():
    edges = boundary_pixels(_halves(4, 4, 2).astype(np.int32))
    assert edges.astype(int).tolist() == [[0, 1, 1, 0]] * 4


def test_the_tolerance_is_three_quarters_of_a_percent_of_the_diagonal_rounded_up():
    assert bf_tolerance(100, 100) == 2  # 0.75% of 141.4 = 1.06
    assert bf_tolerance(360, 480) == 5  # 0.75% of 600 = 4.5


@pytest.mark.parametrize("shift, expected", [(0, 1.0), (2, 1.0), (3, 0.0)])
def test_a_shifted_edge_scores_by_the_tolerance(shift, expected):
    truth = _halves(100, 100, 50)
    prediction = _halves(100, 100, 50 + shift)
    bf, per_class = boundary_f1(prediction, truth, 2, None)
    assert bf == pytest.approx(expected) and per_class.tolist() == pytest.approx([expected] * 2)


def test_classes_on_one_side_only_score_zero_and_empty_boundaries_one():
    truth = np.zeros((40, 40), np.uint8)
    prediction = truth.copy()
    prediction[10:20, 10:20] = 1
    bf, per_class = boundary_f1(prediction, truth, 3, None)
    # class 0: no true boundary, a predicted one -> 0; class 1 only predicted -> 0; class 2
    # absent from both -> not counted
    assert bf == 0.0 and per_class[:2].tolist() == [0.0, 0.0] and np.isnan(per_class[2])
    assert boundary_f1(truth, truth, 3, None)[0] == 1.0  # one class, no boundary at all


def test_ignore_pixels_belong_to_no_class_in_either_map():
    truth = _halves(30, 30, 16)
    truth[:, 14:16] = 255  # an unlabelled band between the classes
    for split in (14, 15, 16):  # anywhere inside the band: the same labelled boundary
        bf, _ = boundary_f1(_halves(30, 30, split), truth, 2, 255)
        assert bf == 1.0
    assert boundary_f1(_halves(30, 30, 12), truth, 2, 255)[0] < 1.0


def test_an_ignore_index_that_is_a_class_id_is_not_scored_for_boundaries():
    truth = _halves(30, 30, 15)
    prediction = truth.copy()
    prediction[5:10, 3:8] = 2  # a blob of class 2, the ignore index, inside class 0
    bf, per_class = boundary_f1(prediction, truth, 3, 2)
    assert np.isnan(per_class[2]) and not np.isnan(per_class[0])
    assert bf == pytest.approx(np.nanmean(per_class[:2]))
    intersections, unions = boundary_iou_counts(prediction, truth, 3, 2)
    assert intersections[2] == unions[2] == 0 and unions[0] > 0
    assert boundary_f1(prediction, truth, 3, None)[1][2] == 0.0  # scored, it would count 0


def test_partial_agreement_is_the_harmonic_mean_of_precision_and_recall():
    truth = np.zeros((100, 100), np.uint8)
    truth[:, 50:] = 1
    prediction = truth.copy()
    prediction[:50, 50:60] = 0  # the top half of the edge is 10 pixels off
    _, per_class = boundary_f1(prediction, truth, 2, None)
    true_edges = boundary_pixels(truth.astype(np.int32))
    predicted_edges = boundary_pixels(prediction.astype(np.int32))
    # brute force for class 1: distances between every pair of boundary pixels
    t = np.argwhere(true_edges & (truth == 1))
    p = np.argwhere(predicted_edges & (prediction == 1))
    distances = np.sqrt(((p[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    precision = np.mean(distances.min(1) <= 2)
    recall = np.mean(distances.min(0) <= 2)
    assert per_class[1] == pytest.approx(2 * precision * recall / (precision + recall))
    assert 0 < per_class[1] < 1


def _naive_band(region, width):
    """Cheng et al.'s mask_to_boundary: zero padding, ``width`` 3x3 erosions, mask - eroded."""
    eroded = np.pad(region, 1)
    for _ in range(width):
        shifted = [np.roll(np.roll(eroded, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in
                   (-1, 0, 1)]
        eroded = np.logical_and.reduce(shifted)
        eroded[[0, -1], :] = eroded[:, [0, -1]] = False
    return region & ~eroded[1:-1, 1:-1]


def test_boundary_iou_counts_match_the_erosion_definition():
    rng = np.random.default_rng(0)
    truth = np.zeros((60, 80), np.uint8)
    truth[10:40, 20:50] = 1
    truth[45:55, 5:30] = 2
    prediction = np.roll(truth, 2, axis=1)
    prediction[rng.random(truth.shape) < 0.02] = 1
    intersections, unions = boundary_iou_counts(prediction, truth, 4, None)
    width = max(1, round(0.02 * np.hypot(60, 80)))
    for c in range(3):
        true_band = _naive_band(truth == c, width)
        predicted_band = _naive_band(prediction == c, width)
        assert intersections[c] == np.count_nonzero(true_band & predicted_band)
        assert unions[c] == np.count_nonzero(true_band | predicted_band)
    assert intersections[3] == unions[3] == 0
    same = boundary_iou_counts(truth, truth, 3, None)
    assert same[0].tolist() == same[1].tolist()
    assert same[0][1] == 30 * 30 - (30 - 2 * width) ** 2  # a ring ``width`` pixels wide


def test_a_run_reports_boundary_figures_from_its_rows(tmp_path):
    """Dataset BF is the mean of the rows' BF; dataset boundary IoU comes from the summed
    counts; a row without them (from an older run) is counted, not silently averaged in."""
    import pyarrow.parquet as pq

    from segbeam.boundary import BoundaryTotals
    from segbeam.pipeline.run import run
    from segbeam.pipeline.terminal import format_report
    from tests.conftest import write_random_pairs

    masks = []
    for index in range(4):
        mask = np.zeros((32, 32), np.uint8)
        mask[:, 8 + 4 * index:] = 1
        mask[20:, :10] = 2
        masks.append(mask)
    write_random_pairs(tmp_path, masks)
    outcome = run(["--input", f"{tmp_path}/images/*.png", "--masks", str(tmp_path / "masks"),
                   "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "32",
                   "--crf_iterations", "2", "--quiet", "--output", str(tmp_path / "out")])
    rows = pq.read_table(str(tmp_path / "out" / "metrics")).to_pylist()
    for variant in ("raw", "crf"):
        figures = outcome.summary["evaluation"][variant]
        scored = [row[f"bf_{variant}"] for row in rows if row[f"bf_{variant}"] is not None]
        assert figures["boundary_f1"] == pytest.approx(np.mean(scored))
        assert figures["boundary_images"] == len(scored) == 4
        inter = np.sum([row[f"boundary_intersection_{variant}"] for row in rows], axis=0)
        union = np.sum([row[f"boundary_union_{variant}"] for row in rows], axis=0)
        assert figures["boundary_iou"] == pytest.approx(np.mean(inter[union > 0] /
                                                                union[union > 0]))
    assert "boundary_f1" in format_report(outcome)
    old = dict(rows[0], bf_raw=None, boundary_union_raw=None)
    del old["bf_classes_raw"]
    totals = BoundaryTotals(3)
    totals.add(old, "raw")
    assert totals.summary()["rows_without_boundary"] == 1
