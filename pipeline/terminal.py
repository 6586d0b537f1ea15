"""What a finished (or dry) run prints on the terminal: the counts, what a nightly run found
unchanged and how, warnings, and the evaluation table."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from segbeam.metrics import DATASET_METRICS

if TYPE_CHECKING:
    from segbeam.pipeline.run import RunOutcome


def format_dry_run(outcome: RunOutcome) -> str:
    described = outcome.manifest["dry_run"]
    lines = [f"segbeam: dry run; the job graph was built ({described['transforms']} transforms) "
             f"and not run; it would write under {outcome.settings.run_dir}/"]
    staged = sorted({name for environment in described["environments"].values()
                     for name in environment["staged_files"]})
    for environment in described["environments"].values():
        if environment["resource_hints"]:
            hints = ", ".join(f"{hint}={value}" for hint, value in
                              sorted(environment["resource_hints"].items()))
            lines.append(f"  {', '.join(environment['stages'])} asks for {hints}")
    if staged:
        lines.append(f"  staged for the workers: {', '.join(staged)}")
    return "\n".join(lines)


def outcome_warnings(outcome: RunOutcome) -> list[str]:
    """The finished run's warnings (``report.run_warnings``), from its settings."""
    from segbeam.pipeline.report import run_warnings

    s = outcome.settings
    return run_warnings(outcome.summary, outcome.manifest, s.masks,
                        dataclasses.asdict(s.containers), s.label_map)


def format_report(outcome: RunOutcome) -> str:
    """A short human-readable account of a run for the terminal."""
    summary, settings = outcome.summary, outcome.settings
    if summary is None:
        return format_dry_run(outcome)
    counts = summary["counts"]
    unchanged = ""
    if counts["reused"] or counts["skipped"]:
        unchanged = (f", {counts['reused'] + counts['skipped']} unchanged (not segmented again: "
                     f"{counts['reused']} kept here, {counts['skipped']} in earlier partitions)")
    lines = [f"segbeam: {counts['inputs']} inputs -> {counts['segmented']} segmented{unchanged}, "
             f"{counts['dead_letters']} dead letters "
             f"({'counts add up' if counts['accounted_for'] else 'COUNTS DO NOT ADD UP'}); "
             f"{counts['images_with_mask']} with masks; "
             f"{outcome.manifest['wall_time_seconds']:.1f} s"]
    for stage, count in counts["dead_letters_by_stage"].items():
        lines.append(f"  dead letters at {stage}: {count}")
    if counts.get("multi_frame_images"):
        lines.append(f"  {counts['multi_frame_images']} images are animated or multi-page: "
                     f"the first frame was segmented (column image_frames)")
    if counts.get("masks_without_image"):
        lines.append(f"  {counts['masks_without_image']} mask files matched no input image "
                     f"(first: {summary['masks_without_image'][0]}; summary.json lists up to "
                     f"20)")
    counters = outcome.manifest.get("beam_counters") or {}
    if settings.skip_existing:
        lines += _change_detection_lines(counters, settings.change_detection)
    if counters.get("stale_outputs_removed"):
        lines.append(f"  removed {counters['stale_outputs_removed']} per-image files an earlier "
                     f"run left that no input of this run claims (masks/, masks_raw/, "
                     f"overlays/, confidence/)")
    if counters.get("stale_outputs_kept"):
        lines.append(f"  WARNING: could not remove {counters['stale_outputs_kept']} per-image "
                     f"files an earlier run left (the log names each); they are not this run's")
    lines += [f"  WARNING: {warning}" for warning in outcome_warnings(outcome)]
    evaluation = summary["evaluation"]
    if evaluation:
        variants = [v for v in ("raw", "crf") if v in evaluation]
        fmt = lambda x: "   -  " if x is None else f"{100 * x:6.2f}"  # noqa: E731
        lines.append("  " + f"{'':22s}" + "".join(f"{v:>8s}" for v in variants))
        for figure in (*DATASET_METRICS, "boundary_f1", "boundary_iou"):
            lines.append(f"  {figure:22s}" + "".join(
                f"  {fmt(evaluation[v].get(figure))}" for v in variants))
        calibrated = [evaluation[v].get("calibration") for v in variants]
        if any(calibrated):
            lines.append(f"  {'ece':22s}" + "".join(
                f"  {fmt(c['ece'] if c else None)}" for c in calibrated))
            lines.append(f"  {'nll (nats/pixel)':22s}" + "".join(
                "     -  " if c is None else f"  {c['nll']:6.3f}" for c in calibrated))
            lines.append(f"  {'brier':22s}" + "".join(
                "     -  " if c is None else f"  {c['brier']:6.3f}" for c in calibrated))
        lines.append("  per-class IoU (%):")
        for index, name in enumerate(summary["class_names"]):
            lines.append(f"    {name:20s}" + "".join(
                f"  {fmt(evaluation[v]['per_class'][index]['iou'])}" for v in variants))
    lines.append(f"  outputs under {settings.run_dir}/ (masks/, metrics/, summary.json, "
                 f"summary.parquet, dead_letters/, manifest.json)")
    return "\n".join(lines)


def _change_detection_lines(counters: dict, mode: str) -> list[str]:
    """How ``--skip_existing`` found out what changed: files read to be hashed, inputs settled
    by their stamps, inputs whose standing row's mask file was gone or damaged (reused or
    skipped rows alike)."""
    hashed = counters.get("inputs_hashed", 0)
    line = f"  change detection ({mode}): {hashed} inputs read to be hashed"
    if mode == "stamp":
        line += f", {counters.get('inputs_unchanged_by_stamp', 0)} unchanged by their stamps"
    lines = [line]
    gone, damaged = (sum(counters.get(f"{kind}_rows_{fault}_mask_file", 0)
                         for kind in ("reused", "skipped"))
                     for fault in ("without", "with_damaged"))
    if gone or damaged:
        lines.append(f"  {gone + damaged} unchanged inputs segmented again: their mask file was "
                     f"gone ({gone}) or not the size it was written at ({damaged})")
    return lines
