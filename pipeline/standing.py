"""The dataset as it stands under a root of nightly partitions (``--run_date``): each input's
latest metrics row summed into one evaluation, as a run's summary sums its own rows.

A night's summary covers what that night segmented (or kept); inputs it skipped as unchanged
keep their rows in earlier partitions. ``standing_summary`` reads the latest row of every key
from the finished partitions (``segbeam.results.read_metrics``), keeps those made under the
latest night's configuration, and sums them with the run's own ``ConfusionSum``, so its figures
are the ones a single run over the same inputs would give.
"""

from __future__ import annotations

import posixpath

from segbeam.layout import MANIFEST_JSON, RUNNING_MARKER, SUMMARY_JSON, RunOutputs, exists, \
    matching_paths, output_path, read_json
from segbeam.results import read_metrics
from segbeam.transforms.aggregate import ConfusionSum, build_summary


def finished_nights(root: str) -> list[str]:
    """The dates of the partitions under ``root`` whose run finished (a ``summary.json``, and
    no run writing it now), oldest first."""
    dates = []
    for path in matching_paths(output_path(root, "date=*", SUMMARY_JSON)):
        run_dir = posixpath.dirname(path)
        if not exists(output_path(run_dir, RUNNING_MARKER)):
            dates.append(posixpath.basename(run_dir)[len("date="):])
    return sorted(dates)


def standing_summary(root: str) -> dict:
    """A summary (``build_summary``'s layout) of each input's latest row under ``root``, with
    ``standing``: the rows summed, the nights they come from, the rows left out as made under
    another configuration than the latest night's, and how many more rows there are than
    inputs the latest night accounted for (inputs gone since, or dead letters now: the rows
    cannot tell)."""
    return standing_run(root).summary


def standing_run(root: str) -> RunOutputs:
    """The nightly partitions under ``root`` as they stand, in the shape of one run's outputs
    (``segbeam report --standing``): the standing summary, the latest night's manifest (its
    warnings joined by what the standing rows cannot vouch for), the rows summed, and no dead
    letters (each night's are its own)."""
    nights = finished_nights(root)
    if not nights:
        raise ValueError(f"{root} holds no finished dated run (--run_date): pass the --output "
                         f"of nightly `segbeam run --run_date` runs")
    latest_dir = output_path(root, f"date={nights[-1]}")
    latest = read_json(output_path(latest_dir, SUMMARY_JSON))
    fingerprint = latest.get("config_fingerprint")
    rows = read_metrics(root, latest=True, dates=set(nights)).to_pylist()
    current = [row for row in rows if row.get("config_fingerprint") == fingerprint]
    combine = ConfusionSum(latest["num_classes"])
    totals = combine.create_accumulator()
    for row in current:
        totals = combine.add_input(totals, row)
    summary = build_summary(None, totals, inputs=len(current), segmented=len(current),
                            dead_by_stage=[], class_names=latest["class_names"],
                            ignore_index=latest.get("ignore_index"),
                            config_fingerprint=fingerprint,
                            palette=tuple(map(tuple, latest.get("palette") or ())) or None)
    counts = latest["counts"]
    accounted = counts["segmented"] + counts["reused"] + counts["skipped"]
    summary["counts"] = {"rows": len(current), "images_with_mask": totals["images_with_mask"],
                         "multi_frame_images": totals["multi_frame_images"],
                         "dark_16_bit_images": totals["dark_16_bit_images"]}
    summary["standing"] = {
        "root": root, "nights": len(nights), "latest_night": nights[-1],
        "nights_of_rows": sorted({row["date"] for row in current}),
        "other_configuration": len(rows) - len(current),
        "latest_night_inputs": accounted,
        "rows_beyond_latest_inputs": max(0, len(current) - accounted)}
    manifest_path = output_path(latest_dir, MANIFEST_JSON)
    manifest = read_json(manifest_path) if exists(manifest_path) else {}
    manifest = {**manifest, "warnings": manifest.get("warnings", []) +
                standing_warnings(summary["standing"])}
    return RunOutputs(root, summary, manifest, current, [])


def standing_warnings(standing: dict) -> list[str]:
    """What the standing rows cannot vouch for, in sentences."""
    warnings = []
    other, beyond = standing["other_configuration"], standing["rows_beyond_latest_inputs"]
    if other:
        rows = f"{other} inputs' latest rows were" if other != 1 else "1 input's latest row was"
        warnings.append(f"{rows} made under another configuration than the latest night's and "
                        f"left out (inputs no night has taken since the configuration "
                        f"changed)")
    if beyond:
        warnings.append(f"{beyond} row{'s' * (beyond != 1)} more than the inputs the latest "
                        f"night accounted for: inputs deleted since, or dead letters now, keep "
                        f"their last rows, and these figures count them")
    return warnings
