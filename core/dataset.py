"""The dataset reader that ``segbeam run`` and ``segbeam train`` share: which files are inputs,
how images and masks pair, how TFRecord records become inputs, and how an input's bytes are
read and decoded. One set of rules and one set of reject reasons for both; every path goes
through Beam's FileSystems, so local and ``gs://`` data read alike.

The pipeline applies ``pair_by_stem`` per stem after a CoGroupByKey (``segbeam.transforms.read``);
``find_pairs`` applies it in memory for training.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import posixpath
import struct
from typing import Iterable, NamedTuple, Optional, Union

from segbeam.decode import DEFAULT_MAX_PIXELS, InvalidInputError, decode_pair
from segbeam.example_proto import FILENAME_FEATURE, IMAGE_FEATURE, MASK_FEATURE, decode_example
from segbeam.incremental import content_sha256
from segbeam.keys import file_stem, glob_base, key_for_path, sanitise_key, strip_extension
from segbeam.labels import MaskLabels
from segbeam.layout import matching_paths, open_file, read_bytes
from segbeam.records import DeadLetter, EncodedImage, ImageRef, SegmentationRecord

LOG = logging.getLogger(__name__)


def folder_glob(spec: str) -> str:
    """A folder (every file in it) or a glob, as a glob."""
    if any(c in spec for c in "*?["):
        return spec
    return spec.rstrip("/") + "/*"


def pair_by_stem(stem: str, images: Iterable[str], masks: Iterable[str],
                 image_base: str) -> Iterable[Union[ImageRef, DeadLetter]]:
    """Pairs the images and masks that share a file stem; yields ImageRef or DeadLetter.

    Two images that would get the same key, or a stem with several masks, cannot be resolved
    safely: the images concerned become dead letters (the first image, by path, keeps its key).
    """
    images = sorted(set(images))
    masks = sorted(set(masks))
    if len(masks) > 1:
        for path in images:
            yield DeadLetter(key_for_path(path, image_base), path, "pair",
                             f"{len(masks)} masks share the stem {stem!r} ({', '.join(masks)}); "
                             f"keep one mask per image stem")
        return
    mask = masks[0] if masks else None
    seen: dict[str, str] = {}
    for path in images:
        key = key_for_path(path, image_base)
        if key in seen:
            yield DeadLetter(key, path, "pair",
                             f"duplicate key {key!r}: {seen[key]} produces the same output "
                             f"name; rename one of the files")
            continue
        seen[key] = path
        yield ImageRef(key, path, mask)


def find_pairs(images: str, masks: Optional[str]) -> tuple[list[ImageRef], list[DeadLetter]]:
    """The files of the glob ``images``, paired with ``masks`` (a folder or glob) as the
    pipeline pairs them, in memory."""
    by_stem: dict[str, dict[str, list[str]]] = collections.defaultdict(
        lambda: {"images": [], "masks": []})
    for path in matching_paths(images):
        by_stem[file_stem(path)]["images"].append(path)
    for path in matching_paths(folder_glob(masks)) if masks else ():
        by_stem[file_stem(path)]["masks"].append(path)
    refs, dead = [], []
    for stem, grouped in sorted(by_stem.items()):
        for item in pair_by_stem(stem, grouped["images"], grouped["masks"], glob_base(images)):
            (dead if isinstance(item, DeadLetter) else refs).append(item)
    return refs, dead


def read_encoded(ref: ImageRef) -> EncodedImage:
    """Reads an image file and its mask file, and hashes their bytes."""
    image_bytes = read_bytes(ref.source)
    mask_bytes = read_bytes(ref.mask_source) if ref.mask_source else None
    return EncodedImage(ref.key, ref.source, image_bytes, mask_bytes, ref.mask_source,
                        content_sha256(image_bytes, mask_bytes))


def ensure_encoded(item: Union[ImageRef, EncodedImage]) -> EncodedImage:
    """The bytes of an input: files are read; shard records already hold theirs."""
    return item if isinstance(item, EncodedImage) else read_encoded(item)


def decode_encoded(item: EncodedImage, max_pixels: int = DEFAULT_MAX_PIXELS,
                   labels: Optional[MaskLabels] = None) -> SegmentationRecord:
    """Decodes an input; with ``labels``, its mask goes through the label map and its
    unexpected values are counted (or, with ``labels.strict``, refused)."""
    image, mask = decode_pair(item.image_bytes, item.mask_bytes, max_pixels)
    unexpected: tuple[int, tuple] = (0, ())
    if mask is not None and labels is not None:
        mask, *unexpected = labels.prepare(mask)
    return SegmentationRecord(key=item.key, source=item.source, image=image, mask=mask,
                              mask_source=item.mask_source, height=image.shape[0],
                              width=image.shape[1], has_mask=mask is not None,
                              content_sha256=item.content_sha256,
                              unexpected_pixels=unexpected[0], unexpected_values=unexpected[1])


class ShardRecord(NamedTuple):
    """One serialised Example read from a shard; ``key`` identifies it until it is parsed."""

    key: str
    source: str
    data: bytes


def shard_record(element: tuple[str, bytes]) -> ShardRecord:
    shard, data = element
    digest = hashlib.sha1(data).hexdigest()[:12]
    return ShardRecord(f"{posixpath.basename(shard)}@{digest}", shard, data)


def parse_shard_record(record: ShardRecord) -> EncodedImage:
    """A DeepLab-convention Example -> EncodedImage. The key comes from ``image/filename``
    (sanitised), else from the shard name and a content hash."""
    try:
        features = decode_example(record.data)
    except ValueError as error:
        raise InvalidInputError(f"shard record is not a tf.train.Example: {error}") from error
    encoded = features.get(IMAGE_FEATURE)
    if not encoded or not isinstance(encoded[0], bytes):
        raise InvalidInputError(f"shard record has no {IMAGE_FEATURE!r} bytes feature; found "
                                f"{sorted(features)}")
    filename = features.get(FILENAME_FEATURE)
    if filename and isinstance(filename[0], bytes) and filename[0]:
        name = filename[0].decode("utf-8", "replace")
        key = sanitise_key(strip_extension(name))
    else:
        name, key = record.key, sanitise_key(record.key.replace("@", "-"))
    masks = features.get(MASK_FEATURE)
    mask_bytes = masks[0] if masks and isinstance(masks[0], bytes) and masks[0] else None
    source = f"{record.source}#{name}"
    return EncodedImage(key, source, encoded[0], mask_bytes,
                        f"{source}:{MASK_FEATURE}" if mask_bytes else None,
                        content_sha256(encoded[0], mask_bytes))


# Training reads records on demand, in any order, so it indexes shards by byte offset.

class ShardEntry(NamedTuple):
    """One record of a TFRecord shard, located by byte offset so it is read on demand."""

    shard: str
    offset: int
    length: int


TrainingItem = Union[ImageRef, ShardEntry]


def tfrecord_entries(shard: str) -> list[ShardEntry]:
    """The records of one TFRecord file (uncompressed): each is an 8-byte length, a 4-byte
    CRC, the data and another 4-byte CRC."""
    entries = []
    with open_file(shard) as handle:
        offset = 0
        while True:
            header = handle.read(12)
            if not header:
                break
            if len(header) < 12:
                raise ValueError(f"{shard} is truncated at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            entries.append(ShardEntry(shard, offset + 12, length))
            offset += 12 + length + 4
            handle.seek(offset)
    return entries


def find_shard_entries(pattern: str) -> list[ShardEntry]:
    shards = matching_paths(pattern)
    if not shards:
        raise ValueError(f"no TFRecord shards match {pattern!r}")
    return [entry for shard in shards for entry in tfrecord_entries(shard)]


def find_training_pairs(images: str, masks: str) -> list[ImageRef]:
    """Images (a folder or glob) paired with masks (a folder or glob) as ``segbeam run`` pairs
    them. Pairs the pipeline would dead-letter are left out with a warning naming each and its
    reason; images without a mask are left out with a count, since they cannot be trained on."""
    refs, dead = find_pairs(folder_glob(images), masks)
    if not refs and not dead:
        raise ValueError(f"no images match {images!r}; pass a folder or a glob such as "
                         f"'data/train/*.png'")
    for letter in dead:
        LOG.warning("training pair skipped: %s: %s", letter.source, letter.reason)
    pairs = [ref for ref in refs if ref.mask_source]
    unmatched = [ref.source for ref in refs if not ref.mask_source]
    if unmatched:
        LOG.warning("%d of %d images have no mask in %s and are not used for training "
                    "(first: %s)", len(unmatched), len(refs), masks, unmatched[0])
    if not pairs:
        raise ValueError(f"none of the {len(refs)} images under {images!r} has a mask "
                         f"with the same file stem under {masks!r}")
    return pairs


def load_item(item: TrainingItem) -> tuple:
    """Decodes one training pair into (HxWx3 uint8 image, HxW uint8 mask)."""
    if isinstance(item, ImageRef):
        encoded = read_encoded(item)
    else:
        with open_file(item.shard) as handle:
            handle.seek(item.offset)
            data = handle.read(item.length)
        encoded = parse_shard_record(ShardRecord(f"{item.shard}@{item.offset}", item.shard,
                                                 data))
        if encoded.mask_bytes is None:
            raise InvalidInputError(f"record at byte {item.offset} of {item.shard} lacks "
                                    f"{MASK_FEATURE!r}")
    return decode_pair(encoded.image_bytes, encoded.mask_bytes)


def describe(item: TrainingItem) -> str:
    return item.source if isinstance(item, ImageRef) else f"{item.shard}@{item.offset}"
