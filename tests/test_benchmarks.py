"""The benchmarks' baselines do the same work as the pipeline, so their ratios mean something;
and each benchmark's measuring step runs. (Speed itself is never asserted here: the
benchmarks print it, see benchmarks/RESULTS.md.)"""

import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks import crf as crf_benchmark
from benchmarks import end_to_end, inference
from segbeam.pipeline.demo import synthetic_scene
from segbeam.pipeline.run import run
from segbeam.crf import CrfParams
from tests.conftest import without_calibration


def test_plain_crf_baseline_equals_the_stage_at_plain_settings(rng):
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    probabilities = rng.dirichlet(np.ones(4), size=(40, 56)).astype(np.float16)
    plain = crf_benchmark.plain_crf(image, probabilities.astype(np.float32), CrfParams())
    stage = crf_benchmark.stage_crf(image, probabilities,
                                    CrfParams(scale=1.0, class_floor=0.0))
    np.testing.assert_array_equal(plain, stage)


def test_class_variants_are_probabilities(rng):
    probabilities = rng.dirichlet(np.ones(11), size=(8, 9)).astype(np.float16)
    for classes in (2, 11, 21):
        variant = crf_benchmark._class_variant(probabilities, classes, rng)
        assert variant.shape == (8, 9, classes)
        np.testing.assert_allclose(variant.sum(-1), 1.0, atol=2e-3)


def test_plain_loop_baseline_writes_what_the_pipeline_writes(tmp_path, demo_model_path):
    rng = np.random.default_rng(2)
    os.makedirs(tmp_path / "data" / "images")
    os.makedirs(tmp_path / "data" / "masks")
    for index in range(5):
        image, mask = synthetic_scene(rng, 48, 64)
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"{index}.png")
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"{index}.png")
    argv = ["--input", f"{tmp_path}/data/images/*.png", "--masks", f"{tmp_path}/data/masks",
            "--model", demo_model_path, "--num_classes", "3", "--ignore_index", "-1",
            "--input_size", "64", "--batch_size", "2"]
    assert end_to_end.plain_loop(argv + ["--output", str(tmp_path / "plain")]) == 5
    run(argv + ["--output", str(tmp_path / "beam")])

    def outputs(folder):
        rows = [r for f in glob.glob(f"{folder}/metrics/*.parquet")
                for r in pq.read_table(f).to_pylist()]
        ignored = ("mask_path", "config_fingerprint")
        return ({r["key"]: {k: v for k, v in r.items() if k not in ignored} for r in rows},
                {os.path.basename(p): np.asarray(Image.open(p))
                 for p in glob.glob(f"{folder}/masks/*.png")})

    plain_rows, plain_masks = outputs(tmp_path / "plain")
    beam_rows, beam_masks = outputs(tmp_path / "beam")
    assert without_calibration(plain_rows)[0] == without_calibration(beam_rows)[0]
    assert len(plain_rows) == 5
    for name, labels in beam_masks.items():
        np.testing.assert_array_equal(plain_masks[name], labels)


def test_inference_variants_measure_the_same_images(tmp_path, tiny_model_path, capsys):
    for variant in inference.VARIANTS:
        inference.main(["--model", tiny_model_path, "--input_size", "32x48", "--images", "3",
                        "--variant", variant, "--batch", "2"])
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["images"] == 3 and result["seconds"] > 0 and result["peak_rss_mib"] > 0


def test_the_model_carried_to_a_device_is_smaller_and_predicts_the_same(tmp_path,
                                                                        tiny_model_path):
    import zipfile

    from benchmarks.device_prepare import slim_model
    from segbeam.models.source import load_model

    target = str(tmp_path / "slim.keras")
    slim_model(tiny_model_path, target)
    with zipfile.ZipFile(target) as archive:
        assert all(item.compress_type == zipfile.ZIP_DEFLATED for item in archive.infolist())
    assert os.path.getsize(target) < 0.8 * os.path.getsize(tiny_model_path)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 48, 3)).astype(np.float32)
    original, slim = load_model(tiny_model_path), load_model(target)
    for weight in slim.weights:  # every weight a float16 value, kept as float32
        values = np.asarray(weight.numpy())
        np.testing.assert_array_equal(values, values.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(np.asarray(slim(images)), np.asarray(original(images)),
                               atol=1e-2)


def test_the_inference_benchmark_uses_frames_in_turn_when_it_has_fewer(monkeypatch, tmp_path):
    frames = []
    for index in range(2):
        path = tmp_path / f"f{index}.png"
        Image.fromarray(np.full((8, 10, 3), 40 * index, np.uint8)).save(path)
        frames.append((str(path), str(path)))
    monkeypatch.setattr(inference, "camvid_pairs", lambda split, count: frames[:count])
    images = inference._images(5, (4, 5))
    assert len(images) == 5 and images[0].shape == (4, 5, 3)
    assert [int(image[0, 0, 0]) for image in images] == [0, 40, 0, 40, 0]


def test_the_crf_phases_benchmark_times_each_compiled_step(tmp_path, monkeypatch):
    """Each step of the keras CRF is timed apart: the Gaussian kernel only where it is built
    for every batch, the rest of the time left over as ``other``; the record is written."""
    from benchmarks import crf_phases

    monkeypatch.setattr(crf_phases, "camvid_pairs", lambda split, count: [])  # synthetic
    output = tmp_path / "phases.json"
    assert crf_phases.main(["--sizes", "24x32x3", "--batches", "2", "--repeats", "1",
                            "--output", str(output)]) == 0
    rows = json.loads(output.read_text())["rows"]
    assert [(row["batch"], row["kernel"]) for row in rows] == [(2, "kept"),
                                                                (2, "built per batch")]
    for row in rows:
        assert row["inputs"] == "synthetic" and row["field_ms"] > 0
        assert row["bilateral_lattice_ms"] > 0 and row["other_ms"] >= 0
        built = row["gaussian_lattice_ms"] > 0 and row["gaussian_kernel_ms"] > 0
        assert built == (row["kernel"] == "built per batch")


def test_the_preprocess_benchmark_compares_every_preset_with_its_formula(tmp_path):
    from benchmarks import preprocess as preprocess_benchmark

    record = tmp_path / "preprocess.json"
    preprocess_benchmark.main(["--input_size", "6x10", "--batch", "2", "--repeats", "1",
                               "--output", str(record)])
    rows = json.loads(record.read_text())["rows"]
    assert [row["preset"].split()[0] for row in rows] == [*preprocess_benchmark.FORMULAS, "none"]
    assert all(row["max_abs_difference"] < 1e-5 for row in rows)


@pytest.mark.slow
def test_the_many_images_rerun_removes_exactly_the_deleted_inputs_masks(tmp_path):
    from benchmarks import many_images

    record = tmp_path / "many.json"
    assert many_images.main(["--count", "6", "--side", "16", "--rerun",
                             "--output", str(record)]) == 0
    rerun = json.loads(record.read_text())["summary"]["rerun_half"]
    assert rerun["inputs_deleted"] == 3
    assert rerun["rerun"]["stale_outputs_removed"] == 3 and rerun["rerun"]["masks_left"] == 3
    assert rerun["fresh"]["stale_outputs_removed"] == 0 and rerun["fresh"]["masks_left"] == 3


def test_the_mask_listing_benchmark_finds_every_mask_both_ways(tmp_path, monkeypatch):
    from benchmarks import mask_listing

    for name in ("STORAGE_EMULATOR_HOST", "NO_GCE_CHECK"):  # restored after the test
        monkeypatch.setenv(name, "")
    mask_listing.main(["--count", "12", "--output", str(tmp_path / "record.json")])
    rows = json.loads((tmp_path / "record.json").read_text())["rows"]
    assert [(row["where"], row["masks"]) for row in rows] == [
        ("Cloud Storage emulator", 12), ("local disk", 12)]


def test_the_standing_benchmark_sums_both_ways_to_the_same_figures(tmp_path, capsys):
    from benchmarks import standing

    standing.main(["--rows", "2000", "--output", str(tmp_path / "record.json")])
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["summary"]["summaries_equal"] is True
    assert [row["way"] for row in record["rows"]] == ["rows", "columns"]
    assert record["rows"][0]["images"] == record["rows"][1]["images"] > 0
    assert "summaries equal" in capsys.readouterr().out


def test_a_benchmark_child_reports_its_own_peak_memory_not_its_parents():
    """Linux keeps ru_maxrss across exec: a child started by a parent holding 300 MB
    reported 300 MB or more whatever it used itself."""
    import subprocess
    import sys

    held = bytearray(300 * 2 ** 20)
    held[::4096] = b"\x01" * len(held[::4096])
    child = subprocess.run([sys.executable, "-c", "from benchmarks.common import "
                            "peak_rss_mib; print(peak_rss_mib())"],
                           capture_output=True, text=True, check=True)
    del held
    assert float(child.stdout) < 200
