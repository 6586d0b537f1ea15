"""What `--skip_existing` reads of earlier nights: every column of every metrics row (as runs
before 2026-12-07 did, Beam's ReadAllFromParquet) against the decision's columns only
(``segbeam.transforms.skip.DECISION_COLUMNS``, what the run does now), side by side.

    python -m benchmarks.history_read --rows 200000

Writes ROWS metrics rows in ten date partitions (the six CamVid rows of the golden record,
repeated under new keys and hashes: 12 classes, so confusion cells and per-class lists as a
CamVid run writes them), then runs each way as a Beam pipeline on the direct runner, up to
the keyed (key, earlier result) pairs that cross the join with this night's inputs, and
measures how long it takes and how many bytes those pairs are when pickled (what a runner
shuffles).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import tempfile
import time

from benchmarks.common import ROOT, print_table, write_record

PARTITIONS = 10


def _write_history(root: str, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segbeam.transforms.scoring import metrics_schema

    with open(os.path.join(ROOT, "tests", "golden", "camvid_val6.json")) as handle:
        golden = json.load(handle)["rows"]
    schema = metrics_schema(12, [f"c{i}" for i in range(12)])
    per_partition = rows // PARTITIONS
    for night in range(PARTITIONS):
        folder = os.path.join(root, f"date=2026-11-{night + 1:02d}", "metrics")
        os.makedirs(folder)
        batch = []
        for index in range(night * per_partition, (night + 1) * per_partition):
            row = dict(golden[index % len(golden)])
            key = f"seq{index // 1000:04d}/f{index:07d}"
            row.update(key=key, source=f"gs://bucket/images/{key}.png",
                       mask_source=f"gs://bucket/masks/{key}.png",
                       mask_path=f"{root}/masks/{key}.png",
                       content_sha256=hashlib.sha256(key.encode()).hexdigest(),
                       source_stamp=f"image=276620:{1.7e9 + index!r} mask=9000:{1.7e9 + index!r}")
            batch.append(row)
        pq.write_table(pa.Table.from_pylist(batch, schema=schema),
                       os.path.join(folder, "metrics-00000-of-00001.parquet"))


def _measure(history: str, way: str) -> dict:
    import apache_beam as beam
    from apache_beam.io.parquetio import ReadAllFromParquet

    from segbeam.layout import matching_paths
    from segbeam.transforms.skip import _decision_columns, _keyed_prior

    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter

    def count_bytes(element) -> None:
        Metrics.counter("bench", "bytes").inc(
            len(pickle.dumps(element, protocol=pickle.HIGHEST_PROTOCOL)))

    started = time.perf_counter()
    pipeline = beam.Pipeline()
    glob = pipeline | beam.Create([history])
    if way == "every column":
        rows = glob | ReadAllFromParquet(with_filename=True)
    else:
        rows = (glob | beam.FlatMap(matching_paths) | beam.Reshuffle()
                | beam.FlatMap(_decision_columns))
    _ = rows | beam.Map(_keyed_prior) | beam.Map(count_bytes)
    result = pipeline.run()
    result.wait_until_finish()
    elapsed = time.perf_counter() - started
    counters = result.metrics().query(MetricsFilter().with_name("bytes"))["counters"]
    return {"way": way, "seconds": round(elapsed, 2),
            "bytes": sum(counter.committed for counter in counters)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000,
                        help="earlier metrics rows (default 200000)")
    parser.add_argument("--output", help="where to write the JSON record")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        _write_history(root, args.rows)
        history = f"{root}/date=*/metrics/*.parquet"
        rows = [_measure(history, "every column"), _measure(history, "decision columns")]
    for row in rows:
        row["rows"] = args.rows
        row["megabytes_shuffled"] = round(row.pop("bytes") / 1e6, 1)
        row["bytes_per_row"] = round(row["megabytes_shuffled"] * 1e6 / args.rows)
    print_table(rows, [("way", "read", "s"), ("rows", "rows", "d"),
                       ("seconds", "seconds", ".2f"),
                       ("megabytes_shuffled", "MB into the join", ".1f"),
                       ("bytes_per_row", "bytes per row", "d")],
                "--skip_existing: earlier nights' rows read for the decision")
    print(f"ratio: {rows[0]['seconds'] / rows[1]['seconds']:.1f}x time, "
          f"{rows[0]['megabytes_shuffled'] / rows[1]['megabytes_shuffled']:.1f}x bytes")
    write_record("history_read", rows, {"rows": args.rows}, args.output)


if __name__ == "__main__":
    main()
