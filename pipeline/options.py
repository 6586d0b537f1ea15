"""``segbeam run`` options: a ``PipelineOptions`` subclass, so Beam's own flags (``--runner``,
``--direct_num_workers``, Dataflow's ...) pass through unchanged; and the validated settings
that the graph is built from."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from segbeam.config import Effect, fingerprint_entries, setting
from segbeam.containers import ContainerFields, shard_format
from segbeam.crf import CrfParams
from segbeam.pipeline.crf_flags import add_crf_flags, crf_params, crf_processes
from segbeam.pipeline.model_flags import add_model_flags, classes_of_saved_model, \
    model_settings
from segbeam.dataset import Naming
from segbeam.dataset_presets import DATASETS, resolve_convention
from segbeam.decode import DEFAULT_MAX_PIXELS
from segbeam.file_lists import is_list
from segbeam.incremental import config_fingerprint, parse_run_date
from segbeam.inference import InferenceSettings
from segbeam.labels import MaskLabels
from segbeam.layout import OutputLayout
from segbeam.matching import folder_as_glob
from segbeam.models.source import ModelSource
from segbeam.pipeline.flags import CommandParser, UsageError, absolute_local, \
    add_container_flags, add_list_flags, add_pairing_flags, beam_parser, check_container_flags, \
    check_list_suffix, check_mask_suffix, check_output_name, check_scoring_flags, \
    list_base, reject_repeated_flags, reject_unknown_flags

INPUT_FORMATS = ("auto", "images", "list", "tfrecord", "parquet", "webdataset")
SHARD_FORMATS = ("tfrecord", "parquet", "webdataset")  # formats that carry their own masks
STAGE_SPLITS = ("auto", "reshuffle", "fused")
CHANGE_DETECTIONS = ("content", "stamp")  # how --skip_existing tells an unchanged input
# Runners that execute in this process (or its worker subprocesses) and hold every element that
# crosses a shuffle in memory: on them the inference and CRF stages are fused by default.
LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner", "FnApiRunner",
                 "BundleBasedDirectRunner", "TestDirectRunner")


class SegmentationOptions(PipelineOptions):
    """The flags of ``segbeam run``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        io = parser.add_argument_group("inputs and outputs")
        io.add_argument("--input", default=None,
                        help="Glob of image files (any Beam filesystem: local, gs://, ...) or of "
                             "shards, or a folder (every file in it; 'folder/**' takes its "
                             "sub-folders too). Without --input, a demo runs on generated data.")
        io.add_argument("--input_format", default="auto", choices=INPUT_FORMATS,
                        help="How to read --input; auto: from the glob's suffix: .tfrecord/"
                             ".tfrec TFRecord, .parquet Parquet, .tar/.tar.gz WebDataset, "
                             ".txt a list of image paths, one per line, else image files.")
        add_list_flags(io)
        add_container_flags(io, key_column=True)
        add_pairing_flags(io)
        io.add_argument("--masks", default=None,
                        help="Folder or glob of ground-truth masks (class ids as pixel values), "
                             "paired by relative path below it (sub/a.jpg -> sub/a.png), else by "
                             "file stem where that is unambiguous. Optional.")
        io.add_argument("--output", default="segbeam-demo",
                        help="Output root: masks/, metrics/, summary.json, summary.parquet, "
                             "dead_letters/, manifest.json.")
        io.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="Images with more pixels are dead-lettered (decompression bombs).")
        io.add_argument("--fail_on_errors", action="store_true", default=False,
                        help="Exit non-zero when any input became a dead letter.")
        io.add_argument("--write_raw_masks", action="store_true", default=False,
                        help="Also write the model's labels before the CRF as "
                             "masks_raw/<key>.png (the report's gallery then shows both).")
        io.add_argument("--write_overlays", action="store_true", default=False,
                        help="Also write overlays/<key>.jpg: the image blended with its final "
                             "labels in the classes' colours, for people to browse.")
        io.add_argument("--write_confidence", action="store_true", default=False,
                        help="Also write confidence/<key>.png: the top-class probability "
                             "(after the CRF where it ran) as 0..255, to find uncertain "
                             "regions.")
        io.add_argument("--report", action="store_true", default=False,
                        help="Also write the evaluation report (OUTPUT/report/report.html, "
                             ".md, .json) at the end of the run; see `segbeam report`.")
        io.add_argument("--quiet", action="store_true", default=False,
                        help="No progress lines on stderr during a local run.")
        nightly = parser.add_argument_group("incremental (nightly) runs")
        nightly.add_argument("--run_date", default=None,
                             help="Write this run under OUTPUT/date=YYYY-MM-DD/ (Hive-style "
                                  "partition), so that nightly results accumulate side by side; "
                                  "YYYY-MM-DD or 'today' (UTC).")
        nightly.add_argument("--skip_existing", action="store_true", default=False,
                             help="Process only inputs that are new or changed: an input whose "
                                  "bytes (image and mask) and configuration (model file, "
                                  "settings) match an earlier result under OUTPUT is not "
                                  "segmented again. With --run_date, earlier date partitions "
                                  "count; a re-run of the same directory keeps its rows.")
        nightly.add_argument("--change_detection", default="content", choices=CHANGE_DETECTIONS,
                             help="How --skip_existing tells an unchanged image file. content: "
                                  "hash every input's bytes (image and mask). stamp: compare "
                                  "each file's path, size and modification time (on local "
                                  "disks also its change time) with those of the standing "
                                  "result, and read only the files whose stamp differs (on "
                                  "a filesystem that keeps no change time, a file rewritten "
                                  "at its old size with its old modification time put back "
                                  "would be missed: see the README). Shard records are "
                                  "always hashed.")
        add_model_flags(parser)
        scale = parser.add_argument_group("distributed runs (Dataflow, Dask)")
        scale.add_argument("--stage_split", default="auto", choices=STAGE_SPLITS,
                           help="reshuffle: a shuffle between inference and the CRF, so that "
                                "a runner scales the GPU and CPU stages apart; fused: one "
                                "stage, no image crosses a shuffle (bounded memory on the "
                                "local runner); auto: fused on the local runner, reshuffle "
                                "elsewhere.")
        scale.add_argument("--inference_accelerator", default=None,
                           help="Resource hint for the inference stage, in Dataflow's syntax, "
                                "e.g. 'type:nvidia-l4;count:1;install-nvidia-driver'. Only "
                                "that stage asks for GPU workers (Dataflow right fitting).")
        scale.add_argument("--inference_min_ram", default=None,
                           help="Resource hint: memory per worker for the inference stage, "
                                "e.g. 16GB.")
        scale.add_argument("--crf_min_ram", default=None,
                           help="Resource hint: memory per worker for the CRF stage, e.g. 8GB.")
        add_crf_flags(parser)
        evaluation = parser.add_argument_group("evaluation")
        evaluation.add_argument("--dataset", default=None, choices=tuple(DATASETS),
                                help="A dataset's label conventions in one flag: class names "
                                     "and count, ignore index, label map and colours; explicit "
                                     "flags override it.")
        evaluation.add_argument("--ignore_index", type=int, default=None,
                                help="Mask value excluded from metrics (CamVid: 11, VOC: 255); "
                                     "-1 for none.")
        evaluation.add_argument("--class_names", default=None,
                                help="Comma-separated names, a preset (camvid, voc), or a "
                                     ".txt (one per line) or .json (a list) file of names.")
        evaluation.add_argument("--label_map", default=None,
                                help="Stored mask value -> class id, applied to every mask "
                                     "before scoring: inline (1:0,2:1,3:2,0:ignore) or a "
                                     ".json / .csv file; values it does not map count as "
                                     "unexpected. none: the masks hold class ids (a "
                                     "--dataset preset's map is not applied).")
        evaluation.add_argument("--calibration", action="store_true", default=False,
                                help="With --no-crf: calibration figures (ECE, NLL, Brier) "
                                     "too (with the CRF they are always computed); keeps class "
                                     "probabilities until scoring.")
        evaluation.add_argument("--mask_palette", default=None,
                                help="Colour-coded (RGB) masks: a .json ({\"#804080\": 0}) or "
                                     ".csv (r,g,b,value) file of colour -> stored value; exact "
                                     "colours only, others count as unexpected. --dataset "
                                     "camvid, cityscapes and cihp bring theirs.")
        evaluation.add_argument("--strict_labels", action="store_true", default=False,
                                help="A mask with values that are neither a class nor the "
                                     "ignore index becomes a dead letter; by default such "
                                     "pixels are counted, reported and left unscored.")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything one run needs, validated once, composed of the configuration objects. Each
    field is classified (``segbeam.config``): the run's configuration fingerprint is derived
    from the classifications."""

    input: str = setting(Effect.NONE)
    input_format: str = setting(Effect.NONE)
    masks: Optional[str] = setting(Effect.NONE)
    max_image_pixels: int = setting(Effect.NONE)
    model: ModelSource = setting(Effect.NESTED)
    inference: InferenceSettings = setting(Effect.NESTED)
    crf: Optional[CrfParams] = setting(Effect.OUTPUT)
    ignore_index: Optional[int] = setting(Effect.OUTPUT)
    class_names: list = setting(Effect.NONE)
    layout: OutputLayout = setting(Effect.NESTED)
    strict_labels: bool = setting(Effect.OUTPUT, False, omit_default=True)
    label_map: Optional[tuple] = setting(Effect.OUTPUT, None, omit_default=True)
    mask_colours: Optional[tuple] = setting(Effect.OUTPUT, None, omit_default=True)
    palette: Optional[tuple] = setting(Effect.OUTPUT, None, omit_default=True)  # RGB per class
    calibration: bool = setting(Effect.OUTPUT, False, omit_default=True)  # without the CRF too
    fail_on_errors: bool = setting(Effect.NONE, False)
    skip_existing: bool = setting(Effect.NONE, False)
    change_detection: str = setting(Effect.NONE, "content")
    report: bool = setting(Effect.NONE, False)
    reshuffle: bool = setting(Effect.NONE, True)
    inference_hints: tuple = setting(Effect.NONE, ())  # (name, value) pairs for Beam
    crf_hints: tuple = setting(Effect.NONE, ())
    crf_processes: int = setting(Effect.NONE, 1)  # pydensecrf processes per worker
    containers: ContainerFields = setting(Effect.NESTED, ContainerFields())
    image_suffix: str = setting(Effect.NONE, "")  # file-name suffixes for pairing (Naming)
    mask_suffix: str = setting(Effect.NONE, "")
    output_ignores_case: bool = setting(Effect.NONE, False)  # set by the launcher (layout)
    input_base: Optional[str] = setting(Effect.NONE, None)  # a list input's base folder
    list_suffix: str = setting(Effect.NONE, "")  # appended to a list's lines (IDs)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def mask_labels(self) -> MaskLabels:
        """What a mask pixel may hold (``segbeam.labels``)."""
        return MaskLabels(self.num_classes, self.ignore_index, self.strict_labels,
                          self.label_map, self.mask_colours)

    @property
    def naming(self) -> Naming:
        return Naming(self.image_suffix, self.mask_suffix)

    @property
    def run_dir(self) -> str:
        return self.layout.run_dir

    def fingerprint_entries(self) -> dict:
        """The model's identity and every setting that changes a mask or a metrics row."""
        return fingerprint_entries(self)

    def config_fingerprint(self, entries: Optional[dict] = None) -> str:
        return config_fingerprint(entries or self.fingerprint_entries())


def stage_split_reshuffles(choice: str, runner: Optional[str]) -> bool:
    """Whether the graph puts a Reshuffle between inference and the CRF."""
    if choice != "auto":
        return choice == "reshuffle"
    name = (runner or "DirectRunner").rsplit(".", 1)[-1]
    return name not in LOCAL_RUNNERS


def _input_format(choice: str, pattern: str) -> str:
    if choice != "auto":
        return choice
    return shard_format(pattern) or ("list" if is_list(pattern) else "images")


def _check_resource_hints(*hints: tuple) -> None:
    """Parses each (flag, value, Beam hint name) as Beam will, so that a malformed hint is an
    error naming its flag before any work (also --crf_min_ram under --no-crf)."""
    from apache_beam.transforms.resources import parse_resource_hints

    for flag, value, name in hints:
        if value is None:
            continue
        try:
            parse_resource_hints({name: value})
        except ValueError:
            raise UsageError(f"{flag} {value!r} is not a valid resource hint; see its --help "
                             f"for the syntax") from None


def settings_from(options: SegmentationOptions, runner: Optional[str] = None) -> Settings:
    """Checks the flags together and returns typed settings; errors say what to change.

    ``runner`` is Beam's ``--runner`` (it decides ``--stage_split auto``)."""
    o = options
    if not o.input:
        raise UsageError("--input is required (a glob of images or TFRecord shards)")
    num_classes = o.num_classes
    if num_classes is None and not o.dataset:
        num_classes = classes_of_saved_model(o)
    convention = resolve_convention(o.dataset, num_classes, o.class_names, o.ignore_index,
                                    o.label_map, o.mask_palette, o.image_suffix,
                                    o.mask_suffix)
    if convention.num_classes is None:
        raise UsageError("--num_classes is required: the number of classes the model predicts "
                         "(or a --dataset preset; a saved model's output gives it where its "
                         "shape fixes the channel count)")
    input_glob = folder_as_glob(absolute_local(o.input))  # a folder: every file in it
    input_format = _input_format(o.input_format, input_glob)
    check_container_flags(input_format, o)
    check_mask_suffix(o.mask_suffix, o.masks)
    check_scoring_flags(o, input_format)
    _check_change_detection(o.change_detection, o.skip_existing, input_format)
    if o.write_raw_masks and not o.crf:
        raise UsageError("--write_raw_masks writes the labels before the CRF beside the refined "
                         "ones; with --no-crf, masks/ holds them already: drop one of them")
    if input_format in SHARD_FORMATS and o.masks:
        raise UsageError(f"--masks applies to image files; {input_format} shards carry their "
                         f"masks (TFRecord: image/segmentation/class/encoded; Parquet: "
                         f"--mask_column; WebDataset: --mask_ext)")
    if o.max_image_pixels < 1:
        raise UsageError(f"--max_image_pixels must be at least 1; received {o.max_image_pixels}")
    _check_resource_hints(("--inference_accelerator", o.inference_accelerator, "accelerator"),
                          ("--inference_min_ram", o.inference_min_ram, "min_ram"),
                          ("--crf_min_ram", o.crf_min_ram, "min_ram"))
    source, inference = model_settings(o, convention.num_classes)
    labels = MaskLabels(convention.num_classes, convention.ignore_index, o.strict_labels,
                        convention.label_map, convention.mask_colours)
    check_output_name(o.output)
    layout = OutputLayout(absolute_local(o.output.rstrip("/") or "/"),
                          parse_run_date(o.run_date), o.write_raw_masks, o.write_overlays,
                          o.write_confidence)
    return Settings(
        input=input_glob, input_format=input_format,
        input_base=list_base(o.input_base, input_format, input_glob),
        list_suffix=check_list_suffix(o.list_suffix, input_format),
        masks=absolute_local(o.masks), max_image_pixels=o.max_image_pixels, model=source,
        inference=inference, crf=crf_params(o),
        ignore_index=labels.ignore_index,
        class_names=convention.class_names, layout=layout, strict_labels=labels.strict,
        label_map=labels.label_map, mask_colours=labels.colours, palette=convention.palette,
        calibration=o.calibration, fail_on_errors=o.fail_on_errors,
        skip_existing=o.skip_existing, change_detection=o.change_detection, report=o.report,
        reshuffle=stage_split_reshuffles(o.stage_split, runner),
        inference_hints=tuple((name, value) for name, value in (
            ("accelerator", o.inference_accelerator), ("min_ram", o.inference_min_ram))
            if value),
        crf_hints=(("min_ram", o.crf_min_ram),) if o.crf_min_ram else (),
        crf_processes=crf_processes(
            o.crf_processes, o.crf_backend, (runner or "DirectRunner").rsplit(".", 1)[-1]
            in LOCAL_RUNNERS, options.view_as(DirectOptions).direct_num_workers),
        containers=ContainerFields(o.image_column, o.mask_column, o.key_column, o.mask_ext,
                                   o.image_feature, o.mask_feature, o.key_feature),
        image_suffix=convention.image_suffix, mask_suffix=convention.mask_suffix)


def _check_change_detection(mode: str, skip_existing: bool, input_format: str) -> None:
    if mode == "stamp" and not skip_existing:
        raise UsageError("--change_detection says how --skip_existing tells an unchanged "
                         "input; add --skip_existing or drop --change_detection")
    if mode == "stamp" and input_format in SHARD_FORMATS:
        raise UsageError(f"--change_detection stamp applies to image files; the records of "
                         f"{input_format} shards are hashed from the bytes read anyway: drop it")


def run_parser() -> argparse.ArgumentParser:
    """The parser of ``segbeam run``'s own flags (Beam's are checked apart)."""
    parser = CommandParser(
        prog="segbeam run", allow_abbrev=False,
        description="Segment images in batch with a Keras model, refine with a dense CRF, "
                    "and score against ground-truth masks where they exist.",
        epilog="Beam's own options pass through: --runner (DirectRunner by default; "
               "DataflowRunner, DaskRunner with --dask_client_address, ...), "
               "--direct_num_workers N, --direct_running_mode multi_processing, "
               "--temp_location, --dry_run=True (build the graph, run nothing), ... Without "
               "--input, `segbeam run` generates demo data, trains a small model and runs on "
               "it.")
    SegmentationOptions._add_argparse_args(parser)
    return parser


def parse_run_argv(argv: Sequence[str]) -> PipelineOptions:
    """Parses ``segbeam run``'s command line once: its own flags (argparse reports malformed
    values and ``--help`` itself), then every remaining flag must be one of Beam's."""
    argv = list(argv)
    parser = run_parser()
    _, rest = parser.parse_known_args(argv)
    beam_flags = beam_parser()  # built once for both checks
    reject_unknown_flags(rest, parser, beam_flags)
    reject_repeated_flags(argv, parser, beam_flags)
    return PipelineOptions(argv)
