"""The dataset sums of metrics rows, computed on a whole Arrow batch of them at once: what
``ConfusionSum.add_input`` adds for each row (confusion matrices, pixel and image counts,
boundary and calibration sums), to the bit, without a dict per row.

A standing evaluation sums millions of rows: row by row that cost about 110 us a row (20
minutes for ten million). Floats are summed as the row path sums them, in exact fixed-point
integers (``segbeam.metrics.fixed_point``), so the figures do not depend on how rows are
batched. A batch these columns cannot sum exactly as the rows would (a float too large for
64-bit fixed point, a NaN, a confusion cell outside the classes, a list of another length)
raises ``NotColumnar``, and the caller sums that batch row by row, which says what is wrong
with it as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from segbeam.boundary import BoundaryTotals
from segbeam.calibration import VECTOR_LENGTH
from segbeam.decode import DARK_HIGH_DEPTH_PEAK
from segbeam.metrics import FIXED_POINT

if TYPE_CHECKING:
    import pyarrow

FIXED_LIMIT = 2 ** 62  # fixed-point values at or beyond this are left to Python's integers


class NotColumnar(ValueError):
    """A batch the columns cannot sum exactly as its rows would be summed."""


def add_columns(totals: dict, batch: pyarrow.RecordBatch, num_classes: int) -> None:
    """Adds the rows of ``batch`` to ``totals`` (a ``ConfusionSum`` accumulator) as
    ``ConfusionSum.add_input`` would add them one by one. Raises ``NotColumnar`` before
    changing ``totals`` where the batch needs the row path; pass a fresh accumulator to merge
    where that matters."""
    rows = batch.num_rows
    frames = _ints(batch, "image_frames", default=1)
    peaks = _ints(batch, "high_depth_peak", default=0)
    masked = _valid(batch, "confusion_raw")
    crf = _valid(batch, "confusion_crf")
    unexpected_present = _valid(batch, "unexpected_pixels") & masked
    unexpected = _ints(batch, "unexpected_pixels", default=0)
    flagged = masked & (unexpected != 0)
    checked = np.flatnonzero(unexpected_present)
    if len(checked) and not _valid(batch, "labelled_pixels")[checked].all():
        raise NotColumnar("labelled_pixels is null in a row with a mask")
    pixels = _ints(batch, "height", 0)[checked] * _ints(batch, "width", 0)[checked]
    labelled = _ints(batch, "labelled_pixels", 0)[checked]
    variants = {"raw": masked, "crf": crf}
    confusion = {v: _confusion(batch, f"confusion_{v}", rows, num_classes) for v in variants}
    boundary = {v: _boundary(batch, v, within, num_classes) for v, within in variants.items()}
    calibration = {v: _calibration(batch, v, within) for v, within in variants.items()}
    values = _list_values(batch, "unexpected_values", flagged)

    totals["images"] += rows
    totals["multi_frame_images"] += int((frames > 1).sum())
    totals["dark_16_bit_images"] += int(((peaks > 0) & (peaks < DARK_HIGH_DEPTH_PEAK)).sum())
    totals["images_with_mask"] += int(masked.sum())
    totals["crf_images"] += int(crf.sum())
    totals["images_unchecked"] += int((masked & ~unexpected_present).sum())
    totals["mask_pixels"] += int(pixels.sum())
    totals["ignored_pixels"] += int((pixels - labelled - unexpected[checked]).sum())
    totals["unexpected_pixels"] += int(unexpected[flagged].sum())
    totals["images_with_unexpected"] += int(flagged.sum())
    totals["unexpected_values"] |= frozenset(values.tolist())
    for variant in variants:
        totals[variant] += confusion[variant]
        totals[f"boundary_{variant}"].merge(boundary[variant])
        vector_sum, images = calibration[variant]
        totals[f"calibration_{variant}"] += vector_sum
        totals[f"calibrated_images_{variant}"] += images


def _valid(batch, name: str) -> np.ndarray:
    """Where the column holds a value; nowhere where the batch lacks it (``row.get``)."""
    import pyarrow.compute as pc

    if name not in batch.schema.names:
        return np.zeros(batch.num_rows, bool)
    return pc.is_valid(batch.column(name)).to_numpy(zero_copy_only=False)


def _ints(batch, name: str, default: int) -> np.ndarray:
    """An integer column as int64, ``default`` where null or absent (``row.get(..) or d``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if name not in batch.schema.names:
        return np.full(batch.num_rows, default, np.int64)
    column = pc.fill_null(batch.column(name).cast(pa.int64()), default)
    return column.to_numpy(zero_copy_only=False)


def _lists(batch, name: str, within: np.ndarray, length: int, dtype) -> np.ndarray:
    """The lists of ``name`` in the rows ``within`` (each of ``length`` values) as an
    (rows, length) array; nulls inside a list are NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chosen = batch.column(name).filter(pa.array(within))
    if len(chosen) and not (pc.list_value_length(chosen).to_numpy(zero_copy_only=False)
                            == length).all():
        raise NotColumnar(f"{name} holds a list of another length than {length}")
    values = chosen.flatten()
    if dtype is np.float64:
        values = pc.fill_null(values.cast(pa.float64()), np.nan)
    elif values.null_count:
        raise NotColumnar(f"{name} holds a null count")
    return values.to_numpy(zero_copy_only=False).astype(dtype).reshape(len(chosen), length)


def _list_values(batch, name: str, within: np.ndarray) -> np.ndarray:
    import pyarrow as pa

    if not within.any():
        return np.zeros(0, np.int64)
    return batch.column(name).filter(pa.array(within)).flatten().drop_null().to_numpy(
        zero_copy_only=False)


def _confusion(batch, name: str, rows: int, num_classes: int) -> np.ndarray:
    """The sum of the batch's sparse confusion cells, a CxC int64 matrix."""
    matrix = np.zeros(num_classes * num_classes, np.int64)
    if name not in batch.schema.names or not rows:
        return matrix.reshape(num_classes, num_classes)
    cells = batch.column(name).flatten()
    fields = dict(zip((field.name for field in cells.type), cells.flatten()))
    if cells.null_count or any(fields[field].null_count for field in fields):
        raise NotColumnar(f"{name} holds a null cell")
    truth, predicted, pixels = (fields[field].to_numpy(zero_copy_only=False).astype(np.int64)
                                for field in ("truth", "predicted", "pixels"))
    if not ((0 <= truth) & (truth < num_classes) & (0 <= predicted)
            & (predicted < num_classes)).all():
        raise NotColumnar(f"{name} holds a cell outside {num_classes} classes")
    np.add.at(matrix, truth * num_classes + predicted, pixels)
    return matrix.reshape(num_classes, num_classes)


def _boundary(batch, variant: str, within: np.ndarray, num_classes: int) -> BoundaryTotals:
    """``BoundaryTotals.add`` for the rows ``within``."""
    totals = BoundaryTotals(num_classes)
    union = f"boundary_union_{variant}"
    has = within & _valid(batch, union) if f"bf_{variant}" in batch.schema.names else \
        np.zeros_like(within)
    totals.rows_without = int(within.sum() - has.sum())
    if not has.any():
        return totals
    bf = _floats(batch, f"bf_{variant}")
    scored_images = has & ~np.isnan(bf)
    if (has & _valid(batch, f"bf_{variant}") & np.isnan(bf)).any():
        raise NotColumnar(f"bf_{variant} holds NaN")
    totals.bf_sum = int(exact_sum(fixed(bf[scored_images])))
    totals.images = int(scored_images.sum())
    classes = _lists(batch, f"bf_classes_{variant}", has, num_classes, np.float64)
    scored = ~np.isnan(classes)
    totals.bf_class[0] += exact_sum(fixed(np.where(scored, classes, 0.0)))
    totals.bf_class[1] += scored.sum(axis=0).astype(object) * FIXED_POINT
    for index, name in enumerate((f"boundary_intersection_{variant}", union)):
        totals.counts[index] += _lists(batch, name, has, num_classes, np.int64).sum(axis=0)
    return totals


def _calibration(batch, variant: str, within: np.ndarray) -> tuple[np.ndarray, int]:
    """The fixed-point sum of the calibration vectors of the rows ``within``, and how many."""
    name = f"calibration_{variant}"
    has = within & _valid(batch, name)
    if not has.any():
        return np.zeros(VECTOR_LENGTH, np.int64).astype(object), 0
    vectors = _lists(batch, name, has, VECTOR_LENGTH, np.float64)
    return exact_sum(fixed(vectors)), int(has.sum())


def _floats(batch, name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(batch.column(name).cast(pa.float64()), np.nan).to_numpy(
        zero_copy_only=False)


def fixed(values: np.ndarray) -> np.ndarray:
    """``segbeam.metrics.fixed_point`` as int64: the same integers (NumPy's rint rounds half
    to even, as Python's round does; scaling by a power of two is exact), for values whose
    fixed point stays below 2**62; others raise ``NotColumnar``."""
    scaled = np.rint(np.asarray(values, np.float64) * FIXED_POINT)
    if not (np.abs(scaled) < FIXED_LIMIT).all():  # NaN fails this too
        raise NotColumnar("a value too large (or NaN) for 64-bit fixed point")
    return scaled.astype(np.int64)


def exact_sum(values: np.ndarray) -> np.ndarray:
    """The sum over the first axis of int64 values, as Python integers (an object array, or
    one integer for 1-D input), exact for any count of rows below 2**31: the high and low 32
    bits are summed apart, so neither sum can overflow."""
    values = np.asarray(values, np.int64)
    high = (values >> 32).sum(axis=0).astype(object)
    low = (values & 0xFFFFFFFF).sum(axis=0).astype(object)
    return high * 2 ** 32 + low
