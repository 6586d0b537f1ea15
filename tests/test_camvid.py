"""A real-data run over CamVid val images (../shared/data/camvid), when that folder exists."""

import glob
import json
import os

import numpy as np
import pytest
from PIL import Image

from segbeam.pipeline.run import run
from tests.conftest import CAMVID

pytestmark = pytest.mark.skipif(
    not os.path.isdir(os.path.join(CAMVID, "val")),
    reason=f"CamVid not found at {os.path.normpath(CAMVID)} (shared data lives beside the "
           f"repository)")


def test_camvid_val_subset_reports_all_eleven_classes(tmp_path):
    names = sorted(os.listdir(os.path.join(CAMVID, "val")))[:6]
    subset = tmp_path / "val"
    subset.mkdir()
    for name in names:  # links, not copies: the data stays in ../shared
        os.symlink(os.path.realpath(os.path.join(CAMVID, "val", name)), subset / name)
    output = tmp_path / "out"
    outcome = run(["--input", f"{subset}/*.png", "--masks", os.path.join(CAMVID, "valannot"),
                   "--output", str(output), "--model", "tiny_fcn", "--num_classes", "11",
                   "--class_names", "camvid", "--ignore_index", "11", "--input_size", "192x256",
                   "--crf_iterations", "3"])
    summary = json.loads((output / "summary.json").read_text())
    assert summary == outcome.summary
    assert summary["counts"]["outputs"] == 6 and summary["counts"]["accounted_for"]
    present = set()
    for name in names:
        mask = np.asarray(Image.open(os.path.join(CAMVID, "valannot", name)))
        present |= set(np.unique(mask[mask != 11]).tolist())
    for variant in ("raw", "crf"):
        per_class = summary["evaluation"][variant]["per_class"]
        assert [c["name"] for c in per_class][:3] == ["sky", "building", "pole"]
        assert len(per_class) == 11
        for entry in per_class:
            if entry["class_id"] in present:
                assert entry["iou"] is not None, entry
            assert entry["truth_pixels"] == 0 or entry["class_id"] in present
    for path in glob.glob(f"{output}/masks/*.png"):
        assert np.asarray(Image.open(path)).shape == (360, 480)
