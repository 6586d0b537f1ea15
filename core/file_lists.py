"""Inputs that a list file names: one image path per line, as teams export them from a database
or keep them beside a dataset (``val.txt``), instead of a glob.

A line is a path relative to the list's base folder (``--input_base``; by default the folder
of the list, or of the glob of lists), or an absolute path or URL. Blank lines and lines that
start with ``#`` name nothing. Every other line is an input: it ends as an output or as a dead
letter that names its list and line, never dropped. A path is read literally (no glob). Keys
are paths below the base, as they are below a glob's base, so a listed path must lie below it
(``segbeam train``, which names no output after its inputs, takes any: ``listed_files``).
A dataset's split file names images by ID (PASCAL VOC's ``val.txt``: ``2007_000033``): a
suffix (``--list_suffix .jpg``) is then appended to each line before it is read as a path.
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterable, Iterator, NamedTuple, Optional

from segbeam.containers import IMAGE_EXTENSIONS
from segbeam.keys import glob_base, key_for_path, sanitise_key, strip_extension
from segbeam.layout import open_file
from segbeam.matching import file_at, match_files
from segbeam.records import DeadLetter, one_line_reason

LIST_SUFFIX = ".txt"
STAGE = "list"  # the stage of a dead letter for a line that names no usable file


class ListedLine(NamedTuple):
    """A line of a list that names something: ``path``, resolved against the base, or None
    where the line could not be read; ``problem`` says why the line is no input ("" if it
    is one)."""

    list_path: str
    number: int
    path: Optional[str]
    problem: str = ""

    @property
    def where(self) -> str:
        return f"line {self.number} of {self.list_path}"


def is_list(pattern: str) -> bool:
    """Whether ``--input`` names list files, by their suffix."""
    return pattern.lower().endswith(LIST_SUFFIX)


def default_base(lists: str) -> str:
    """The folder relative lines are read against: the list's own folder (a glob of lists:
    the folder the glob starts in)."""
    return glob_base(lists)


def as_base(folder: str) -> str:
    """A folder as a base: with one trailing slash, as ``glob_base`` gives them."""
    return folder.rstrip("/") + "/"


def _normal(path: str) -> str:
    """``path`` without ``.`` and ``..`` segments; a URL keeps its scheme and any ``//`` in
    an object name (Cloud Storage allows one)."""
    if "://" not in path:
        return posixpath.normpath(path)
    scheme, rest = path.split("://", 1)
    if not {".", ".."} & set(rest.split("/")):
        return path
    return f"{scheme}://{posixpath.normpath(rest)}"


def resolve(entry: str, base: str, suffix: str = "") -> str:
    """The path a list's line names, ``suffix`` appended: absolute paths and URLs as they
    are, any other below ``base``."""
    entry += suffix
    if "://" in entry or entry.startswith("/"):
        return _normal(entry)
    return _normal(base + entry)


def read_lines(lines: Iterable[bytes], list_path: str, base: str, suffix: str = ""
               ) -> Iterator[ListedLine]:
    """The lines of a list (its raw lines, as a binary file gives them) that name something,
    with ``suffix`` appended and resolved against ``base``; a line that is not UTF-8, or
    whose path lies outside the base (its key would be relative to nothing), comes with its
    problem."""
    for number, raw in enumerate(lines, 1):
        try:
            entry = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            yield ListedLine(list_path, number, None, "the line is not valid UTF-8; save the "
                             "list as UTF-8")
            continue
        if number == 1:
            entry = entry.lstrip("\ufeff")
        if "\x00" in entry:
            yield ListedLine(list_path, number, None, "the line holds a NUL character (a "
                             "UTF-16 list?); save the list as UTF-8")
            continue
        if not entry or entry.startswith("#"):
            continue
        path = resolve(entry, base, suffix)
        outside = "" if path.startswith(base) else (
            f"{path} lies outside {base}, the folder keys are taken relative to; pass "
            f"--input_base with a folder above every listed path")
        yield ListedLine(list_path, number, path, outside)


def missing_reason(line: ListedLine) -> str:
    """Why a listed path names no file, with what the line may have meant."""
    if "://" not in line.path and os.path.isdir(line.path):
        return f"{line.path} is a folder ({line.where}); a list names files"
    hint = ""
    if any(c in line.path for c in "*?["):
        hint = "; a list is not globbed: name each file"
    elif "\t" in line.path or "," in line.path:
        hint = "; a list names one path per line, with no other columns"
    elif "." not in posixpath.basename(line.path):
        hint = f"; {ID_HINT}"
    return f"no file at {line.path} ({line.where}){hint}"


ID_HINT = ("the line names no extension: if the list names images by ID (a dataset's split "
           "file), pass --list_suffix with their extension (--list_suffix .jpg)")


def id_suffix(path: str) -> Optional[str]:
    """Where ``path`` (a listed path with no file) has no extension and ``path.EXT`` is an
    image file, ``.EXT``: the list names images by ID. None otherwise."""
    if "." in posixpath.basename(path):
        return None
    extensions = IMAGE_EXTENSIONS + tuple(extension.upper() for extension in IMAGE_EXTENSIONS)
    return next((f".{extension}" for extension in extensions
                 if file_at(f"{path}.{extension}") is not None), None)


def repeated_reason(line: ListedLine, first: ListedLine) -> str:
    return (f"{line.where} repeats {first.where} ({line.path}); the file is read once, for "
            f"the first")


def dead_letter_key(line: ListedLine, base: str) -> str:
    """The key of a line's dead letter: its path's, or, for a line that could not be read,
    the list's stem and the line number."""
    if line.path is not None and line.path.startswith(base):
        return key_for_path(line.path, base)
    return sanitise_key(f"{strip_extension(posixpath.basename(line.list_path))}-line-"
                        f"{line.number}")


def unreadable_list(list_path: str, lines_read: int, error: BaseException) -> DeadLetter:
    """The dead letter of a list that could not be read (to its end): the list is an input
    whose lines, past those read, are unknown."""
    read = f"after line {lines_read}; the lines before went on" if lines_read else \
        "none of its lines was read"
    return DeadLetter(sanitise_key(strip_extension(posixpath.basename(list_path))), list_path,
                      STAGE, f"the list cannot be read ({one_line_reason(error)}): {read}; "
                      f"check it and run again")


def listed_files(lists: str, base: str, suffix: str = "") -> tuple[list[str], list[str]]:
    """In memory (``segbeam train``): (the files that the lists matching ``lists`` name, each
    once, in list order, ``suffix`` appended to each line; why each other line, or list,
    names none). A path outside ``base`` is kept: no output is named after it, and it pairs
    with its mask by file stem."""
    paths: list[str] = []
    first: dict[str, ListedLine] = {}
    problems: list[str] = []
    for list_path in match_files(lists):
        read = 0
        try:
            with open_file(list_path) as handle:
                for line in read_lines(handle, list_path, base, suffix):
                    read = line.number
                    if line.path is None:
                        problems.append(f"{line.where}: {line.problem}")
                    elif line.path in first:
                        problems.append(repeated_reason(line, first[line.path]))
                    elif file_at(line.path) is None:
                        first[line.path] = line
                        problems.append(missing_reason(line))
                    else:
                        first[line.path] = line
                        paths.append(line.path)
        except OSError as error:
            problems.append(unreadable_list(list_path, read, error).reason)
    return paths, problems
