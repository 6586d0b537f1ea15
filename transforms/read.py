"""Reading inputs in Beam: loose image files (with masks paired by relative path or file stem),
thin shells over ``segbeam.dataset``; ``ReadAndDecode`` decodes them, and the records of shards
(``transforms.containers``), into ``SegmentationRecord``s, plus dead letters for everything that
cannot be used. Only paths cross the mask-pairing shuffle; image bytes are read after it.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from segbeam.dataset import Naming, decode_encoded, ensure_encoded, mask_glob, named_mask, \
    pair_by_stem
from segbeam.decode import DEFAULT_MAX_PIXELS, TURNED_APART_COUNTER
from segbeam.incremental import input_stamp
from segbeam.keys import file_key, glob_base, printable_path, sanitise_key, strip_extension
from segbeam.labels import MaskLabels
from segbeam.matching import match_files, match_stamped_files
from segbeam.records import DeadLetter
from segbeam.transforms.file_list import ListedFiles
from segbeam.transforms.safe_map import SafeMap

DEAD = "dead_letter"
LOG = logging.getLogger(__name__)


UNCLAIMED = "unclaimed_mask"


class _PairByStem(beam.DoFn):
    def __init__(self, image_base: str, mask_base: str, naming: Naming):
        self._image_base, self._mask_base, self._naming = image_base, mask_base, naming

    def process(self, element):
        stem, grouped = element
        images, masks = dict(grouped["images"]), dict(grouped["masks"])  # path -> stamp
        pairing = pair_by_stem(stem, images, masks, self._image_base, self._mask_base,
                               self._naming)
        yield from _stamped(pairing.refs, images, masks)
        for letter in pairing.dead:
            yield beam.pvalue.TaggedOutput(DEAD, letter)
        for path in pairing.unclaimed_masks:
            yield beam.pvalue.TaggedOutput(UNCLAIMED, path)


def _stamped(refs: list, images: dict, masks: dict) -> list:
    """The refs, each with its files' stamp from the stamps of the listing (or none)."""
    return [ref._replace(source_stamp=input_stamp(images[ref.source], ref.mask_source,
                                                  masks.get(ref.mask_source, "")))
            for ref in refs]


class MatchImages(beam.PTransform):
    """pipeline -> (ImageRefs, dead letters, masks no image took): image files matching a glob,
    each paired with its mask where ``masks`` (a folder or glob) holds one
    (``segbeam.dataset.pair_by_stem``). Files under ``exclude`` (the output root) are not
    inputs. With ``stamped``, each ImageRef carries its files' stamp from the listing
    (``--skip_existing``). With ``list_base``, ``images`` names list files instead, whose
    lines (``list_suffix`` appended) name the images below that base
    (``transforms.file_list.ListedFiles``)."""

    def __init__(self, images: str, masks: Optional[str] = None, exclude: Optional[str] = None,
                 naming: Naming = Naming(), stamped: bool = False,
                 list_base: Optional[str] = None, list_suffix: str = ""):
        super().__init__()
        self._images, self._masks, self._exclude = images, masks, exclude
        self._naming, self._stamped, self._list_base = naming, stamped, list_base
        self._list_suffix = list_suffix

    def expand(self, pbegin):
        if self._list_base is None:
            images = (pbegin
                      | "ImageGlob" >> beam.Create([self._images])
                      | "MatchImageFiles" >> beam.FlatMap(
                          _matched_by_stem, "image", self._exclude, self._naming, self._stamped,
                          self._masks).with_outputs(DEAD, main="named"))
            image_base, unnamed = glob_base(self._images), images[DEAD]
        else:
            listed, unlisted = pbegin | "ListedImages" >> ListedFiles(
                self._images, self._list_base, self._stamped, self._list_suffix)
            images = listed | "ByStem" >> beam.FlatMap(_listed_by_stem, self._naming
                                                        ).with_outputs(DEAD, main="named")
            image_base = self._list_base
            unnamed = (unlisted, images[DEAD]) | "NotListed" >> beam.Flatten()
        masks = (pbegin
                 | "MaskGlob" >> beam.Create([mask_glob(self._masks)] if self._masks else [])
                 | "MatchMaskFiles" >> beam.FlatMap(_matched_by_stem, "mask", self._exclude,
                                                    self._naming, self._stamped))
        mask_base = glob_base(mask_glob(self._masks)) if self._masks else ""
        paired = ({"images": images.named, "masks": masks}
                  | "JoinOnStem" >> beam.CoGroupByKey()
                  | "Pair" >> beam.ParDo(_PairByStem(image_base, mask_base, self._naming)
                                         ).with_outputs(DEAD, UNCLAIMED, main="refs"))
        unusable = (paired[DEAD], unnamed) | "UnpairedAndUnnamed" >> beam.Flatten()
        return paired.refs, unusable, paired[UNCLAIMED]


def _matched_by_stem(pattern: str, kind: str, exclude: Optional[str], naming: Naming,
                     stamped: bool, masks: Optional[str] = None):
    """(stem, (path, stamp)) of each file the glob matches (a file without the mask suffix is
    no mask; an image file that ``masks`` and the mask suffix name is a mask, no image); the
    stamp is "" unless ``stamped``. An image whose name is not UTF-8 becomes a dead letter (no
    Beam coder can carry its name); such a mask is left out with a warning."""
    is_mask = named_mask(masks, naming) if kind == "image" else (lambda path: False)
    for path, stamp in match_stamped_files(pattern, exclude) if stamped else \
            ((path, "") for path in match_files(pattern, exclude)):
        if not is_mask(path):
            yield from _by_stem(path, stamp, kind, naming)


def _listed_by_stem(found: tuple, naming: Naming):
    path, stamp = found
    yield from _by_stem(path, stamp, "image", naming)


def _by_stem(path: str, stamp: str, kind: str, naming: Naming):
    printable = printable_path(path)
    if printable is None:
        stem = naming.pairing_stem(path, kind)
        if stem is not None:
            yield stem, (path, stamp)
    elif kind == "image":
        key = sanitise_key(strip_extension(posixpath.basename(printable)).replace("\\", "_"))
        yield beam.pvalue.TaggedOutput(DEAD, DeadLetter(
            key, printable, "pair",
            "the file name is not valid UTF-8; rename the file (e.g. convmv -f latin1 -t utf8)"))
    else:
        LOG.warning("mask %s is left out: its file name is not valid UTF-8; rename it",
                    printable)


class FindFiles(beam.PTransform):
    """pipeline -> (ImageRefs, dead letters, number of inputs, masks no image took) for loose
    image files (with ``list_base``, those that list files name: ``MatchImages``)."""

    def __init__(self, images: str, masks: Optional[str], exclude: Optional[str] = None,
                 naming: Naming = Naming(), stamped: bool = False,
                 list_base: Optional[str] = None, list_suffix: str = ""):
        super().__init__()
        self._images, self._masks, self._exclude = images, masks, exclude
        self._naming, self._stamped, self._list_base = naming, stamped, list_base
        self._list_suffix = list_suffix

    def expand(self, pbegin):
        refs, unpaired, unclaimed = pbegin | "MatchImages" >> MatchImages(
            self._images, self._masks, self._exclude, self._naming, self._stamped,
            self._list_base, self._list_suffix)
        inputs = ((refs, unpaired) | "AllMatched" >> beam.Flatten()
                  | "CountInputs" >> beam.combiners.Count.Globally())
        return refs, unpaired, inputs, unclaimed


def _sources_by_key(keyed):
    key, sources = keyed
    sources = sorted(sources)
    if len(sources) > 1:
        yield key, sources


def _unique_or_dead(item, shared: dict, fold_case: bool = False):
    sources = shared.get(file_key(item.key, fold_case))
    if sources is None:
        yield item
        return
    others = [s for s in sources if s != item.source] or sources
    more = f" and {len(others) - 3} more" if len(others) > 3 else ""
    case = " (letter case aside: the output folder's filesystem does not tell case apart)" \
        if fold_case else ""
    yield beam.pvalue.TaggedOutput(DEAD, DeadLetter(
        item.key, item.source, "pair",
        f"{len(sources)} inputs share the key {item.key!r}{case} (also "
        f"{', '.join(others[:3])}{more}); their outputs cannot be told apart; rename all but "
        f"one"))


class UniqueKeys(beam.PTransform):
    """items with ``key`` and ``source`` -> (items whose key no other input has, dead letters).

    A key names an input's outputs, so two inputs sharing one would overwrite each other's mask
    and give two metrics rows one name. Every input of a shared key becomes a dead letter, which
    does not depend on the order inputs arrive in. Only (key, source) pairs are shuffled; the
    items themselves pass through with the shared keys as a side input. With ``fold_case`` (an
    output folder whose filesystem ignores letter case), keys that differ in case alone are
    shared too: ``a.png`` and ``A.png`` would be one file there.
    """

    def __init__(self, fold_case: bool = False):
        super().__init__()
        self._fold_case = fold_case

    def expand(self, items):
        fold = self._fold_case
        shared = (items
                  | "KeySource" >> beam.Map(lambda item: (file_key(item.key, fold), item.source))
                  | "ByKey" >> beam.GroupByKey()
                  | "Shared" >> beam.FlatMap(_sources_by_key))
        checked = items | "Check" >> beam.FlatMap(
            _unique_or_dead, shared=beam.pvalue.AsDict(shared), fold_case=fold
        ).with_outputs(DEAD, main="unique")
        return checked.unique, checked[DEAD]


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
        records = records | "CountTurnedApart" >> beam.Map(_counted_if_turned_apart)
        return records, (unreadable, undecodable) | "DeadLetters" >> beam.Flatten()


def _counted_if_turned_apart(record):
    """Counts a record whose image its EXIF orientation turned and whose mask it did not
    (``segbeam.decode.mask_turned_apart_warning``)."""
    if record.turned_apart:
        Metrics.counter("segbeam", TURNED_APART_COUNTER).inc()
    return record
