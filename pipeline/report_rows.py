"""A run's metrics rows as a report reads them: a pyarrow Table of
``segbeam.layout.REPORT_ROW_COLUMNS`` (``load_run``), kept as columns. Which images are scored,
their figures for the final labels (after the CRF where it ran), and their order for the
galleries are computed on whole columns (numpy, and Arrow's sort), and only the rows a gallery
shows become dicts: a report on millions of rows holds columns, not a dict per row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    import pyarrow


def present(rows: pyarrow.Table, name: str) -> np.ndarray:
    """Where the column ``name`` holds a value (not null), as a boolean array."""
    import pyarrow.compute as pc

    return pc.is_valid(rows.column(name)).to_numpy(zero_copy_only=False)


def floats(rows: pyarrow.Table, name: str) -> np.ndarray:
    """The column ``name`` as float64, NaN where null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(rows.column(name).cast(pa.float64()), np.nan).to_numpy(
        zero_copy_only=False)


def flags(rows: pyarrow.Table, name: str) -> np.ndarray:
    """A boolean column as an array, False where null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(rows.column(name).cast(pa.bool_()), False).to_numpy(
        zero_copy_only=False)


def final_figure(rows: pyarrow.Table, figure: str) -> tuple[np.ndarray, np.ndarray]:
    """(each row's ``figure`` for its final labels: ``FIGURE_crf`` where it holds a value, else
    ``FIGURE_raw``; where either holds one)."""
    after = present(rows, f"{figure}_crf")
    values = np.where(after, floats(rows, f"{figure}_crf"), floats(rows, f"{figure}_raw"))
    return values, after | present(rows, f"{figure}_raw")


def ranked(rows: pyarrow.Table, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``indices`` (of rows) ordered by ``values`` (one per index), then by key."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(indices):
        return indices
    keyed = pa.table({"value": values, "key": rows.column("key").take(pa.array(indices))})
    order = pc.sort_indices(keyed, sort_keys=[("value", "ascending"), ("key", "ascending")])
    return indices[order.to_numpy()]


def as_dicts(rows: pyarrow.Table, indices: Iterable[int]) -> list[dict]:
    """The rows at ``indices``, in that order, as dicts."""
    import pyarrow as pa

    return rows.take(pa.array(list(indices), type=pa.int64())).to_pylist()
