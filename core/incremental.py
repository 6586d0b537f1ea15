"""Incremental runs: content hashes, the fingerprint of what determines a result, and for each
input the decision whether an earlier result still stands. Pure functions, no Beam.

A result (a metrics row, with its mask PNG) still stands when it was computed from the same
bytes (``content_sha256``: image and mask) under the same configuration (``config_fingerprint``:
the model file and every setting that changes masks or metrics). Results live in run
directories: ``OUTPUT`` for a plain run, ``OUTPUT/date=YYYY-MM-DD`` with ``--run_date``.

Hashing reads every input's bytes. Under ``--change_detection stamp`` an input whose files'
stamps (``input_stamp``: paths, sizes, modification times) equal those of the row that would
stand, or of a stamp renewal an earlier night recorded (``stamp_renewal``), takes that hash
without being read; any other is hashed (``hash_by_stamp``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any, Iterable, NamedTuple, Optional

from segbeam.layout import partition_date

PROCESS = "process"  # no standing result: segment it
REUSE = "reuse"  # a standing result in this run's own directory: keep its row and mask
SKIP = "skip"  # a standing result in an earlier date partition: nothing to do

def content_sha256(image_bytes: bytes, mask_bytes: Optional[bytes]) -> str:
    """The hash of an input: its image bytes and its mask bytes (or the absence of a mask)."""
    digest = hashlib.sha256(hashlib.sha256(image_bytes).digest())
    digest.update(hashlib.sha256(mask_bytes).digest() if mask_bytes is not None else b"no mask")
    return digest.hexdigest()


def config_fingerprint(settings: dict) -> str:
    """A stable hash of the settings that determine a result (canonical JSON)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_run_date(text: Optional[str], today: Optional[datetime.date] = None) -> Optional[str]:
    """``--run_date``: ``YYYY-MM-DD``, or ``today`` (UTC); None stays None."""
    if text is None or text == "":
        return None
    if text == "today":
        return (today or datetime.datetime.now(datetime.timezone.utc).date()).isoformat()
    try:
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"--run_date must be YYYY-MM-DD or 'today'; received {text!r}") from None


def input_stamp(image_stamp: str, mask_source: Optional[str], mask_stamp: str) -> str:
    """The stamp of an input: ``image=STAMP mask=STAMP`` (or ``mask=none``) from its files'
    stamps (``segbeam.matching.file_stamp``); "" when a file it has gave none."""
    if not image_stamp or (mask_source is not None and not mask_stamp):
        return ""
    return f"image={image_stamp} mask={mask_stamp if mask_source is not None else 'none'}"


def unchanged_by_stamp(item: Any, latest: Optional["PriorResult"]) -> bool:
    """Whether an input's files are, by their stamps, the ones ``latest`` was made from: the
    same paths, and stamps that are known and equal."""
    return latest is not None and _same_files(item, latest.row)


def _same_files(item: Any, row: dict) -> bool:
    return (bool(item.source_stamp) and row.get("source_stamp") == item.source_stamp
            and row.get("source") == item.source and row.get("mask_source") == item.mask_source)


def hash_by_stamp(item: Any, latest: Optional["PriorResult"],
                  renewed: Iterable[dict]) -> Optional[str]:
    """The content hash an input's stamps vouch for, without reading it: the standing row's
    where its files are unchanged since, else that of a stamp renewal (``stamp_renewal``) for
    these files as they are now; None where it must be hashed."""
    if unchanged_by_stamp(item, latest):
        return latest.row["content_sha256"]
    return next((entry["content_sha256"] for entry in renewed if _same_files(item, entry)),
                None)


def stamp_renewal(item: Any, content_sha256: str) -> dict:
    """What a night records for an input it read, found unchanged and skipped while its
    stamp had changed (touched, copied again): the files' stamp now and the hash it stands for.
    The input's row lives in an earlier partition and is not written again, so without this
    record every later night would read it again."""
    return {"key": item.key, "source": item.source, "mask_source": item.mask_source,
            "source_stamp": item.source_stamp, "content_sha256": content_sha256}


class Candidate(NamedTuple):
    """An input on its way to the skip decision. ``item`` is an ``ImageRef`` (read again if it
    must be processed) or an ``EncodedImage`` (shard records, whose bytes travel along).
    ``content_sha256`` is "" for a file not hashed yet (``--change_detection stamp``)."""

    key: str
    content_sha256: str
    item: Any


class PriorResult(NamedTuple):
    """A metrics row of an earlier run, with the run directory (and date) it belongs to."""

    run_dir: str
    run_date: str  # "" for a run without --run_date
    row: dict


def prior_result(metrics_file: str, row: dict, metrics_folder: str) -> PriorResult:
    """Locates the run a metrics row came from by the path of its Parquet file
    (``RUN_DIR/<metrics_folder>/<shard>.parquet``)."""
    marker = f"/{metrics_folder}/"
    if marker not in metrics_file:
        raise ValueError(f"{metrics_file} is not inside a {metrics_folder}/ folder")
    run_dir = metrics_file.rsplit(marker, 1)[0]
    return PriorResult(run_dir, partition_date(run_dir) or "", row)


def latest_result(prior: Iterable[PriorResult], run_date: Optional[str]) -> Optional[PriorResult]:
    """The newest result at or before ``run_date`` (later partitions are the future of a
    back-filled run and do not count)."""
    eligible = [p for p in prior if not run_date or not p.run_date or p.run_date <= run_date]
    return max(eligible, key=lambda p: p.run_date, default=None)


def decide(candidate: Candidate, prior: Iterable[PriorResult], fingerprint: str, run_dir: str,
           run_date: Optional[str]) -> tuple[str, Optional[dict]]:
    """PROCESS, REUSE (with the row to keep) or SKIP (with the row that stands) for one input.

    ``run_dir`` must be spelled as the paths the prior results were read from (absolute).
    """
    latest = latest_result(prior, run_date)
    if (latest is None or latest.row.get("content_sha256") != candidate.content_sha256
            or latest.row.get("config_fingerprint") != fingerprint):
        return PROCESS, None
    if latest.run_dir == run_dir:
        return REUSE, latest.row
    return SKIP, latest.row
