"""Which files a glob names, with nothing lost on the way.

Beam's own matching drops three kinds of local file without a word: a name holding a backslash
(its ``*`` stops at ``\\`` as well as ``/``), a dangling symbolic link and a symbolic-link loop
(its listing calls ``getsize`` and skips what fails). Such files look like inputs to the user,
so here they are matched like any other and fail later, at read, as dead letters with the
reason. Glob syntax is Beam's: ``*`` stays within one folder, ``**`` crosses folders, ``?``
is one character and ``[...]`` a class. The files a run writes under its output root (``exclude``)
are left out, so a run never reads its own outputs back as inputs; other files there (the
demo's generated inputs, say) stay inputs.
"""

from __future__ import annotations

import os
import re
import time
from typing import Iterator, Optional

from segbeam.layout import CONFIDENCE_DIR, DEAD_LETTERS_DIR, MANIFEST_JSON, MASKS_DIR, \
    METRICS_DIR, OVERLAYS_DIR, RAW_MASKS_DIR, REPORT_DIR, RUNNING_MARKER, STAMPS_DIR, \
    SUCCESS_MARKER, SUMMARY_JSON, SUMMARY_PARQUET

_WILDCARDS = "*?["


def pattern_regex(pattern: str) -> re.Pattern:
    """The regular expression a glob stands for (every character but ``/`` for ``*``)."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        i += 1
        if c == "*":
            if pattern[i:i + 1] == "*":
                out.append(".*")
                i += 1
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = i + (pattern[i:i + 1] == "!")
            end += pattern[end:end + 1] == "]"
            end = pattern.find("]", end)
            if end == -1:
                out.append(r"\[")
                continue
            body = pattern[i:end].replace("\\", "\\\\").replace("[", "\\[")
            body = "^" + body[1:] if body.startswith("!") else \
                "\\" + body if body.startswith("^") else body
            out.append(f"[{body}]")
            i = end + 1
        else:
            out.append(re.escape(c))
    return re.compile("(?s)" + "".join(out) + r"\Z")


def _wildcard_free_prefix(pattern: str) -> str:
    return re.match(r"^[^*?\[]*", pattern).group(0)


def _listing_root(pattern: str) -> str:
    """The folder to list: the last folder of the pattern's wildcard-free prefix."""
    prefix = _wildcard_free_prefix(pattern)
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""


def _is_remote(path: str) -> bool:
    return "://" in path


_OUTPUT_FOLDERS = {MASKS_DIR, RAW_MASKS_DIR, METRICS_DIR, DEAD_LETTERS_DIR, REPORT_DIR,
                   OVERLAYS_DIR, CONFIDENCE_DIR, STAMPS_DIR}
_OUTPUT_FILES = {SUMMARY_JSON, SUMMARY_PARQUET, MANIFEST_JSON, SUCCESS_MARKER, RUNNING_MARKER}


def _is_output(path: str, root: Optional[str]) -> bool:
    """Whether ``path`` is a file a run writes under the output root ``root`` (in the root or
    in one of its ``date=`` partitions)."""
    if not root:
        return False
    if not _is_remote(path):
        path, root = os.path.abspath(path), os.path.abspath(root)
    root = root.rstrip("/") + "/"
    if not path.startswith(root):
        return False
    parts = path[len(root):].split("/")
    if parts[0].startswith("date=") and len(parts) > 1:
        parts = parts[1:]
    return parts[0] in _OUTPUT_FOLDERS if len(parts) > 1 else parts[0] in _OUTPUT_FILES


def _local_files(root: str, depth: Optional[int]) -> Iterator[str]:
    """Every non-folder entry under ``root`` (a dangling link or a link loop included), ``depth``
    folders deep at most (None: all). Links to folders are followed (Beam skips what lies
    behind them without a word), each real folder once, in name order, so a loop ends."""
    top = root.rstrip("/") or ("/" if root.startswith("/") else ".")
    if not os.path.isdir(top):
        return
    seen = {os.path.realpath(top)}
    for folder, subfolders, files in os.walk(top, followlinks=True):
        relative = os.path.relpath(folder, top)
        level = 0 if relative == "." else relative.count(os.sep) + 1
        if depth is not None and level >= depth:
            subfolders[:] = []
        kept = []
        for name in sorted(subfolders):
            real = os.path.realpath(os.path.join(folder, name))
            if real not in seen:
                seen.add(real)
                kept.append(name)
        subfolders[:] = kept
        for name in files:
            path = os.path.join(folder, name)
            yield path[2:] if top == "." and path.startswith("./") else path


def match_files(pattern: str, exclude: Optional[str] = None) -> Iterator[str]:
    """The files ``pattern`` matches, in listing order, none that a run writes under
    ``exclude`` (an output root). A pattern ending in ``/`` names every file in that folder,
    as in Beam."""
    return (path for path, _ in _matched(pattern, exclude, stamped=False))


def match_stamped_files(pattern: str, exclude: Optional[str] = None
                        ) -> Iterator[tuple[str, str]]:
    """``match_files`` with each file's stamp (``file_stamp``): what the listing says of it,
    so that an incremental run can tell an unchanged file without reading it. On Cloud
    Storage the stamps come with the listing; a local file costs one ``stat``."""
    return _matched(pattern, exclude, stamped=True)


# A file changed this recently when listed gets no stamp: a filesystem whose times tick
# coarsely (a second on some network and older filesystems, a few milliseconds on ext4) could
# give a file still being written, and the same file finished, one stamp.
RECENT_SECONDS = 5.0


def file_stamp(size: int, modified: float, changed: Optional[int] = None,
               age: float = float("inf"), inode: Optional[int] = None) -> str:
    """``size:modified[:changed:inode]``, or "" where the filesystem gives no modification
    time (Beam reports 0.0 for "not known") or the file changed less than ``RECENT_SECONDS``
    before it was listed (``age``, in seconds; negative where the clocks disagree): such a
    file has no stamp and is hashed.

    ``modified`` is a local file's ``st_mtime_ns`` or a remote object's update time in
    seconds; ``changed`` a local file's ``st_ctime_ns``, which no tool can set back, so that
    a file rewritten and given its old modification time again (``cp -p``, ``touch -d``)
    still gets a new stamp; ``inode`` tells apart two files copied in the same instant, when
    a link is pointed from one to the other."""
    if not modified or not age >= RECENT_SECONDS:
        return ""
    local = f":{changed}:{inode}" if changed is not None else ""
    return f"{size}:{modified!r}{local}"


def _local_stamp(path: str) -> str:
    try:
        status = os.stat(path)
    except OSError:  # a dangling link, say: it fails at read, as a dead letter
        return ""
    return file_stamp(status.st_size, status.st_mtime_ns, status.st_ctime_ns,
                      (time.time_ns() - status.st_ctime_ns) / 1e9, status.st_ino)


def _remote_stamp(metadata) -> str:
    """The stamp of a file from Beam's ``FileMetadata``."""
    return file_stamp(metadata.size_in_bytes, metadata.last_updated_in_seconds,
                      age=time.time() - metadata.last_updated_in_seconds)


def _remote_file_stamp(path: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    listed = FileSystems.match([path])[0].metadata_list
    return next((_remote_stamp(m) for m in listed if m.path == path), "")


def file_at(path: str, stamped: bool = False) -> Optional[str]:
    """Whether a file is at ``path``, read literally (no glob): None where none is (or a
    folder is), else its stamp ("" unless ``stamped``). A dangling link is a file here: it
    fails at read, with the reason."""
    if not _is_remote(path):
        if not os.path.lexists(path) or os.path.isdir(path):
            return None
        return _local_stamp(path) if stamped else ""
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        return None
    return _remote_file_stamp(path) if stamped else ""


def _matched(pattern: str, exclude: Optional[str], stamped: bool
             ) -> Iterator[tuple[str, str]]:
    """(path, stamp) of each file ``pattern`` matches; stamps are "" unless ``stamped``."""
    if pattern.endswith("/"):
        pattern += "*"
    local = not _is_remote(pattern)
    if not any(c in pattern for c in _WILDCARDS):
        stamp = file_at(pattern, stamped)
        if stamp is not None and not _is_output(pattern, exclude):
            yield pattern, stamp
        return
    regex = pattern_regex(pattern)
    root = _listing_root(pattern)
    if local:
        rest = pattern[len(root):]
        listed = ((path, "") for path in
                  _local_files(root, None if "**" in rest else rest.count("/")))
    else:
        from apache_beam.io.filesystems import FileSystems

        # "**" lists everything below the root; the filter below then applies the pattern.
        listed = ((m.path, _remote_stamp(m))
                  for m in FileSystems.match([root + "**"])[0].metadata_list)
    for path, stamp in listed:
        if regex.match(path) and not _is_output(path, exclude):
            yield path, (_local_stamp(path) if local else stamp) if stamped else ""


def could_match_outputs(pattern: str, output_root: str) -> bool:
    """Whether ``pattern`` would match files a run writes under ``output_root`` (masks, metrics,
    summary), so that the launcher can say they are left out."""
    regex = pattern_regex(pattern)
    root = output_root.rstrip("/")
    if not _is_remote(pattern) and not _is_remote(root):
        root = os.path.abspath(root) if os.path.isabs(pattern) else os.path.relpath(root)
    samples = ("masks/k.png", "masks_raw/k.png", "summary.json", "manifest.json",
               "metrics/metrics-00000-of-00001.parquet", "date=2026-01-01/masks/k.png",
               "report/report.html", "dead_letters/dead_letters-00000-of-00001.jsonl")
    return any(regex.match(f"{root}/{sample}") for sample in samples)


def literal_name_hint(pattern: str) -> str:
    """Where a pattern that matched nothing names, read literally, a local file or folder
    whose name holds glob characters (``photos [2024]``): how to pass it, as a clause to add
    to the error; "" otherwise."""
    if not any(c in pattern for c in _WILDCARDS) or _is_remote(pattern) or \
            not os.path.exists(pattern):
        return ""
    escaped = "".join(f"[{c}]" if c in _WILDCARDS else c for c in pattern.rstrip("/"))
    glob = escaped + "/*" if os.path.isdir(pattern) else escaped
    return (f"; {pattern!r} exists, but its name holds glob characters (* ? [), read as a "
            f"pattern: pass it escaped, {glob!r}")


def folder_as_glob(pattern: str) -> str:
    """``pattern`` as a glob: a wildcard-free pattern that names a folder becomes the glob of
    every file in it (``folder/*``, as ``segbeam train --images`` and Beam's trailing ``/``
    read a folder); anything else stays as it is. On a remote filesystem, which has no
    folders, a folder is a prefix with objects below it and no object of its own name."""
    if not pattern or any(c in pattern for c in _WILDCARDS):
        return pattern
    folder = pattern.rstrip("/") or pattern
    if not _is_remote(pattern):
        return folder.rstrip("/") + "/*" if os.path.isdir(pattern) else pattern
    from apache_beam.io.filesystems import FileSystems

    try:
        if not pattern.endswith("/") and FileSystems.exists(pattern):
            return pattern
        below = FileSystems.match([folder + "/*"], limits=[1])[0].metadata_list
    except Exception:  # noqa: BLE001 - unreachable storage: the match later says what failed
        return pattern
    return folder + "/*" if below else pattern


def first_file_and_subfolder_count(pattern: str, exclude: Optional[str] = None
                                   ) -> tuple[Optional[str], int]:
    """(the first file ``pattern`` matches or None, ``files_in_subfolders(pattern)``). On
    Cloud Storage a listing of ``folder/*`` lists everything below the folder anyway, so one
    listing answers both (two cost a second pass over millions of objects)."""
    folder = _whole_folder(pattern)
    if folder is None or not _is_remote(pattern):
        return (next(iter(match_files(pattern, exclude)), None),
                files_in_subfolders(pattern, exclude))
    first, deeper = None, 0
    for path in match_files(folder + "/**", exclude):
        if "/" in path[len(folder) + 1:]:
            deeper += 1
        elif first is None:
            first = path
    return first, deeper


def files_in_subfolders(pattern: str, exclude: Optional[str] = None) -> int:
    """For a glob of every file in one folder (``folder/*``), how many files its sub-folders
    hold (that the glob leaves out); 0 for any other pattern."""
    folder = _whole_folder(pattern)
    if folder is None:
        return 0
    return sum(1 for _ in match_files(folder + "/*/**", exclude))


def _whole_folder(pattern: str) -> Optional[str]:
    """The folder of a glob of every file in one folder (``folder/*``); None for any other
    pattern."""
    folder = pattern[:-2]
    if not pattern.endswith("/*") or not folder or any(c in folder for c in _WILDCARDS):
        return None
    return folder
