"""Reading shards in Beam, thin shells over ``segbeam.tfrecord`` and ``segbeam.containers``:
TFRecord shards and WebDataset tar shards streamed record by record, Parquet shards one row group
at a time, on any Beam filesystem. Each gives (EncodedImages, dead letters, number of inputs); a
shard that breaks off keeps the records before the break, and a Parquet shard with a damaged row
group keeps its other row groups. Files a run writes under ``exclude`` (its output root: metrics
Parquet, say) are never read as shards.
"""

from __future__ import annotations

import posixpath
from typing import Optional

import apache_beam as beam

from segbeam.containers import ContainerFields, check_parquet_columns, parquet_footer, \
    parquet_rows, parse_parquet_row, read_row_group, webdataset_samples
from segbeam.dataset import ShardRecord, parse_shard_record, shard_record
from segbeam.keys import sanitise_key
from segbeam.layout import open_file
from segbeam.matching import match_files
from segbeam.records import DeadLetter, one_line_reason
from segbeam.tfrecord import DamagedTFRecord, read_records
from segbeam.transforms.safe_map import SafeMap, counted

DEAD = "dead_letter"


def _shard_dead_letter(shard: str, reason: str, part: str = "") -> beam.pvalue.TaggedOutput:
    """A dead letter for a shard, or a ``part`` of it, that cannot be read."""
    name = posixpath.basename(shard) + (f"-{part}" if part else "")
    return beam.pvalue.TaggedOutput(DEAD, counted(DeadLetter(sanitise_key(name), shard, "read",
                                                             reason)))


def _damage(error: Exception, count: int, last: Optional[ShardRecord],
            fields: ContainerFields) -> str:
    """A one-line reason for a TFRecord shard that breaks off or is damaged after ``count``
    intact records, naming the last of them (by its key)."""
    what = str(error) if isinstance(error, DamagedTFRecord) else one_line_reason(error)
    if last is None:
        return f"damaged TFRecord shard: {what}; no record before it is intact"
    try:
        name = parse_shard_record(last, fields).key
    except ValueError:
        name = last.key
    return (f"damaged TFRecord shard: {what}; the {count} record{'s' * (count != 1)} before "
            f"it {'are' if count != 1 else 'is'} read (the last: {name})")


def _tfrecord_records(shard: str, fields: ContainerFields):
    """Each record of a TFRecord shard (gzip and other compressions by the name's suffix, as
    Beam reads them) checked against its CRCs; where the shard breaks off or is damaged, one
    dead letter for the rest of it, saying where, after the records before."""
    count, record = 0, None
    try:
        with open_file(shard, decompress=True) as handle:
            for data in read_records(handle):
                record, count = shard_record((shard, data)), count + 1
                yield record
    except Exception as error:  # noqa: BLE001 - a shard's damage must not cost its other records
        yield _shard_dead_letter(shard, _damage(error, count, record, fields))


class _ReadShards(beam.PTransform):
    """What every shard reader shares: the pattern, the fields, and the shard files it
    matches (none a run writes under ``exclude``, its output root), spread over workers."""

    def __init__(self, pattern: str, fields: ContainerFields = ContainerFields(),
                 exclude: Optional[str] = None):
        super().__init__()
        self._pattern, self._fields, self._exclude = pattern, fields, exclude

    def _spread_shards(self, pbegin):
        return (pbegin
                | "Pattern" >> beam.Create([self._pattern])
                | "MatchShards" >> beam.FlatMap(match_files, self._exclude)
                | "SpreadShards" >> beam.Reshuffle())


def _count_inputs(*parts):
    """Every record read, and every dead letter that stands for a shard or part of one."""
    return parts | "AllInputs" >> beam.Flatten() | "CountInputs" >> beam.combiners.Count.Globally()


class ReadTFRecordShards(_ReadShards):
    """pipeline -> (EncodedImages, dead letters, number of inputs) for TFRecord shards of
    Examples, their features named by ``fields`` (DeepLab's by default: ``image/encoded``,
    ``image/filename``, optional ``image/segmentation/class/encoded``); each shard is read by
    one worker, the shards spread over workers."""

    def expand(self, pbegin):
        records = (self._spread_shards(pbegin)
                   | "Records" >> beam.FlatMap(_tfrecord_records, self._fields).with_outputs(
                       DEAD, main="intact"))
        encoded, unparsable = records.intact | "Parse" >> SafeMap("parse", parse_shard_record,
                                                                  self._fields)
        dead = (records[DEAD], unparsable) | "DeadLetters" >> beam.Flatten()
        return encoded, dead, _count_inputs(records.intact, records[DEAD])


def _row_groups(shard: str, fields: ContainerFields):
    """(shard, row group, its row count) for each row group of a shard whose footer reads and
    that has the configured columns; else a dead letter for the whole shard (a truncated file
    has no footer, so its rows cannot be counted)."""
    try:
        columns, group_rows = parquet_footer(shard)
        check_parquet_columns(columns, fields, shard)
    except Exception as error:  # noqa: BLE001 - any unreadable shard becomes a dead letter
        yield _shard_dead_letter(shard, f"not a readable Parquet shard: "
                                        f"{one_line_reason(error)}")
        return
    for group, rows in enumerate(group_rows):
        yield shard, group, rows


def _rows_of_group(piece: tuple, fields: ContainerFields, columns: list[str]):
    """The rows of one row group (only ``columns``); a row group that cannot be read (damaged
    pages) is one dead letter naming it and its row count, and the shard's other row groups
    are read."""
    shard, group, count = piece
    try:
        table = read_row_group(shard, group, columns)
    except Exception as error:  # noqa: BLE001 - a damaged row group must not cost the others
        rows = f"{count} row{'s are' if count != 1 else ' is'}"
        yield _shard_dead_letter(shard, f"row group {group} of this Parquet shard cannot be read, "
                                        f"so its {rows} lost: {one_line_reason(error)}",
                                 f"row-group-{group}")
        return
    yield from parquet_rows(shard, table, fields)


class ReadParquetShards(_ReadShards):
    """pipeline -> (EncodedImages, dead letters, number of inputs) for Parquet shards of
    encoded images (the ``datasets`` layout), read one row group at a time (never a whole
    file), only the named columns; the shards spread over workers to read their footers, the
    row groups to read them."""

    def expand(self, pbegin):
        fields = self._fields
        columns = [c for c in (fields.image_column, fields.mask_column, fields.key_column) if c]
        groups = (self._spread_shards(pbegin)
                  | "RowGroups" >> beam.FlatMap(_row_groups, fields).with_outputs(
                      DEAD, main="readable"))
        rows = (groups.readable
                | "SpreadRowGroups" >> beam.Reshuffle()
                | "Rows" >> beam.FlatMap(_rows_of_group, fields, columns).with_outputs(
                    DEAD, main="read"))
        encoded, unparsable = rows.read | "Parse" >> SafeMap("parse", parse_parquet_row, fields)
        dead = (groups[DEAD], rows[DEAD], unparsable) | "DeadLetters" >> beam.Flatten()
        return encoded, dead, _count_inputs(rows.read, groups[DEAD], rows[DEAD])


def _tar_samples(shard: str, mask_ext):
    try:
        with open_file(shard) as handle:
            for item in webdataset_samples(shard, handle, mask_ext):
                if isinstance(item, DeadLetter):
                    yield beam.pvalue.TaggedOutput(DEAD, counted(item))
                else:
                    yield item
    except OSError as error:
        yield _shard_dead_letter(shard, f"cannot open the shard: {one_line_reason(error)}")


class ReadWebDatasetShards(_ReadShards):
    """pipeline -> (EncodedImages, dead letters, number of inputs) for WebDataset tar shards;
    each shard is read by one worker, the shards spread over workers."""

    def expand(self, pbegin):
        samples = (self._spread_shards(pbegin)
                   | "Samples" >> beam.FlatMap(_tar_samples, self._fields.mask_ext).with_outputs(
                       DEAD, main="encoded"))
        return samples.encoded, samples[DEAD], _count_inputs(samples.encoded, samples[DEAD])
