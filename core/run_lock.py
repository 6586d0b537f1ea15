"""One run at a time per output folder: the ``_RUNNING`` marker.

A run begins by removing what an earlier run left in its folder (completion marker, summary,
the sinks' temporary folders) and ends by removing masks that none of its inputs names. Two
runs into one folder at once therefore delete each other's files, and both reported success
over a folder that held neither run's results whole (masks the summary did not count). A run
now claims its folder by creating ``_RUNNING`` (exclusively on a local filesystem; on object
stores a check, then a write) and removes it when it ends, finished or failed. A marker whose
run was killed on this host (its process is gone) is taken over; one from another host is
left for the user to judge, since no process table can be read there.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import uuid

from segbeam.layout import RUNNING_MARKER, delete, exists, output_path, read_json, \
    write_bytes_atomically

_CLAIMS: dict[str, str] = {}  # run folder -> the token this process wrote into its marker


def claim_output(run_dir: str, flag: str = "--output") -> list[str]:
    """Claims ``run_dir`` (an existing, writable folder) for this process; returns the marker
    of a killed run it took over, if any. A ValueError, naming the run that holds it, where
    another run is writing there."""
    path = output_path(run_dir, RUNNING_MARKER)
    token = uuid.uuid4().hex
    mine = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                       "started_utc": datetime.datetime.now(datetime.timezone.utc)
                       .isoformat(timespec="seconds")}).encode()
    taken_over = []
    while not _create(path, mine):
        holder = _holder(path)
        if taken_over or not _killed_here(holder):
            raise ValueError(
                f"{flag} {run_dir} is being written by another run ({_describe(holder)}); "
                f"two runs into one folder delete each other's files: wait for it to end, or "
                f"pass another {flag}; if no run writes there any more, delete {path}")
        delete(path)
        taken_over.append(path)
    _CLAIMS[run_dir] = token
    return taken_over


def release_output(run_dir: str) -> None:
    """Removes this process's marker from ``run_dir``; leaves another run's alone."""
    token = _CLAIMS.pop(run_dir, None)
    path = output_path(run_dir, RUNNING_MARKER)
    if token is not None and _holder(path).get("token") == token:
        delete(path)


def _create(path: str, data: bytes) -> bool:
    if "://" not in path:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return True
    if exists(path):
        return False
    write_bytes_atomically(path, data)
    return True


def _holder(path: str) -> dict:
    """What a marker says of its run; {} where it is gone or unreadable (a crash part-way)."""
    try:
        holder = read_json(path)
    except Exception:  # noqa: BLE001 - missing, half-written or foreign: nothing to go on
        return {}
    return holder if isinstance(holder, dict) else {}


def _killed_here(holder: dict) -> bool:
    """True where the marker's run ran on this host and its process is gone."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def _describe(holder: dict) -> str:
    if not holder:
        return "its marker says no more"
    return (f"process {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started_utc')}")
