"""Running the job: build the graph, run it, read back the summary, write the run manifest."""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import sys
import time
from importlib import metadata
from typing import NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from models.io import model_fingerprint
from pipeline.graph import build_pipeline
from pipeline.options import SegmentationOptions, Settings, settings_from
from transforms.write import MANIFEST_JSON, SUMMARY_JSON, output_path, write_bytes_atomically

LOG = logging.getLogger(__name__)
_PACKAGES = ("segbeam", "apache-beam", "keras", "tensorflow", "tensorflow-cpu", "jax", "torch",
             "numpy", "pillow", "pyarrow", "pydensecrf2")


class RunOutcome(NamedTuple):
    settings: Settings
    summary: dict
    manifest: dict

    @property
    def exit_code(self) -> int:
        counts = self.summary["counts"]
        if not counts["accounted_for"]:
            return 3
        if self.settings.fail_on_errors and counts["dead_letters"]:
            return 1
        return 0


def package_versions() -> dict:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read_json(path: str) -> dict:
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def _check_inputs_exist(settings: Settings) -> None:
    """Fails before the pipeline starts when the input glob matches nothing: a clearer message
    than the runner's, and no empty outputs."""
    match = FileSystems.match([settings.input], limits=[1])[0]
    if not match.metadata_list:
        raise ValueError(f"--input {settings.input!r} matches no file; check the path and "
                         f"quote the glob so that the shell does not expand it")


def run(argv: Optional[Sequence[str]] = None, test_pipeline: Optional[beam.Pipeline] = None
        ) -> RunOutcome:
    """Runs ``segbeam run`` with ``argv`` (its flags plus Beam's) and returns the outcome."""
    options = PipelineOptions(list(argv or []))
    settings = settings_from(options.view_as(SegmentationOptions))
    _check_inputs_exist(settings)
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.perf_counter()
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build_pipeline(pipeline, settings)
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.perf_counter() - clock
    summary = read_json(output_path(settings.output, SUMMARY_JSON))
    manifest = {
        "started_utc": started.isoformat(),
        "wall_time_seconds": round(wall, 3),
        "argv": list(argv or []),
        # Relative input paths in the metrics resolve against this (e.g. for reports).
        "working_directory": os.getcwd(),
        "settings": {k: v for k, v in settings._asdict().items() if k != "crf"},
        "crf": settings.crf._asdict() if settings.crf else None,
        "beam_options": options.get_all_options(drop_default=True, retain_unknown_options=True),
        "model_fingerprint": model_fingerprint(settings.model, settings.weights,
                                               settings.num_classes, settings.input_size,
                                               settings.seed),
        "counts": summary["counts"],
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    write_bytes_atomically(output_path(settings.output, MANIFEST_JSON),
                           json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
    return RunOutcome(settings, summary, manifest)


def format_report(outcome: RunOutcome) -> str:
    """A short human-readable account of a run for the terminal."""
    summary, settings = outcome.summary, outcome.settings
    counts = summary["counts"]
    lines = [f"segbeam: {counts['inputs']} inputs -> {counts['outputs']} segmented, "
             f"{counts['dead_letters']} dead letters "
             f"({'counts add up' if counts['accounted_for'] else 'COUNTS DO NOT ADD UP'}); "
             f"{counts['images_with_mask']} with masks; "
             f"{outcome.manifest['wall_time_seconds']:.1f} s"]
    for stage, count in counts["dead_letters_by_stage"].items():
        lines.append(f"  dead letters at {stage}: {count}")
    evaluation = summary["evaluation"]
    if evaluation:
        variants = [v for v in ("raw", "crf") if v in evaluation]
        fmt = lambda x: "   -  " if x is None else f"{100 * x:6.2f}"  # noqa: E731
        lines.append("  " + f"{'':22s}" + "".join(f"{v:>8s}" for v in variants))
        for figure in ("pixel_accuracy", "mean_class_accuracy", "miou", "fwiou"):
            lines.append(f"  {figure:22s}" + "".join(
                f"  {fmt(evaluation[v][figure])}" for v in variants))
        lines.append("  per-class IoU (%):")
        for index, name in enumerate(summary["class_names"]):
            lines.append(f"    {name:20s}" + "".join(
                f"  {fmt(evaluation[v]['per_class'][index]['iou'])}" for v in variants))
    lines.append(f"  outputs under {settings.output}/ (masks/, metrics/, summary.json, "
                 f"summary.parquet, dead_letters/, manifest.json)")
    return "\n".join(lines)
