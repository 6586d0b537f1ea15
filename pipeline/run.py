"""Running the job: build the graph, run it, read back the summary, write the run manifest.

With Beam's ``--dry_run=True`` the graph is built (and, on Dataflow, translated into a job with
its staged packages) but nothing runs and nothing is written."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import platform
import sys
import time
from typing import NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions, TestOptions)

from segbeam import compat
from segbeam.containers import ContainerFields, check_shard_fields, shard_fields
from segbeam.dataset import apart, mask_glob, named_mask
from segbeam.keys import glob_base
from segbeam.models.output_adapters import adapt_outputs
from segbeam.models.registry import check_preprocess
from segbeam.models.training_record import image_size, read_training_config, \
    training_warnings
from segbeam.matching import could_match_outputs, first_file_and_subfolder_count, \
    literal_name_hint, match_files
from segbeam.layout import MANIFEST_JSON, SUMMARY_JSON, begin_run, finish_run, ignores_case, \
    output_path, read_json, write_bytes_atomically
from segbeam.pipeline.exit_codes import ExitCode, JobFailed
from segbeam.pipeline.graph import build_pipeline
from segbeam.pipeline.flags import FILE_FORMATS, check_list_input, check_masks_match, \
    prepare_cloud_storage, quiet_workers_flag_warnings
from segbeam.pipeline.model_flags import open_in_launcher, opened_once
from segbeam.pipeline.options import LOCAL_RUNNERS, SegmentationOptions, Settings, UsageError, \
    parse_run_argv, settings_from
from segbeam.pipeline.progress import ProgressReporter
from segbeam.pipeline.provenance import beam_counters, package_versions
from segbeam.records import one_line_reason
from segbeam.run_lock import claim_output, release_output

LOG = logging.getLogger(__name__)
DASK_RUNNER = "segbeam.pipeline.dask_runner.DaskRunner"
_STOCK_DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


class RunOutcome(NamedTuple):
    settings: Settings
    summary: Optional[dict]  # None after a dry run
    manifest: dict
    report_folder: Optional[str] = None  # where --report wrote the report

    @property
    def nothing_segmented(self) -> bool:
        """Every input became a dead letter: a job that produced nothing, which a scheduler
        must not take for a success (a wrong model, unreadable shards)."""
        counts = (self.summary or {}).get("counts") or {}
        return counts.get("dead_letters", 0) == counts.get("inputs", 0) > 0

    @property
    def exit_code(self) -> ExitCode:
        if self.summary is None:
            return ExitCode.OK
        counts = self.summary["counts"]
        if not counts["accounted_for"]:
            return ExitCode.ACCOUNTING
        if counts["dead_letters"] and (self.settings.fail_on_errors or self.nothing_segmented):
            return ExitCode.DEAD_LETTERS
        return ExitCode.OK


def _check_inputs_exist(settings: Settings) -> str:
    """Fails before the pipeline starts when the input glob, or the masks, match nothing: a
    clearer message than the runner's, no empty outputs, and no run that scores nothing
    because --masks was mistyped. Returns the first input file."""
    exclude = settings.layout.root
    first, deeper = first_file_and_subfolder_count(settings.input, exclude)
    if first is None and deeper:
        raise UsageError(f"--input {settings.input[:-2]!r} is a folder whose {deeper} files "
                         f"all lie in sub-folders; pass '{settings.input[:-2]}/**' to read "
                         f"them")
    if first is None:
        raise UsageError(f"--input {settings.input!r} matches no file" + (
            literal_name_hint(settings.input) or "; check the path and quote the glob so "
            "that the shell does not expand it"))
    if settings.masks and settings.input_format in FILE_FORMATS:
        check_masks_match(settings.masks, exclude)
    if deeper:
        LOG.warning("--input %s reads the files in that folder, not the %d in its sub-folders;"
                    " pass '%s/**' to read those too", settings.input, deeper,
                    settings.input[:-2])
    if settings.input_format in ("parquet", "tfrecord"):
        _check_shard_fields(first, settings.input_format, settings.containers)
    if settings.input_format == "list":
        return check_list_input(settings.input, settings.input_base,
                                suffix=settings.list_suffix)
    return first


def _check_shard_fields(shard: str, input_format: str, fields: ContainerFields) -> None:
    """A column or feature flag that names nothing in the first shard (its first record, for
    TFRecord) is a usage error, not a dead letter per shard or record."""
    try:
        found = shard_fields(input_format, shard)
    except Exception:  # noqa: BLE001 - an unreadable shard is the pipeline's dead letter
        return
    try:
        check_shard_fields(input_format, found, fields, shard)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _count_inputs(settings: Settings) -> Optional[int]:
    """The number of inputs, for progress: the files matched (shards hold an unknown number)."""
    if settings.input_format != "images":
        return None
    is_mask = named_mask(settings.masks, settings.naming)
    images = [path for path in match_files(settings.input, settings.layout.root)
              if not is_mask(path)]
    if settings.masks:  # files read as masks are no inputs (segbeam.dataset.pair_by_stem)
        masks = list(match_files(mask_glob(settings.masks), settings.layout.root))
        images, _ = apart(images, masks, glob_base(settings.input),
                          glob_base(mask_glob(settings.masks)))
    return len(images)


def _note_outputs_inside_inputs(settings: Settings) -> None:
    """Says so when the input glob would match this run's own outputs: they are left out."""
    root = settings.layout.root
    globs = [settings.input] + ([mask_glob(settings.masks)] if settings.masks else [])
    if any(could_match_outputs(g, root) for g in globs):
        LOG.warning("the output folder %s lies inside the input glob; the files runs write "
                    "there are not read as inputs", root)


def resolve_runner(options: PipelineOptions) -> Optional[str]:
    """``--runner DaskRunner`` (or ``dask``) selects segbeam's Dask runner; Beam's own Dask
    runner is refused, because it loses elements (see ``pipeline.dask_runner``)."""
    standard = options.view_as(StandardOptions)
    if standard.runner in ("DaskRunner", "dask", DASK_RUNNER):
        standard.runner = DASK_RUNNER
    elif standard.runner == _STOCK_DASK_RUNNER:
        raise UsageError(f"--runner {_STOCK_DASK_RUNNER} drops elements in this Beam version "
                         f"(outputs of finish_bundle, tagged outputs, all but one sink); use "
                         f"--runner DaskRunner, segbeam's corrected translation")
    return standard.runner


def apply_no_auth(options: PipelineOptions) -> None:
    """With ``--no_auth``, Cloud Storage is accessed anonymously (public buckets, emulators), at
    once (see ``segbeam.compat.settle_anonymous_gcs_credentials``)."""
    if options.view_as(GoogleCloudOptions).no_auth:
        compat.settle_anonymous_gcs_credentials()


def _stage_name(unique_name: str) -> str:
    return "/".join(unique_name.split("/")[:2])


def _staged_files(environment) -> list[str]:
    """The names under which an environment's dependencies are staged (workflow.tar.gz for
    --setup_file, requirements.txt, ...)."""
    from apache_beam.portability.api import beam_runner_api_pb2

    names = []
    for artifact in environment.dependencies:
        role = beam_runner_api_pb2.ArtifactStagingToRolePayload()
        if artifact.role_payload and role.ParseFromString(artifact.role_payload):
            names.append(role.staged_name)
    return sorted(names)


def _job_description(pipeline: beam.Pipeline, result) -> dict:
    """What a dry run built: the portable graph's size; per environment, its resource hints, the
    stages that run in it (where hinted) and the files staged for its workers."""
    proto = getattr(getattr(result, "job", None), "proto_pipeline", None) or \
        pipeline.to_runner_api()
    stages: dict[str, set] = {}
    for transform in proto.components.transforms.values():
        if transform.environment_id:
            stages.setdefault(transform.environment_id, set()).add(
                _stage_name(transform.unique_name))
    environments = {}
    for name, environment in proto.components.environments.items():
        hints = {urn.rsplit(":", 2)[-2]: value.decode()
                 for urn, value in environment.resource_hints.items()}
        environments[name] = {"resource_hints": hints,
                              "stages": sorted(stages.get(name, ())) if hints else [],
                              "staged_files": _staged_files(environment)}
    return {"transforms": len(proto.components.transforms), "environments": environments}


def run(argv: Optional[Sequence[str]] = None, test_pipeline: Optional[beam.Pipeline] = None
        ) -> RunOutcome:
    """Runs ``segbeam run`` with ``argv`` (its flags plus Beam's) and returns the outcome."""
    argv = list(argv or [])
    return execute(parse_run_argv(argv), argv, test_pipeline)


def _check_model_opens(settings: Settings) -> list[str]:
    """Opens a saved model once in the launcher, so that a model segbeam cannot serve (a
    missing --output_key, a wrong --signature, a refused .h5, a class-count mismatch) fails in
    one line before any work, not on every worker. So is a registry model that loads a
    --weights file (it may not fit) or is built for a fixed --input_size (an architecture may
    not take it: U-Net's encoder needs 32x32); one that adapts to each image's size is built
    on the workers only. Returns the warnings the model gives (random weights; a --preprocess
    that does not fit it)."""
    fixed_size, warning = None, None
    if settings.model.saved or settings.model.weights or settings.model.input_size:
        runtime = open_in_launcher(settings.model)
        adapt_outputs(runtime, settings.inference.model_output)
        fixed_size = runtime.fixed_input_size()
        runtime.check_channel_preprocess(settings.inference.preprocess)
        warning = runtime.preprocess_warning(settings.inference.preprocess)
    settings.inference.check_input_size(settings.model.input_size, fixed_size)
    return [w for w in (settings.model.random_weights_warning(), warning) if w]


def _training_warnings(settings: Settings, first_input: Optional[str]) -> list[str]:
    """Warnings from ``training.json`` beside a model ``segbeam train`` saved: masks scored
    under another label convention than the model learned, images fed at another scale. A
    --preprocess that would normalise its input a second time is an error."""
    trained = read_training_config(settings.model.spec) if settings.model.saved else None
    if not trained:
        return []
    check_preprocess(str(trained.get("model")), settings.inference.preprocess,
                     settings.model.spec)
    files = settings.input_format in FILE_FORMATS
    return training_warnings(
        settings.model.spec, trained, bool(settings.masks or not files),
        settings.ignore_index, settings.label_map, settings.mask_colours,
        image_size(first_input) if files and first_input and not settings.model.input_size
        else None)


def execute(options: PipelineOptions, argv: Sequence[str],
            test_pipeline: Optional[beam.Pipeline] = None) -> RunOutcome:
    """Runs the job that ``options`` (parsed from ``argv`` by ``parse_run_argv``) describe:
    claims the output folder (one run at a time), builds the graph, runs it, reads back the
    summary, writes the manifest (and, with ``--report``, the report); releases the folder
    however it ends."""
    quiet_workers_flag_warnings()
    with contextlib.ExitStack() as cleanup, opened_once():
        return _execute(options, argv, test_pipeline, cleanup)


def _execute(options: PipelineOptions, argv: Sequence[str],
             test_pipeline: Optional[beam.Pipeline], cleanup: contextlib.ExitStack
             ) -> RunOutcome:
    runner = resolve_runner(options)
    FileSystems.set_options(options)  # before the launcher touches gs:// paths
    storage_warning = prepare_cloud_storage(
        options.get_all_options(retain_unknown_options=True).values(),
        options.view_as(GoogleCloudOptions).no_auth,
        (runner or "").rsplit(".", 1)[-1] == "DataflowRunner")
    apply_no_auth(options)
    settings = settings_from(options.view_as(SegmentationOptions), runner)
    dry_run = bool(options.view_as(TestOptions).dry_run)
    local = runner is None or runner.rsplit(".", 1)[-1] in LOCAL_RUNNERS
    if local and (settings.inference_hints or settings.crf_hints):
        LOG.warning("--inference_accelerator, --inference_min_ram and --crf_min_ram are "
                    "resource hints for Dataflow; the local runner runs every stage on this "
                    "machine and ignores them as hints (with --large_model, the "
                    "accelerator's count still sets the model copies)")
    first_input = _check_inputs_exist(settings)
    _note_outputs_inside_inputs(settings)
    warnings = [storage_warning] if storage_warning else []
    warnings += _check_model_opens(settings) + _training_warnings(settings, first_input)
    for warning in warnings:
        LOG.warning(warning)
    if not dry_run:
        cleanup.callback(release_output, settings.run_dir)
        for path in begin_run(settings.run_dir, claim_output):
            LOG.info("removed %s, left by an earlier run", path)
        settings = dataclasses.replace(settings,
                                       output_ignores_case=ignores_case(settings.run_dir))
    entries = settings.fingerprint_entries()
    model_id, fingerprint = entries["model"], settings.config_fingerprint(entries)
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.perf_counter()
    pipeline = test_pipeline or beam.Pipeline(options=options)
    progress = None
    if local and not dry_run and not options.view_as(SegmentationOptions).quiet:
        progress = ProgressReporter(lambda: _count_inputs(settings))
    build_pipeline(pipeline, settings, fingerprint)
    manifest = {
        "started_utc": started.isoformat(),
        "argv": list(argv),
        # Relative input paths in the metrics resolve against this (e.g. for reports).
        "working_directory": os.getcwd(),
        "settings": dataclasses.asdict(settings),
        "crf": dataclasses.asdict(settings.crf) if settings.crf else None,
        "beam_options": options.get_all_options(drop_default=True, retain_unknown_options=True),
        "model_fingerprint": model_id,
        "config_fingerprint": fingerprint,
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    if warnings:
        manifest["warnings"] = warnings
    if dry_run:
        # Beam's DataflowRunner honours --dry_run (translate and stage, do not submit); the
        # local runners would run, so for them the graph is only translated.
        dataflow = (runner or "").rsplit(".", 1)[-1] == "DataflowRunner"
        result = pipeline.run() if dataflow else None
        manifest["dry_run"] = _job_description(pipeline, result)
        return RunOutcome(settings, None, manifest)
    with progress or contextlib.nullcontext():
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as error:  # noqa: BLE001 - what a worker raised is no usage error
            raise JobFailed(one_line_reason(error)) from error
    manifest["wall_time_seconds"] = round(time.perf_counter() - clock, 3)
    manifest["beam_counters"] = beam_counters(result)
    summary = read_json(output_path(settings.run_dir, SUMMARY_JSON))
    if progress:
        counts = summary["counts"]
        progress.finish(counts["segmented"] + counts["reused"] + counts["skipped"]
                        + counts["dead_letters"], counts["dead_letters"])
    manifest["counts"] = summary["counts"]
    write_bytes_atomically(output_path(settings.run_dir, MANIFEST_JSON),
                           json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
    report_folder = None
    if settings.report:
        from segbeam.pipeline.report import write_report

        _, report_folder = write_report(settings.run_dir)
    finish_run(settings.run_dir)
    return RunOutcome(settings, summary, manifest, report_folder)
