"""Metrics rows summed on Arrow columns (``ConfusionSum.add_batch``) give the sums that
``ConfusionSum.add_input`` gives row by row, to the bit: every count, matrix and fixed-point
sum, for rows of every kind (no mask, no CRF, unexpected mask values, no boundary, several
frames, dark 16-bit images, an older release's columns), however the rows are batched."""

import glob
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.standing import summed_by_rows, write_nights
from segbeam.metrics import FIXED_POINT, fixed_point
from segbeam.metrics_columns import exact_sum, fixed
from segbeam.pipeline.standing import standing_summary
from segbeam.transforms.aggregate import ConfusionSum, build_summary

NUM_CLASSES = 11


def _by_rows(table: pa.Table) -> dict:
    combine = ConfusionSum(NUM_CLASSES)
    totals = combine.create_accumulator()
    for row in table.to_pylist():
        totals = combine.add_input(totals, row)
    return totals


def _by_batches(table: pa.Table, size: int) -> dict:
    combine = ConfusionSum(NUM_CLASSES)
    totals = combine.create_accumulator()
    for batch in table.to_batches(max_chunksize=size):
        totals = combine.add_batch(totals, batch)
    return totals


def _summary(totals: dict) -> str:
    """Every sum the accumulator holds, as the summary states it, and the raw sums."""
    summary = build_summary(None, totals, inputs=totals["images"], segmented=totals["images"],
                            dead_by_stage=[], class_names=[f"c{i}" for i in range(NUM_CLASSES)],
                            ignore_index=11)
    raw = {name: (value.__dict__ if hasattr(value, "bf_sum") else value)
           for name, value in totals.items()}
    return json.dumps([summary, raw], sort_keys=True, default=lambda value: (
        sorted(value) if isinstance(value, frozenset) else np.asarray(value).tolist()))


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("nights"))
    write_nights(root, 3000)
    return root


def test_columns_sum_every_kind_of_row_as_the_rows_do(nights, monkeypatch):
    files = sorted(glob.glob(f"{nights}/date=*/metrics/*.parquet"))
    old_release = pq.read_table(files[0])
    assert "bf_raw" not in old_release.column_names  # the first night's older columns
    for path in files[:3]:
        table = pq.read_table(path)
        expected = _summary(_by_rows(table))
        with monkeypatch.context() as patch:  # on the columns: no batch falls back to rows
            patch.setattr(ConfusionSum, "add_input", None)
            for size in (1, 7, table.num_rows):
                assert _summary(_by_batches(table, size)) == expected, (path, size)
    table = pq.read_table(files[2])
    totals = _by_batches(table, 64)
    for name in ("unexpected_pixels", "multi_frame_images", "dark_16_bit_images",
                 "crf_images", "calibrated_images_crf"):
        assert totals[name] > 0, name  # the rows hold every kind the test means to cover
    assert totals["boundary_raw"].images < totals["images_with_mask"]
    assert _by_batches(old_release, 100)["images_unchecked"] > 0


def test_the_standing_summary_is_the_one_rows_summed_one_by_one_give(nights):
    columns = standing_summary(nights)
    rows = summed_by_rows(nights)
    for name in ("evaluation", "labels"):
        assert json.dumps(columns[name], sort_keys=True) == json.dumps(rows[name], sort_keys=True)
    assert columns["counts"]["images_with_mask"] == rows["counts"]["images_with_mask"]


def test_nights_written_as_several_files_stand_as_one(nights, tmp_path):
    """A night's rows in several files (a run's shards): each row is found in its own file."""
    import shutil

    split = tmp_path / "split"
    shutil.copytree(nights, split)
    for path in sorted(split.glob("date=*/metrics/*.parquet")):
        table = pq.read_table(path)
        path.unlink()
        third = table.num_rows // 3 + 1
        for shard in range(3):
            pq.write_table(table.slice(shard * third, third),
                           path.parent / f"metrics-{shard:05d}-of-00003.parquet")
    whole, shards = standing_summary(nights), standing_summary(str(split))
    shards["standing"]["root"] = whole["standing"]["root"]
    assert json.dumps(shards, sort_keys=True) == json.dumps(whole, sort_keys=True)
    assert json.dumps(summed_by_rows(str(split))["evaluation"], sort_keys=True) == \
        json.dumps(whole["evaluation"], sort_keys=True)


def test_a_batch_the_columns_cannot_sum_exactly_is_summed_row_by_row(nights):
    path = sorted(glob.glob(f"{nights}/date=*/metrics/*.parquet"))[2]
    table = pq.read_table(path).slice(0, 40)
    vectors = table.column("calibration_raw").to_pylist()
    huge = [None if v is None else [v[0] + 3e12, *v[1:]] for v in vectors]  # beyond 2**62
    index = table.schema.get_field_index("calibration_raw")
    huge_table = table.set_column(index, table.schema.field(index), pa.array(
        huge, table.schema.field(index).type))
    assert _summary(_by_batches(huge_table, 40)) == _summary(_by_rows(huge_table))

    cells = table.column("confusion_raw").to_pylist()
    outside = [None if c is None else [*c, {"truth": NUM_CLASSES, "predicted": 0, "pixels": 1}]
               for c in cells]
    index = table.schema.get_field_index("confusion_raw")
    bad = table.set_column(index, table.schema.field(index), pa.array(
        outside, table.schema.field(index).type))
    with pytest.raises(ValueError, match="lies outside 11 classes; the row belongs to another"):
        _by_batches(bad, 40)


def test_rows_the_pipeline_does_not_write_are_summed_as_the_rows_are(nights):
    """Unexpected mask values counted in a row without a mask, a boundary F1 list of NaN:
    the row path's choices hold on the columns too."""
    path = sorted(glob.glob(f"{nights}/date=*/metrics/*.parquet"))[2]
    table = pq.read_table(path).slice(0, 60)
    unmasked = [cells is None for cells in table.column("confusion_raw").to_pylist()]
    assert any(unmasked)
    counts = pa.array([5 if alone else count for alone, count in zip(
        unmasked, table.column("unexpected_pixels").to_pylist())], pa.int64())
    table = table.set_column(table.schema.get_field_index("unexpected_pixels"),
                             "unexpected_pixels", counts)
    classes = [None if v is None else [float("nan")] * len(v)
               for v in table.column("bf_classes_crf").to_pylist()]
    index = table.schema.get_field_index("bf_classes_crf")
    table = table.set_column(index, table.schema.field(index),
                             pa.array(classes, table.schema.field(index).type))
    assert _summary(_by_batches(table, 16)) == _summary(_by_rows(table))


def test_fixed_point_on_columns_is_the_row_paths_to_the_unit():
    rng = np.random.default_rng(3)
    ties = (np.arange(-50, 50) + 0.5) / FIXED_POINT  # halfway between two units
    values = np.concatenate([ties, rng.normal(0, 1e6, 500), rng.random(500), [0.0, -0.0]])
    assert fixed(values).tolist() == fixed_point(values).tolist()
    big = np.full((3000, 2), 2 ** 61, np.int64)
    big[:, 1] = -(2 ** 61) + 7
    assert exact_sum(big).tolist() == [3000 * 2 ** 61, 3000 * (-(2 ** 61) + 7)]
