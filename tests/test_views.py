"""Overlays (image blended with coloured labels, JPEG) and confidence maps (top-class
probability as 8-bit PNG)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from segbeam.views import confidence_map, confidence_png, overlay_jpeg


def test_an_overlay_is_half_image_half_class_colour():
    image = np.full((16, 16, 3), 200, np.uint8)
    labels = np.zeros((16, 16), np.uint8)
    labels[:, 8:] = 1
    decoded = np.asarray(Image.open(io.BytesIO(overlay_jpeg(image, labels,
                                                            [(0, 0, 0), (0, 0, 255)]))))
    assert decoded.shape == (16, 16, 3)
    assert np.abs(decoded[4, 2].astype(int) - [100, 100, 100]).max() <= 6
    assert np.abs(decoded[4, 13].astype(int) - [100, 100, 228]).max() <= 6


def test_the_confidence_map_is_the_top_probability_in_0_to_255():
    probabilities = np.array([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]], np.float16)
    assert confidence_map(probabilities).tolist() == [[128, 204]]
    decoded = np.asarray(Image.open(io.BytesIO(confidence_png(confidence_map(probabilities)))))
    assert decoded.tolist() == [[128, 204]]


def test_a_run_writes_overlays_and_confidence_for_every_image(tmp_path):
    from segbeam.pipeline.run import run
    from tests.conftest import write_random_pairs

    rng = np.random.default_rng(2)
    write_random_pairs(tmp_path, [rng.integers(0, 3, (24, 32), dtype=np.uint8)
                                  for _ in range(3)])
    argv = ["--input", f"{tmp_path}/images/*.png", "--masks", str(tmp_path / "masks"),
            "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "32",
            "--write_overlays", "--write_confidence", "--quiet"]
    for name, extra in (("crf", ["--crf_iterations", "2"]), ("plain", ["--no-crf"])):
        out = tmp_path / name
        outcome = run(argv + extra + ["--output", str(out)])
        assert outcome.summary["counts"]["segmented"] == 3
        for index in range(3):
            overlay = Image.open(out / "overlays" / f"i{index}.jpg")
            confidence = np.asarray(Image.open(out / "confidence" / f"i{index}.png"))
            assert overlay.size == (32, 24) and overlay.format == "JPEG"
            assert confidence.shape == (24, 32) and confidence.min() >= 255 // 3
