"""``segbeam run`` options: a ``PipelineOptions`` subclass, so Beam's own flags (``--runner``,
``--direct_num_workers``, Dataflow's ...) pass through unchanged; and the validated settings
that the graph is built from."""

from __future__ import annotations

import argparse
import os
import re
from typing import NamedTuple, Optional

from apache_beam.options.pipeline_options import PipelineOptions

from segbeam.classes import resolve_class_names
from segbeam.crf import CrfParams
from segbeam.decode import DEFAULT_MAX_PIXELS
from segbeam.geometry import RESIZE_MODES
from segbeam.incremental import parse_run_date, run_directory

INPUT_FORMATS = ("auto", "images", "tfrecord")
STAGE_SPLITS = ("auto", "reshuffle", "fused")
# Runners that execute in this process (or its worker subprocesses) and hold every element that
# crosses a shuffle in memory: on them the inference and CRF stages are fused by default.
LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner", "FnApiRunner",
                 "BundleBasedDirectRunner", "TestDirectRunner")


def parse_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"256"`` -> (256, 256); ``"360x480"`` or ``"360,480"`` -> (360, 480) (height, width)."""
    if text is None or text == "":
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"--input_size must be N or HxW with positive integers; received "
                         f"{text!r}")
    return values


class SegmentationOptions(PipelineOptions):
    """The flags of ``segbeam run``."""

    @classmethod
    def _add_argparse_args(cls, parser):
        io = parser.add_argument_group("inputs and outputs")
        io.add_argument("--input", default=None,
                        help="Glob of image files (any Beam filesystem: local, gs://, ...) or of "
                             "TFRecord shards. Without --input, a demo runs on generated data.")
        io.add_argument("--input_format", default="auto", choices=INPUT_FORMATS,
                        help="How to read --input; auto: TFRecord when the glob names "
                             ".tfrecord/.tfrec files, else image files.")
        io.add_argument("--masks", default=None,
                        help="Folder or glob of ground-truth masks (class ids as pixel values), "
                             "paired to images by file stem. Optional; any image may lack one.")
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
        io.add_argument("--report", action="store_true", default=False,
                        help="Also write the evaluation report (OUTPUT/report/report.html, "
                             ".md, .json) at the end of the run; see `segbeam report`.")
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
        model = parser.add_argument_group("model and inference")
        model.add_argument("--model", default=None,
                           help="A saved .keras model (any Beam filesystem), or a registry name "
                                "(see `segbeam models`) with --weights.")
        model.add_argument("--weights", default=None,
                           help="Weights file (.weights.h5) for a registry model.")
        model.add_argument("--num_classes", type=int, default=None,
                           help="Number of classes the model predicts (required).")
        model.add_argument("--input_size", default=None,
                           help="Model input as N or HxW; default: the model's fixed input.")
        model.add_argument("--resize_mode", default="resize", choices=RESIZE_MODES,
                           help="resize: stretch to the input; letterbox: keep the aspect "
                                "ratio and pad; pad: no scaling (models that take any size).")
        model.add_argument("--size_multiple", type=int, default=32,
                           help="With --resize_mode pad: round the batch canvas up to this.")
        model.add_argument("--preprocess", default="none",
                           choices=("none", "scale_0_1", "scale_-1_1", "caffe", "torch"),
                           help="Normalisation the model expects; none: raw RGB in [0, 255] "
                                "(this project's models normalise inside their graph).")
        model.add_argument("--model_output", default="auto",
                           choices=("auto", "logits", "probabilities"),
                           help="What the model emits; auto detects per batch.")
        model.add_argument("--batch_size", type=int, default=8,
                           help="Largest inference batch.")
        model.add_argument("--min_batch_size", type=int, default=1,
                           help="Smallest inference batch Beam waits to form.")
        model.add_argument("--large_model", action="store_true", default=False,
                           help="Share one model per machine across SDK processes (Beam's "
                                "large_model): one copy per GPU instead of one per process.")
        model.add_argument("--model_copies", type=int, default=None,
                           help="With --large_model: copies per machine (e.g. one per GPU).")
        model.add_argument("--seed", type=int, default=0,
                           help="Initialisation seed of a registry model without --weights.")
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
        crf = parser.add_argument_group("dense CRF (defaults: DeepLab v2)")
        crf.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                         help="Refine predictions with a dense CRF (--no-crf to skip).")
        defaults = CrfParams()
        crf.add_argument("--crf_iterations", type=int, default=defaults.iterations,
                         help="Mean-field iterations.")
        crf.add_argument("--crf_pos_w", type=float, default=defaults.pos_w,
                         help="Weight of the Gaussian (smoothness) term.")
        crf.add_argument("--crf_pos_xy_std", type=float, default=defaults.pos_xy_std,
                         help="Spatial std (pixels) of the Gaussian term.")
        crf.add_argument("--crf_bi_w", type=float, default=defaults.bi_w,
                         help="Weight of the bilateral (appearance) term.")
        crf.add_argument("--crf_bi_xy_std", type=float, default=defaults.bi_xy_std,
                         help="Spatial std (pixels) of the bilateral term.")
        crf.add_argument("--crf_bi_rgb_std", type=float, default=defaults.bi_rgb_std,
                         help="Colour std (intensity levels) of the bilateral term.")
        crf.add_argument("--crf_scale", type=float, default=defaults.scale,
                         help="Run the CRF at this fraction of each image's resolution "
                              "(spatial stds scaled to match) and upsample its marginals; "
                              "1 is the plain full-resolution CRF.")
        crf.add_argument("--crf_min_side", type=int, default=defaults.min_side,
                         help="With --crf_scale below 1: the reduced copy keeps at least this "
                              "many pixels on its short side (smaller images stay at full "
                              "resolution).")
        crf.add_argument("--crf_class_floor", type=float, default=defaults.class_floor,
                         help="Leave out of an image's CRF the classes whose probability "
                              "stays below this everywhere in it; 0 keeps every class.")
        evaluation = parser.add_argument_group("evaluation")
        evaluation.add_argument("--ignore_index", type=int, default=255,
                                help="Mask value excluded from metrics (CamVid: 11, VOC: 255); "
                                     "-1 for none.")
        evaluation.add_argument("--class_names", default=None,
                                help="Comma-separated names, or a preset: camvid, voc.")


class Settings(NamedTuple):
    """Validated, typed settings for one run."""

    input: str
    input_format: str
    masks: Optional[str]
    output: str
    max_image_pixels: int
    model: str
    weights: Optional[str]
    num_classes: int
    input_size: Optional[tuple[int, int]]
    resize_mode: str
    size_multiple: int
    preprocess: str
    model_output: str
    batch_size: int
    min_batch_size: int
    large_model: bool
    model_copies: Optional[int]
    seed: int
    crf: Optional[CrfParams]
    ignore_index: Optional[int]
    class_names: list
    fail_on_errors: bool
    write_raw_masks: bool = False
    run_date: Optional[str] = None
    run_dir: str = ""
    skip_existing: bool = False
    reshuffle: bool = True
    inference_hints: dict = {}
    crf_hints: dict = {}

    @property
    def history_glob(self) -> str:
        """The metrics of earlier runs that --skip_existing looks at."""
        if self.run_date:
            return f"{self.output}/date=*/metrics/*.parquet"
        return f"{self.run_dir}/metrics/*.parquet"

    def output_affecting(self) -> dict:
        """The settings (beside the model file) that change a mask or a metrics row; their hash
        is part of ``config_fingerprint``."""
        return {"num_classes": self.num_classes, "input_size": self.input_size,
                "resize_mode": self.resize_mode, "size_multiple": self.size_multiple,
                "preprocess": self.preprocess, "model_output": self.model_output,
                "crf": self.crf._asdict() if self.crf else None,
                "ignore_index": self.ignore_index, "write_raw_masks": self.write_raw_masks}


def absolute_local(path: Optional[str]) -> Optional[str]:
    """A local path or glob made absolute against this directory: the workers of a distributed
    runner may run elsewhere, in another working directory. URLs (``gs://``) stay as they are."""
    if path is None or "://" in path:
        return path
    return os.path.abspath(path)


def _accelerator_count(accelerator: Optional[str]) -> Optional[int]:
    match = re.search(r"(?:^|;)count:(\d+)", accelerator or "")
    return int(match.group(1)) if match else None


def stage_split_reshuffles(choice: str, runner: Optional[str]) -> bool:
    """Whether the graph puts a Reshuffle between inference and the CRF."""
    if choice != "auto":
        return choice == "reshuffle"
    name = (runner or "DirectRunner").rsplit(".", 1)[-1]
    return name not in LOCAL_RUNNERS


def settings_from(options: SegmentationOptions, runner: Optional[str] = None) -> Settings:
    """Checks the flags together and returns typed settings; errors say what to change.

    ``runner`` is Beam's ``--runner`` (it decides ``--stage_split auto``)."""
    o = options
    if not o.input:
        raise ValueError("--input is required (a glob of images or TFRecord shards)")
    if not o.model:
        raise ValueError("--model is required: a .keras file or a registry name "
                         "(see `segbeam models`)")
    if o.num_classes is None or o.num_classes < 2:
        raise ValueError(f"--num_classes must be at least 2; received {o.num_classes}")
    if o.batch_size < 1 or not 1 <= o.min_batch_size <= o.batch_size:
        raise ValueError(f"need 1 <= --min_batch_size ({o.min_batch_size}) <= --batch_size "
                         f"({o.batch_size})")
    input_format = o.input_format
    if input_format == "auto":
        input_format = "tfrecord" if any(s in o.input.lower() for s in (".tfrecord", ".tfrec")) \
            else "images"
    if input_format == "tfrecord" and o.masks:
        raise ValueError("--masks applies to image files; TFRecord shards carry their masks "
                         "in image/segmentation/class/encoded")
    crf = None
    if o.crf:
        crf = CrfParams(o.crf_iterations, o.crf_pos_w, o.crf_pos_xy_std, o.crf_bi_w,
                        o.crf_bi_xy_std, o.crf_bi_rgb_std, o.crf_scale,
                        o.crf_class_floor, o.crf_min_side).validate()
    run_date = parse_run_date(o.run_date)
    output = absolute_local(o.output.rstrip("/") or "/")
    inference_hints = {name: value for name, value in (
        ("accelerator", o.inference_accelerator), ("min_ram", o.inference_min_ram)) if value}
    crf_hints = {"min_ram": o.crf_min_ram} if o.crf_min_ram else {}
    model_copies = o.model_copies
    if o.large_model and model_copies is None:
        model_copies = _accelerator_count(o.inference_accelerator)  # one model per GPU
    from segbeam.models.io import is_saved_model

    return Settings(
        input=absolute_local(o.input), input_format=input_format,
        masks=absolute_local(o.masks), output=output,
        max_image_pixels=o.max_image_pixels,
        model=absolute_local(o.model) if is_saved_model(o.model) else o.model,
        weights=absolute_local(o.weights),
        num_classes=o.num_classes, input_size=parse_size(o.input_size),
        resize_mode=o.resize_mode, size_multiple=o.size_multiple, preprocess=o.preprocess,
        model_output=o.model_output, batch_size=o.batch_size, min_batch_size=o.min_batch_size,
        large_model=o.large_model, model_copies=model_copies, seed=o.seed, crf=crf,
        ignore_index=None if o.ignore_index is None or o.ignore_index < 0 else o.ignore_index,
        class_names=resolve_class_names(o.class_names, o.num_classes),
        fail_on_errors=o.fail_on_errors, write_raw_masks=o.write_raw_masks,
        run_date=run_date, run_dir=run_directory(output, run_date),
        skip_existing=o.skip_existing, reshuffle=stage_split_reshuffles(o.stage_split, runner),
        inference_hints=inference_hints, crf_hints=crf_hints)
