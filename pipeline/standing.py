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
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segbeam.layout import MANIFEST_JSON, REPORT_ROW_COLUMNS, RUNNING_MARKER, SUMMARY_JSON, \
    RunOutputs, exists, matching_paths, open_file, output_path, partition_date, read_json, \
    report_rows, run_directory
from segbeam.results import latest_rows, metrics_files
from segbeam.transforms.aggregate import ConfusionSum, build_summary

BATCH_ROWS = 2048  # rows read and summed at once: a few MB of columns, whatever the run size


def finished_nights(root: str) -> list[str]:
    """The dates of the partitions under ``root`` whose run finished (a ``summary.json``, and
    no run writing it now), oldest first."""
    dates = []
    for path in matching_paths(output_path(root, "date=*", SUMMARY_JSON)):
        run_dir = posixpath.dirname(path)
        if partition_date(run_dir) and not exists(output_path(run_dir, RUNNING_MARKER)):
            dates.append(partition_date(run_dir))
    return sorted(dates)


def standing_summary(root: str) -> dict:
    """A summary (``build_summary``'s layout) of each input's latest row under ``root``, with
    ``standing``: the rows summed, the nights they come from, the rows left out as made under
    another configuration than the latest night's, and how many more rows there are than
    inputs the latest night accounted for (inputs gone since, or dead letters now: the rows
    cannot tell)."""
    return standing_run(root, keep_rows=False).summary


def standing_run(root: str, keep_rows: bool = True) -> RunOutputs:
    """The nightly partitions under ``root`` as they stand, in the shape of one run's outputs
    (``segbeam report --standing``): the standing summary, the latest night's manifest (its
    warnings joined by what the standing rows cannot vouch for), the rows summed (with
    ``keep_rows``, their ``REPORT_ROW_COLUMNS`` only), and no dead letters (each night's are its
    own). Rows are read a batch at a time and summed on their columns as they come
    (``ConfusionSum.add_batch``): only the key and night of each latest row are held for all
    of them, as Arrow columns."""
    nights = finished_nights(root)
    if not nights:
        raise ValueError(f"{root} holds no finished dated run (--run_date): pass the --output "
                         f"of nightly `segbeam run --run_date` runs")
    latest_dir = run_directory(root, nights[-1])
    latest = read_json(output_path(latest_dir, SUMMARY_JSON))
    fingerprint = latest.get("config_fingerprint")
    files = metrics_files(root)
    standing = _latest_keys(root, files, set(nights), fingerprint)
    current = standing.filter(standing.column("current"))
    combine = ConfusionSum(latest["num_classes"])
    totals, kept = combine.create_accumulator(), []
    for batch in _standing_batches(files, current):
        totals = combine.add_batch(totals, batch)
        if keep_rows:
            names = [name for name in REPORT_ROW_COLUMNS if name in batch.schema.names]
            kept.append(pa.Table.from_batches([batch.select(names)]))
    standing_rows = current.num_rows
    summary = build_summary(None, totals, inputs=standing_rows, segmented=standing_rows,
                            dead_by_stage=[], class_names=latest["class_names"],
                            ignore_index=latest.get("ignore_index"),
                            config_fingerprint=fingerprint,
                            palette=tuple(map(tuple, latest.get("palette") or ())) or None)
    counts = latest["counts"]
    accounted = counts["segmented"] + counts["reused"] + counts["skipped"]
    summary["counts"] = {"rows": totals["images"], "images_with_mask": totals["images_with_mask"],
                         "multi_frame_images": totals["multi_frame_images"],
                         "dark_16_bit_images": totals["dark_16_bit_images"]}
    summary["standing"] = {
        "root": root, "nights": len(nights), "latest_night": nights[-1],
        "nights_of_rows": sorted(pc.unique(current.column("date")).to_pylist()),
        "other_configuration": standing.num_rows - standing_rows,
        "latest_night_inputs": accounted,
        "rows_beyond_latest_inputs": max(0, standing_rows - accounted)}
    manifest_path = output_path(latest_dir, MANIFEST_JSON)
    manifest = read_json(manifest_path) if exists(manifest_path) else {}
    manifest = {**manifest, "warnings": manifest.get("warnings", []) +
                standing_warnings(summary["standing"])}
    return RunOutputs(root, summary, manifest, report_rows(kept), [])


def _latest_keys(root: str, files: list[tuple[str, Optional[str]]], nights: set[str],
                 fingerprint: Optional[str]) -> pa.Table:
    """(key, date, current, file, index) of each key's latest row over ``nights``: the night
    that holds it, whether it was made under ``fingerprint``, and where it lies (its file's
    place in ``files``, its row there). Only these columns are held for every row (a
    configuration's fingerprint is compared as each file is read, not kept)."""
    import pyarrow.parquet as pq

    tables = []
    for number, (path, date) in enumerate(files):
        if date not in nights:
            continue
        with open_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            names = [name for name in ("key", "config_fingerprint")
                     if name in parquet.schema_arrow.names]
            table = parquet.read(columns=names)
        made = table.column("config_fingerprint") if "config_fingerprint" in names else \
            pa.nulls(table.num_rows, pa.string())
        tables.append(pa.table({
            "key": table.column("key"), "date": pa.array([date] * table.num_rows, pa.string()),
            "current": pc.fill_null(pc.equal(made, fingerprint), False),
            "file": np.full(table.num_rows, number, np.int32),
            "index": np.arange(table.num_rows, dtype=np.int64)}))
    if not tables:
        raise ValueError(f"no metrics under {root}: pass the --output of nightly `segbeam run "
                         f"--run_date` runs")
    return latest_rows(pa.concat_tables(tables))


def _standing_batches(files: list[tuple[str, Optional[str]]], current: pa.Table):
    """The rows ``current`` places (``_latest_keys``), a batch at a time, file by file: each
    file is read once, and where its rows stand is found once for all files (a sort), not by
    a search per file."""
    import pyarrow.parquet as pq

    order = pc.sort_indices(current, sort_keys=[("file", "ascending"), ("index", "ascending")])
    file_of = current.column("file").take(order).to_numpy()
    index_of = current.column("index").take(order).to_numpy()
    bounds = np.searchsorted(file_of, np.arange(len(files) + 1))
    for number, (path, _) in enumerate(files):
        rows = index_of[bounds[number]:bounds[number + 1]]
        if not len(rows):
            continue
        with open_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            chosen = np.zeros(parquet.metadata.num_rows, bool)
            chosen[rows] = True
            start = 0
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                mask = chosen[start:start + batch.num_rows]
                start += batch.num_rows
                if mask.any():
                    yield batch.filter(pa.array(mask))


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
