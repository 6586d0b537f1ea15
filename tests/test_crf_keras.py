"""The keras CRF backend (``segbeam.crf_keras``) against pydensecrf: the same labels under
TensorFlow and JAX, the same through the pipeline, and the lattice's own pieces."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segbeam.config import _plain, fingerprint_entries
from segbeam.crf import CrfParams
from segbeam.crf_keras import _bucket, canvas_for
from segbeam.permutohedral import INT32_LIMIT, _plan_digits
from segbeam.pipeline.cli import main
from segbeam.pipeline.crf_flags import crf_processes
from tests.test_end_to_end import _scenes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize("backend, module", [("tensorflow", "tensorflow"), ("jax", "jax"),
                                             ("torch", "torch")])
def test_keras_backend_gives_pydensecrfs_labels(backend, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed; " + (
            "`pip install -e '.[test]'` installs it" if module != "torch" else
            "PyTorch is no test dependency (PyPI's Linux wheel brings ~3 GB of CUDA "
            "libraries); install a CPU build to run this"))
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "tests.crf_backend_check"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert reports[0] == {"check": "backend", "backend": backend}
    scenes = {r["name"]: r for r in reports if r["check"] == "scene"}
    assert set(scenes) == {"two_classes", "five_classes", "class_floor_21", "fine_colour_std",
                           "half_resolution", "on_a_canvas"}
    for name, report in scenes.items():
        # The CRF moved labels (else agreement would show nothing), and the two backends
        # moved the same ones.
        assert report["changed_by_crf"] > 0.05, report
        assert report["agreement"] >= 0.99, report
        assert report["max_marginal_difference"] < 1e-3, report
        assert report["sums_to_one"] and report["left_out_zero"], report
    assert scenes["fine_colour_std"]["bilateral_levels"] >= 3  # the multi-level keys ran
    # Four sizes on one canvas: the marginals of each are those on its own canvas (the
    # padding takes no part), and one function per lattice, traced once, serves all four.
    canvas = next(r for r in reports if r["check"] == "canvas")
    assert canvas["canvases"] == [[40, 56]] and canvas["exact_canvases"] == 4, canvas
    traces = 1 if backend != "torch" else -1  # -1: PyTorch compiles nothing
    assert canvas["lattice_traces"] == {"gaussian lattice": traces,
                                        "bilateral lattice": traces}, canvas
    assert canvas["max_marginal_difference"] <= 1e-6 and canvas["min_agreement"] == 1.0, canvas
    # The Gaussian kernel is built once per size, then kept: the same marginals, bit for bit,
    # as from a CRF that keeps none and builds it for every image.
    assert canvas["kernels_built"] == [4, 4], canvas
    assert canvas["kernels_built_keeping_none"] == 4, canvas
    assert canvas["kept_kernel_difference"] == 0.0, canvas
    # Images of one size refined together give what each gives alone (another compiled
    # program, so float rounding may differ), and nothing passes between them.
    batch = next(r for r in reports if r["check"] == "batch")
    assert batch["max_marginal_difference"] < 1e-3 and batch["min_agreement"] >= 0.999, batch
    assert batch["neighbour_difference"] < 1e-4, batch
    assert batch["compiled_batch_sizes"] == [1, 2], batch  # three images: a batch of 2, of 1


def test_digit_plans_fit_int32_at_every_level_and_keep_keys_apart():
    from keras import ops

    from segbeam.permutohedral import MAX_ENTRIES, _level_values

    rng = np.random.default_rng(0)
    for d, high, entries in ((2, [2047.0, 1023.0], 3 * 2048 * 1024),
                             (5, [30.6, 15.3, 85.0, 85.0, 85.0], 6 * 2048 * 1024),
                             (5, [7.2, 5.4, 1020.0, 1020.0, 1020.0], 6 * 360 * 480),
                             # 4096 x 4096 with a 1-pixel Gaussian: digits split in parts
                             (2, [4095.0, 4095.0], 3 * 4096 * 4096)):
        plan = _plan_digits(d, [0.0] * d, high, entries)
        for index, level in enumerate(plan.levels):
            product = int(np.prod([base for _, _, base in level], dtype=np.float64))
            assert product * (entries if index else 1) <= INT32_LIMIT, (d, high, plan)
        covered = sorted({source for level in plan.levels for source, _, _ in level})
        assert covered == list(range(-1, d))  # the remainder and every coordinate
        # Distinct keys get distinct digits (each level on its own, without the ranks).
        keys = np.unique(np.stack([rng.integers(0, d + 1, 4000)] + [
            rng.integers(low, low + size, 4000)
            for low, size in zip(plan.q_low, plan.q_range)], axis=1), axis=0)
        remainder, q = keys[:, 0].astype(np.int32), keys[:, 1:].astype(np.int32)
        digits = np.stack([ops.convert_to_numpy(_level_values(ops, remainder, q, plan, level))
                           for level in range(len(plan.levels))], axis=1)
        assert len(np.unique(digits, axis=0)) == len(keys)
    assert len(_plan_digits(2, [0.0, 0.0], [2047.0, 1023.0], 3 * 2048 * 1024).levels) == 1
    assert any(divisor > 1 for level in _plan_digits(2, [0.0, 0.0], [4095.0, 4095.0],
                                                     3 * 4096 * 4096).levels
               for _, divisor, _ in level)
    with pytest.raises(ValueError, match="too large for the keras CRF backend"):
        _plan_digits(5, [0.0] * 5, [1.0] * 5, MAX_ENTRIES)


def test_vertex_tables_and_canvases_round_up_by_at_most_an_eighth():
    assert _bucket(3, 100) == 16 and _bucket(40, 30) == 30
    assert canvas_for(360, 480) == (384, 480) and canvas_for(1024, 2048) == (1024, 2048)
    assert canvas_for(13, 37) == (13, 40)
    sides = {canvas_for(side, 1)[0] for side in range(257, 513)}
    assert len(sides) == 8 and max(sides) == 512  # eight canvas sides per octave
    for size in (17, 100, 113037, 200078, 999999):
        rows = _bucket(size, 10 ** 7)
        assert size <= rows <= size * 1.125 + 16


def test_a_batch_too_large_for_one_lattice_is_refined_in_parts(monkeypatch):
    """A lattice holds fewer than MAX_ENTRIES vertex references: a larger batch is refined in
    halves that fit (here the limit is lowered to make 8 images of 16x24 too many for one),
    with the marginals of the batch refined whole."""
    from keras import ops

    from segbeam import permutohedral
    from segbeam.crf_keras import KerasDenseCrf, largest_batch
    from tests.crf_backend_check import scene

    assert largest_batch(1024, 2048) == 85 and largest_batch(360, 480) == 1035
    params = CrfParams(scale=1.0, class_floor=0.0, iterations=2)
    scenes = [scene(16, 24, 3, seed) for seed in range(8)]
    images = [image for image, _ in scenes]
    probabilities = np.stack([probs for _, probs in scenes])
    whole = ops.convert_to_numpy(KerasDenseCrf().refine_many(images, probabilities, params))
    monkeypatch.setattr(permutohedral, "MAX_ENTRIES", 6 * 16 * 24 * 3 + 1)  # 3 per lattice
    assert largest_batch(16, 24) == 3
    crf = KerasDenseCrf()
    parts = ops.convert_to_numpy(crf.refine_many(images, probabilities, params))
    assert sorted({key[3] for key in crf._functions if key[0] == "bilateral lattice"}) == [2]
    np.testing.assert_allclose(parts, whole, atol=1e-5)


def test_gaussian_kernels_are_kept_within_their_memory_budget():
    """Kernels are kept per image size, least recently used out first once the budget is
    exceeded; a budget of 0 keeps none (every image builds its own)."""
    from segbeam.crf_keras import KerasDenseCrf, _bytes
    from tests.crf_backend_check import scene

    params = CrfParams(scale=1.0, class_floor=0.0, iterations=2)
    kept = np.ones(3, dtype=bool)
    scenes = [scene(height, 24, 3, seed) for seed, height in enumerate((16, 20, 16))]
    one = KerasDenseCrf(canvas=lambda height, width: (height, width))
    one.field(scenes[0][0][None], scenes[0][1][None], params, 1e-5, kept[None])
    budget = _bytes(next(iter(one._kernels.values())))
    for kernel_bytes, built in ((0, 3), (budget, 3), (10 * budget, 2)):
        crf = KerasDenseCrf(canvas=lambda height, width: (height, width),
                            kernel_bytes=kernel_bytes)
        crf._functions = one._functions  # compiled once (they hold no kernel), for speed
        for image, probabilities in scenes:  # 16 rows, 20 rows, 16 rows again
            crf.field(image[None], probabilities[None], params, 1e-5, kept[None])
        assert crf.kernels_built == built, (kernel_bytes, crf.kernels_built)
        assert sum(map(_bytes, crf._kernels.values())) <= kernel_bytes


def test_backend_is_checked_and_the_default_keeps_earlier_fingerprints():
    with pytest.raises(ValueError, match="backend must be one of pydensecrf, keras"):
        CrfParams(backend="cuda")
    # Settings holds CrfParams whole: its fingerprint entry is _plain(CrfParams), which
    # leaves the default backend out, as it was before the flag existed.
    assert "backend" not in _plain(CrfParams())
    assert _plain(CrfParams(backend="keras"))["backend"] == "keras"
    assert "backend" not in fingerprint_entries(CrfParams())
    assert fingerprint_entries(CrfParams(backend="keras"))["backend"] == "keras"


def test_crf_processes_auto_uses_the_cores_on_the_local_runner(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert crf_processes(0, "pydensecrf", True, None) == 8
    assert crf_processes(0, "pydensecrf", True, 2) == 4  # shared among Beam's workers
    assert crf_processes(0, "pydensecrf", False, None) == 1  # Dataflow: a process per core
    assert crf_processes(0, "keras", True, None) == 1  # its kernels use the cores already
    assert crf_processes(3, "pydensecrf", False, None) == 3
    with pytest.raises(ValueError, match="--crf_processes"):
        crf_processes(-1, "pydensecrf", True, None)


def test_a_mistyped_backend_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:  # argparse: usage line and exit 2
        main(["run", "--input", str(tmp_path / "*.png"), "--model", "tiny_fcn",
              "--num_classes", "3", "--crf_backend", "kera", "--output", str(tmp_path)])
    assert stopped.value.code == 2
    assert "invalid choice: 'kera'" in capsys.readouterr().err
    code = main(["run", "--input", str(tmp_path / "*.png"), "--model", "tiny_fcn",
                 "--num_classes", "3", "--crf_processes", "-1", "--output", str(tmp_path)])
    assert code == 2
    assert "--crf_processes must be 0 (auto) or more" in capsys.readouterr().err


def test_the_pipeline_gives_the_same_masks_with_either_backend(tmp_path, demo_model_path,
                                                              monkeypatch, caplog):
    """segbeam run with pydensecrf, with the keras backend as its own stage, and with it fused
    after the model (a worker that reports an accelerator): the same masks and summary."""
    import segbeam.transforms.inference as inference

    rng = np.random.default_rng(5)
    data = tmp_path / "data"
    _scenes(str(data), [(64, 96), (80, 80), (72, 120)], rng, masks_for={0, 1, 2})
    masks, summaries = {}, {}
    for name, backend, accelerator in (("pydensecrf", "pydensecrf", False),
                                       ("keras", "keras", False),
                                       ("keras_fused", "keras", True)):
        monkeypatch.setattr(inference, "keras_on_accelerator", lambda: accelerator)
        caplog.clear()
        output = tmp_path / name
        with caplog.at_level("INFO", logger="segbeam.transforms.inference"):
            code = main(["run", "--input", f"{data}/images/*", "--masks", str(data / "masks"),
                         "--output", str(output), "--model", demo_model_path,
                         "--num_classes", "3", "--input_size", "64", "--ignore_index", "-1",
                         "--crf_backend", backend, "--quiet"])
        assert code == 0
        fused = "the keras CRF runs on the device right after the model" in caplog.text
        assert fused == accelerator
        masks[name] = {os.path.basename(p): np.asarray(Image.open(p))
                       for p in glob.glob(f"{output}/masks/*.png")}
        summaries[name] = json.load(open(output / "summary.json"))
        assert json.load(open(output / "manifest.json"))["crf"]["backend"] == backend
    assert sorted(masks["keras"]) == sorted(masks["pydensecrf"]) and len(masks["keras"]) == 3
    for name in ("keras", "keras_fused"):
        agreement = np.mean([np.mean(masks[name][k] == masks["pydensecrf"][k])
                             for k in masks[name]])
        assert agreement >= 0.999
        assert summaries[name]["counts"] == summaries["pydensecrf"]["counts"]
        assert summaries[name]["evaluation"]["crf"]["miou"] == pytest.approx(
            summaries["pydensecrf"]["evaluation"]["crf"]["miou"], abs=0.005)


@pytest.mark.parametrize("resize_mode", ["resize", "letterbox", "pad"])
def test_the_crf_fused_after_the_model_gives_the_stages_records(rng, demo_model_path,
                                                               resize_mode):
    """The handler with the CRF on the device (forced here on a CPU) against the handler and
    the CRF stage apart: the same raw and refined labels, calibration sums (images with a
    mask) and confidence maps, for images of several sizes placed on one canvas in each way
    (stretched, letterboxed, padded: each image's region is cropped back on the device)."""
    from segbeam.inference import InferenceSettings
    from segbeam.models.source import ModelSource
    from segbeam.pipeline.demo import synthetic_scene
    from segbeam.records import SegmentationRecord
    from segbeam.transforms.fused_crf import FusedCrf
    from segbeam.transforms.inference import KerasSegmentationHandler
    from segbeam.refinement import refine_record

    params = CrfParams(backend="keras", min_side=32)
    fused = FusedCrf(params, 3, 255, keep_confidence=True)
    records = []
    for index, size in enumerate([(64, 96), (80, 80), (72, 120), (64, 64)]):
        image, mask = synthetic_scene(rng, *size)
        records.append(SegmentationRecord(f"k{index}", f"s{index}", image=image,
                                          mask=mask if index % 2 == 0 else None))
    canvas = (128, 128) if resize_mode == "pad" else (64, 64)  # pad: every image must fit
    source = ModelSource(demo_model_path, num_classes=3, input_size=canvas)
    results = {}
    for fuse in (True, False):
        handler = KerasSegmentationHandler(source, InferenceSettings(resize_mode=resize_mode),
                                           fused_crf=fused, fuse=fuse)
        predicted = handler.run_inference(records, handler.load_model())
        assert all(r.crf_applied == fuse for r in predicted)
        results[fuse] = [refine_record(r, params, 3, 255, True) for r in predicted]
    for device, stage in zip(results[True], results[False]):
        assert device.probabilities is None and stage.probabilities is None
        np.testing.assert_array_equal(device.raw_labels, stage.raw_labels)
        assert np.mean(device.crf_labels == stage.crf_labels) >= 0.999
        assert np.mean(device.crf_labels != device.raw_labels) > 0.005  # the CRF did work
        assert np.abs(device.confidence.astype(int) - stage.confidence).max() <= 1
        if device.mask is None:
            assert device.calibration_raw is None and stage.calibration_raw is None
        else:
            for ours, theirs in ((device.calibration_raw, stage.calibration_raw),
                                 (device.calibration_crf, stage.calibration_crf)):
                for mine, other in zip(ours, theirs):
                    np.testing.assert_allclose(mine, other, rtol=1e-3)


@pytest.mark.parametrize("sizes", ["different", "one"])
@pytest.mark.parametrize("failure", ["error", "out_of_memory"])
def test_a_fused_crf_failure_is_that_images_crf_dead_letter(rng, demo_model_path, monkeypatch,
                                                           failure, sizes):
    """The CRF fused after the model fails on one image of a batch: that image is a dead
    letter of stage crf (not inference), the others are refined. Images of one size are
    refined together; where that fails, each alone. Out of memory, the handler first runs
    the batch in smaller parts (the batch's outputs share the device's memory)."""
    from segbeam.crf_keras import KerasDenseCrf
    from segbeam.inference import InferenceSettings
    from segbeam.models.source import ModelSource
    from segbeam.pipeline.demo import synthetic_scene
    from segbeam.records import DeadLetter, SegmentationRecord
    from segbeam.transforms.fused_crf import FusedCrf
    from segbeam.transforms.inference import KerasSegmentationHandler

    shapes = [(64, 96), (80, 80), (72, 120), (64, 64)] if sizes == "different" else [(64, 80)] * 4
    records = [SegmentationRecord(f"k{i}", f"s{i}", image=synthetic_scene(rng, *size)[0])
               for i, size in enumerate(shapes)]
    refine_many = KerasDenseCrf.refine_many
    calls = []

    def failing(self, images, probabilities, params, min_probability=1e-5):
        calls.append([next(r.key for r in records if r.image is image) for image in images])
        if any(image is records[1].image for image in images):
            raise (MemoryError("out of memory refining") if failure == "out_of_memory"
                   else ValueError("the lattice is too large"))
        return refine_many(self, images, probabilities, params, min_probability)

    monkeypatch.setattr(KerasDenseCrf, "refine_many", failing)
    handler = KerasSegmentationHandler(
        ModelSource(demo_model_path, num_classes=3, input_size=(64, 64)), InferenceSettings(),
        fused_crf=FusedCrf(CrfParams(backend="keras", min_side=32)), fuse=True)
    results = handler.run_inference(records, handler.load_model())
    assert [type(r).__name__ for r in results] == ["SegmentationRecord", "DeadLetter",
                                                  "SegmentationRecord", "SegmentationRecord"]
    assert results[1] == DeadLetter("k1", "s1", "crf", {
        "error": "ValueError: the lattice is too large",
        "out_of_memory": "MemoryError: out of memory refining"}[failure])
    assert all(r.crf_applied and r.crf_labels is not None for r in results if r is not results[1])
    failed = [call for call in calls if "k1" in call]
    if sizes == "different":  # every image on its own
        # Out of memory, the batch of 4 ran again as 2 + 2, then the failing image alone.
        assert failed == ([["k1"]] * 3 if failure == "out_of_memory" else [["k1"]])
    elif failure == "error":  # the four together, then each alone
        assert calls == [["k0", "k1", "k2", "k3"], ["k0"], ["k1"], ["k2"], ["k3"]]
    else:  # the handler splits the batch: 4, then 2 + 2, then 1 + 1 for the pair with k1
        assert failed == [["k0", "k1", "k2", "k3"], ["k0", "k1"], ["k1"]], calls
