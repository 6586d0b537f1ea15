"""Images (and masks) inside containers: Parquet shards in the layout of the Hugging Face
``datasets`` library, and WebDataset tar shards. Plain functions on file handles and Arrow
tables, so that ``segbeam run`` (``segbeam.transforms.containers``) and ``segbeam train`` read
them alike.

Parquet: one row per image; the image column holds either ``datasets``' ``Image`` struct
(``{bytes, path}``) or plain binary; an optional mask column of the same kind; an optional key
column. WebDataset: tar members grouped by key (the member name up to the first dot of its base
name, ``sub/a.jpg`` -> ``sub/a``); the image is the member with an image extension, the mask the
member whose extension is ``mask_ext`` (``seg.png`` for ``sub/a.seg.png``).

Keys follow the loose-file rule where they can: the stored path without its extension, so the
same images as files, Parquet rows or tar members get the same keys and the same outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
import tarfile
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Union

from segbeam.config import Effect, setting
from segbeam.decode import InvalidInputError
from segbeam.example_proto import FILENAME_FEATURE, IMAGE_FEATURE, MASK_FEATURE
from segbeam.incremental import content_sha256
from segbeam.keys import sanitise_key, strip_extension
from segbeam.records import DeadLetter, EncodedImage

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm")
PARQUET_SUFFIXES = (".parquet", ".pq")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclasses.dataclass(frozen=True)
class ContainerFields:
    """Where a container keeps its images: ``image_column`` / ``mask_column`` / ``key_column``
    (Parquet), ``mask_ext`` (WebDataset: the extension of the mask member, e.g. ``seg.png``),
    ``image_feature`` / ``mask_feature`` / ``key_feature`` (the features of a TFRecord shard's
    Examples; DeepLab's names by default)."""

    image_column: str = setting(Effect.NONE, "image")
    mask_column: Optional[str] = setting(Effect.NONE, None)
    key_column: Optional[str] = setting(Effect.NONE, None)
    mask_ext: Optional[str] = setting(Effect.NONE, None)
    image_feature: str = setting(Effect.NONE, IMAGE_FEATURE)
    mask_feature: str = setting(Effect.NONE, MASK_FEATURE)
    key_feature: str = setting(Effect.NONE, FILENAME_FEATURE)


def container_format(pattern: str) -> Optional[str]:
    """``parquet`` or ``webdataset`` from a glob's file suffix; None for anything else."""
    lowered = pattern.lower()
    if lowered.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lowered.endswith(TAR_SUFFIXES):
        return "webdataset"
    return None


def shard_format(pattern: str) -> Optional[str]:
    """``tfrecord``, ``parquet`` or ``webdataset`` as a glob's (or file's) name says; None for
    anything else (images)."""
    if any(suffix in pattern.lower() for suffix in (".tfrecord", ".tfrec")):
        return "tfrecord"
    return container_format(pattern)


def _stored_path_key(path: str) -> str:
    """The key a stored file name gives: a relative path keeps its folders; an absolute one
    (the machine the dataset was made on) keeps only its base name."""
    return strip_extension(posixpath.basename(path) if path.startswith("/") else path)


def column_key(value: str) -> str:
    """A --key_column value as a key: a file name there (``0001.jpg``, as datasets keep
    them) loses its image extension, as the same file's key does; other values stay."""
    extension = value.rsplit(".", 1)[-1].lower() if "." in posixpath.basename(value) else ""
    return strip_extension(value) if extension in IMAGE_EXTENSIONS else value


class ParquetRow(NamedTuple):
    """One row of a Parquet shard, as read (before its bytes are checked)."""

    key: str
    source: str
    values: dict


def _cell_bytes(value: Any, column: str) -> tuple[Optional[bytes], Optional[str]]:
    """(bytes, stored path) of an image cell: ``datasets``' struct or plain binary."""
    if value is None:
        return None, None
    if isinstance(value, dict):
        return value.get("bytes"), value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    raise InvalidInputError(f"column {column!r} holds {type(value).__name__}, not image bytes "
                            f"or a {{bytes, path}} struct")


def parquet_rows(shard: str, table, fields: ContainerFields) -> Iterator[ParquetRow]:
    """The rows of one row group (an Arrow table), each named provisionally by its key column,
    its stored image path, or the shard and a hash of its image bytes."""
    for values in table.to_pylist():
        key = values.get(fields.key_column) if fields.key_column else None
        if key and _is_name(key):
            key = column_key(str(key))
        else:  # a value that is no name is refused in parse_parquet_row, under this key
            cell = values.get(fields.image_column)
            path = cell.get("path") if isinstance(cell, dict) else None
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            digest = hashlib.sha1(data if isinstance(data, bytes) else b"").hexdigest()[:12]
            key = _stored_path_key(path) if path else f"{posixpath.basename(shard)}@{digest}"
        yield ParquetRow(str(key), f"{shard}#{key}", values)


def _is_name(value: Any) -> bool:
    """Whether a --key_column value can name outputs: a string or an integer (a float's
    spelling is not stable, and bytes or structs are no names)."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def parse_parquet_row(row: ParquetRow, fields: ContainerFields) -> EncodedImage:
    """A Parquet row -> EncodedImage; a row without image bytes, or whose --key_column value
    is no name, is refused with the reason."""
    named = row.values.get(fields.key_column) if fields.key_column else None
    if named is not None and named != "" and not _is_name(named):
        raise InvalidInputError(f"row {row.key!r}: its --key_column {fields.key_column!r} "
                                f"holds {type(named).__name__}, not a name; name a column "
                                f"of strings or integers")
    image, path = _cell_bytes(row.values.get(fields.image_column), fields.image_column)
    if not image:
        raise InvalidInputError(f"row {row.key!r} has no bytes in column "
                                f"{fields.image_column!r}{_path_only(path)}")
    mask = None
    if fields.mask_column:
        mask, path = _cell_bytes(row.values.get(fields.mask_column), fields.mask_column)
        if not mask and (path or mask is not None):  # a mask by path, or empty: scoring
            # nothing would hide it
            raise InvalidInputError(f"row {row.key!r} has no bytes in mask column "
                                    f"{fields.mask_column!r}{_path_only(path)}")
    key = sanitise_key(row.key)
    return EncodedImage(key, row.source, image, mask or None,
                        f"{row.source}:{fields.mask_column}" if mask else None,
                        content_sha256(image, mask or None))


def _path_only(path: Optional[str]) -> str:
    """Why a ``datasets`` struct holds a path and no bytes, and what to do, or nothing."""
    if not path:
        return ""
    return (f", only the path {path!r}: the dataset was saved without embedding its files; "
            f"save it with the images (and masks) embedded, as push_to_hub does, or read the "
            f"files themselves")


def parquet_columns(shard: str) -> list[str]:
    """The column names in a Parquet shard's footer (raises where the footer cannot be read)."""
    return parquet_footer(shard)[0]


def parquet_footer(shard: str) -> tuple[list[str], list[int]]:
    """A Parquet shard's column names and the row count of each of its row groups, from its
    footer (raises where the footer cannot be read)."""
    import pyarrow.parquet as pq

    from segbeam.layout import open_file

    with open_file(shard) as handle:
        parquet = pq.ParquetFile(handle)
        return (parquet.schema_arrow.names,
                [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])


def read_row_group(shard: str, group: int, columns: list[str]):
    """One row group of a Parquet shard, only ``columns``, as an Arrow table."""
    import pyarrow.parquet as pq

    from segbeam.layout import open_file

    with open_file(shard) as handle:
        return pq.ParquetFile(handle).read_row_group(group, columns=columns)


def read_parquet_columns(path: str, wanted: Sequence[str]) -> Iterator[dict]:
    """The rows of a Parquet file as dicts of those of ``wanted`` columns it has (a file
    written before a column existed lacks it), read in batches: only those columns' bytes are
    fetched."""
    import pyarrow.parquet as pq

    from segbeam.layout import open_file

    with open_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        columns = [name for name in wanted if name in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(columns=columns):
            yield from batch.to_pylist()


def shard_fields(input_format: str, shard: str) -> list[str]:
    """What a shard offers the field flags: a Parquet shard's columns, or the features of a
    TFRecord shard's first record (raises where they cannot be read)."""
    if input_format == "parquet":
        return parquet_columns(shard)
    from segbeam.example_proto import decode_example
    from segbeam.layout import open_file
    from segbeam.tfrecord import read_records

    with open_file(shard, decompress=True) as handle:
        return sorted(decode_example(next(read_records(handle))))


def check_shard_fields(input_format: str, found: list[str], fields: ContainerFields,
                       shard: str) -> None:
    """Raises ValueError naming what the shard has where a column flag names no column of a
    Parquet shard, or where a TFRecord shard's first record lacks the image feature or a key
    feature given by flag. (A mask feature may be absent from a record: an image without a
    mask; where none has it, the run says that nothing was scored.)"""
    if input_format == "parquet":
        check_parquet_columns(found, fields, shard)
        return
    wanted = [(fields.image_feature, "--image_feature")]
    if fields.key_feature != FILENAME_FEATURE:
        wanted.append((fields.key_feature, "--key_feature"))
    for name, flag in wanted:
        if name not in found:
            raise ValueError(f"the first record of {shard} has no feature {name!r} ({flag}); "
                             f"its features are {', '.join(found)}")


def check_parquet_columns(schema_names: list[str], fields: ContainerFields, shard: str) -> None:
    """Raises ValueError naming the columns when a configured column is missing."""
    wanted = [c for c in (fields.image_column, fields.mask_column, fields.key_column) if c]
    missing = [c for c in wanted if c not in schema_names]
    if missing:
        flags = {fields.image_column: "--image_column", fields.mask_column: "--mask_column",
                 fields.key_column: "--key_column"}
        raise ValueError(f"{shard} has no column {missing[0]!r} ({flags[missing[0]]}); its "
                         f"columns are {', '.join(schema_names)}")


def member_key(name: str) -> tuple[str, str]:
    """``sub/a.seg.png`` -> (``sub/a``, ``seg.png``): WebDataset's key and extension."""
    folder, base = posixpath.split(name)
    stem, dot, extension = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, extension.lower() if dot else ""


def _sample(shard: str, key: str, members: dict[str, bytes],
            mask_ext: Optional[str]) -> Union[EncodedImage, DeadLetter]:
    source = f"{shard}#{key}"
    mask_ext = mask_ext.lower().lstrip(".") if mask_ext else None
    images = sorted(ext for ext in members
                    if ext != mask_ext and ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS)
    if len(images) != 1:
        found = ", ".join(sorted(members)) or "nothing"
        problem = "no image member" if not images else "several image members"
        hint = "; name the mask's extension with --mask_ext" if len(images) > 1 else ""
        return DeadLetter(sanitise_key(key), source, "parse",
                          f"sample {key!r} has {problem} (found {found}){hint}")
    image = members[images[0]]
    mask = members.get(mask_ext) if mask_ext else None
    return EncodedImage(sanitise_key(key), source, image, mask,
                        f"{source}.{mask_ext}" if mask is not None else None,
                        content_sha256(image, mask))


class DamagedTarHeader(tarfile.TarError):
    """A member header inside a tar shard that fails its checksum or breaks off."""


class CheckedTarInfo(tarfile.TarInfo):
    """Tells a damaged member header from the end of the archive: ``tarfile`` takes a header
    that fails its checksum, or breaks off, past the first member for the end, and ends the
    archive there without a word, losing every member after it."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        try:
            return super().frombuf(buf, encoding, errors)
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as error:
            raise DamagedTarHeader(f"a member header is damaged ({error})") from error


def webdataset_samples(shard: str, handle, mask_ext: Optional[str]
                       ) -> Iterator[Union[EncodedImage, DeadLetter]]:
    """The samples of a tar shard, streamed member by member (plain or gzip-compressed). A
    shard that breaks off, or has a damaged member header, yields a dead letter naming the
    shard and the last good sample."""
    key, members, last = None, {}, None
    try:
        with tarfile.open(fileobj=handle, mode="r|*", tarinfo=CheckedTarInfo) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                sample_key, extension = member_key(member.name)
                if sample_key != key and key is not None:
                    yield _sample(shard, key, members, mask_ext)
                    last, members = key, {}
                key = sample_key
                members[extension] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        after = f"after sample {last!r}" if last else "before its first sample"
        yield DeadLetter(sanitise_key(f"{posixpath.basename(shard)}-rest"), shard, "read",
                         f"the shard breaks off or is damaged {after} "
                         f"({type(error).__name__}: {error}); the samples after it are lost")
        return
    if key is not None:
        yield _sample(shard, key, members, mask_ext)
