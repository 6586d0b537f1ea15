"""Evaluation reports over a run's output: the figures (this module) and their renderings
(``pipeline/report_render.py``: JSON, Markdown, one self-contained HTML file, whose gallery
panels ``pipeline/report_gallery.py`` reads and draws).

A report reads only what ``segbeam run`` wrote under ``--output`` (``summary.json``,
``manifest.json``, ``metrics/*.parquet``, ``dead_letters/*.jsonl``, ``masks/``), through
``segbeam.layout`` and Beam's FileSystems, so it works on local and ``gs://`` outputs alike.
Figures are plain dicts of numbers, so the JSON rendering is the figures themselves and tests
can check them directly.
"""

from __future__ import annotations

import collections
import json
import posixpath
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from segbeam.layout import RAW_MASKS_DIR, REPORT_DIR, REPORT_FILES, RunOutputs, exists, load_run, \
    check_writable_folder, mask_png_path, output_path, write_bytes_atomically
from segbeam.dataset import container_mask_flag, no_mask_found
from segbeam.decode import TURNED_APART_COUNTER, dark_high_depth_warning, \
    mask_turned_apart_warning
from segbeam.inference import UNIT_RANGE_AS_LOGITS, UNIT_RANGE_COUNTER
from segbeam.labels import label_warnings
from segbeam.metrics import DATASET_METRICS, METRIC_LABELS, REPORTED_METRICS
from segbeam.pipeline.report_render import render_html, render_json, render_markdown
from segbeam.pipeline.report_rows import as_dicts, final_figure, flags, floats, present, ranked

if TYPE_CHECKING:
    import pyarrow


def histogram(values: np.ndarray | list[float], bins: int, low: float, high: float) -> dict:
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins,
                                 range=(low, high))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def normalised_confusion(confusion: list[list[int]]) -> list[list[Optional[float]]]:
    """Rows (ground truth) scaled to sum to one; rows of classes absent from the masks are
    null."""
    matrix = np.asarray(confusion, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = matrix / totals
    return [[None if totals[i, 0] == 0 else round(float(v), 6) for v in row]
            for i, row in enumerate(scaled)]


def _delta(after: Optional[float], before: Optional[float]) -> Optional[float]:
    return None if after is None or before is None else after - before


def _reason_group(reason: str) -> str:
    """Dead-letter reasons grouped by their first clause (file-specific tails dropped)."""
    return reason.split(";")[0].split(" (")[0][:160]


def evaluation_figures(summary: dict, rows: pyarrow.Table, gallery_size: int,
                       working_directory: Optional[str] = None,
                       root: Optional[str] = None) -> Optional[dict]:
    evaluation = summary.get("evaluation") or {}
    raw = evaluation.get("raw")
    if not raw:
        return None
    crf = evaluation.get("crf")
    names = summary["class_names"]
    aggregate = {metric: {"raw": raw.get(metric), "crf": crf.get(metric) if crf else None,
                          "delta": _delta(crf.get(metric), raw.get(metric)) if crf else None}
                 for metric in REPORTED_METRICS}
    truth = np.asarray(raw["confusion"], dtype=np.int64).sum(axis=1)
    labelled = max(int(truth.sum()), 1)
    per_class = []
    for index, name in enumerate(names):
        iou_raw = raw["per_class"][index]["iou"]
        iou_crf = crf["per_class"][index]["iou"] if crf else None
        edges = {f"{figure}_{variant}": figures["per_class"][index].get(figure)
                 for variant, figures in (("raw", raw), ("crf", crf)) if figures
                 for figure in ("boundary_f1", "boundary_iou")}
        per_class.append({"class_id": index, "class": name, "iou_raw": iou_raw,
                          "iou_crf": iou_crf, "delta": _delta(iou_crf, iou_raw),
                          "pixel_share": float(truth[index]) / labelled, **edges})
    final = crf or raw
    scored = np.flatnonzero(flags(rows, "has_mask") & present(rows, "miou_raw"))
    final_miou, _ = final_figure(rows, "miou")
    gained = scored[present(rows, "miou_crf")[scored]]
    gains = floats(rows, "miou_crf")[gained] - floats(rows, "miou_raw")[gained]
    order = ranked(rows, scored, final_miou[scored])
    final_bf, has_bf = final_figure(rows, "bf")
    bounded = scored[has_bf[scored]]
    by_boundary = ranked(rows, bounded, final_bf[bounded])[:gallery_size]
    worst = order[:gallery_size]
    best = order[::-1][:gallery_size] if len(order) > gallery_size else order[:0]
    span = max(float(np.abs(gains).max()) if len(gains) else 0.0, 0.01)
    return {
        "aggregate": aggregate,
        "per_class": per_class,
        "confusion_variant": "crf" if crf else "raw",
        "confusion_normalised": normalised_confusion(final["confusion"]),
        "labelled_pixels": raw.get("labelled_pixels"),
        "images_scored": len(scored),
        "per_image_miou": histogram(final_miou[scored], 10, 0.0, 1.0),
        "crf_gain": histogram(gains, 10, -span, span) if len(gains) else None,
        "crf_gain_mean": float(np.mean(gains)) if len(gains) else None,
        "worst": [_gallery_entry(r, working_directory, root) for r in as_dicts(rows, worst)],
        "worst_boundary": [dict(_gallery_entry(r, working_directory, root),
                                bf=float(final_bf[index]))
                           for index, r in zip(by_boundary, as_dicts(rows, by_boundary))],
        "calibration": {variant: figures.get("calibration")
                        for variant, figures in (("raw", raw), ("crf", crf)) if figures},
        "best": [_gallery_entry(r, working_directory, root) for r in as_dicts(rows, best)],
    }


def resolve(path: Optional[str], working_directory: Optional[str]) -> Optional[str]:
    """A run's relative local paths, made absolute against the run's working directory so
    that the report can read them from anywhere."""
    if not path or not working_directory or "://" in path or posixpath.isabs(path):
        return path
    return posixpath.normpath(posixpath.join(working_directory, path))


def _gallery_entry(row: dict, working_directory: Optional[str] = None,
                   root: Optional[str] = None) -> dict:
    raw = mask_png_path(root, row["key"], RAW_MASKS_DIR) if root else None
    return {"key": row["key"], "source": resolve(row["source"], working_directory),
            "mask_source": resolve(row.get("mask_source"), working_directory),
            "mask_path": resolve(row["mask_path"], working_directory),
            "raw_mask_path": raw if raw and exists(raw) else None,
            "crf_applied": row.get("crf_applied"),
            "miou_raw": row.get("miou_raw"), "miou_crf": row.get("miou_crf"),
            "height": row["height"], "width": row["width"]}


def build_report(run: RunOutputs, gallery_size: int = 6) -> dict:
    """The report's figures for one run."""
    summary, manifest = run.summary, run.manifest
    reasons = collections.Counter((d.get("stage", "?"), _reason_group(d.get("reason", "")))
                                  for d in run.dead_letters)
    unmasked = np.flatnonzero(~flags(run.rows, "has_mask"))
    unmasked_first = ranked(run.rows, unmasked, np.zeros(len(unmasked)))[:gallery_size]
    cwd = manifest.get("working_directory")
    return {
        "run": {
            "output": run.root,
            "model": run.setting("model"),
            "model_fingerprint": manifest.get("model_fingerprint"),
            "input": run.setting("input"),
            "masks": run.setting("masks"),
            "convention": {name: run.setting(name) for name in _CONVENTION},
            "started_utc": manifest.get("started_utc"),
            "wall_time_seconds": manifest.get("wall_time_seconds"),
            "versions": manifest.get("versions", {}),
            "counts": summary.get("counts", {}),
            **({"standing": summary["standing"]} if "standing" in summary else {}),
            "dead_letters_by_reason": [
                {"stage": stage, "reason": reason, "count": count}
                for (stage, reason), count in sorted(reasons.items(), key=lambda i: -i[1])],
        },
        "class_names": summary["class_names"],
        "ignore_index": summary.get("ignore_index"),
        "labels": summary.get("labels"),
        "palette": summary.get("palette"),
        "warnings": _warnings(run),
        "evaluation": evaluation_figures(summary, run.rows, gallery_size, cwd, run.root),
        "without_masks": {"count": len(unmasked),
                          "examples": [_gallery_entry(r, cwd, run.root)
                                       for r in as_dicts(run.rows, unmasked_first)]},
    }


def run_warnings(summary: dict, manifest: dict, masks: Optional[str], containers: dict,
                 label_map: Optional[Sequence]) -> list[str]:
    """What a finished run warns about, the same in the terminal and in the report: masks
    that no input found, mask values not scored, 16-bit images that came out dark, model
    outputs in [0, 1] read as logits, and what the launcher found (a model trained under
    another label convention or scale: the manifest's ``warnings``). ``containers``: the
    run's ``ContainerFields`` as a dict."""
    counts = summary.get("counts", {})
    flag = container_mask_flag(containers)
    # Inputs skipped as unchanged were paired as before: only the new ones are in question.
    unpaired = no_mask_found(bool(masks or flag), counts.get("outputs", 0),
                             counts.get("images_with_mask", 0), flag,
                             *(("nothing new was scored", "input this run segmented")
                               if counts.get("skipped") else ()))
    counters = manifest.get("beam_counters") or {}
    read_as_logits = [UNIT_RANGE_AS_LOGITS] if counters.get(UNIT_RANGE_COUNTER) else []
    # A run made before the metrics rows kept the peak counted such images in Beam's counters.
    dark = counts.get("dark_16_bit_images", counters.get("dark_16_bit_images"))
    named = "; their metrics rows' high_depth_peak column names them" \
        if "dark_16_bit_images" in counts else ""
    dark_images = [dark_high_depth_warning(dark) + named] if dark else []
    turned = counters.get(TURNED_APART_COUNTER)
    turned_apart = [mask_turned_apart_warning(turned)] if turned else []
    return ([unpaired] if unpaired else []) + label_warnings(summary, label_map) + \
        dark_images + turned_apart + read_as_logits + manifest.get("warnings", []) + \
        _partial_scope(counts)


def _partial_scope(counts: dict) -> list[str]:
    """Where inputs were skipped (their rows stand in earlier date partitions), a run's
    figures are not the dataset's: said, so that they are not read as such."""
    skipped, outputs = counts.get("skipped", 0), counts.get("outputs", 0)
    if not skipped:
        return []
    where = ("its rows and figures stand" if skipped == 1 else
             "their rows and figures stand")
    scope = (f"this run's figures cover only the {outputs} input{'s' * (outputs != 1)} it "
             f"segmented or kept" if outputs else "this run segmented nothing")
    return [f"{scope}: {skipped} unchanged input{'s were' if skipped != 1 else ' was'} "
            f"skipped, and {where} in earlier partitions, not in these figures "
            f"(segbeam report OUTPUT --standing evaluates every input's "
            f"latest row)"]


def _warnings(run: RunOutputs) -> list[str]:
    return run_warnings(run.summary, run.manifest, run.setting("masks"),
                        run.setting("containers") or {}, run.setting("label_map")) + \
        files_missing(run.summary, len(run.rows), len(run.dead_letters))


def files_missing(summary: dict, rows: int, dead_letters: int) -> list[str]:
    """Where a run's folder holds fewer (or more) metrics rows or dead letters than its summary
    counts (files removed, or a copy of the folder cut short, since it ran): the report's
    per-image figures would cover what is left without a word."""
    counts = summary.get("counts", {})
    found = []
    for what, counted, held in (("metrics row", counts.get("outputs"), rows),
                                ("dead letter", counts.get("dead_letters"), dead_letters)):
        if counted is not None and counted != held:
            found.append(f"the run's summary counts {counted} {what}{'s' * (counted != 1)}, "
                         f"but its folder holds {held}: files were removed, or the folder was "
                         f"not copied whole, since it ran; the aggregate figures are the "
                         f"summary's, the per-image figures and the gallery cover the {held} "
                         f"found")
    return found


# The settings that decide which mask pixels are scored and as what.
_CONVENTION = ("ignore_index", "label_map", "mask_colours", "strict_labels")


def comparison_caveats(current: dict, previous: dict) -> list[str]:
    """What makes two runs' figures other than like for like, each in a line: figures of
    different stages (CRF against raw), different images or masks, a different label
    convention, a different count of scored pixels. Empty when they compare directly."""
    now, before = current["evaluation"], previous["evaluation"]
    caveats = []
    stages = [("after the CRF" if e.get("confusion_variant") == "crf" else "without the CRF")
              for e in (now, before)]
    if stages[0] != stages[1]:
        caveats.append(f"the current figures are {stages[0]}, the previous {stages[1]}")
    for what, field in (("images", "input"), ("masks", "masks")):
        if current["run"][field] != previous["run"][field]:
            caveats.append(f"the {what} differ: {current['run'][field]} now, "
                           f"{previous['run'][field]} before")
    conventions = current["run"].get("convention") or {}, previous["run"].get("convention") or {}
    for name in _CONVENTION:
        if conventions[0].get(name) != conventions[1].get(name):
            caveats.append(f"--{name} differs ({_short(conventions[0].get(name))} now, "
                           f"{_short(conventions[1].get(name))} before): other pixels are "
                           f"scored, or as other classes")
    pixels = now.get("labelled_pixels"), before.get("labelled_pixels")
    if pixels[0] != pixels[1]:
        caveats.append(f"{_short(pixels[0])} pixels are scored now, {_short(pixels[1])} before")
    return caveats


def _short(value) -> str:
    text = "none" if value is None else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def compare_reports(current: dict, previous: dict, threshold: float) -> dict:
    """Per-class and overall deltas against an earlier run's report. A regression is a drop of
    more than ``threshold`` (a fraction: 0.01 = one point) in an aggregate metric or a class
    IoU, on the final (CRF where it ran) predictions."""
    if current["class_names"] != previous["class_names"]:
        raise ValueError(f"cannot compare runs with different classes: "
                         f"{current['class_names']} vs {previous['class_names']}")
    now, before = current["evaluation"], previous["evaluation"]
    if not now or not before:
        unscored = " and ".join(name for name, figures in (("current", now), ("previous", before))
                                if not figures)
        return {"previous": previous["run"]["output"], "comparable": False,
                "not_comparable": f"the {unscored} run{'s' if ' and ' in unscored else ''} "
                                  f"scored no masks, so there are no figures to compare",
                "aggregate": {}, "per_class": [], "regressions": []}

    def pick(figures: dict):  # the final figures: the CRF's where it ran
        return figures["crf"] if figures["crf"] is not None else figures["raw"]

    regressions, aggregate, per_class = [], {}, []
    for metric in DATASET_METRICS:
        a, b = pick(now["aggregate"][metric]), pick(before["aggregate"][metric])
        delta = _delta(a, b)
        aggregate[metric] = {"current": a, "previous": b, "delta": delta}
        if delta is not None and delta < -threshold:
            regressions.append({"what": METRIC_LABELS[metric], "delta": delta})
    for mine, theirs in zip(now["per_class"], before["per_class"]):
        a = mine["iou_crf"] if mine["iou_crf"] is not None else mine["iou_raw"]
        b = theirs["iou_crf"] if theirs["iou_crf"] is not None else theirs["iou_raw"]
        delta = _delta(a, b)
        regressed = delta is not None and delta < -threshold
        per_class.append({"class": mine["class"], "current": a, "previous": b, "delta": delta,
                          "regression": regressed})
        if regressed:
            regressions.append({"what": f"IoU of {mine['class']}", "delta": delta})
    return {"previous": previous["run"]["output"], "comparable": True, "threshold": threshold,
            "caveats": comparison_caveats(current, previous),
            "aggregate": aggregate, "per_class": per_class, "regressions": regressions}


GALLERY_PATHS = ("source", "mask_source", "mask_path", "raw_mask_path")


def _check_gallery_storage(report: dict, run_dir: str) -> None:
    """Gallery images on Cloud Storage where the run's folder is not (a folder on
    ``gs://`` was checked before the command began): storage this machine cannot reach is not
    read, as each image would wait out the client's two minutes of retries; the entries say
    ``cloud_storage_unread`` and a warning says why. Reading them anonymously, for want of
    credentials, is a warning too."""
    from segbeam.storage import gcs_paths

    if run_dir.startswith("gs://"):
        return
    evaluation = report["evaluation"] or {}
    entries = [entry for name in ("worst", "worst_boundary", "best")
               for entry in evaluation.get(name, [])] + report["without_masks"]["examples"]
    remote = gcs_paths(entry.get(name) for entry in entries for name in GALLERY_PATHS)
    if not remote:
        return
    from segbeam.pipeline.flags import prepare_cloud_storage

    try:
        warning = prepare_cloud_storage(remote, command="report")
    except ValueError as error:
        for entry in entries:
            entry["cloud_storage_unread"] = True
        report["warnings"].append(f"the galleries show no image from Cloud Storage: {error}")
        return
    if warning:
        report["warnings"].append(warning)


def write_report(run_dir: str, output: Optional[str] = None, compare: Optional[str] = None,
                 regression_threshold: float = 1.0, gallery_size: int = 6,
                 standing: bool = False) -> tuple[dict, str]:
    """Builds and writes the report; returns (figures, output folder). With ``standing``,
    ``run_dir`` is a root of nightly partitions, reported as they stand
    (``segbeam.pipeline.standing``)."""
    if standing:
        from segbeam.pipeline.standing import standing_run

        report = build_report(standing_run(run_dir), gallery_size)
    else:
        report = build_report(load_run(run_dir), gallery_size)
    _check_gallery_storage(report, run_dir)
    if compare:
        report["comparison"] = compare_reports(report, build_report(load_run(compare), 0),
                                               regression_threshold / 100.0)
    folder = output or output_path(run_dir, REPORT_DIR)
    check_writable_folder(folder)
    renderers = {"report.html": render_html, "report.md": render_markdown,
                 "report.json": render_json}
    for name in REPORT_FILES:  # the files a run removes before it starts
        write_bytes_atomically(output_path(folder, name), renderers[name](report).encode())
    return report, folder
