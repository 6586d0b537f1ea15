"""``SkipUnchanged``: restricts a run to what is new or changed, a thin Beam shell over
``segbeam.incremental.decide``.

Each input is hashed, then joined by key with the metrics rows of earlier runs, read from
Parquet with only the columns the decision needs (whole rows of every night would cross the
join otherwise). Files are read once to be hashed and their bytes dropped, so that only small
records cross the join; the few that must be processed are read again afterwards. Shard
records keep their bytes (a record cannot be re-read alone). A row to reuse (one of this run's
own folder) is read whole from that folder alone and joined with the listing of its masks. The
masks of earlier runs (date partitions) are listed once per run and join the decision by key,
so a skipped input's item never crosses a second join: an input whose standing row's mask PNG
is gone or damaged is processed, as a reused row's is.

With ``by_stamp`` (``--change_detection stamp``), files are not hashed before the join: a file
whose stamp from the listing equals the standing row's (or that of a stamp renewal an earlier
night recorded) takes that hash unread, and only the others are read to be hashed. An input
skipped while no record vouched for its stamp gets a stamp renewal (``stamps/``), so that the
next night need not read it again.
"""

from __future__ import annotations

import json
import posixpath
from typing import Optional, Union

import apache_beam as beam
from apache_beam.io.parquetio import ReadAllFromParquet
from apache_beam.metrics import Metrics

from segbeam.containers import read_parquet_columns
from segbeam.dataset import ensure_encoded
from segbeam.incremental import PROCESS, REUSE, SKIP, Candidate, decide, hash_by_stamp, \
    latest_result, prior_result, stamp_renewal
from segbeam.layout import MASKS_DIR, METRICS_DIR, STAMPS_DIR, matching_paths, open_file, \
    output_path, sized_files_under
from segbeam.records import DeadLetter, EncodedImage, ImageRef, one_line_reason
from segbeam.transforms.safe_map import SafeMap, counted
from segbeam.transforms.scoring import complete_row


DEAD = "dead_letter"
RENEW = "stamp_renewal"
# What the decision reads of an earlier row (``segbeam.incremental``, ``_with_mask_file``).
DECISION_COLUMNS = ("key", "source", "mask_source", "mask_path", "content_sha256",
                    "config_fingerprint", "source_stamp", "mask_png_size")


def candidate_of(item: Union[ImageRef, EncodedImage]) -> Candidate:
    """Hashes an input. A file's bytes are dropped after hashing: it is read again only if it
    must be processed."""
    Metrics.counter("segbeam", "inputs_hashed").inc()
    return Candidate(item.key, ensure_encoded(item).content_sha256, item)


def unhashed_candidate(item: Union[ImageRef, EncodedImage]) -> Candidate:
    """An input for the decision by stamp: a file with a stamp is not read yet; a shard
    record, whose bytes are at hand, and a file without a stamp are hashed."""
    if isinstance(item, ImageRef) and item.source_stamp:
        return Candidate(item.key, "", item)
    return candidate_of(item)


def _keyed_prior(element: tuple) -> tuple:
    path, row = element
    return row["key"], prior_result(path, row, METRICS_DIR)


def _decision_columns(path: str):
    """(path, row) of each row of a metrics file, the decision's columns only."""
    for row in read_parquet_columns(path, DECISION_COLUMNS):
        yield path, row


def _renewals(path: str):
    """(key, stamp renewal) of each line of an earlier run's ``stamps/`` file, with the run
    directory it belongs to."""
    run_dir = path.rsplit(f"/{STAMPS_DIR}/", 1)[0]
    with open_file(path) as handle:
        for line in handle:
            if line.strip():
                entry = json.loads(line)
                yield entry["key"], {**entry, "run_dir": run_dir}


class _Decide(beam.DoFn):
    def __init__(self, fingerprint: str, run_dir: str, run_date: Optional[str]):
        self._fingerprint, self._run_dir, self._run_date = fingerprint, run_dir, run_date

    def process(self, element):
        _, grouped = element
        prior = list(grouped["prior"])
        renewed, masks = list(grouped["renewed"]), list(grouped["masks"])
        latest = latest_result(prior, self._run_date)
        for candidate in grouped["candidates"]:
            vouched = hash_by_stamp(candidate.item, latest, renewed)
            if not candidate.content_sha256:
                candidate = _with_hash(candidate, vouched)
                if isinstance(candidate, DeadLetter):
                    yield beam.pvalue.TaggedOutput(DEAD, candidate)
                    continue
            decision, row = decide(candidate, prior, self._fingerprint, self._run_dir,
                                   self._run_date)
            if decision == PROCESS:
                yield candidate.item
            elif decision == REUSE:  # once its mask PNG is found in the listing
                # The row is written again: with the stamp its files have now.
                row = {**row, "source_stamp": candidate.item.source_stamp or None}
                yield beam.pvalue.TaggedOutput(REUSE, (row.get("mask_path") or "",
                                                       (candidate.item, row)))
            else:
                # Its row stands in an earlier run: only while that run's mask PNG is intact.
                partition = posixpath.basename(latest.run_dir)
                fault = _mask_file_fault([size for run, size in masks if run == partition], row)
                if fault is not None:
                    Metrics.counter("segbeam", f"skipped_rows_{fault}").inc()
                    yield candidate.item
                    continue
                yield beam.pvalue.TaggedOutput(SKIP, candidate.key)
                # A rerun rewrites its own folder's renewals: those it found stand again.
                elsewhere = [e for e in renewed if e["run_dir"] != self._run_dir]
                if candidate.item.source_stamp and \
                        hash_by_stamp(candidate.item, latest, elsewhere) is None:
                    Metrics.counter("segbeam", "stamps_renewed").inc()
                    yield beam.pvalue.TaggedOutput(RENEW, stamp_renewal(
                        candidate.item, candidate.content_sha256))


def _with_hash(candidate: Candidate, vouched: Optional[str]):
    """The candidate with its hash: the one its stamps vouch for, else its bytes' (or a dead
    letter where they cannot be read)."""
    if vouched is not None:
        Metrics.counter("segbeam", "inputs_unchanged_by_stamp").inc()
        return candidate._replace(content_sha256=vouched)
    try:
        return candidate_of(candidate.item)
    except Exception as error:  # as SafeMap would: the input becomes a dead letter
        item = candidate.item
        return counted(DeadLetter(item.key, item.source, "read", one_line_reason(error)))


def _mask_file_fault(sizes: list, row: dict) -> Optional[str]:
    """None where a row's mask PNG is listed (``sizes``: its listed size, or nothing) at the
    size it was written; else what is wrong with it. Rows made before sizes were kept
    (``mask_png_size`` null) need the file only to be there."""
    written = row.get("mask_png_size")
    if not sizes:
        return "without_mask_file"
    return None if written is None or sizes[0] == written else "with_damaged_mask_file"


def _with_mask_file(element):
    """A row to reuse whose mask PNG is intact (``_mask_file_fault``) stands; one whose mask
    is gone (deleted by hand) or of another size (cut short by a partial copy, replaced) is
    segmented again, rather than kept naming a file that is not its mask. The row kept is the
    whole row (``rows``) with the stamp the decision gave it."""
    _, grouped = element
    sizes = list(grouped["listed"])
    whole = next(iter(grouped["rows"]), None)
    for item, row in grouped["reused"]:
        fault = _mask_file_fault(sizes, row)
        if whole is None:  # its folder changed since the history was read: decide afresh
            Metrics.counter("segbeam", "reused_rows_not_found").inc()
            yield item
        elif fault is None:
            yield beam.pvalue.TaggedOutput(REUSE, complete_row(
                {**whole, "source_stamp": row.get("source_stamp")}))
        else:
            Metrics.counter("segbeam", f"reused_rows_{fault}").inc()
            yield item


def _listed_masks(run_dir: str):
    """(key, (partition, size)) of each mask PNG an earlier run wrote (``date=...``: its
    folder's name, shorter to shuffle than its path), from one listing of its ``masks/``
    (where the run is now: the output root may have moved since)."""
    folder = output_path(run_dir, MASKS_DIR) + "/"
    partition = posixpath.basename(run_dir)
    for path, size in sized_files_under(folder):
        if path.startswith(folder) and path.endswith(".png"):
            yield path[len(folder):-len(".png")], (partition, size)


class SkipUnchanged(beam.PTransform):
    """ImageRefs / EncodedImages -> (inputs to process, metrics rows reused as they are, keys
    skipped (their rows' masks intact), dead letters of inputs that could not be read, stamp
    renewals to write).

    Args:
      history: a glob of earlier metrics Parquet files (``RUN_DIR/metrics/*.parquet``, or
        ``ROOT/date=*/metrics/*.parquet`` for date partitions); it may match nothing.
      fingerprint: this run's ``config_fingerprint``; rows made under another are stale.
      run_dir: this run's directory, absolute as the history's paths are.
      run_date: this run's date partition, or None.
      renewals: a glob of earlier runs' stamp renewals (``stamps/*.jsonl``).
      by_stamp: files with a stamp (``ImageRef.source_stamp``) are hashed only where it
        differs from the standing row's (``--change_detection stamp``).
    """

    def __init__(self, history: str, fingerprint: str, run_dir: str, run_date: Optional[str],
                 renewals: str, by_stamp: bool = False):
        super().__init__()
        self._history, self._fingerprint = history, fingerprint
        self._run_dir, self._run_date, self._by_stamp = run_dir, run_date, by_stamp
        self._renewals = renewals

    def expand(self, items):
        candidates, unreadable = items | "Hash" >> SafeMap(
            "read", unhashed_candidate if self._by_stamp else candidate_of)
        history = (items.pipeline
                   | "HistoryGlob" >> beam.Create([self._history])
                   | "MatchHistory" >> beam.FlatMap(matching_paths))
        prior = (history
                 | "SpreadHistory" >> beam.Reshuffle()
                 | "ReadHistory" >> beam.FlatMap(_decision_columns)
                 | "KeyHistory" >> beam.Map(_keyed_prior))
        renewed = (items.pipeline
                   | "RenewalsGlob" >> beam.Create([self._renewals])
                   | "MatchRenewals" >> beam.FlatMap(matching_paths)
                   | "ReadRenewals" >> beam.FlatMap(_renewals))
        # One listing of each earlier run's masks, for the rows that skipped inputs stand on.
        own = self._run_dir
        masks = (history
                 | "HistoryRuns" >> beam.Map(lambda path: prior_result(path, {}, METRICS_DIR)
                                             .run_dir)
                 | "EarlierRuns" >> beam.Filter(lambda run_dir: run_dir != own)
                 | "DistinctRuns" >> beam.Distinct()
                 | "ListEarlierMasks" >> beam.FlatMap(_listed_masks))
        keyed = candidates | "KeyCandidates" >> beam.Map(lambda c: (c.key, c))
        decided = ({"candidates": keyed, "prior": prior, "renewed": renewed, "masks": masks}
                   | "JoinHistory" >> beam.CoGroupByKey()
                   | "Decide" >> beam.ParDo(_Decide(self._fingerprint, self._run_dir,
                                                    self._run_date)).with_outputs(
                       REUSE, SKIP, DEAD, RENEW, main=PROCESS))
        # One listing of this run's masks, not an existence check per reused row.
        listed = (items.pipeline
                  | "MasksFolder" >> beam.Create([output_path(self._run_dir, MASKS_DIR)])
                  | "ListMasks" >> beam.FlatMap(sized_files_under))
        own_rows = (items.pipeline
                    | "OwnMetrics" >> beam.Create([output_path(self._run_dir, METRICS_DIR,
                                                               "*.parquet")])
                    | "ReadOwnRows" >> ReadAllFromParquet()
                    | "KeyOwnRows" >> beam.Map(lambda row: (row.get("mask_path") or "", row)))
        checked = ({"reused": decided[REUSE], "listed": listed, "rows": own_rows}
                   | "JoinMasks" >> beam.CoGroupByKey()
                   | "MaskStillThere" >> beam.FlatMap(_with_mask_file).with_outputs(
                       REUSE, main=PROCESS))
        process = (decided[PROCESS], checked[PROCESS]) | "ToProcess" >> beam.Flatten()
        unreadable = (unreadable, decided[DEAD]) | "Unreadable" >> beam.Flatten()
        return process, checked[REUSE], decided[SKIP], unreadable, decided[RENEW]
