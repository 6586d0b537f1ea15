"""File names that are not UTF-8: accounted for as dead letters, never the end of the run."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from segbeam.keys import printable_path


def test_printable_path_escapes_what_is_not_utf8():
    assert printable_path("/data/café.png") is None
    undecodable = os.fsdecode(b"/data/caf\xe9.png")  # how Linux hands Python a latin-1 name
    assert printable_path(undecodable) == "/data/caf\\xe9.png"


def test_an_image_named_in_latin1_is_a_dead_letter_and_the_rest_runs(tmp_path):
    from segbeam.pipeline.run import run

    images = tmp_path / "images"
    images.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(data).save(images / "ok.png")
    with open(os.path.join(os.fsencode(images), b"caf\xe9.png"), "wb") as handle:
        handle.write((images / "ok.png").read_bytes())
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "masks" / "ok.png")
    with open(os.path.join(os.fsencode(tmp_path / "masks"), b"caf\xe9.png"), "wb") as handle:
        handle.write((tmp_path / "masks" / "ok.png").read_bytes())
    outcome = run(["--input", f"{images}/*.png", "--masks", str(tmp_path / "masks"),
                   "--model", "tiny_fcn", "--num_classes", "3", "--input_size", "64",
                   "--no-crf", "--output", str(tmp_path / "out")])
    counts = outcome.summary["counts"]
    assert (counts["inputs"], counts["segmented"], counts["dead_letters"]) == (2, 1, 1)
    assert counts["accounted_for"] and counts["images_with_mask"] == 1
    dead = [json.loads(line) for path in (tmp_path / "out" / "dead_letters").iterdir()
            for line in path.read_text().splitlines()]
    assert [(d["source"].endswith("caf\\xe9.png"), d["stage"]) for d in dead] == [(True, "pair")]
    assert "not valid UTF-8" in dead[0]["reason"]
