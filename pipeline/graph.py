"""The job graph: read -> decode -> batched inference -> (Reshuffle) -> dense CRF -> metrics
-> masks, metrics, summary; every stage's rejects -> dead letters."""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam

from pipeline.options import Settings
from transforms.aggregate import ConfusionSum, build_summary, summary_rows, summary_schema
from transforms.inference import KerasSegmentationHandler, RunSegmentationInference
from transforms.read import ReadFiles, ReadShards
from transforms.refine import RefineWithCRF, drop_probabilities
from transforms.scoring import ScoreImages, metrics_row, metrics_schema
from transforms.write import (METRICS_DIR, SUMMARY_JSON, SUMMARY_PARQUET,
                              WriteDeadLetters, WriteJson, WriteLabelMasks, output_path)


def handler_for(settings: Settings) -> KerasSegmentationHandler:
    return KerasSegmentationHandler(
        settings.model, weights=settings.weights, num_classes=settings.num_classes,
        input_size=settings.input_size, resize_mode=settings.resize_mode,
        preprocessing=settings.preprocess, model_output=settings.model_output,
        size_multiple=settings.size_multiple, seed=settings.seed,
        min_batch_size=settings.min_batch_size, max_batch_size=settings.batch_size,
        large_model=settings.large_model, model_copies=settings.model_copies)


class ReadInputs(beam.PTransform):
    """pipeline -> (records, dead letters, number of inputs), from files or shards."""

    def __init__(self, settings: Settings):
        super().__init__()
        self._settings = settings

    def expand(self, pbegin):
        s = self._settings
        if s.input_format == "tfrecord":
            return pbegin | "ReadShards" >> ReadShards(s.input, s.max_image_pixels)
        return pbegin | "ReadFiles" >> ReadFiles(s.input, s.masks, s.max_image_pixels)


class SegmentAndScore(beam.PTransform):
    """decoded records -> (scored records with final labels, dead letters).

    The Reshuffle separates the inference stage from the CPU stages, so that a runner can fuse
    and scale them apart (GPU workers for inference, many CPU workers for the CRF).
    """

    def __init__(self, settings: Settings):
        super().__init__()
        self._settings = settings

    def expand(self, records):
        s = self._settings
        predicted, inference_failed = records | "Infer" >> RunSegmentationInference(
            handler_for(s))
        on_cpu = predicted | "ToCpuStage" >> beam.Reshuffle()
        if s.crf is not None:
            refined, crf_failed = on_cpu | "Refine" >> RefineWithCRF(s.crf)
        else:
            refined = on_cpu | "DropProbabilities" >> beam.Map(drop_probabilities)
            crf_failed = on_cpu.pipeline | "NoCrfFailures" >> beam.Create([])
        scored, scoring_failed = refined | "Score" >> ScoreImages(s.num_classes, s.ignore_index)
        dead = ((inference_failed, crf_failed, scoring_failed)
                | "StageFailures" >> beam.Flatten())
        return scored, dead


class PipelineOutputs(NamedTuple):
    """The graph's main PCollections, for tests to assert on."""

    written: beam.PCollection
    rows: beam.PCollection
    dead_letters: beam.PCollection
    summary: beam.PCollection


def build_pipeline(pipeline: beam.Pipeline, settings: Settings) -> PipelineOutputs:
    """Adds the whole segmentation job to ``pipeline``."""
    s = settings
    records, read_failed, inputs = pipeline | "Read" >> ReadInputs(s)
    scored, stage_failed = records | "SegmentAndScore" >> SegmentAndScore(s)
    written, write_failed = scored | "WriteMasks" >> WriteLabelMasks(s.output, s.write_raw_masks)
    dead = (read_failed, stage_failed, write_failed) | "AllDeadLetters" >> beam.Flatten()

    rows = written | "MetricsRows" >> beam.Map(metrics_row)
    _ = rows | "WriteMetrics" >> beam.io.WriteToParquet(
        output_path(s.output, METRICS_DIR, "metrics"),
        schema=metrics_schema(s.num_classes, s.class_names), file_name_suffix=".parquet")
    _ = dead | "WriteDeadLetters" >> WriteDeadLetters(s.output)

    totals = written | "Aggregate" >> beam.CombineGlobally(ConfusionSum(s.num_classes))
    outputs = written | "CountOutputs" >> beam.combiners.Count.Globally()
    dead_by_stage = (dead | "Stage" >> beam.Map(lambda d: d.stage)
                     | "CountByStage" >> beam.combiners.Count.PerElement())
    summary = (pipeline
               | "SummaryTrigger" >> beam.Create([None])
               | "Summarise" >> beam.Map(
                   build_summary, totals=beam.pvalue.AsSingleton(totals),
                   inputs=beam.pvalue.AsSingleton(inputs),
                   outputs=beam.pvalue.AsSingleton(outputs),
                   dead_by_stage=beam.pvalue.AsList(dead_by_stage),
                   class_names=s.class_names, ignore_index=s.ignore_index))
    _ = summary | "WriteSummaryJson" >> WriteJson(s.output, SUMMARY_JSON)
    _ = (summary
         | "SummaryRows" >> beam.FlatMap(summary_rows)
         | "WriteSummaryParquet" >> beam.io.WriteToParquet(
             output_path(s.output, SUMMARY_PARQUET), schema=summary_schema(s.class_names),
             num_shards=1, shard_name_template=""))
    return PipelineOutputs(written, rows, dead, summary)

