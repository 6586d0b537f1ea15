"""``segbeam shard``: packs image files (and masks paired by stem) into TFRecord shards of
DeepLab-convention Examples, with a Beam pipeline so that it scales like the main job."""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import re
import sys
from typing import NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from segbeam.decode import InvalidInputError, check_mask_depth, check_opaque, lossy_format
from segbeam.example_proto import FILENAME_FEATURE, FORMAT_FEATURE, HEIGHT_FEATURE, \
    IMAGE_FEATURE, MASK_FEATURE, MASK_FORMAT_FEATURE, WIDTH_FEATURE, encode_example
from segbeam.layout import matching_paths, read_bytes
from segbeam.dataset import Naming, no_mask_found
from segbeam.file_lists import is_list
from segbeam.matching import folder_as_glob
from segbeam.pipeline.flags import CommandParser, absolute_local, add_list_flags, \
    add_pairing_flags, beam_parser, check_images_match, check_list_input, check_list_suffix, \
    check_mask_suffix, check_masks_match, check_output_name, list_base, \
    reject_repeated_flags, reject_unknown_flags
from segbeam.pipeline.provenance import beam_counters
from segbeam.transforms.read import MatchImages
from segbeam.records import ImageRef
from segbeam.transforms.safe_map import SafeMap
from segbeam.transforms.write import WriteDeadLetters


def example_for(ref: ImageRef) -> bytes:
    """Reads an image (and mask) file into a serialised Example. Sizes are read from the
    headers only; the pipeline decodes and validates fully when it reads the shards."""
    image = read_bytes(ref.source)
    with Image.open(io.BytesIO(image)) as header:
        width, height, image_format = header.width, header.height, (header.format or "").lower()
    extension = ref.source.rsplit(".", 1)[-1] if "." in ref.source.rsplit("/", 1)[-1] else ""
    features = {
        IMAGE_FEATURE: [image],
        FILENAME_FEATURE: [f"{ref.key}.{extension}".encode() if extension else ref.key.encode()],
        FORMAT_FEATURE: [image_format.encode()],
        HEIGHT_FEATURE: [height],
        WIDTH_FEATURE: [width],
    }
    if ref.mask_source:
        mask = read_bytes(ref.mask_source)
        features[MASK_FEATURE] = [mask]
        features[MASK_FORMAT_FEATURE] = [_mask_format(mask, ref.mask_source).encode()]
    return encode_example(features)


def _mask_format(mask: bytes, source: str) -> str:
    """The mask's format, from its header; a JPEG mask, one with transparent pixels or one
    of 16-bit colour is refused here, as ``segbeam run`` refuses it, rather than packed for
    every later read to refuse."""
    try:
        with Image.open(io.BytesIO(mask)) as header:
            found = header.format or ""
            check_mask_depth(header, mask, f"mask {source}")
            if header.mode in ("RGBA", "LA"):  # only these are decoded here
                check_opaque(header, f"mask {source}")
    except InvalidInputError:
        raise
    except Exception as error:  # noqa: BLE001 - Pillow raises several types
        raise InvalidInputError(f"mask {source} is not an image Pillow can read "
                                f"({type(error).__name__}: {error})") from None
    lossy = lossy_format(found, mask)
    if lossy:
        raise InvalidInputError(f"mask {source} is a {lossy} image: its lossy compression "
                                f"changes class ids along region edges; store masks as PNG")
    return found.lower()


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="segbeam shard", allow_abbrev=False,
        description="Pack images (+ masks paired by file stem) into TFRecord shards "
                    "(image/encoded, image/filename, image/segmentation/class/encoded). "
                    "Beam's own options (--runner, ...) pass through.")
    parser.add_argument("--input", required=True,
                        help="Glob of image files, or a folder (every file in it), or a list "
                             "of image paths, one per line (a .txt file, as segbeam run "
                             "reads it).")
    add_list_flags(parser, "the examples' names are")
    parser.add_argument("--masks", default=None, help="Folder or glob of masks (optional).")
    parser.add_argument("--output", required=True,
                        help="Shard path prefix, e.g. out/train (gives out/train-00000-of-00004"
                             ".tfrecord, ...); unreadable files go to <prefix>_dead_letters/.")
    parser.add_argument("--num_shards", type=int, default=0,
                        help="Number of shards; 0 lets the runner choose.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace the shards and dead letters of an earlier run under "
                             "--output (without it, such an --output is refused).")
    add_pairing_flags(parser)
    return parser


_SHARD_NAME = re.compile(r"-\d{5,}-of-\d{5,}\.tfrecord")  # Beam's -SSSSS-of-NNNNN


def _clear_earlier(output: str, overwrite: bool) -> None:
    """Refuses a prefix with shards or dead letters of an earlier run (with another
    --num_shards, its shards would stay beside the new ones, and a glob would read both);
    with ``overwrite``, deletes them. Also refuses a prefix that other shards' names extend
    (``train`` beside ``train-extra-00000-of-00001.tfrecord``): Beam's sink deletes every file
    that matches ``train-*-of-N.tfrecord`` before it writes."""
    ours, others = [], []
    stem = len(posixpath.basename(output))
    for path in matching_paths(f"{output}-*-of-*.tfrecord"):
        (ours if _SHARD_NAME.fullmatch(posixpath.basename(path)[stem:]) else others).append(path)
    if others:
        raise ValueError(f"--output {output}: Beam's TFRecord sink deletes the files matching "
                         f"{output}-*-of-N.tfrecord before it writes, and {others[0]} (another "
                         f"shard set's) is one; choose a prefix no other file name extends, "
                         f"e.g. in a folder of its own")
    earlier = ours + matching_paths(f"{output}_dead_letters/*")
    if earlier and not overwrite:
        raise ValueError(f"--output {output} has {len(earlier)} files of an earlier run "
                         f"(first: {earlier[0]}); pass another --output, or --overwrite to "
                         f"replace them")
    if earlier:
        FileSystems.delete(earlier)


def _counted(name: str):
    """A pass-through step that counts what goes through it in the Beam counter ``name``."""
    counter = Metrics.counter("segbeam.shard", name)

    def count(element):
        counter.inc()
        return element
    return count


class ShardOutcome(NamedTuple):
    account: str  # one line: images in, examples and dead letters out, masks no image took
    nothing_packed: bool  # every image became a dead letter: the shards hold no example
    dead_letters: str  # their folder


def shard(argv: Optional[Sequence[str]] = None) -> ShardOutcome:
    """Runs the shard job; returns its account."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    beam_flags = beam_parser()  # built once for both checks
    reject_unknown_flags(beam_args, parser, beam_flags)
    reject_repeated_flags(sys.argv[1:] if argv is None else argv, parser, beam_flags)
    check_mask_suffix(args.mask_suffix, args.masks)
    if args.num_shards < 0:
        raise ValueError(f"--num_shards must be 0 (the runner chooses) or more; received "
                         f"{args.num_shards}")
    listed = is_list(args.input)
    check_images_match(args.input)
    args.input = folder_as_glob(absolute_local(args.input) if listed else args.input)
    base = list_base(args.input_base, "list" if listed else "images", args.input)
    suffix = check_list_suffix(args.list_suffix, "list" if listed else "images")
    if listed:
        check_list_input(args.input, base, suffix=suffix)
    if args.masks:
        check_masks_match(args.masks, without="the shards would hold images only")
    check_output_name(args.output)
    if args.output.endswith("/") or os.path.isdir(args.output):
        raise ValueError(f"--output is a path prefix (out/train gives out/train-00000-of-00004"
                         f".tfrecord, ...), and {args.output} is a folder; add a name, e.g. "
                         f"{args.output.rstrip('/')}/train")
    _clear_earlier(args.output, args.overwrite)
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    naming = Naming(args.image_suffix or "", args.mask_suffix or "")
    refs, unpaired, unclaimed = pipeline | "MatchImages" >> MatchImages(
        args.input, args.masks, naming=naming, list_base=base, list_suffix=suffix)
    _ = (refs | "WithMask" >> beam.Filter(lambda ref: ref.mask_source is not None)
         | "CountWithMask" >> beam.Map(_counted("examples_with_mask")))
    examples, unreadable = refs | "ToExamples" >> SafeMap("shard", example_for)
    _ = (examples | "CountExamples" >> beam.Map(_counted("examples"))
         | "WriteShards" >> beam.io.WriteToTFRecord(
             args.output, file_name_suffix=".tfrecord", num_shards=args.num_shards))
    _ = ((unpaired, unreadable) | "DeadLetters" >> beam.Flatten()
         | "CountDeadLetters" >> beam.Map(_counted("dead_letters"))
         | "WriteDeadLetters" >> WriteDeadLetters(args.output + "_dead_letters"))
    _ = unclaimed | "CountUnclaimedMasks" >> beam.Map(_counted("masks_without_image"))
    result = pipeline.run()
    result.wait_until_finish()
    counters = beam_counters(result)
    return ShardOutcome(_account(counters, args.output, bool(args.masks)),
                        bool(counters and counters.get("dead_letters")
                             and not counters.get("examples")), args.output + "_dead_letters")


def _account(counters: Optional[dict], output: str, masks_given: bool) -> str:
    if counters is None:  # a runner that reports no metrics
        return f"shards under {output}-*.tfrecord, dead letters under {output}_dead_letters/"
    examples, dead = counters.get("examples", 0), counters.get("dead_letters", 0)
    unclaimed = counters.get("masks_without_image", 0)
    unpaired = no_mask_found(masks_given, examples, counters.get("examples_with_mask", 0),
                             consequence="no example holds a mask")
    return (f"{examples + dead} images -> {examples} examples in {output}-*.tfrecord, "
            f"{dead} dead letters under {output}_dead_letters/"
            + (f"; {unclaimed} masks had no image and were not packed" if unclaimed else "")
            + (f"; warning: {unpaired}" if unpaired else ""))
