"""Reading inputs: loose image files (with masks paired by file stem) and TFRecord shards.

Both produce ``SegmentationRecord``s with decoded arrays, plus dead letters for everything that
cannot be used. Only paths cross the mask-pairing shuffle; image bytes are read after it.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Iterable, NamedTuple, Optional, Union

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import ReadAllFromTFRecord

from segbeam.decode import DEFAULT_MAX_PIXELS, InvalidInputError, decode_pair
from segbeam.example_proto import decode_example
from segbeam.incremental import content_sha256
from segbeam.keys import file_stem, glob_base, key_for_path, sanitise_key, strip_extension
from segbeam.records import DeadLetter, EncodedImage, ImageRef, SegmentationRecord
from segbeam.transforms.safe_map import SafeMap

IMAGE_FEATURE = "image/encoded"
FILENAME_FEATURE = "image/filename"
MASK_FEATURE = "image/segmentation/class/encoded"
DEAD = "dead_letter"


def mask_glob(masks: str) -> str:
    """``--masks`` is a folder (every file in it) or a glob."""
    if any(c in masks for c in "*?["):
        return masks
    return masks.rstrip("/") + "/*"


def pair_by_stem(stem: str, grouped: dict, image_base: str) -> Iterable:
    """Pairs the images and masks that share a file stem; yields ImageRef or DeadLetter.

    Two images that would get the same key, or a stem with several masks, cannot be resolved
    safely: the images concerned become dead letters (the first image, by path, keeps its key).
    """
    images = sorted(set(grouped["images"]))
    masks = sorted(set(grouped["masks"]))
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


class _PairByStem(beam.DoFn):
    def __init__(self, image_base: str):
        self._image_base = image_base

    def process(self, element):
        stem, grouped = element
        for item in pair_by_stem(stem, grouped, self._image_base):
            if isinstance(item, DeadLetter):
                yield beam.pvalue.TaggedOutput(DEAD, item)
            else:
                yield item


class MatchImages(beam.PTransform):
    """pipeline -> (ImageRefs, dead letters): image files matching a glob, each paired with the
    mask of the same file stem where ``masks`` (a folder or glob) holds one."""

    def __init__(self, images: str, masks: Optional[str] = None):
        super().__init__()
        self._images = images
        self._masks = masks

    def expand(self, pbegin):
        images = (pbegin
                  | "MatchImageFiles" >> fileio.MatchFiles(self._images)
                  | "ImagesByStem" >> beam.Map(lambda m: (file_stem(m.path), m.path)))
        if self._masks is None:
            masks = pbegin | "NoMasks" >> beam.Create([])
        else:
            masks = (pbegin
                     | "MatchMaskFiles" >> fileio.MatchFiles(
                         mask_glob(self._masks),
                         empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
                     | "MasksByStem" >> beam.Map(lambda m: (file_stem(m.path), m.path)))
        paired = ({"images": images, "masks": masks}
                  | "JoinOnStem" >> beam.CoGroupByKey()
                  | "Pair" >> beam.ParDo(_PairByStem(glob_base(self._images))).with_outputs(
                      DEAD, main="refs"))
        return paired.refs, paired[DEAD]


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def read_encoded(ref: ImageRef) -> EncodedImage:
    """Reads an image file and its mask file, and hashes their bytes."""
    image_bytes = read_bytes(ref.source)
    mask_bytes = read_bytes(ref.mask_source) if ref.mask_source else None
    return EncodedImage(ref.key, ref.source, image_bytes, mask_bytes, ref.mask_source,
                        content_sha256(image_bytes, mask_bytes))


def ensure_encoded(item: Union[ImageRef, EncodedImage]) -> EncodedImage:
    """The bytes of an input: files are read; shard records already hold theirs."""
    return item if isinstance(item, EncodedImage) else read_encoded(item)


def decode_encoded(item: EncodedImage, max_pixels: int = DEFAULT_MAX_PIXELS
                   ) -> SegmentationRecord:
    image, mask = decode_pair(item.image_bytes, item.mask_bytes, max_pixels)
    return SegmentationRecord(key=item.key, source=item.source, image=image, mask=mask,
                              mask_source=item.mask_source, height=image.shape[0],
                              width=image.shape[1], has_mask=mask is not None,
                              content_sha256=item.content_sha256)


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


class FindFiles(beam.PTransform):
    """pipeline -> (ImageRefs, dead letters, number of inputs) for loose image files."""

    def __init__(self, images: str, masks: Optional[str]):
        super().__init__()
        self._images, self._masks = images, masks

    def expand(self, pbegin):
        refs, unpaired = pbegin | "MatchImages" >> MatchImages(self._images, self._masks)
        inputs = ((refs, unpaired) | "AllMatched" >> beam.Flatten()
                  | "CountInputs" >> beam.combiners.Count.Globally())
        return refs, unpaired, inputs


class ReadShardRecords(beam.PTransform):
    """pipeline -> (EncodedImages, dead letters, number of inputs) for TFRecord shards holding
    DeepLab-style Examples (``image/encoded``, ``image/filename``, optional
    ``image/segmentation/class/encoded``)."""

    def __init__(self, pattern: str):
        super().__init__()
        self._pattern = pattern

    def expand(self, pbegin):
        raw = (pbegin
               | "Pattern" >> beam.Create([self._pattern])
               | "ReadTFRecords" >> ReadAllFromTFRecord(with_filename=True)
               | "Identify" >> beam.Map(shard_record))
        encoded, unparsable = raw | "Parse" >> SafeMap("parse", parse_shard_record)
        inputs = raw | "CountInputs" >> beam.combiners.Count.Globally()
        return encoded, unparsable, inputs


class ReadAndDecode(beam.PTransform):
    """ImageRefs or EncodedImages -> (decoded records, dead letters): files are read (stage
    ``read``), then images and masks decoded (stage ``decode``)."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__()
        self._max_pixels = max_pixels

    def expand(self, items):
        encoded, unreadable = items | "Read" >> SafeMap("read", ensure_encoded)
        records, undecodable = encoded | "Decode" >> SafeMap("decode", decode_encoded,
                                                             self._max_pixels)
        return records, (unreadable, undecodable) | "DeadLetters" >> beam.Flatten()


class ReadFiles(beam.PTransform):
    """pipeline -> (records, dead letters, number of inputs) for loose image files."""

    def __init__(self, images: str, masks: Optional[str], max_pixels: int):
        super().__init__()
        self._images, self._masks, self._max_pixels = images, masks, max_pixels

    def expand(self, pbegin):
        refs, unpaired, inputs = pbegin | "Find" >> FindFiles(self._images, self._masks)
        records, unusable = refs | "ReadAndDecode" >> ReadAndDecode(self._max_pixels)
        dead = (unpaired, unusable) | "DeadLetters" >> beam.Flatten()
        return records, dead, inputs


class ReadShards(beam.PTransform):
    """pipeline -> (records, dead letters, number of inputs) for TFRecord shards."""

    def __init__(self, pattern: str, max_pixels: int):
        super().__init__()
        self._pattern, self._max_pixels = pattern, max_pixels

    def expand(self, pbegin):
        encoded, unparsable, inputs = pbegin | "Records" >> ReadShardRecords(self._pattern)
        records, unusable = encoded | "ReadAndDecode" >> ReadAndDecode(self._max_pixels)
        dead = (unparsable, unusable) | "DeadLetters" >> beam.Flatten()
        return records, dead, inputs
