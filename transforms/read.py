"""Reading inputs in Beam: loose image files (with masks paired by file stem) and TFRecord
shards, thin shells over ``segbeam.dataset``.

Both produce ``SegmentationRecord``s with decoded arrays, plus dead letters for everything that
cannot be used. Only paths cross the mask-pairing shuffle; image bytes are read after it.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.tfrecordio import ReadAllFromTFRecord

from segbeam.dataset import decode_encoded, ensure_encoded, folder_glob, pair_by_stem, \
    parse_shard_record, shard_record
from segbeam.decode import DEFAULT_MAX_PIXELS
from segbeam.keys import file_stem, glob_base, printable_path, sanitise_key, strip_extension
from segbeam.labels import MaskLabels
from segbeam.records import DeadLetter
from segbeam.transforms.safe_map import SafeMap

DEAD = "dead_letter"
LOG = logging.getLogger(__name__)


class _PairByStem(beam.DoFn):
    def __init__(self, image_base: str):
        self._image_base = image_base

    def process(self, element):
        stem, grouped = element
        for item in pair_by_stem(stem, grouped["images"], grouped["masks"], self._image_base):
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
                  | "ImagesByStem" >> beam.FlatMap(_by_stem, "image").with_outputs(
                      DEAD, main="named"))
        if self._masks is None:
            masks = pbegin | "NoMasks" >> beam.Create([])
        else:
            masks = (pbegin
                     | "MatchMaskFiles" >> fileio.MatchFiles(
                         folder_glob(self._masks),
                         empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
                     | "MasksByStem" >> beam.FlatMap(_by_stem, "mask"))
        paired = ({"images": images.named, "masks": masks}
                  | "JoinOnStem" >> beam.CoGroupByKey()
                  | "Pair" >> beam.ParDo(_PairByStem(glob_base(self._images))).with_outputs(
                      DEAD, main="refs"))
        unusable = (paired[DEAD], images[DEAD]) | "UnpairedAndUnnamed" >> beam.Flatten()
        return paired.refs, unusable


def _by_stem(metadata, kind: str):
    """(stem, path) of a matched file. An image whose name is not UTF-8 becomes a dead letter
    (no Beam coder can carry its name); such a mask is left out with a warning."""
    printable = printable_path(metadata.path)
    if printable is None:
        yield file_stem(metadata.path), metadata.path
    elif kind == "image":
        key = sanitise_key(strip_extension(posixpath.basename(printable)).replace("\\", "_"))
        yield beam.pvalue.TaggedOutput(DEAD, DeadLetter(
            key, printable, "pair",
            "the file name is not valid UTF-8; rename the file (e.g. convmv -f latin1 -t utf8)"))
    else:
        LOG.warning("mask %s is left out: its file name is not valid UTF-8; rename it",
                    printable)


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
    ``read``), then images and masks decoded (stage ``decode``), and with ``labels`` each mask's
    unexpected values counted (``segbeam.labels``; with ``strict``, a dead letter)."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS,
                 labels: Optional[MaskLabels] = None):
        super().__init__()
        self._max_pixels, self._labels = max_pixels, labels

    def expand(self, items):
        encoded, unreadable = items | "Read" >> SafeMap("read", ensure_encoded)
        records, undecodable = encoded | "Decode" >> SafeMap("decode", decode_encoded,
                                                             self._max_pixels, self._labels)
        return records, (unreadable, undecodable) | "DeadLetters" >> beam.Flatten()

