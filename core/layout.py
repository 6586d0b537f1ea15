"""The output layout: where a run writes what, and how a finished run is read back.

``OutputLayout`` is the output root, the optional date partition and whether raw masks are
written; the functions name every path a run writes (sanitised keys only, so nothing lands
outside the root) and read a finished run's files back through Beam's FileSystems, so local and
``gs://`` outputs read alike. Reports and incremental runs read runs through this module.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import posixpath
import re
import uuid
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple, Optional

from segbeam.config import Effect, setting

if TYPE_CHECKING:
    import pyarrow

MASKS_DIR = "masks"
RAW_MASKS_DIR = "masks_raw"
OVERLAYS_DIR = "overlays"
CONFIDENCE_DIR = "confidence"
METRICS_DIR = "metrics"
METRICS_PREFIX = "metrics"
DEAD_LETTERS_DIR = "dead_letters"
DEAD_LETTERS_PREFIX = "dead_letters"
STAMPS_DIR = "stamps"  # stamp renewals of inputs skipped (segbeam.incremental.stamp_renewal)
STAMPS_PREFIX = "stamps"
SUMMARY_JSON = "summary.json"
SUMMARY_PARQUET = "summary.parquet"
MANIFEST_JSON = "manifest.json"
SUCCESS_MARKER = "_SUCCESS"  # written last: the run finished and its files belong together
RUNNING_MARKER = "_RUNNING"  # while a run writes (``segbeam.run_lock``)
REPORT_DIR = "report"
REPORT_FILES = ("report.html", "report.md", "report.json")


def _filesystems():
    from apache_beam.io.filesystems import FileSystems  # a library call, not a pipeline

    return FileSystems


def output_path(root: str, *parts: str) -> str:
    return _filesystems().join(root.rstrip("/"), *parts)


def run_directory(output: str, run_date: Optional[str]) -> str:
    """Where a run writes: the output root, or its Hive-style ``date=YYYY-MM-DD`` partition."""
    root = output.rstrip("/")
    return f"{root}/date={run_date}" if run_date else root


_DATE_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})")


def partition_date(run_dir: str) -> Optional[str]:
    """The date of a ``run_directory`` that is a ``date=YYYY-MM-DD`` partition, else None."""
    match = _DATE_PARTITION.fullmatch(posixpath.basename(run_dir.rstrip("/")))
    return match.group(1) if match else None


@dataclasses.dataclass(frozen=True)
class OutputLayout:
    """root: the ``--output`` folder. run_date: the ``date=`` partition this run writes, or
    None. write_raw_masks: also write the labels before the CRF under ``masks_raw/``.
    write_overlays / write_confidence: also write ``overlays/<key>.jpg`` (the image blended with
    its final labels) / ``confidence/<key>.png`` (top-class probability, 0..255)."""

    root: str = setting(Effect.NONE)
    run_date: Optional[str] = setting(Effect.NONE, None)
    write_raw_masks: bool = setting(Effect.OUTPUT, False)
    write_overlays: bool = setting(Effect.OUTPUT, False, omit_default=True)
    write_confidence: bool = setting(Effect.OUTPUT, False, omit_default=True)

    @property
    def run_dir(self) -> str:
        return run_directory(self.root, self.run_date)

    @property
    def history_glob(self) -> str:
        """The metrics of earlier runs that --skip_existing looks at."""
        if self.run_date:
            return f"{self.root}/date=*/{METRICS_DIR}/*.parquet"
        return f"{self.run_dir}/{METRICS_DIR}/*.parquet"

    @property
    def renewals_glob(self) -> str:
        """The stamp renewals of earlier runs that --skip_existing looks at."""
        if self.run_date:
            return f"{self.root}/date=*/{STAMPS_DIR}/*.jsonl"
        return f"{self.run_dir}/{STAMPS_DIR}/*.jsonl"

    def path(self, *parts: str) -> str:
        return output_path(self.run_dir, *parts)

    def per_image_folders(self) -> tuple[list, list]:
        """(folder, suffix) of each per-image output: the folders this run writes, and those
        it does not (an earlier run's files there would pass for this run's)."""
        folders = ((MASKS_DIR, ".png", True), (RAW_MASKS_DIR, ".png", self.write_raw_masks),
                   (OVERLAYS_DIR, ".jpg", self.write_overlays),
                   (CONFIDENCE_DIR, ".png", self.write_confidence))
        return ([(name, suffix) for name, suffix, written in folders if written],
                [(name, suffix) for name, suffix, written in folders if not written])


def begin_run(run_dir: str, claim: Optional[Callable[[str], list[str]]] = None) -> list[str]:
    """Makes ``run_dir`` ready for a run and returns what it removed. Refuses (ValueError) an
    output that is a file or cannot be written; then ``claim`` (``run_lock.claim_output``)
    claims it, before anything is removed. Removes the completion marker, summary, manifest
    and report of an earlier run first, so that a run killed part-way never leaves them beside
    its own masks; and the ``beam-temp-*`` folders that the sinks of killed runs left."""
    filesystems = _filesystems()
    local = "://" not in run_dir
    check_writable_folder(run_dir)
    taken_over = claim(run_dir) if claim else []
    earlier = [output_path(run_dir, name) for name in (SUCCESS_MARKER, SUMMARY_JSON,
                                                       SUMMARY_PARQUET, MANIFEST_JSON)]
    earlier += [output_path(run_dir, REPORT_DIR, name) for name in REPORT_FILES]
    earlier = [path for path in earlier if filesystems.exists(path)]
    temporary = sorted(_sink_temporaries(run_dir, local))
    filesystems.delete(earlier + temporary)
    return taken_over + earlier + temporary


def check_writable_folder(folder: str, flag: str = "--output") -> None:
    """Creates ``folder`` where it is missing (local) and writes and deletes a probe file in
    it; a ValueError naming ``flag`` where it is a file or cannot be written."""
    local = "://" not in folder
    if local and os.path.isfile(folder):
        raise ValueError(f"{flag} {folder} is a file; pass a folder (it is created if "
                         f"missing)")
    probe = output_path(folder, f".write-test-{uuid.uuid4().hex}")
    try:
        if local:
            os.makedirs(folder, exist_ok=True)
        write_bytes_atomically(probe, b"")
    except OSError as error:
        raise ValueError(f"cannot write under {flag} {folder}: "
                         f"{getattr(error, 'strerror', None) or error}") from None
    _filesystems().delete([probe])


def ignores_case(folder: str) -> bool:
    """Whether the local ``folder`` lies on a filesystem that does not tell names apart by
    letter case (the default ones of macOS and Windows), where ``a.png`` and ``A.png`` are one
    file; False for object stores and for a folder that does not exist."""
    if "://" in folder or not os.path.isdir(folder):
        return False
    name = f".Case-Probe-{uuid.uuid4().hex}"
    try:
        open(os.path.join(folder, name), "x").close()
    except OSError:
        return False
    try:
        return os.path.exists(os.path.join(folder, name.lower()))
    finally:
        os.remove(os.path.join(folder, name))


def _sink_temporaries(run_dir: str, local: bool) -> set[str]:
    """The ``beam-temp-*`` folders of Beam's file sinks in ``run_dir`` and its sub-folders."""
    patterns = ("beam-temp-*", "*/beam-temp-*")
    if local:
        return {path for pattern in patterns
                for path in glob.glob(os.path.join(glob.escape(run_dir), pattern))
                if os.path.isdir(path)}
    # Object stores have no empty folders: a temporary folder is the prefix of its files.
    return {posixpath.dirname(path) + "/" for pattern in patterns
            for path in matching_paths(output_path(run_dir, pattern + "/*"))}


def finish_run(run_dir: str) -> None:
    """Writes the completion marker (``_SUCCESS``, as Hadoop and Beam users expect): last."""
    write_bytes_atomically(output_path(run_dir, SUCCESS_MARKER), b"")


def shard_pattern(root: str, folder: str, prefix: str, suffix: str) -> str:
    """The glob of a sharded sink's files (Beam's default ``-SSSSS-of-NNNNN`` names)."""
    return output_path(root, folder, f"{prefix}-*-of-*{suffix}")


def mask_png_path(root: str, key: str, folder: str = MASKS_DIR, suffix: str = ".png") -> str:
    if key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"key {key!r} is not sanitised; refusing to write outside {root}")
    return output_path(root, folder, key + suffix)


def write_bytes_atomically(path: str, data: bytes) -> None:
    """Writes under a temporary name, then renames: no half-written file under a final name."""
    filesystems = _filesystems()
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    handle = filesystems.create(temporary)
    try:
        handle.write(data)
        handle.close()
    except BaseException:
        _abandon(handle)
        raise
    filesystems.rename([temporary], [path])


def _abandon(handle) -> None:
    """Gives up a file whose writing failed. A Cloud Storage writer whose ``close`` failed
    stays open, and its finaliser tries the upload again, later, in whichever thread collects
    it: a stray temporary file written after the failure was reported, or that thread blocked
    on the storage client's retries. ``terminate`` cancels the upload instead."""
    try:
        (getattr(handle, "terminate", None) or handle.close)()
    except Exception:  # the failure being raised is the one to report
        pass


def open_file(path: str, decompress: bool = False):
    """A readable file object for ``path`` on any Beam filesystem: its bytes as stored
    (seekable), or with ``decompress`` decompressed as the name's suffix says (``.gz``,
    ``.bz2``, ...; as stored without one)."""
    from apache_beam.io.filesystem import CompressionTypes

    return _filesystems().open(path, compression_type=CompressionTypes.AUTO if decompress
                               else CompressionTypes.UNCOMPRESSED)


def read_bytes(path: str) -> bytes:
    with open_file(path) as handle:
        return handle.read()


def read_json(path: str) -> dict:
    return json.loads(read_bytes(path).decode("utf-8"))


def exists(path: str) -> bool:
    return _filesystems().exists(path)


def delete(path: str) -> None:
    _filesystems().delete([path])


def matching_paths(pattern: str) -> list[str]:
    """The files a glob matches (none is not an error), sorted; folders are left out."""
    return sorted(m.path for result in _filesystems().match([pattern])
                  for m in result.metadata_list if not _is_folder(m.path))


def files_under(folder: str) -> Iterator[str]:
    """Every file under ``folder``, at any depth, spelled as ``output_path`` spells paths under
    it: one listing (a request per thousand objects on Cloud Storage), not a request per file.
    A folder that does not exist holds none."""
    return (path for path, _ in sized_files_under(folder))


def sized_files_under(folder: str) -> Iterator[tuple[str, int]]:
    """``files_under`` with each file's size in bytes (-1 for a local file that cannot be
    read: a dangling link). Cloud Storage gives the sizes with the listing."""
    folder = folder.rstrip("/")
    if "://" not in folder:
        for top, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(top, name)
                try:
                    yield path, os.stat(path).st_size
                except OSError:
                    yield path, -1
        return
    # Listed from the name's part before any glob character: a folder named out[1] is no glob.
    prefix = re.match(r"[^\[*?]*", folder).group(0)
    listed = _filesystems().match([prefix + "**"])[0].metadata_list
    yield from ((m.path, m.size_in_bytes) for m in listed if m.path.startswith(folder + "/"))


def _is_folder(path: str) -> bool:
    return "://" not in path and os.path.isdir(path)


class RunOutputs(NamedTuple):
    """A finished run as written: its folder, summary, manifest, metrics rows, dead letters."""

    root: str
    summary: dict
    manifest: dict
    rows: pyarrow.Table  # REPORT_ROW_COLUMNS of every metrics row (see ``report_rows``)
    dead_letters: list[dict]

    def setting(self, name: str):
        """A setting from the manifest, in the layout of this version (nested configuration
        objects) or of earlier ones (one flat dict); None where absent."""
        settings = self.manifest.get("settings", {})
        nested = {"model": ("model", "spec"), "weights": ("model", "weights")}
        if name in nested and isinstance(settings.get("model"), dict):
            outer, inner = nested[name]
            return settings[outer].get(inner)
        return settings.get(name)


# What a report reads of each metrics row (its gallery, histograms and counts): a run of
# millions of rows is loaded with these alone, not with every column (tens of KB a row).
REPORT_ROW_COLUMNS = ("key", "source", "mask_source", "mask_path", "has_mask", "crf_applied",
                      "height", "width", "miou_raw", "miou_crf", "bf_raw", "bf_crf")


def load_run(root: str) -> RunOutputs:
    """Reads a run's outputs (of its metrics rows, ``REPORT_ROW_COLUMNS``); a folder without
    ``summary.json`` is refused with the reason."""
    import pyarrow.parquet as pq

    summary_path = output_path(root, SUMMARY_JSON)
    if not exists(summary_path):
        partitions = sorted(matching_paths(output_path(root, "date=*", SUMMARY_JSON)))
        if partitions:  # a --run_date run's --output: its runs lie one level down
            latest = posixpath.dirname(partitions[-1])
            raise ValueError(f"{root} holds {len(partitions)} dated runs (--run_date), not one "
                             f"run: pass one of them, e.g. the latest, {latest} (or, to "
                             f"`segbeam report`, --standing for all of them as they stand)")
        if exists(output_path(root, RUNNING_MARKER)):
            raise ValueError(f"{root} is being written by a run that has not ended (it holds "
                             f"{RUNNING_MARKER}, and an earlier run's summary is removed "
                             f"first): report on it once that run ends")
        what = "does not exist" if "://" not in root and not os.path.exists(root) else \
            f"holds no {SUMMARY_JSON}"
        raise ValueError(f"{root} {what}: pass the --output folder of a finished `segbeam run`")
    manifest_path = output_path(root, MANIFEST_JSON)
    manifest = read_json(manifest_path) if exists(manifest_path) else {}
    tables = []
    for path in matching_paths(output_path(root, METRICS_DIR, "*.parquet")):
        with _filesystems().open(path) as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            tables.append(parquet.read(columns=[c for c in REPORT_ROW_COLUMNS if c in names]))
    dead = [json.loads(line)
            for path in matching_paths(output_path(root, DEAD_LETTERS_DIR, "*.jsonl"))
            for line in read_bytes(path).decode("utf-8").splitlines() if line.strip()]
    return RunOutputs(root, read_json(summary_path), manifest, report_rows(tables), dead)


def report_rows(tables: list) -> pyarrow.Table:
    """Tables of metrics rows as one table of ``REPORT_ROW_COLUMNS``, in that order: a column
    that a table lacks (written by a version before it) is null in its rows."""
    import pyarrow as pa

    table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    for name in REPORT_ROW_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows))
    return table.select(list(REPORT_ROW_COLUMNS))
