"""What ``segbeam train`` reads: image files paired as ``segbeam run`` pairs them, and the
records of TFRecord, Parquet and WebDataset shards, indexed up front (by byte offset, row
group or member range) and read on demand, in any order, by the training data sequence.
"""

from __future__ import annotations

import collections
import functools
import logging
import tarfile
from typing import NamedTuple, Optional, Union

from segbeam.containers import IMAGE_EXTENSIONS, CheckedTarInfo, ContainerFields, \
    check_parquet_columns, container_format, member_key, parquet_footer, parquet_rows, \
    parse_parquet_row
from segbeam.dataset import Naming, ShardRecord, find_pairs, parse_shard_record, read_encoded
from segbeam.decode import DecodedInput, InvalidInputError, decode_input
from segbeam.file_lists import default_base, is_list, listed_files
from segbeam.layout import matching_paths, open_file
from segbeam.matching import folder_as_glob
from segbeam.records import ImageRef
from segbeam.tfrecord import FOOTER_BYTES, DamagedTFRecord, RecordSpan, check_record, \
    record_spans

LOG = logging.getLogger(__name__)


class ShardEntry(NamedTuple):
    """One record of a TFRecord shard, located by byte offset so it is read on demand."""

    shard: str
    offset: int  # of the record's data
    length: int
    index: int  # its place in the shard
    fields: ContainerFields = ContainerFields()  # the Example's feature names


class ParquetEntry(NamedTuple):
    """One row of a Parquet shard: its row group and its index in it."""

    shard: str
    row_group: int
    row: int
    fields: ContainerFields


class TarEntry(NamedTuple):
    """One WebDataset sample of an uncompressed tar shard, by its members' byte ranges."""

    shard: str
    key: str
    image: tuple[int, int]  # (offset, size)
    mask: tuple[int, int]


TrainingItem = Union[ImageRef, ShardEntry, ParquetEntry, TarEntry]


def tfrecord_entries(shard: str, fields: ContainerFields = ContainerFields()
                     ) -> list[ShardEntry]:
    """The records of one uncompressed TFRecord file, each header checked against its CRC.
    Where the file breaks off or a header is damaged, the records before it, with a
    warning."""
    entries: list[ShardEntry] = []
    with open_file(shard) as handle:
        handle.seek(0, 2)
        size = handle.tell()
        try:
            for span in record_spans(handle, size):
                entries.append(ShardEntry(shard, span.offset, span.length, len(entries),
                                          fields))
        except DamagedTFRecord as error:
            LOG.warning("training: %s is damaged: %s; the %d records before it are used",
                        shard, error, len(entries))
    return entries


def parquet_entries(shard: str, fields: ContainerFields) -> list[ParquetEntry]:
    """The rows of a Parquet shard, by row group; a shard whose footer cannot be read is left
    out with a warning."""
    try:
        names, group_rows = parquet_footer(shard)
    except (OSError, ValueError) as error:
        LOG.warning("training: %s is not a readable Parquet shard and is left out (%s)", shard,
                    error)
        return []
    check_parquet_columns(names, fields, shard)
    return [ParquetEntry(shard, group, row, fields)
            for group, rows in enumerate(group_rows) for row in range(rows)]


def tar_entries(shard: str, mask_ext: str) -> list[TarEntry]:
    """The samples of an uncompressed tar shard that have an image and a mask member; where a
    member header is damaged, those before it, with a warning."""
    samples: dict[str, dict[str, tuple[int, int]]] = collections.defaultdict(dict)
    count = 0
    try:
        with open_file(shard) as handle, tarfile.open(fileobj=handle, mode="r:",
                                                      tarinfo=CheckedTarInfo) as archive:
            for count, member in enumerate(archive, 1):
                if member.isfile():
                    key, extension = member_key(member.name)
                    samples[key][extension] = (member.offset_data, member.size)
    except tarfile.TarError as error:
        LOG.warning("training: %s is damaged after %d members (%s); the samples before it "
                    "are used", shard, count, error)
    entries, unmasked = [], 0
    for key, members in samples.items():
        images = [e for e in members if e != mask_ext and
                  e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS]
        if len(images) == 1 and mask_ext in members:
            entries.append(TarEntry(shard, key, members[images[0]], members[mask_ext]))
        else:
            unmasked += 1
    if unmasked:
        LOG.warning("%d samples of %s lack one image or a %r mask and are not used for "
                    "training", unmasked, shard, mask_ext)
    return entries


def find_shard_entries(pattern: str, fields: ContainerFields = ContainerFields()) -> list:
    """The training records of TFRecord, Parquet (with ``fields.mask_column``) or WebDataset
    (uncompressed ``.tar``, with ``fields.mask_ext``) shards. A shard that cannot be read, or
    the part of one after damage, is left out with a warning; none left is an error."""
    shards = matching_paths(pattern)
    kind = container_format(pattern) or "TFRecord"
    if not shards:
        raise ValueError(f"no {kind} shards match {pattern!r}")
    if kind == "parquet":
        if not fields.mask_column:
            raise ValueError("training on Parquet shards needs --mask_column")
        entries = [entry for shard in shards for entry in parquet_entries(shard, fields)]
    elif kind == "webdataset":
        if not fields.mask_ext or not pattern.endswith(".tar"):
            raise ValueError("training on WebDataset shards needs --mask_ext and uncompressed "
                             ".tar shards (samples are read by byte offset)")
        entries = [entry for shard in shards for entry in tar_entries(shard, fields.mask_ext)]
    else:
        _refuse_compressed(shards)
        entries = [entry for shard in shards for entry in tfrecord_entries(shard, fields)]
    if not entries:
        name = {"parquet": "Parquet", "webdataset": "WebDataset"}.get(kind, kind)
        many = len(shards) != 1
        raise ValueError(f"the {len(shards)} {name} shard{'s' * many} matching {pattern!r} "
                         f"hold{'' if many else 's'} no training record that can be read (the "
                         f"warnings above say why)")
    return entries


def _refuse_compressed(shards: list[str]) -> None:
    from apache_beam.io.filesystem import CompressionTypes

    compressed = [shard for shard in shards if CompressionTypes.detect_compression_type(shard)
                  != CompressionTypes.UNCOMPRESSED]
    if compressed:
        raise ValueError(f"training reads uncompressed TFRecord shards (records are read by "
                         f"byte offset); {compressed[0]} is compressed: decompress it first")


@functools.lru_cache(maxsize=4)
def _row_group(shard: str, group: int, columns: tuple):
    import pyarrow.parquet as pq

    with open_file(shard) as handle:
        return pq.ParquetFile(handle).read_row_group(group, list(columns))


def _read_range(shard: str, span: tuple[int, int]) -> bytes:
    with open_file(shard) as handle:
        handle.seek(span[0])
        return handle.read(span[1])


def find_items(images: Optional[str], masks: Optional[str], shards: Optional[str],
               containers: ContainerFields, naming: Naming, list_base: Optional[str] = None,
               list_suffix: str = "") -> list:
    """The training items that ``segbeam train``'s flags name: shard entries, or image/mask
    pairs (``find_training_pairs``)."""
    if shards:
        if images or masks:
            raise ValueError("pass --shards or --images/--masks, not both (one of them would "
                             "be left out)")
        return find_shard_entries(shards, containers)
    if not images or not masks:
        raise ValueError("training needs --images and --masks (folders or globs), or --shards")
    return find_training_pairs(images, masks, naming, list_base, list_suffix)


def find_training_pairs(images: str, masks: str, naming: Naming = Naming(),
                        list_base: Optional[str] = None, list_suffix: str = ""
                        ) -> list[ImageRef]:
    """Images (a folder or glob) paired with masks (a folder or glob) as ``segbeam run`` pairs
    them. Pairs the pipeline would dead-letter are left out with a warning naming each and its
    reason; images without a mask are left out with a count, since they cannot be trained on.
    ``images`` may name lists of image paths (``.txt``), read against ``list_base`` (by
    default their folder) with ``list_suffix`` appended to each line, whose lines that name
    no file are left out with a warning."""
    listed = None
    if is_list(images):
        base = list_base or default_base(images)
        paths, problems = listed_files(images, base, list_suffix)
        for problem in problems:
            LOG.warning("training image skipped: %s", problem)
        listed = (paths, base)
    refs, dead, _ = find_pairs(folder_as_glob(images), masks, naming=naming, listed=listed)
    if not refs and not dead:
        raise ValueError(f"no line of the list {images!r} names a file (the warnings above say "
                         f"why)" if listed else f"no images match {images!r}; pass a folder "
                         f"or a glob such as 'data/train/*.png'")
    for letter in dead:
        LOG.warning("training pair skipped: %s: %s", letter.source, letter.reason)
    pairs = [ref for ref in refs if ref.mask_source]
    unmatched = [ref.source for ref in refs if not ref.mask_source]
    if unmatched:
        LOG.warning("%d of %d images have no mask in %s and are not used for training "
                    "(first: %s)", len(unmatched), len(refs), masks, unmatched[0])
    if not pairs:
        raise ValueError(f"none of the {len(refs)} images under {images!r} has a mask "
                         f"with the same file stem under {masks!r}; where the masks' names "
                         f"add a suffix (x_mask.png for x.jpg), pass --mask_suffix _mask")
    return pairs


def load_item(item: TrainingItem, colour_masks: bool = False) -> tuple:
    """Decodes one training pair into (HxWx3 uint8 image, HxW uint8 mask); with
    ``colour_masks``, an RGB mask stays HxWx3 colours (``MaskLabels.prepare`` reads them)."""
    return decode_item(item, colour_masks)[:2]


def decode_item(item: TrainingItem, colour_masks: bool = False) -> DecodedInput:
    """``load_item`` as ``decode.decode_input`` gives it: also the image file's frame count
    and a 16-bit image's peak value."""
    if isinstance(item, ImageRef):
        encoded = read_encoded(item)
    elif isinstance(item, ParquetEntry):
        fields = item.fields
        columns = tuple(c for c in (fields.image_column, fields.mask_column, fields.key_column)
                        if c)
        table = _row_group(item.shard, item.row_group, columns).slice(item.row, 1)
        encoded = parse_parquet_row(next(parquet_rows(item.shard, table, fields)), fields)
        if encoded.mask_bytes is None:
            raise InvalidInputError(f"row {item.row} of row group {item.row_group} of "
                                    f"{item.shard} has no mask")
    elif isinstance(item, TarEntry):
        return decode_input(_read_range(item.shard, item.image),
                            _read_range(item.shard, item.mask), colour_masks=colour_masks)
    else:
        with open_file(item.shard) as handle:
            handle.seek(item.offset)
            data = check_record(handle.read(item.length + FOOTER_BYTES),
                                RecordSpan(item.offset, item.length), item.index)
        encoded = parse_shard_record(ShardRecord(f"{item.shard}@{item.offset}", item.shard,
                                                 data), item.fields)
        if encoded.mask_bytes is None:
            raise InvalidInputError(f"record at byte {item.offset} of {item.shard} lacks "
                                    f"{item.fields.mask_feature!r}")
    return decode_input(encoded.image_bytes, encoded.mask_bytes, colour_masks=colour_masks)


def describe(item: TrainingItem) -> str:
    if isinstance(item, ImageRef):
        return item.source
    if isinstance(item, ParquetEntry):
        return f"{item.shard} row group {item.row_group} row {item.row}"
    if isinstance(item, TarEntry):
        return f"{item.shard}#{item.key}"
    return f"{item.shard}@{item.offset}"
