"""Reading the image paths that list files name (``segbeam.file_lists``) in Beam: each line
ends as a file to pair with its mask, or as a dead letter that names its list and line."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from segbeam.file_lists import STAGE, ListedLine, dead_letter_key, missing_reason, \
    read_lines, repeated_reason, unreadable_list
from segbeam.matching import file_at, match_files
from segbeam.records import DeadLetter

DEAD = "dead_letter"


def _lines_of(list_path: str, base: str, suffix: str):
    """The lines of one list that name a path, keyed by it; a line with a problem (not UTF-8,
    outside the base) is a dead letter, and so is a list that cannot be read (a dangling
    link in a glob of lists, a read that fails), named with the lines read before."""
    read = 0
    try:
        with FileSystems.open(list_path) as handle:
            for line in read_lines(handle, list_path, base, suffix):
                read = line.number
                if line.problem:
                    yield beam.pvalue.TaggedOutput(DEAD, _dead(line, base, line.problem))
                else:
                    yield line.path, line
    except Exception as error:  # noqa: BLE001 - the list is an input: a dead letter
        yield beam.pvalue.TaggedOutput(DEAD, unreadable_list(list_path, read, error))


def _dead(line: ListedLine, base: str, reason: str) -> DeadLetter:
    return DeadLetter(dead_letter_key(line, base), line.path or line.list_path, STAGE, reason)


def _first_listing(keyed, base: str):
    """The first line (by list and number) that names a path goes on; each other line naming
    it is a dead letter, so that lines and outcomes add up."""
    _, lines = keyed
    first, *again = sorted(lines, key=lambda line: (line.list_path, line.number))
    yield first
    for line in again:
        yield beam.pvalue.TaggedOutput(DEAD, _dead(line, base, repeated_reason(line, first)))


def _found(line: ListedLine, base: str, stamped: bool):
    """(path, stamp) of a listed file that exists; a dead letter where none does."""
    stamp = file_at(line.path, stamped)
    if stamp is None:
        yield beam.pvalue.TaggedOutput(DEAD, _dead(line, base, missing_reason(line)))
    else:
        yield line.path, stamp


class ListedFiles(beam.PTransform):
    """pipeline -> ((path, stamp) of each file the lists matching ``lists`` name, dead letters
    for their other lines). Lines, ``suffix`` appended, are resolved against ``base``; stamps
    are "" unless ``stamped`` (``--skip_existing``). The lists are read one per worker; the
    existence checks (one listing call each on Cloud Storage) are spread after the shuffle
    that finds repeats."""

    def __init__(self, lists: str, base: str, stamped: bool = False, suffix: str = ""):
        super().__init__()
        self._lists, self._base, self._stamped = lists, base, stamped
        self._suffix = suffix

    def expand(self, pbegin):
        lines = (pbegin
                 | "ListGlob" >> beam.Create([self._lists])
                 | "MatchLists" >> beam.FlatMap(match_files)
                 | "SpreadLists" >> beam.Reshuffle()
                 | "ReadLists" >> beam.FlatMap(_lines_of, self._base, self._suffix
                                               ).with_outputs(DEAD, main="named"))
        first = (lines.named
                 | "ByPath" >> beam.GroupByKey()
                 | "FirstListing" >> beam.FlatMap(_first_listing, self._base
                                                  ).with_outputs(DEAD, main="first"))
        found = first.first | "CheckFiles" >> beam.FlatMap(
            _found, self._base, self._stamped).with_outputs(DEAD, main="files")
        dead = (lines[DEAD], first[DEAD], found[DEAD]) | "ListDeadLetters" >> beam.Flatten()
        return found.files, dead
