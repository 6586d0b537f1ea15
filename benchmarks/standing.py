"""The standing evaluation of nightly partitions (``segbeam report OUTPUT --standing``): each
input's latest row summed row by row (a dict per row through ``ConfusionSum.add_input``, as
before 2026-12-07) against summed on Arrow columns (``ConfusionSum.add_batch``, what
``segbeam.pipeline.standing`` does now), side by side, each in a fresh process.

    python -m benchmarks.standing --rows 200000

Writes ROWS metrics rows in ten date partitions (``write_nights``: the six CamVid rows of the
golden record under new keys, each night taking half of the previous night's inputs again,
the first night in the columns of an older release, the second under another configuration,
and rows without a mask, without the CRF, with unexpected mask values, no boundary, none kept from
an older release, classes in neither map, several frames, 16-bit peaks), then
computes the standing summary both ways. The two summaries must be equal to the bit (the
benchmark exits non-zero where they are not).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from benchmarks.common import ROOT, print_table, report_to_parent, run_child, write_record

NIGHTS = 10
OLD_CONFIGURATION = "sha256:" + "0" * 64
# Columns a release before boundary, calibration and unexpected-value counts did not write.
LATER_COLUMNS = ("unexpected_pixels", "unexpected_values", "image_frames", "high_depth_peak",
                 *(f"{name}_{variant}" for variant in ("raw", "crf") for name in (
                     "bf", "bf_classes", "boundary_intersection", "boundary_union",
                     "calibration")))


def write_nights(root: str, rows: int, nights: int = NIGHTS) -> None:
    """ROWS metrics rows in NIGHTS finished date partitions under ``root`` (see the module's
    docstring), each with the ``summary.json`` and ``manifest.json`` a run writes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segbeam.transforms.scoring import metrics_schema

    with open(os.path.join(ROOT, "tests", "golden", "camvid_val6.json")) as handle:
        golden = json.load(handle)
    names, fingerprint = golden["summary"]["class_names"], golden["summary"]["config_fingerprint"]
    schema = metrics_schema(len(names), names)
    per_night = rows // nights
    for night in range(nights):
        date = f"2026-11-{night + 1:02d}"
        folder = os.path.join(root, f"date={date}")
        os.makedirs(os.path.join(folder, "metrics"))
        made = OLD_CONFIGURATION if night == 1 else fingerprint
        first = night * per_night // 2
        table = pa.Table.from_pylist(
            [_varied_row(golden["rows"], index, made) for index in range(first, first + per_night)],
            schema=schema)
        if night == 0:
            table = table.drop_columns(list(LATER_COLUMNS))
        pq.write_table(table, os.path.join(folder, "metrics", "metrics-00000-of-00001.parquet"),
                       row_group_size=50_000)
        summary = {"num_classes": len(names), "class_names": names, "ignore_index": 11,
                   "config_fingerprint": made,
                   "counts": {"segmented": per_night, "reused": 0, "skipped": per_night // 2}}
        for name, content in (("summary.json", summary), ("manifest.json", {"warnings": []})):
            with open(os.path.join(folder, name), "w") as handle:
                json.dump(content, handle)


def _varied_row(golden_rows: list[dict], index: int, fingerprint: str) -> dict:
    from segbeam.decode import DARK_HIGH_DEPTH_PEAK

    row = dict(golden_rows[index % len(golden_rows)], config_fingerprint=fingerprint)
    key = f"seq{index // 1000:04d}/f{index:07d}"
    row.update(key=key, source=f"gs://bucket/images/{key}.png", mask_path=f"masks/{key}.png")
    if index % 7 == 3:  # no mask: nothing scored
        row.update({name: None for name in row if name.startswith(
            ("confusion_", "bf_", "boundary_", "calibration_", "unexpected_"))},
            has_mask=False, labelled_pixels=None)
    elif index % 5 == 1:  # the CRF did not run
        row.update({f"{name}_crf": None for name in (
            "confusion", "bf", "bf_classes", "boundary_intersection", "boundary_union",
            "calibration")}, crf_applied=False)
    if index % 11 == 4 and row["confusion_raw"] is not None:
        row.update(unexpected_pixels=17 + index % 3, unexpected_values=[200 + index % 3])
    if index % 13 == 6 and row["bf_raw"] is not None:  # no class boundary in the mask
        row.update(bf_raw=None)
    if index % 9 == 8 and row["bf_classes_raw"] is not None:  # classes in neither map
        row["bf_classes_raw"] = [None if i % 3 == 0 else v
                                 for i, v in enumerate(row["bf_classes_raw"])]
    if index % 23 == 7:  # kept from a release before boundary figures, in a newer file
        row.update({name: None for name in row if name.startswith(("bf_", "boundary_"))})
    if index % 17 == 2:
        row.update(image_frames=3, high_depth_peak=1500)
    if index % 19 == 5:
        row.update(high_depth_peak=DARK_HIGH_DEPTH_PEAK)  # the first peak not called dark
    return row


def summed_by_rows(root: str) -> dict:
    """The standing summary as ``segbeam.pipeline.standing`` computed it before 2026-12-07:
    the latest rows found with a dict of every key, then each standing row a dict through
    ``ConfusionSum.add_input``."""
    import pyarrow.parquet as pq

    from segbeam.layout import SUMMARY_JSON, open_file, output_path, read_json, run_directory
    from segbeam.pipeline import standing
    from segbeam.results import metrics_files, read_metrics
    from segbeam.transforms.aggregate import ConfusionSum, build_summary

    nights = standing.finished_nights(root)
    latest = read_json(output_path(run_directory(root, nights[-1]), SUMMARY_JSON))
    every = read_metrics(root, ["key", "config_fingerprint"], dates=set(nights))
    keys, dates = every.column("key").to_pylist(), every.column("date").to_pylist()
    newest: dict = {}
    for index, (key, date) in enumerate(zip(keys, dates)):
        if key not in newest or date > dates[newest[key]]:
            newest[key] = index
    rows = every.take(sorted(newest.values()))
    night_of = {key: date for key, date, made in zip(
        *(rows.column(name).to_pylist() for name in ("key", "date", "config_fingerprint")))
        if made == latest["config_fingerprint"]}
    del every, keys, dates, newest  # as the old code freed them; its `standing` table stayed
    combine = ConfusionSum(latest["num_classes"])
    totals = combine.create_accumulator()
    for path, date in metrics_files(root):
        with open_file(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    if night_of.get(row["key"]) == date:
                        totals = combine.add_input(totals, row)
    return build_summary(None, totals, inputs=len(night_of), segmented=len(night_of),
                         dead_by_stage=[], class_names=latest["class_names"],
                         ignore_index=latest.get("ignore_index"),
                         config_fingerprint=latest["config_fingerprint"])


def summed_by_columns(root: str) -> dict:
    """The standing summary as ``segbeam.pipeline.standing`` computes it, without the parts the row
    way above leaves out (the counts of rows and nights, the warnings)."""
    from segbeam.pipeline.standing import standing_summary

    summary = standing_summary(root)
    summary.pop("standing")
    summary["counts"] = {**summary["counts"], "rows": None}
    return summary


def _comparable(summary: dict) -> str:
    return json.dumps({name: summary[name] for name in ("evaluation", "labels")},
                      sort_keys=True)


def _child(way: str, root: str) -> None:
    started = time.perf_counter()
    summary = (summed_by_rows if way == "rows" else summed_by_columns)(root)
    elapsed = time.perf_counter() - started
    report_to_parent(way=way, seconds=round(elapsed, 2), summary=_comparable(summary),
                     images=summary["counts"]["images_with_mask"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000,
                        help="metrics rows over ten nights (default 200000)")
    parser.add_argument("--output", help="where to write the JSON record")
    parser.add_argument("--child", nargs=2, metavar=("WAY", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(*args.child)
    with tempfile.TemporaryDirectory() as root:
        write_nights(root, args.rows)
        rows = [run_child("benchmarks.standing", ["--child", way, root])
                for way in ("rows", "columns")]
    same = rows[0]["summary"] == rows[1]["summary"]
    for row in rows:
        row.pop("summary")
        row["rows"] = args.rows
        row["rows_per_second"] = round(args.rows / row["seconds"])
    print_table(rows, [("way", "summed by", "s"), ("rows", "rows", "d"),
                       ("images", "scored inputs", "d"), ("seconds", "seconds", ".2f"),
                       ("rows_per_second", "rows/s", "d"), ("peak_rss_mib", "peak MiB", ".0f")],
                "segbeam report --standing: the latest rows of ten nights summed")
    print(f"ratio: {rows[0]['seconds'] / rows[1]['seconds']:.1f}x time; "
          f"summaries {'equal' if same else 'DIFFERENT'}")
    write_record("standing", rows, {"rows": args.rows, "summaries_equal": same}, args.output)
    if not same:
        sys.exit("the two ways summed the rows to different figures")


if __name__ == "__main__":
    main()
