"""A batch the model fails on loses only the images it fails on; an out-of-memory error splits
the batch and lowers the batch size for what follows."""

from __future__ import annotations

import numpy as np
import pytest

from segbeam.inference import InferenceSettings, is_out_of_memory
from segbeam.models.source import ModelSource
from segbeam.records import DeadLetter, SegmentationRecord
from segbeam.transforms.inference import KerasSegmentationHandler

POISON = 255  # images filled with this value make the fake model raise


class ResourceExhaustedError(Exception):
    """Named as TensorFlow names its out-of-memory error."""


class FakePredictor:
    """Labels every pixel 1; raises on a batch holding a poison image, and (with
    ``fits``) runs out of memory on batches larger than ``fits``."""

    def __init__(self, fits=None):
        self.fits, self.calls = fits, []

    def _check(self, batch):
        self.calls.append(len(batch))
        if self.fits is not None and len(batch) > self.fits:
            raise ResourceExhaustedError(f"OOM when allocating tensor of {len(batch)} images")
        if any(image.min() == POISON for image in batch):
            raise ValueError("the model cannot take this image\nand a second line")

    def predict_labels(self, batch):
        self._check(batch)
        return np.ones(batch.shape[:3], np.uint8)

    def predict(self, batch):
        self._check(batch)
        probabilities = np.zeros((*batch.shape[:3], 3), np.float16)
        probabilities[..., 1] = 1
        return probabilities, np.ones(batch.shape[:3], np.uint8)

    def serves_keras(self):
        return False  # as an ONNX model: the batch comes preprocessed, float32

    def take_doubt(self):
        return False

    def fixed_input_size(self):
        return None

    def num_classes(self):
        return 3


def _records(poisoned, count=8):
    records = []
    for index in range(count):
        value = POISON if index in poisoned else index
        records.append(SegmentationRecord(f"k{index}", f"mem://k{index}",
                                          image=np.full((16, 16, 3), value, np.uint8),
                                          height=16, width=16))
    return records


def _handler(batch_size=8):
    return KerasSegmentationHandler(ModelSource("tiny_fcn", num_classes=3, input_size=(16, 16)),
                                    InferenceSettings(batch_size=batch_size),
                                    keep_probabilities=False)


@pytest.mark.parametrize("poisoned", [{3}, {0, 7}, set(range(8))])
def test_only_the_images_the_model_fails_on_become_dead_letters(poisoned):
    model = FakePredictor()
    results = list(_handler().run_inference(_records(poisoned), model))
    dead = [r.key for r in results if isinstance(r, DeadLetter)]
    assert dead == [f"k{i}" for i in sorted(poisoned)]
    assert [r.key for r in results] == [f"k{i}" for i in range(8)]  # order kept
    assert all(r.raw_labels.shape == (16, 16) for r in results if not isinstance(r, DeadLetter))
    reasons = {r.reason for r in results if isinstance(r, DeadLetter)}
    assert reasons == {"ValueError: the model cannot take this image"}
    assert len(model.calls) <= 2 * 8 - 1


def test_out_of_memory_splits_the_batch_and_later_batches_start_smaller():
    handler, model = _handler(), FakePredictor(fits=3)
    first = list(handler.run_inference(_records(set()), model))
    assert not any(isinstance(r, DeadLetter) for r in first) and len(first) == 8
    calls_for_first = len(model.calls)
    assert model.calls[0] == 8 and max(model.calls[1:]) <= 4
    second = list(handler.run_inference(_records(set()), model))
    assert len(second) == 8 and not any(isinstance(r, DeadLetter) for r in second)
    assert max(model.calls[calls_for_first:]) <= 2  # the size that fitted, from the start


def test_out_of_memory_on_one_image_is_a_dead_letter_that_says_so():
    results = list(_handler().run_inference(_records(set(), count=2), FakePredictor(fits=0)))
    assert [isinstance(r, DeadLetter) and "OOM when allocating" in r.reason
            for r in results] == [True, True]


@pytest.mark.parametrize("error, expected", [
    (ResourceExhaustedError("x"), True), (MemoryError(), True),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (ValueError("shapes do not match"), False)])
def test_out_of_memory_is_recognised_across_backends(error, expected):
    assert is_out_of_memory(error) is expected


def test_in_a_pipeline_one_bad_image_does_not_take_its_batch_down():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from segbeam.transforms.inference import RunSegmentationInference

    class FakeHandler(KerasSegmentationHandler):
        def load_model(self):
            return FakePredictor()

    handler = FakeHandler(ModelSource("tiny_fcn", num_classes=3, input_size=(16, 16)),
                          InferenceSettings(batch_size=8, min_batch_size=8),
                          keep_probabilities=False)
    with TestPipeline() as p:
        predicted, dead = (p | beam.Create(_records({5}))
                           | RunSegmentationInference(handler))
        assert_that(predicted | beam.Map(lambda r: r.key),
                    equal_to([f"k{i}" for i in range(8) if i != 5]), label="predicted")
        assert_that(dead | beam.Map(lambda d: (d.key, d.stage)), equal_to([("k5", "inference")]),
                    label="dead")


def test_a_failure_while_the_job_runs_is_one_line_and_exit_5_not_a_usage_error(
        tmp_path, monkeypatch, capsys):
    """Whatever a worker raised ended the run as a usage error (exit 2) when it was a
    ValueError, printed whole: a damaged TFRecord shard printed a megabyte of hex."""
    import os

    from segbeam.pipeline import graph
    from segbeam.pipeline.cli import main
    from tests.conftest import png_bytes

    os.makedirs(tmp_path / "images")
    (tmp_path / "images" / "a.png").write_bytes(png_bytes(np.zeros((16, 16, 3), np.uint8)))

    def failing(*_args, **_settings):
        raise ValueError("not a usage error " + "0f" * 100_000)

    monkeypatch.setattr(graph, "summarise_run", failing)
    code = main(["run", "--input", str(tmp_path / "images"), "--model", "tiny_fcn",
                 "--num_classes", "3", "--input_size", "16", "--no-crf", "--quiet",
                 "--output", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 5 and len(lines[-1]) < 600
    assert lines[-1].startswith("segbeam run: the job failed while running: ValueError: not a "
                                "usage error 0f0f")
    saved = lines[-1].rsplit("the full traceback is in ", 1)[1].rstrip(")")
    assert "not a usage error" in open(saved).read()
    assert not (tmp_path / "out" / "_RUNNING").exists()
