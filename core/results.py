"""Reading what runs wrote back as one table: ``read_metrics`` over a run's folder or a root of
nightly date partitions.

Rows written by different segbeam versions differ in their columns (a column added later is
absent from earlier files). ``pyarrow.dataset`` takes its schema from the first file it opens,
so over partitions of mixed versions it drops every column the oldest file lacks, from every
row, without a word; Spark does the same without ``mergeSchema``. Here the files' schemas are
unified instead: a column a file predates reads as null in that file's rows.
"""

from __future__ import annotations

import posixpath
from typing import Collection, Optional, Sequence

from segbeam.layout import METRICS_DIR, matching_paths, open_file, output_path, partition_date


def metrics_files(output: str) -> list[tuple[str, Optional[str]]]:
    """(file, date or None) of each metrics Parquet file of ``output``: a run's folder (its
    ``metrics/``) or, where it has none, a root of ``date=YYYY-MM-DD`` partitions."""
    own = matching_paths(output_path(output, METRICS_DIR, "*.parquet"))
    if own:
        return [(path, None) for path in own]
    found = []
    for path in matching_paths(output_path(output, "date=*", METRICS_DIR, "*.parquet")):
        date = partition_date(posixpath.dirname(posixpath.dirname(path)))
        if date:
            found.append((path, date))
    return found


def read_metrics(output: str, columns: Optional[Sequence[str]] = None, latest: bool = False,
                 dates: Optional[Collection[str]] = None):
    """Every metrics row under ``output`` (see ``metrics_files``) as one ``pyarrow.Table``,
    with a ``date`` column for partitions; ``columns`` keeps those only (a column no file has
    is an error; one that some files predate is null in their rows); ``dates`` keeps those
    partitions only.

    With ``latest``, each key's row from its latest partition only (what ``--skip_existing``
    decides against), where a key that a later night segmented again has a row in each. A
    key whose input is gone keeps its last row: the rows do not know the inputs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [(path, date) for path, date in metrics_files(output)
             if dates is None or date in dates]
    if not files:
        raise ValueError(f"no metrics under {output}: pass the --output of a finished "
                         f"`segbeam run` (a run's folder, or the root of its date partitions)")
    tables = []
    for path, date in files:
        with open_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            wanted = None if columns is None else [c for c in columns if c in names]
            table = parquet.read(columns=wanted)
        if date is not None:
            table = table.append_column("date", pa.array([date] * table.num_rows, pa.string()))
        tables.append(table)
    table = pa.concat_tables(tables, promote_options="permissive")
    missing = [c for c in columns or () if c not in table.column_names]
    if missing:
        raise ValueError(f"no metrics file under {output} has the column(s) {missing}; "
                         f"its columns: {', '.join(table.column_names)}")
    if latest and "date" in table.column_names:
        table = latest_rows(table)
    return table


def latest_rows(table):
    """Each key's row of the latest date (a table with ``key`` and ``date`` columns); of rows
    with the same key and date, the first. On Arrow columns: a sort, not a dict of every key."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if "key" not in table.column_names:
        raise ValueError("latest=True needs the 'key' column: add it to columns")
    order = pc.sort_indices(
        pa.table({"key": table.column("key"), "date": table.column("date"),
                  "row": np.arange(table.num_rows)}),
        sort_keys=[("key", "ascending"), ("date", "descending"), ("row", "ascending")])
    keys = table.column("key").take(order)
    first = np.ones(table.num_rows, bool)
    if table.num_rows > 1:
        first[1:] = pc.not_equal(keys.slice(1), keys.slice(0, table.num_rows - 1)).to_numpy(
            zero_copy_only=False)
    return table.take(np.sort(order.to_numpy()[first]))
