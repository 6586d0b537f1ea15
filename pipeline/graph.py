"""The job graph: read -> (skip what is unchanged) -> decode -> batched inference ->
(Reshuffle) -> dense CRF -> metrics -> masks, metrics, summary; every stage's rejects -> dead
letters."""

from __future__ import annotations

from typing import NamedTuple, Optional

import apache_beam as beam

from segbeam.classes import class_colours
from segbeam.layout import DEAD_LETTERS_DIR, DEAD_LETTERS_PREFIX, METRICS_DIR, METRICS_PREFIX, \
    output_path, shard_pattern
from segbeam.pipeline.options import SHARD_FORMATS, Settings
from segbeam.refinement import drop_probabilities
from segbeam.transforms.aggregate import RunTotals, summarise_run
from segbeam.transforms.containers import ReadParquetShards, ReadTFRecordShards, \
    ReadWebDatasetShards
from segbeam.transforms.fused_crf import FusedCrf
from segbeam.transforms.inference import KerasSegmentationHandler, RunSegmentationInference
from segbeam.transforms.progress import CountProgress
from segbeam.transforms.read import FindFiles, ReadAndDecode, UniqueKeys
from segbeam.transforms.refine import RefineWithCRF
from segbeam.transforms.scoring import ScoreImages, metrics_row, metrics_schema
from segbeam.transforms.skip import SkipUnchanged
from segbeam.transforms.safe_map import SafeMap
from segbeam.transforms.write import RemoveStaleShards, RemoveStaleViews, WriteDeadLetters, \
    WriteLabelMasks, WriteStampRenewals, WriteSummary, write_views


def handler_for(settings: Settings) -> KerasSegmentationHandler:
    """The inference handler; with the keras CRF backend, ready to run the CRF on the device
    where the worker has an accelerator (the CRF stage then passes its records through)."""
    s = settings
    fused = FusedCrf(s.crf, s.num_classes, s.ignore_index, s.layout.write_confidence) \
        if s.crf is not None and s.crf.backend == "keras" else None
    return KerasSegmentationHandler(s.model, s.inference,
                                    keep_probabilities=s.crf is not None or s.calibration
                                    or s.layout.write_confidence, fused_crf=fused)


class Inputs(NamedTuple):
    """What reading gives: decoded records to segment, dead letters, the number of inputs,
    metrics rows reused from this run's directory, keys skipped, mask files no image took,
    stamp renewals of inputs skipped (``segbeam.incremental.stamp_renewal``). A stream that
    this run cannot have (reused rows without --skip_existing, say) is None rather than an
    empty PCollection: each of those was a stage of its own, in every run."""

    records: beam.PCollection
    dead: beam.PCollection
    count: beam.PCollection
    reused: Optional[beam.PCollection]
    skipped: Optional[beam.PCollection]
    unclaimed_masks: Optional[beam.PCollection]
    renewed: Optional[beam.PCollection]


class ReadInputs(beam.PTransform):
    """pipeline -> ``Inputs``, from files or shards. Every input has a key no other input has
    (``UniqueKeys``), and nothing under the output root is read as an input.

    With ``--skip_existing``, inputs whose result stands (same bytes, same configuration) are
    not decoded: their rows are reused, or they are skipped when the result lives in an
    earlier date partition.
    """

    def __init__(self, settings: Settings, fingerprint: str):
        super().__init__()
        self._settings, self._fingerprint = settings, fingerprint

    def expand(self, pbegin):
        s = self._settings
        if s.input_format in SHARD_FORMATS:
            root = s.layout.root  # a run's own outputs are never read as inputs
            reader = {"tfrecord": lambda: ReadTFRecordShards(s.input, s.containers, root),
                      "parquet": lambda: ReadParquetShards(s.input, s.containers, root),
                      "webdataset": lambda: ReadWebDatasetShards(s.input, s.containers, root)}
            items, unusable, count = pbegin | "ReadShards" >> reader[s.input_format]()
            unclaimed = None
        else:
            # Under --skip_existing the listing's stamps are kept in the rows, for
            # --change_detection stamp (now or in a later run).
            items, unusable, count, unclaimed = pbegin | "FindFiles" >> FindFiles(
                s.input, s.masks, exclude=s.layout.root, naming=s.naming,
                stamped=s.skip_existing, list_base=s.input_base,
                list_suffix=s.list_suffix)
            _ = unusable | "ProgressUnpaired" >> beam.ParDo(CountProgress("dead"))
        items, shared = items | "UniqueKeys" >> UniqueKeys(s.output_ignores_case)
        _ = shared | "ProgressShared" >> beam.ParDo(CountProgress("dead"))
        unusable = (unusable, shared) | "UnusableOrShared" >> beam.Flatten()
        if s.skip_existing:
            items, reused, skipped, unreadable, renewed = items | "SkipUnchanged" >> \
                SkipUnchanged(s.layout.history_glob, self._fingerprint, s.run_dir,
                              s.layout.run_date, s.layout.renewals_glob,
                              by_stamp=s.change_detection == "stamp")
            unusable = (unusable, unreadable) | "Unusable" >> beam.Flatten()
        else:
            reused = skipped = renewed = None
        records, undecodable = items | "ReadAndDecode" >> ReadAndDecode(s.max_image_pixels,
                                                                        s.mask_labels)
        dead = (unusable, undecodable) | "DeadLetters" >> beam.Flatten()
        return Inputs(records, dead, count, reused, skipped, unclaimed, renewed)


class SegmentAndScore(beam.PTransform):
    """decoded records -> (scored records with final labels, dead letters).

    With ``settings.reshuffle``, a Reshuffle separates the inference stage from the CPU stages,
    so that a distributed runner scales them apart (GPU workers for inference, many CPU workers
    for the CRF: the stages' resource hints differ). On the local runner the stages stay fused,
    since a shuffle there holds every image and its probabilities in memory at once.
    """

    def __init__(self, settings: Settings):
        super().__init__()
        self._settings = settings

    def expand(self, records):
        s = self._settings
        infer = RunSegmentationInference(handler_for(s))
        if s.inference_hints:
            infer = infer.with_resource_hints(**dict(s.inference_hints))
        predicted, inference_failed = records | "Infer" >> infer
        failed = [inference_failed]
        if s.reshuffle:
            predicted = predicted | "ToCpuStage" >> beam.Reshuffle()
        if s.crf is not None:
            refine = RefineWithCRF(s.crf, s.num_classes, s.ignore_index,
                                   s.layout.write_confidence, s.crf_processes)
            if s.crf_hints:
                refine = refine.with_resource_hints(**dict(s.crf_hints))
            refined, crf_failed = predicted | "Refine" >> refine
            failed.append(crf_failed)
        else:
            calibrate = (s.num_classes, s.ignore_index) if s.calibration else (None, None)
            refined = predicted | "DropProbabilities" >> beam.Map(
                drop_probabilities, *calibrate, s.layout.write_confidence)
        if s.layout.write_overlays or s.layout.write_confidence:
            colours = class_colours(s.class_names, s.palette) if s.layout.write_overlays \
                else None
            refined, views_failed = refined | "WriteViews" >> SafeMap(
                "write", write_views, s.run_dir, colours)
            failed.append(views_failed)
        scored, scoring_failed = refined | "Score" >> ScoreImages(s.num_classes, s.ignore_index)
        dead = (*failed, scoring_failed) | "StageFailures" >> beam.Flatten()
        return scored, dead


class PipelineOutputs(NamedTuple):
    """The graph's main PCollections, for tests to assert on."""

    written: beam.PCollection
    rows: beam.PCollection
    dead_letters: beam.PCollection
    summary: beam.PCollection


def _tagged(value, kind: str) -> tuple:
    return kind, value


def build_pipeline(pipeline: beam.Pipeline, settings: Settings,
                   fingerprint: str) -> PipelineOutputs:
    """Adds the whole segmentation job to ``pipeline``; everything is written under
    ``settings.run_dir``. ``fingerprint`` is the run's ``config_fingerprint``. Inputs are
    counted as they finish (``segbeam.transforms.progress``)."""
    s, run_dir = settings, settings.run_dir
    records, read_failed, inputs, reused_rows, skipped, unclaimed, renewed = \
        pipeline | "Read" >> ReadInputs(s, fingerprint)
    scored, stage_failed = records | "SegmentAndScore" >> SegmentAndScore(s)
    written, write_failed = scored | "WriteMasks" >> WriteLabelMasks(
        run_dir, s.layout.write_raw_masks, s.palette)
    dead = (read_failed, stage_failed, write_failed) | "AllDeadLetters" >> beam.Flatten()

    new_rows = written | "MetricsRows" >> beam.Map(metrics_row, fingerprint, s.ignore_index)
    rows = new_rows if reused_rows is None else \
        (new_rows, reused_rows) | "AllRows" >> beam.Flatten()
    metrics_files = rows | "WriteMetrics" >> beam.io.WriteToParquet(
        output_path(run_dir, METRICS_DIR, METRICS_PREFIX),
        schema=metrics_schema(s.num_classes, s.class_names), file_name_suffix=".parquet")
    _ = metrics_files | "RemoveStaleMetrics" >> RemoveStaleShards(
        shard_pattern(run_dir, METRICS_DIR, METRICS_PREFIX, ".parquet"))
    _ = rows | "RemoveStaleViews" >> RemoveStaleViews(run_dir, *s.layout.per_image_folders(),
                                                      fold_case=s.output_ignores_case)
    if s.skip_existing:
        _ = renewed | "WriteStampRenewals" >> WriteStampRenewals(run_dir)
    dead_files = dead | "WriteDeadLetters" >> WriteDeadLetters(run_dir)
    _ = dead_files | "RemoveStaleDeadLetters" >> RemoveStaleShards(
        shard_pattern(run_dir, DEAD_LETTERS_DIR, DEAD_LETTERS_PREFIX, ".jsonl"))

    for name, finished in (("Segmented", written), ("Reused", reused_rows),
                           ("Skipped", skipped)):
        if finished is not None:
            _ = finished | f"Progress{name}" >> beam.ParDo(CountProgress("done"))

    stages = dead | "Stage" >> beam.Map(lambda letter: letter.stage)
    tagged = [finished | f"Tag{kind.capitalize()}" >> beam.Map(_tagged, kind)
              for kind, finished in (("segmented", new_rows), ("reused", reused_rows),
                                     ("skipped", skipped), ("unclaimed", unclaimed),
                                     ("dead", stages)) if finished is not None]
    run_totals = (tagged | "Countable" >> beam.Flatten()
                  | "RunTotals" >> beam.CombineGlobally(RunTotals(s.num_classes)))
    summary = run_totals | "Summarise" >> beam.Map(
        summarise_run, inputs=beam.pvalue.AsSingleton(inputs), class_names=s.class_names,
        ignore_index=s.ignore_index, config_fingerprint=fingerprint, palette=s.palette)
    _ = summary | "WriteSummary" >> WriteSummary(run_dir, s.class_names)
    return PipelineOutputs(written, rows, dead, summary)
