"""The dataset reader that ``segbeam run`` and ``segbeam train`` share: which files are inputs,
how images and masks pair, how TFRecord records become inputs, and how an input's bytes are
read and decoded. One set of rules and one set of reject reasons for both; every path goes
through Beam's FileSystems, so local and ``gs://`` data read alike.

The pipeline applies ``pair_by_stem`` per stem after a CoGroupByKey (``segbeam.transforms.read``);
``find_pairs`` applies it in memory for training (``segbeam.training_items``).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import posixpath
from typing import Callable, Iterable, NamedTuple, Optional, Union

from segbeam.containers import ContainerFields, column_key, shard_format
from segbeam.decode import DEFAULT_MAX_PIXELS, InvalidInputError, decode_input
from segbeam.example_proto import FILENAME_FEATURE, MASK_FEATURE, decode_example
from segbeam.file_lists import is_list
from segbeam.incremental import content_sha256
from segbeam.keys import file_stem, glob_base, key_for_path, sanitise_key, strip_extension
from segbeam.labels import MaskLabels
from segbeam.layout import read_bytes
from segbeam.matching import match_files, pattern_regex
from segbeam.records import DeadLetter, EncodedImage, ImageRef, SegmentationRecord

LOG = logging.getLogger(__name__)


def mask_glob(spec: str) -> str:
    """The masks of ``--masks``: a glob as given, or every file below a folder at any depth, so
    that masks laid out in the images' sub-folders pair by relative path."""
    if any(c in spec for c in "*?["):
        return spec
    return spec.rstrip("/") + "/**"


def relative_stem(path: str, base: str) -> str:
    """A file's path below ``base`` without its extension (its base name's stem when it is not
    below ``base``): what an image and its mask share."""
    if base and path.startswith(base):
        return strip_extension(path[len(base):])
    return file_stem(path)


class Naming(NamedTuple):
    """File-name suffixes that images and masks carry besides their shared stem, as in
    Cityscapes (``x_leftImg8bit.png`` <-> ``x_gtFine_labelIds.png``). With a mask suffix, only
    files whose stem ends with it are masks (``x_gtFine_color.png`` beside them is not)."""

    image_suffix: str = ""
    mask_suffix: str = ""

    def _strip(self, stem: str, kind: str) -> Optional[str]:
        suffix = self.image_suffix if kind == "image" else self.mask_suffix
        if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[:-len(suffix)]
        return None if suffix and kind == "mask" else stem

    def pairing_stem(self, path: str, kind: str) -> Optional[str]:
        """The stem an image and its mask share; None for a file that is not a mask."""
        return self._strip(file_stem(path), kind)

    def relative(self, path: str, base: str, kind: str) -> str:
        """``relative_stem`` without the suffix."""
        relative = relative_stem(path, base)
        return self._strip(relative, kind) or relative


class Pairing(NamedTuple):
    """What pairing one stem's files gave: images (with or without a mask), dead letters, and
    masks no image took."""

    refs: list
    dead: list
    unclaimed_masks: list


def _names(paths: Iterable[str], limit: int = 4) -> str:
    paths = list(paths)
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def named_mask(masks: Optional[str], naming: Naming) -> Callable[[str], bool]:
    """Whether a file the input glob matches is, by its name, one of the masks: the masks' glob
    matches it and it carries ``--mask_suffix`` (images and masks in one folder, ``a.png``
    beside ``a_mask.png``). Such a file is a mask, not an input."""
    if not (masks and naming.mask_suffix):
        return lambda path: False
    regex = pattern_regex(mask_glob(masks))
    return lambda path: naming.pairing_stem(path, "mask") is not None \
        and regex.match(path) is not None


def no_mask_found(masks_given: bool, images: int, images_with_mask: int,
                  container_flag: Optional[str] = None,
                  consequence: str = "nothing was scored", inputs: str = "input"
                  ) -> Optional[str]:
    """A warning where masks were given and images went through, but no image found its mask
    (``consequence``: for a run, nothing was scored; ``inputs``: which inputs are meant). For
    files, most often because the masks' names add a suffix to the stem; for shards, because
    ``container_flag`` (``--mask_column X``, ``--mask_ext Y``) named a mask no record
    holds."""
    if not masks_given or not images or images_with_mask:
        return None
    if container_flag:
        return (f"no {inputs} found its mask, so {consequence}: {container_flag} named no "
                f"mask in any record (a column of nulls, or no member of that extension); "
                f"check it against the shards")
    return (f"no {inputs} found its mask, so {consequence}; masks pair with images by file "
            "stem (without --mask_suffix, a mask file in the images' own folder is taken for an "
            "image): where their names add a suffix (x_mask.png for x.jpg), pass --mask_suffix "
            "_mask (and --image_suffix for the images')")


def container_mask_flag(fields: dict) -> Optional[str]:
    """The flag by which shards name their masks, as given (``--mask_column X``), or None;
    ``fields``: a ``ContainerFields`` as a dict (a run's manifest keeps it so)."""
    if fields.get("mask_column"):
        return f"--mask_column {fields['mask_column']}"
    if fields.get("mask_ext"):
        return f"--mask_ext {fields['mask_ext']}"
    feature = fields.get("mask_feature")
    return f"--mask_feature {feature}" if feature and feature != MASK_FEATURE else None


def apart(images: list[str], masks: list[str], image_base: str, mask_base: str
           ) -> tuple[list[str], list[str]]:
    """A file that both globs match is a mask or an image, never both (nor its own mask): a
    mask where the masks' folder lies inside the input glob's (``--input 'data/**' --masks
    data/masks``), else an image (``--input 'data/*.jpg' --masks data``)."""
    shared = set(images) & set(masks)
    if not shared:
        return images, masks
    if mask_base != image_base and mask_base.startswith(image_base):
        return [path for path in images if path not in shared], masks
    return images, [path for path in masks if path not in shared]


def pair_by_stem(stem: str, images: Iterable[str], masks: Iterable[str], image_base: str,
                 mask_base: str = "", naming: Naming = Naming()) -> Pairing:
    """Pairs the images and masks that share a file stem.

    An image takes the mask at its own relative path (``sub/a.jpg`` below the input glob's
    folder takes ``sub/a.png`` below the masks'); failing that, the one mask left with its stem,
    but only when one image is left to take it. Anything that cannot be decided is a dead
    letter naming the candidates: images that would share a key (``a.jpg`` and ``a.png``),
    several masks at one relative path, several images or masks left for one stem.
    """
    images, masks = apart(sorted(set(images)), sorted(set(masks)), image_base, mask_base)
    by_key: dict[str, list[str]] = collections.defaultdict(list)
    for path in images:
        by_key[key_for_path(path, image_base)].append(path)
    masks_at: dict[str, list[str]] = collections.defaultdict(list)
    for path in masks:
        masks_at[naming.relative(path, mask_base, "mask")].append(path)
    refs, dead, named, left = [], [], set(), []
    for key, paths in sorted(by_key.items()):
        relative = naming.relative(paths[0], image_base, "image")
        exact = masks_at.get(relative, [])
        named.update(exact)
        if len(paths) > 1:
            dead += [DeadLetter(key, path, "pair", f"{len(paths)} files share the key {key!r} "
                                f"({_names(paths)}): their outputs and masks cannot be told "
                                f"apart; rename all but one") for path in paths]
        elif len(exact) > 1:
            dead.append(DeadLetter(key, paths[0], "pair", f"{len(exact)} masks match "
                                   f"{relative!r} ({_names(exact)}); keep one"))
        elif exact:
            refs.append(ImageRef(key, paths[0], exact[0]))
        else:
            left.append((key, paths[0]))
    spare = [path for path in masks if path not in named]
    if len(left) == 1 and len(spare) == 1:
        refs.append(ImageRef(left[0][0], left[0][1], spare[0]))
        spare = []
    elif left and spare:
        dead += [DeadLetter(key, path, "pair",
                            f"no mask at its relative path "
                            f"{naming.relative(path, image_base, 'image')!r}, "
                            f"and {len(left)} image(s) and {len(spare)} mask(s) share the stem "
                            f"{stem!r} (masks: {_names(spare)}); lay masks out in the images' "
                            f"sub-folders") for key, path in left]
        spare = []
    else:
        refs += [ImageRef(key, path, None) for key, path in left]
    return Pairing(refs, dead, spare)


def find_pairs(images: str, masks: Optional[str], exclude: Optional[str] = None,
               naming: Naming = Naming(), listed: Optional[tuple[list[str], str]] = None
               ) -> tuple[list[ImageRef], list[DeadLetter], list[str]]:
    """The files of the glob ``images``, paired with ``masks`` (a folder or glob) as the
    pipeline pairs them, in memory: (images, dead letters, masks no image took). Files under
    ``exclude`` are not read. ``listed``: (the image files, their base) that a list named,
    instead of the glob's."""
    by_stem: dict[str, dict[str, list[str]]] = collections.defaultdict(
        lambda: {"images": [], "masks": []})
    is_mask = named_mask(masks, naming) if listed is None else (lambda path: False)
    paths, image_base = listed or (match_files(images, exclude), glob_base(images))
    for path in paths:
        if not is_mask(path):
            by_stem[naming.pairing_stem(path, "image")]["images"].append(path)
    for path in match_files(mask_glob(masks), exclude) if masks else ():
        stem = naming.pairing_stem(path, "mask")
        if stem is not None:
            by_stem[stem]["masks"].append(path)
    refs, dead, unclaimed = [], [], []
    for stem, grouped in sorted(by_stem.items()):
        pairing = pair_by_stem(stem, grouped["images"], grouped["masks"], image_base,
                               glob_base(mask_glob(masks)) if masks else "", naming)
        refs += pairing.refs
        dead += pairing.dead
        unclaimed += pairing.unclaimed_masks
    return refs, dead, sorted(unclaimed)


def _read_file(path: str) -> bytes:
    """A file's bytes; a broken symbolic link is named as such."""
    try:
        return read_bytes(path)
    except OSError as error:
        if "://" in path or not os.path.islink(path):
            raise
        if error.errno == errno.ELOOP or "Too many levels" in str(error):
            raise InvalidInputError(f"{path} is a symbolic link that loops") from None
        raise InvalidInputError(f"{path} is a symbolic link to {os.readlink(path)!r}, which "
                                f"does not exist") from None


def read_encoded(ref: ImageRef) -> EncodedImage:
    """Reads an image file and its mask file, and hashes their bytes."""
    image_bytes = _read_file(ref.source)
    mask_bytes = _read_file(ref.mask_source) if ref.mask_source else None
    return EncodedImage(ref.key, ref.source, image_bytes, mask_bytes, ref.mask_source,
                        content_sha256(image_bytes, mask_bytes), ref.source_stamp)


def ensure_encoded(item: Union[ImageRef, EncodedImage]) -> EncodedImage:
    """The bytes of an input: files are read; shard records already hold theirs."""
    return item if isinstance(item, EncodedImage) else read_encoded(item)


def decode_encoded(item: EncodedImage, max_pixels: int = DEFAULT_MAX_PIXELS,
                   labels: Optional[MaskLabels] = None) -> SegmentationRecord:
    """Decodes an input; with ``labels``, its mask goes through the label map and its
    unexpected values are counted (or, with ``labels.strict``, refused)."""
    colour = labels is not None and labels.colours is not None
    try:
        image, mask, frames, peak, turned_apart = decode_input(
            item.image_bytes, item.mask_bytes, max_pixels, colour)
    except InvalidInputError as error:
        hint = _not_an_image_hint(item.source)
        if hint is None:
            raise
        raise InvalidInputError(f"{error}; {hint}") from error
    unexpected: tuple[int, tuple] = (0, ())
    if mask is not None and labels is not None:
        mask, *unexpected = labels.prepare(mask)
    return SegmentationRecord(key=item.key, source=item.source, image=image, mask=mask,
                              mask_source=item.mask_source, height=image.shape[0],
                              width=image.shape[1], has_mask=mask is not None,
                              content_sha256=item.content_sha256,
                              source_stamp=item.source_stamp,
                              unexpected_pixels=unexpected[0], unexpected_values=unexpected[1],
                              frames=frames, high_depth_peak=peak, turned_apart=turned_apart)


def _not_an_image_hint(source: str) -> Optional[str]:
    """What to pass where a file that failed to decode is, by its name, a shard or a list of
    paths (a folder of them given as --input is read as images); None for any other."""
    name = posixpath.basename(source)
    if is_list(name):
        return ("its name says it is a list of image paths, read here as an image: end the "
                "--input glob in .txt, or pass --input_format list")
    shard = {"tfrecord": "TFRecord", "parquet": "Parquet", "webdataset": "WebDataset"}.get(
        shard_format(name))
    if shard is None:
        return None
    return (f"its name says it is a {shard} shard, read here as an image: end the --input "
            f"glob in its suffix, or pass --input_format {shard.lower()}")


class ShardRecord(NamedTuple):
    """One serialised Example read from a shard; ``key`` identifies it until it is parsed."""

    key: str
    source: str
    data: bytes


def shard_record(element: tuple[str, bytes]) -> ShardRecord:
    shard, data = element
    digest = hashlib.sha1(data).hexdigest()[:12]
    return ShardRecord(f"{posixpath.basename(shard)}@{digest}", shard, data)


def parse_shard_record(record: ShardRecord, fields: ContainerFields = ContainerFields()
                       ) -> EncodedImage:
    """An Example -> EncodedImage, its features named by ``fields`` (DeepLab's by default:
    ``image/encoded``, ``image/segmentation/class/encoded``, ``image/filename``). The key comes
    from the key feature (DeepLab's file name loses its extension, another feature's value only
    an image extension), else from the shard name and a content hash. A record holding several
    images (or masks) in its feature is refused, not read by its first."""
    try:
        features = decode_example(record.data)
    except ValueError as error:
        raise InvalidInputError(f"shard record is not a tf.train.Example: {error}") from error
    encoded = features.get(fields.image_feature)
    if not encoded or not isinstance(encoded[0], bytes):
        raise InvalidInputError(f"shard record has no {fields.image_feature!r} bytes feature "
                                f"(--image_feature); found {sorted(features)}")
    named = features.get(fields.key_feature)
    if named and not isinstance(named[0], (bytes, int)):
        raise InvalidInputError(f"shard record's key feature {fields.key_feature!r} holds "
                                f"{type(named[0]).__name__}s; a key is bytes or an integer "
                                f"(--key_feature)")
    if named and named[0] != b"":
        name = named[0].decode("utf-8", "replace") if isinstance(named[0], bytes) \
            else str(named[0])
        # DeepLab's file name loses any extension; another key feature, as --key_column does
        key = sanitise_key(strip_extension(name) if fields.key_feature == FILENAME_FEATURE
                           else column_key(name))
    else:
        name, key = record.key, sanitise_key(record.key.replace("@", "-"))
    masks = features.get(fields.mask_feature)
    for feature, values in ((fields.image_feature, encoded), (fields.mask_feature, masks)):
        if values and len(values) > 1:  # reading the first would drop the others unsaid
            raise InvalidInputError(f"shard record {name!r} holds {len(values)} values in "
                                    f"{feature!r}; one image and one mask per record are read: "
                                    f"write a record per image")
    mask_bytes = masks[0] if masks and isinstance(masks[0], bytes) and masks[0] else None
    source = f"{record.source}#{name}"
    return EncodedImage(key, source, encoded[0], mask_bytes,
                        f"{source}:{fields.mask_feature}" if mask_bytes else None,
                        content_sha256(encoded[0], mask_bytes))
