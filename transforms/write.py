"""Sinks: mask PNGs, per-image metrics Parquet, the summary (JSON and Parquet), dead letters.

Every path is built by ``segbeam.layout`` from the output root and a sanitised key, so no input
can write outside the root. Mask PNGs and the summary's two files are written under a temporary
name and renamed, and Beam's file sinks finalise their shards the same way, so an interrupted run
leaves no half-written file under a final name. A sink's shards from an earlier run into the
same directory that this run did not rewrite are deleted once the sink has finalised
(``RemoveStaleShards``), so re-running a run never leaves duplicate rows behind; per-image files
that no row of this run claims are deleted once every row is written (``RemoveStaleViews``).
"""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Iterator, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from segbeam.layout import CONFIDENCE_DIR, DEAD_LETTERS_DIR, DEAD_LETTERS_PREFIX, \
    OVERLAYS_DIR, RAW_MASKS_DIR, STAMPS_DIR, STAMPS_PREFIX, SUMMARY_JSON, SUMMARY_PARQUET, \
    mask_png_path, output_path, shard_pattern, write_bytes_atomically
from segbeam.keys import file_key
from segbeam.masks_png import encode_label_png, palette_bytes
from segbeam.matching import match_files
from segbeam.records import SegmentationRecord
from segbeam.views import confidence_png, overlay_jpeg
from segbeam.transforms.aggregate import summary_rows, summary_schema
from segbeam.transforms.safe_map import SafeMap

LOG = logging.getLogger(__name__)


def write_label_png(record: SegmentationRecord, root: str, write_raw: bool = False,
                    colours: Optional[tuple] = None) -> SegmentationRecord:
    """Writes the final label map as ``<root>/masks/<key>.png`` (and, with ``write_raw``, the
    labels before the CRF as ``<root>/masks_raw/<key>.png``), coloured by ``colours`` (RGB per
    class id; VOC's by default); drops the label arrays. The record keeps the PNG's size, so
    that a later run can tell a mask file cut short or replaced from the one it wrote."""
    path = mask_png_path(root, record.key)
    palette = palette_bytes(colours)
    png = encode_label_png(record.final_labels, palette)
    write_bytes_atomically(path, png)
    if write_raw and record.raw_labels is not None:
        write_bytes_atomically(mask_png_path(root, record.key, RAW_MASKS_DIR),
                               encode_label_png(record.raw_labels, palette))
    return record.replace(mask_path=path, mask_png_size=len(png), raw_labels=None,
                          crf_labels=None)


def write_views(record: SegmentationRecord, root: str, colours: Optional[Sequence] = None
                ) -> SegmentationRecord:
    """With ``colours``, writes ``<root>/overlays/<key>.jpg`` (the image blended with its final
    labels); where the record carries a confidence map, ``<root>/confidence/<key>.png``; drops
    the confidence map."""
    if colours is not None:
        write_bytes_atomically(mask_png_path(root, record.key, OVERLAYS_DIR, ".jpg"),
                               overlay_jpeg(record.image, record.final_labels, colours))
    if record.confidence is not None:
        write_bytes_atomically(mask_png_path(root, record.key, CONFIDENCE_DIR),
                               confidence_png(record.confidence))
    return record.replace(confidence=None)


class WriteLabelMasks(beam.PTransform):
    """scored records -> (records with mask_path, dead letters)."""

    def __init__(self, root: str, write_raw: bool = False, colours: Optional[tuple] = None):
        super().__init__()
        self._root, self._write_raw, self._colours = root, write_raw, colours

    def expand(self, records):
        return records | "WritePNG" >> SafeMap("write", write_label_png, self._root,
                                               self._write_raw, self._colours)


def summary_files(summary: dict, schema: pa.Schema) -> dict[str, bytes]:
    """``summary.json`` (pretty JSON, one line feed at the end) and ``summary.parquet`` (a row
    per evaluated variant, ``summary_rows``), as bytes: what ``WriteToText`` and
    ``WriteToParquet`` (uncompressed, Beam's defaults) wrote for the one summary, byte for
    byte, without a shuffle and a finalising stage each."""
    table = pa.Table.from_pylist(summary_rows(summary), schema=schema)
    buffer = io.BytesIO()
    writer = pq.ParquetWriter(buffer, schema, compression="none",
                              use_deprecated_int96_timestamps=False,
                              use_compliant_nested_type=False)
    if table.num_rows:
        writer.write_table(table)
    writer.close()
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    return {SUMMARY_JSON: text.encode("utf-8"), SUMMARY_PARQUET: buffer.getvalue()}


class WriteSummary(beam.PTransform):
    """The run's one summary -> ``<root>/summary.json`` and ``<root>/summary.parquet``, each
    written under a temporary name and renamed."""

    def __init__(self, root: str, class_names: Sequence[str]):
        super().__init__()
        self._root, self._schema = root, summary_schema(list(class_names))

    def expand(self, summaries):
        return summaries | "Write" >> beam.Map(self._write, self._root, self._schema)

    @staticmethod
    def _write(summary: dict, root: str, schema: pa.Schema) -> dict:
        for name, data in summary_files(summary, schema).items():
            write_bytes_atomically(output_path(root, name), data)
        return summary


def _json_counted(dead) -> str:
    """A dead letter's JSON line, counted in the Beam counter ``dead_letters_<stage>``: every
    dead letter passes here, whichever stage or reader made it, so the counters agree with the
    files (the progress line counts them earlier, where they are made)."""
    Metrics.counter("segbeam", f"dead_letters_{dead.stage}").inc()
    return dead.to_json()


class WriteDeadLetters(beam.PTransform):
    """Dead letters as JSON lines under ``<root>/dead_letters/``, counted by stage."""

    def __init__(self, root: str):
        super().__init__()
        self._root = root

    def expand(self, dead_letters):
        return (dead_letters
                | "ToJson" >> beam.Map(_json_counted)
                | "Write" >> beam.io.WriteToText(
                    output_path(self._root, DEAD_LETTERS_DIR, DEAD_LETTERS_PREFIX),
                    file_name_suffix=".jsonl"))


class WriteStampRenewals(beam.PTransform):
    """Stamp renewals (``segbeam.incremental.stamp_renewal``) as JSON lines under
    ``<root>/stamps/``; an earlier run's shards that this one did not rewrite are deleted."""

    def __init__(self, root: str):
        super().__init__()
        self._root = root

    def expand(self, renewals):
        written = (renewals
                   | "ToJson" >> beam.Map(lambda entry: json.dumps(entry, sort_keys=True))
                   | "Write" >> beam.io.WriteToText(
                       output_path(self._root, STAMPS_DIR, STAMPS_PREFIX),
                       file_name_suffix=".jsonl"))
        return written | "RemoveStale" >> RemoveStaleShards(
            shard_pattern(self._root, STAMPS_DIR, STAMPS_PREFIX, ".jsonl"))


def remove_stale_shards(_, pattern: str, written: list) -> list[str]:
    """Deletes the files matching ``pattern`` that are not in ``written`` (the shards this run's
    sink finalised); returns the deleted paths."""
    keep = set(written)
    matched = FileSystems.match([pattern])[0].metadata_list
    stale = sorted(m.path for m in matched if m.path not in keep)
    if stale:
        FileSystems.delete(stale)
    return stale


_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{32}$")  # write_bytes_atomically's temporary names
_UNCLAIMED = "\0"  # a key no row has (keys are sanitised): the file is stale whatever ran


def listed_views(_, root: str, written: Sequence[tuple[str, str]],
                 unwritten: Sequence[tuple[str, str]], fold_case: bool = False
                 ) -> Iterator[tuple[str, str]]:
    """(key, path) of each file under ``root``'s per-image folders: ``written`` (folder,
    suffix) pairs, this run's, keyed by the input they belong to (case-folded with
    ``fold_case``, where the filesystem ignores case); ``unwritten`` ones (folders this run
    does not write) and temporaries of killed runs keyed so that no row claims them. Other
    files (not a name segbeam writes) are not listed."""
    for folder, suffix in (*written, *unwritten):
        base = output_path(root, folder) + "/"
        for path in match_files(base + "**"):
            name = path[len(base):]
            stale = (folder, suffix) in unwritten and name.endswith(suffix)
            if stale or _TEMPORARY.search(name):
                yield _UNCLAIMED + path, path
            elif name.endswith(suffix):
                key = name[:-len(suffix)]
                yield file_key(key, fold_case), path


def unclaimed_paths(grouped: tuple) -> Iterator[str]:
    """The listed paths of a key that no row of this run has (a CoGroupByKey result)."""
    _, found = grouped
    if not any(True for _ in found["rows"]):
        yield from found["paths"]


def delete_paths(paths: list[str]) -> list[str]:
    """Deletes ``paths`` in one batch and returns those deleted. One that is gone already (a
    temporary since renamed) is no error; one that cannot be deleted is logged and counted
    (``stale_outputs_kept``: the run says so) rather than fail a run whose outputs stand."""
    try:
        FileSystems.delete(paths)
        unsure, failed = set(), []
    except BeamIOError as error:
        details = error.exception_details or {}
        unsure = set(details) or set(paths)
        failed = [path for path in sorted(unsure) if FileSystems.exists(path)]
        for path in failed:
            LOG.warning("could not remove %s, which no input of this run claims: %s", path,
                        details.get(path, error))
    deleted = [path for path in paths if path not in unsure]
    Metrics.counter("segbeam", "stale_outputs_removed").inc(len(deleted))
    if failed:
        Metrics.counter("segbeam", "stale_outputs_kept").inc(len(failed))
    return deleted


class RemoveStaleViews(beam.PTransform):
    """This run's metrics rows -> the deleted per-image files that belong to none of them.

    A run into a folder that an earlier run wrote leaves that run's mask PNGs (and overlays,
    confidence maps, raw masks) beside its own unless they are removed: those of inputs this
    run did not take, or that are dead letters now, and every file of a folder this run does
    not write (``masks_raw/`` without ``--write_raw_masks``). They would pass for this run's.
    Deleting waits for every row, so this run's own files are all in place (a temporary listed
    in flight is renamed by then), and a reused row (``--skip_existing``) keeps its files.
    """

    def __init__(self, root: str, written: Sequence[tuple[str, str]],
                 unwritten: Sequence[tuple[str, str]], fold_case: bool = False):
        super().__init__()
        self._root, self._written, self._unwritten = root, tuple(written), tuple(unwritten)
        self._fold_case = fold_case  # the filesystem ignores case: A.png is a's file

    def expand(self, rows):
        fold = self._fold_case
        listed = (rows.pipeline
                  | "Once" >> beam.Create([None])
                  | "List" >> beam.FlatMap(listed_views, self._root, self._written,
                                           self._unwritten, fold))
        claimed = rows | "Keys" >> beam.Map(lambda row: (file_key(row["key"], fold), None))
        return ({"paths": listed, "rows": claimed}
                | "ByKey" >> beam.CoGroupByKey()
                | "Unclaimed" >> beam.FlatMap(unclaimed_paths)
                | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=500)
                | "Delete" >> beam.FlatMap(delete_paths))


class RemoveStaleShards(beam.PTransform):
    """The file names a sharded sink finalised -> the deleted stale shards of earlier runs."""

    def __init__(self, pattern: str):
        super().__init__()
        self._pattern = pattern

    def expand(self, written):
        return (written.pipeline
                | "Once" >> beam.Create([None])
                | "Remove" >> beam.Map(remove_stale_shards, self._pattern,
                                       written=beam.pvalue.AsList(written)))
