"""Calibration figures (ECE over 15 bins, NLL, Brier) on hand-made probabilities with known
answers, and in a run, raw and after the CRF."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segbeam.calibration import calibration_figures, calibration_sums, from_vector, to_vector


def _probabilities(rows):
    return np.array(rows, dtype=np.float32)[None, :, :]  # one row of pixels


def test_known_ece_nll_and_brier():
    probs = _probabilities([[0.9, 0.1]] * 4)
    truth = np.array([[0, 0, 0, 1]], np.uint8)
    figures = calibration_figures(calibration_sums(probs, truth, 2, None))
    assert figures["ece"] == pytest.approx(0.15)  # confidence 0.9, accuracy 0.75
    assert figures["nll"] == pytest.approx((-3 * math.log(0.9) - math.log(0.1)) / 4)
    assert figures["brier"] == pytest.approx((3 * 0.02 + 1.62) / 4)
    assert figures["pixels"] == 4
    full = [b for b in figures["bins"] if b["pixels"]]
    assert len(full) == 1 and full[0]["lower"] == pytest.approx(13 / 15)
    assert full[0]["accuracy"] == 0.75 and full[0]["confidence"] == pytest.approx(0.9)


def test_ignored_pixels_do_not_count_and_sums_add_up():
    probs = _probabilities([[0.6, 0.4], [0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])
    truth = np.array([[0, 1, 255, 1]], np.uint8)
    whole = calibration_sums(probs, truth, 2, 255)
    assert whole.pixels == 3
    left = calibration_sums(probs[:, :2], truth[:, :2], 2, 255)
    right = calibration_sums(probs[:, 2:], truth[:, 2:], 2, 255)
    assert to_vector(left) + to_vector(right) == pytest.approx(to_vector(whole))
    assert from_vector(to_vector(whole)).bins.tolist() == whole.bins.tolist()
    # a zero probability for the true class is floored, not infinite
    assert math.isfinite(calibration_figures(whole)["nll"])
    assert calibration_figures(calibration_sums(probs, np.full((1, 4), 255, np.uint8), 2,
                                                255)) is None


def test_a_run_reports_calibration_raw_and_after_the_crf(tmp_path):
    from segbeam.pipeline.run import run
    from segbeam.pipeline.terminal import format_report
    from tests.conftest import write_random_pairs

    rng = np.random.default_rng(1)
    write_random_pairs(tmp_path, [rng.integers(0, 3, (32, 32), dtype=np.uint8)
                                  for _ in range(3)])
    argv = ["--input", f"{tmp_path}/images/*.png", "--masks", str(tmp_path / "masks"),
            "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "32", "--quiet"]
    with_crf = run(argv + ["--crf_iterations", "2", "--output", str(tmp_path / "a")])
    for variant in ("raw", "crf"):
        figures = with_crf.summary["evaluation"][variant]
        assert figures["calibration"]["pixels"] == figures["labelled_pixels"] == 3 * 32 * 32
        assert 0 <= figures["calibration"]["ece"] <= 1
        assert figures["calibrated_images"] == 3
    assert "ece" in format_report(with_crf)
    plain = run(argv + ["--no-crf", "--output", str(tmp_path / "b")])
    assert plain.summary["evaluation"]["raw"]["calibration"] is None
    asked = run(argv + ["--no-crf", "--calibration", "--output", str(tmp_path / "c")])
    assert asked.summary["evaluation"]["raw"]["calibration"] == \
        with_crf.summary["evaluation"]["raw"]["calibration"]
    assert plain.summary["counts"]["segmented"] == asked.summary["counts"]["segmented"] == 3
