"""Each transform inside a TestPipeline, asserting on what comes out."""

import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from segbeam.crf import CrfParams
from segbeam.inference import InferenceSettings
from segbeam.models.source import ModelSource
from segbeam.records import SegmentationRecord
from segbeam.transforms.aggregate import ConfusionSum
from segbeam.transforms.inference import KerasSegmentationHandler, RunSegmentationInference
from segbeam.transforms.read import FindFiles, MatchImages, ReadAndDecode
from segbeam.transforms.refine import RefineWithCRF
from segbeam.transforms.scoring import ScoreImages, metrics_row
from segbeam.transforms.write import WriteLabelMasks
from tests.conftest import random_image


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def image_tree(tmp_path, rng):
    """images: a.png, b.jpg, sub/c.png, d.png + d.jpg (same key), bad.png (corrupt);
    masks: a.png, c.png."""
    root = tmp_path / "images"
    for name in ("a.png", "b.jpg", "sub/c.png", "d.png", "d.jpg"):
        _save(str(root / name), random_image(rng, 8, 10))
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    for name in ("a.png", "c.png"):
        _save(str(tmp_path / "masks" / name), np.ones((8, 10), np.uint8))
    return tmp_path


def test_match_images_pairs_masks_by_stem_and_rejects_shared_keys(image_tree):
    """sub/c.png takes masks/c.png by stem (the only image and mask of that stem); d.png and
    d.jpg would share the key d, so both are dead letters rather than whichever came first."""
    root = str(image_tree / "images")
    (image_tree / "masks" / "orphan.png").write_bytes(b"not read")
    with TestPipeline() as p:
        refs, dead, unclaimed = p | MatchImages(root + "/**", str(image_tree / "masks"))
        assert_that(refs | beam.Map(lambda r: (r.key, os.path.basename(r.mask_source or ""))),
                    equal_to([("a", "a.png"), ("b", ""), ("sub/c", "c.png"), ("bad", "")]),
                    label="refs")
        assert_that(dead | beam.Map(lambda d: (d.key, d.stage, os.path.basename(d.source),
                                               "2 files share the key 'd'" in d.reason)),
                    equal_to([("d", "pair", "d.jpg", True), ("d", "pair", "d.png", True)]),
                    label="dead")
        assert_that(unclaimed | beam.Map(os.path.basename), equal_to(["orphan.png"]),
                    label="unclaimed")


def test_find_and_decode_files_dead_letters_the_corrupt_file(image_tree):
    """The graph's own path for loose files: FindFiles, then ReadAndDecode."""
    root = str(image_tree / "images")
    with TestPipeline() as p:
        refs, unpaired, inputs, _ = p | FindFiles(root + "/*.png", str(image_tree / "masks"))
        records, dead = refs | ReadAndDecode(max_pixels=10_000)
        assert_that(unpaired, equal_to([]), label="unpaired")
        assert_that(records | beam.Map(lambda r: (r.key, r.image.shape, r.has_mask)),
                    equal_to([("a", (8, 10, 3), True), ("d", (8, 10, 3), False)]),
                    label="records")
        assert_that(dead | beam.Map(lambda d: (d.key, d.stage)), equal_to([("bad", "decode")]),
                    label="dead")
        assert_that(inputs, equal_to([3]), label="inputs")


def _record(key, rng, height, width, **fields):
    return SegmentationRecord(key, f"mem://{key}", image=random_image(rng, height, width),
                              height=height, width=width, **fields)


def test_inference_batches_mixed_sizes_and_maps_back(tiny_model_path, rng):
    records = [_record("a", rng, 30, 50), _record("b", rng, 64, 64), _record("c", rng, 17, 90)]
    handler = KerasSegmentationHandler(ModelSource(tiny_model_path, num_classes=3,
                                                   input_size=(32, 32)),
                                       InferenceSettings(batch_size=3, min_batch_size=3))
    with TestPipeline() as p:
        predicted, dead = p | beam.Create(records) | RunSegmentationInference(handler)
        assert_that(predicted | beam.Map(lambda r: (
            r.key, r.probabilities.shape, r.probabilities.dtype.name, r.raw_labels.shape,
            bool(np.allclose(r.probabilities.astype(np.float32).sum(-1), 1, atol=1e-2)))),
            equal_to([("a", (30, 50, 3), "float16", (30, 50), True),
                      ("b", (64, 64, 3), "float16", (64, 64), True),
                      ("c", (17, 90, 3), "float16", (17, 90), True)]), label="predicted")
        assert_that(dead, equal_to([]), label="dead")


def test_run_inference_can_read_its_memory_use(tiny_model_path, rng, caplog):
    """Beam 2.77 loses the `resource` module when PyTorch is absent (segbeam.compat puts
    it back): its memory metric reads the process's peak RSS, and no warning is logged."""
    from apache_beam.ml.inference import base

    handler = KerasSegmentationHandler(ModelSource(tiny_model_path, num_classes=3,
                                                   input_size=(32, 32)))
    # After the handler is made (the patch is applied there): alone, this test ran first.
    assert base._get_current_process_memory_in_bytes() > 0
    with caplog.at_level("WARNING"):
        with TestPipeline() as p:
            _ = p | beam.Create([_record("a", rng, 32, 32)]) | RunSegmentationInference(handler)
    assert not [r for r in caplog.records if "Resource module" in r.getMessage()]


def test_labels_only_inference_gives_the_same_labels(tiny_model_path, rng):
    """Without a CRF the handler skips the probabilities where the images are at the input
    size, and falls back to them (to map labels back) where they are not."""
    def infer(records, keep, labels_only_path=False):
        handler = KerasSegmentationHandler(ModelSource(tiny_model_path, num_classes=3,
                                                       input_size=(32, 48)),
                                           keep_probabilities=keep)
        model = handler.load_model()
        if labels_only_path:
            model.predict = lambda batch: pytest.fail("probabilities were computed")
        return handler.run_inference(records, model)

    at_size = [_record(k, rng, 32, 48) for k in "abc"]
    mixed = [_record("d", rng, 32, 48), _record("e", rng, 20, 70)]
    for records in (at_size, mixed):
        full = infer(records, True)
        labels_only = infer(records, False, labels_only_path=records is at_size)
        for with_probs, without in zip(full, labels_only):
            np.testing.assert_array_equal(without.raw_labels, with_probs.raw_labels)
            assert with_probs.probabilities is not None and without.probabilities is None


def test_inference_failures_become_dead_letters(tiny_model_path, rng):
    broken = SegmentationRecord("broken", "mem://broken", image=np.zeros((4, 4), np.uint8))
    handler = KerasSegmentationHandler(ModelSource(tiny_model_path, num_classes=3,
                                                   input_size=(32, 32)),
                                       InferenceSettings(batch_size=1))
    with TestPipeline() as p:
        predicted, dead = (p | beam.Create([_record("ok", rng, 20, 20), broken])
                           | RunSegmentationInference(handler))
        assert_that(predicted | beam.Map(lambda r: r.key), equal_to(["ok"]), label="ok")
        assert_that(dead | beam.Map(lambda d: (d.key, d.stage)),
                    equal_to([("broken", "inference")]), label="dead")


def test_refine_with_crf_adds_labels_and_dead_letters_mismatches(rng):
    good = _record("good", rng, 12, 16, probabilities=np.full((12, 16, 2), 0.5, np.float16))
    bad = _record("bad", rng, 12, 16, probabilities=np.full((5, 5, 2), 0.5, np.float16))
    with TestPipeline() as p:
        refined, dead = p | beam.Create([good, bad]) | RefineWithCRF(CrfParams(iterations=2))
        assert_that(refined | beam.Map(lambda r: (r.key, r.crf_labels.shape, r.crf_applied,
                                                  r.probabilities is None)),
                    equal_to([("good", (12, 16), True, True)]), label="refined")
        assert_that(dead | beam.Map(lambda d: (d.key, d.stage)), equal_to([("bad", "crf")]),
                    label="dead")


def test_scoring_and_aggregation_sum_confusion_matrices():
    mask = np.array([[0, 1], [1, 1]], np.uint8)
    raw = np.array([[0, 1], [0, 1]], np.uint8)
    records = [
        SegmentationRecord("m", "s", mask=mask, raw_labels=raw, crf_labels=mask,
                           height=2, width=2, has_mask=True, crf_applied=True),
        SegmentationRecord("n", "s", raw_labels=raw, height=2, width=2),  # no mask
    ]
    with TestPipeline() as p:
        scored, dead = p | beam.Create(records) | ScoreImages(num_classes=2, ignore_index=None)
        rows = scored | beam.Map(lambda r: metrics_row(r.replace(mask_path="m.png"), "cfg"))
        totals = rows | beam.CombineGlobally(ConfusionSum(2))
        assert_that(totals | beam.Map(lambda t: (t["images"], t["images_with_mask"],
                                                 t["raw"].tolist(), t["crf"].tolist())),
                    equal_to([(2, 1, [[1, 0], [1, 2]], [[1, 0], [0, 3]])]), label="totals")
        assert_that(dead, equal_to([]), label="dead")


def test_run_totals_counts_each_kind_once_however_the_elements_are_split():
    """One combine counts what the summary used to take from seven: rows (segmented and
    reused, both summed), skipped inputs, unclaimed masks with the first 20 by path, dead
    letters by stage. Split over accumulators and merged, it gives what one pass gives."""
    from segbeam.transforms.aggregate import RunTotals

    row = {"confusion_raw": None, "confusion_crf": None, "height": 2, "width": 2}
    elements = ([("segmented", row)] * 3 + [("reused", row)] * 2 + [("skipped", "k")] * 4
                + [("unclaimed", f"m{i:02d}.png") for i in range(25, 0, -1)]
                + [("dead", "decode")] * 2 + [("dead", "crf")])
    combine = RunTotals(2)

    def combined(parts):
        accumulators = []
        for part in parts:
            accumulator = combine.create_accumulator()
            for element in part:
                accumulator = combine.add_input(accumulator, element)
            accumulators.append(accumulator)
        return combine.extract_output(combine.merge_accumulators(accumulators))

    whole = combined([elements])
    assert (whole["segmented"], whole["reused"], whole["skipped"]) == (3, 2, 4)
    assert whole["totals"]["images"] == 5
    assert whole["masks_without_image"] == 25
    assert whole["masks_without_image_examples"] == [f"m{i:02d}.png" for i in range(1, 21)]
    assert whole["dead_by_stage"] == [("crf", 1), ("decode", 2)]
    split = combined([elements[i::3] for i in range(3)])
    assert {k: v for k, v in split.items() if k != "totals"} == \
        {k: v for k, v in whole.items() if k != "totals"}
    assert split["totals"]["images"] == 5
    with pytest.raises(ValueError, match="received 'rows'"):
        combine.add_input(combine.create_accumulator(), ("rows", row))


@pytest.mark.parametrize("evaluated", [True, False])
def test_summary_files_are_what_beams_sinks_wrote(tmp_path, evaluated):
    """The summary's two files are written directly (no shuffle per file); they are byte for
    byte what WriteToText and WriteToParquet wrote for it, with and without evaluation rows."""
    from segbeam.transforms.aggregate import build_summary, summary_rows, summary_schema
    from segbeam.transforms.write import summary_files

    from segbeam.transforms.scoring import score_record

    combine = ConfusionSum(2)
    totals = combine.create_accumulator()
    if evaluated:
        mask = np.array([[0, 1], [1, 1]], np.uint8)
        record = SegmentationRecord("m", "s", mask=mask, raw_labels=mask[::-1], height=2,
                                    width=2, has_mask=True)
        row = metrics_row(score_record(record, 2, None).replace(mask_path="m.png"), "cfg")
        totals = combine.add_input(totals, row)
    summary = build_summary(None, totals, 1, 1, [], ["a", "b"], None)
    assert bool(summary_rows(summary)) == evaluated
    schema = summary_schema(["a", "b"])
    with TestPipeline() as p:
        one = p | beam.Create([summary])
        _ = one | beam.Map(lambda s: __import__("json").dumps(s, indent=2, sort_keys=True)) \
            | beam.io.WriteToText(str(tmp_path / "summary.json"), num_shards=1,
                                  shard_name_template="")
        _ = one | beam.FlatMap(summary_rows) | beam.io.WriteToParquet(
            str(tmp_path / "summary.parquet"), schema=schema, num_shards=1,
            shard_name_template="")
    files = summary_files(summary, schema)
    assert files == {name: (tmp_path / name).read_bytes() for name in files}


def test_write_masks_refuses_unsanitised_keys(tmp_path):
    labels = np.array([[0, 2]], np.uint8)
    safe = SegmentationRecord("dir/safe", "s", raw_labels=labels, height=1, width=2)
    unsafe = SegmentationRecord("../escape", "s", raw_labels=labels, height=1, width=2)
    root = str(tmp_path / "out")
    with TestPipeline() as p:
        written, dead = p | beam.Create([safe, unsafe]) | WriteLabelMasks(root)
        assert_that(written | beam.Map(lambda r: os.path.relpath(r.mask_path, root)),
                    equal_to(["masks/dir/safe.png"]), label="written")
        assert_that(dead | beam.Map(lambda d: (d.key, d.stage)),
                    equal_to([("../escape", "write")]), label="dead")
    np.testing.assert_array_equal(np.asarray(Image.open(f"{root}/masks/dir/safe.png")), labels)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert os.listdir(f"{root}/masks/dir") == ["safe.png"]  # no temporary file left behind


def test_in_model_postprocessing_matches_numpy(tiny_model_path, rng):
    """Images at the model's input size take the compiled path (softmax, float16, argmax run
    by the backend); the result equals the numpy reference, for each kind of model output."""
    import keras

    from segbeam.inference import softmax
    from segbeam.models.keras_runtime import KerasRuntime
    from segbeam.transforms.predictor import SegmentationPredictor

    model = keras.saving.load_model(tiny_model_path)
    images = np.stack([random_image(rng, 32, 48) for _ in range(3)]).astype(np.float32)
    reference = softmax(np.asarray(model.predict_on_batch(images)))
    probability_model = keras.Sequential([model, keras.layers.Softmax()])
    for served, kind in ((model, "logits"), (model, "auto"), (probability_model, "auto"),
                         (probability_model, "probabilities")):
        predictor = SegmentationPredictor(KerasRuntime(served, "tiny"), kind)
        for _ in range(2):  # "auto" decides on the first batch (numpy), then compiles
            probabilities, labels = predictor.predict(images)
            assert probabilities.dtype == np.float16 and labels.dtype == np.uint8
            np.testing.assert_allclose(probabilities.astype(np.float32), reference, atol=2e-3)
            np.testing.assert_array_equal(labels, reference.argmax(-1))
