"""Flag checking shared by the commands: a flag that neither the command nor any of Beam's
options takes is an error naming the closest valid one (Beam itself would drop it with a
warning, and argparse's prefix matching would read ``--mask`` as ``--masks``)."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import posixpath
from typing import Iterable, Optional, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from segbeam import storage
from segbeam.dataset import mask_glob
from segbeam.example_proto import FILENAME_FEATURE, IMAGE_FEATURE, MASK_FEATURE
from segbeam.file_lists import as_base, default_base, id_suffix, read_lines
from segbeam.matching import file_at, folder_as_glob, literal_name_hint, match_files
from segbeam.records import one_line_reason

LOG = logging.getLogger(__name__)


class UsageError(ValueError):
    """A mistake in the command line or its settings: reported in one line, exit 2."""


class CommandParser(argparse.ArgumentParser):
    """A command's parser whose mistakes are one line on stderr, exit 2 (argparse printed
    the whole usage first, forty lines above the one that matters)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


class _OptionsCollector(argparse.ArgumentParser):
    """Collects flag names only; it also takes the templated (ValueProvider) flags that an
    options class may declare through Beam's parser. A malformed value of one of Beam's flags
    is a UsageError (argparse printed Beam's usage, 180 lines, under the name ``segbeam``)."""

    def error(self, message: str):
        raise UsageError(f"{message} (one of Beam's flags)")

    def add_value_provider_argument(self, *args, **kwargs):
        kwargs.pop("type", None)
        self.add_argument(*args, **kwargs)


def beam_parser() -> argparse.ArgumentParser:
    """Every flag of every registered PipelineOptions class, as Beam collects them."""
    try:  # registers Beam's Dask options (--dask_client_address, ...) where dask is installed
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    except ImportError:
        pass
    parser = _OptionsCollector(allow_abbrev=False, add_help=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)
    return parser


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings
            if option.startswith("--")]


def reject_unknown_flags(rest: Sequence[str], ours: argparse.ArgumentParser,
                         beam: Optional[argparse.ArgumentParser] = None) -> None:
    """Raises UsageError for the first argument in ``rest`` (what ``ours`` did not take) that
    no Beam option takes either (``beam``: ``beam_parser()``, built here if not given),
    naming the closest known flag."""
    beam = beam or beam_parser()
    _, unknown = beam.parse_known_args(list(rest))
    for argument in unknown:
        if not argument.startswith("-"):
            raise UsageError(f"unexpected argument {argument!r}; every value follows its flag "
                             f"(quote globs: --input 'data/*.png')")
        flag = argument.split("=", 1)[0]
        close = difflib.get_close_matches(
            flag, _option_strings(ours) + _option_strings(beam), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; see `{ours.prog} --help`"
        raise UsageError(f"unknown flag {flag}{hint}")


# Actions that keep one value, the last given; others (appending, counting, Beam's
# --experiments, which collects comma-separated lists) take a flag more than once on purpose.
_ONE_VALUE = (argparse._StoreAction, argparse._StoreConstAction, argparse.BooleanOptionalAction)


def reject_repeated_flags(argv: Sequence[str], ours: argparse.ArgumentParser,
                          beam: Optional[argparse.ArgumentParser] = None) -> None:
    """Raises UsageError where one setting is given twice (``--input a --input b``, or
    ``--crf --no-crf``): argparse keeps the last value without a word, so the first input
    glob, say, would be dropped. Flags that collect values may repeat. ``beam``: Beam's
    flags too, for commands that pass them through (``beam_parser()``)."""
    parsers = [ours] + ([beam] if beam else [])
    settings = {option: (index, action.dest)
                for index, parser in enumerate(parsers) for action in parser._actions
                if isinstance(action, _ONE_VALUE)
                for option in action.option_strings if option.startswith("--")}
    seen: dict = {}
    for argument in argv:
        if argument == "--":
            break
        flag = argument.split("=", 1)[0]
        setting = settings.get(flag)
        if setting is None:
            continue
        if setting in seen:
            again = "again" if seen[setting] == flag else f"after {seen[setting]}"
            raise UsageError(f"{flag} is given {again}: both set one setting, and only the "
                             f"last would count; pass it once")
        seen[setting] = flag


def add_container_flags(group, key_column: bool) -> None:
    """Where Parquet, WebDataset and TFRecord shards keep images and masks
    (``ContainerFields``); the same flags for ``segbeam run`` and ``segbeam train``."""
    group.add_argument("--image_column", default="image",
                       help="Parquet: the column of encoded images (the datasets library's "
                            "{bytes, path} struct, or binary).")
    group.add_argument("--mask_column", default=None,
                       help="Parquet: the column of encoded masks, if any.")
    if key_column:
        group.add_argument("--key_column", default=None,
                           help="Parquet: a column naming each row (default: the image's "
                                "stored path without its extension).")
    group.add_argument("--mask_ext", default=None,
                       help="WebDataset: the extension of each sample's mask member, e.g. "
                            "seg.png for KEY.seg.png beside KEY.jpg.")
    group.add_argument("--image_feature", default=IMAGE_FEATURE,
                       help=f"TFRecord: the Example feature of encoded images (default: "
                            f"DeepLab's {IMAGE_FEATURE}; TensorFlow Datasets: image).")
    group.add_argument("--mask_feature", default=MASK_FEATURE,
                       help=f"TFRecord: the Example feature of encoded masks, where a record "
                            f"has one (default: DeepLab's {MASK_FEATURE}).")
    if key_column:
        group.add_argument("--key_feature", default=FILENAME_FEATURE,
                           help=f"TFRecord: the Example feature naming each record, bytes or "
                                f"an integer (default: {FILENAME_FEATURE}, without its "
                                f"extension; a record without it is named by its shard and "
                                f"a hash of its image).")


# The input formats of loose image files, paired with mask files by name: a glob of them,
# or list files naming them.
FILE_FORMATS = ("images", "list")

# (flag, its default, the input format it applies to) for the flags that only one input
# format reads.
_FORMAT_FLAGS = (("image_column", "image", "parquet"), ("mask_column", None, "parquet"),
                 ("key_column", None, "parquet"), ("mask_ext", None, "webdataset"),
                 ("image_feature", IMAGE_FEATURE, "tfrecord"),
                 ("mask_feature", MASK_FEATURE, "tfrecord"),
                 ("key_feature", FILENAME_FEATURE, "tfrecord"),
                 ("image_suffix", None, "images"), ("mask_suffix", None, "images"))


def check_container_flags(input_format: str, values) -> None:
    """A flag given for input it does not apply to (``--mask_column`` with image files,
    ``--mask_suffix`` with shards) would be ignored without a word: a ``UsageError`` naming it
    instead. ``values``: the parsed flags."""
    kind = "images" if input_format in FILE_FORMATS else input_format  # a list names images
    for name, default, applies in _FORMAT_FLAGS:
        if getattr(values, name, default) == default or kind == applies:
            continue
        if applies == "images":
            raise UsageError(f"--{name} pairs image files with mask files by name; "
                             f"{input_format} shards carry each image's mask with it: drop "
                             f"--{name}")
        raise UsageError(f"--{name} applies to {applies} shards, but the input is read as "
                         f"{input_format}; drop it, or point the input at {applies} shards")
    for image, mask in (("image_column", "mask_column"), ("image_feature", "mask_feature")):
        if getattr(values, mask, None) and getattr(values, mask) == getattr(values, image, None):
            raise UsageError(f"--{mask} {getattr(values, mask)} names the images' own "
                             f"{image.split('_')[1]} (--{image}): the images would be read "
                             f"as their own masks; name the one that holds the masks")
    for kind in ("column", "feature"):
        key = getattr(values, f"key_{kind}", None)
        for other in ("image", "mask"):
            if key and key == getattr(values, f"{other}_{kind}", None):
                raise UsageError(f"--key_{kind} {key} names the {other}s' own {kind} "
                                 f"(--{other}_{kind}): their bytes would name the outputs; "
                                 f"name the {kind} that holds the names")


def check_mask_suffix(mask_suffix: Optional[str], masks: Optional[str]) -> None:
    """``--mask_suffix`` names mask files among ``--masks``; without them it would be ignored."""
    if mask_suffix is not None and not masks:
        raise UsageError(f"--mask_suffix {mask_suffix} names mask files, but no --masks is "
                         f"given; pass --masks FOLDER (it may be the images' own folder)")


def check_images_match(images: str, flag: str = "--input") -> None:
    """A ``UsageError`` where ``flag`` (a folder or glob of images, or of lists of them)
    matches no file, said before anything else is looked at (``segbeam run`` checks its own,
    with sub-folders)."""
    if next(iter(match_files(folder_as_glob(images))), None) is None:
        raise UsageError(f"{flag} {images!r} matches no file" + (
            literal_name_hint(images) or "; check the path and quote the glob so that the "
                                         "shell does not expand it"))


def list_base(input_base: Optional[str], input_format: str, lists: str) -> Optional[str]:
    """The base folder of a list input (``--input_base``, by default the lists' folder); None
    for any other input, for which ``--input_base`` is an error."""
    if input_format != "list":
        if input_base:
            raise UsageError(f"--input_base applies to a list input (--input_format list, or "
                             f"an --input ending in .txt); this input is read as "
                             f"{input_format}: drop it")
        return None
    if not input_base:
        return default_base(lists)
    folder = absolute_local(input_base)
    if "://" not in folder and not os.path.isdir(folder):
        raise UsageError(f"--input_base {input_base!r} is not a folder; pass the folder that "
                         f"the list's relative paths lie below")
    return as_base(folder)


def check_list_suffix(suffix: str, input_format: str) -> str:
    """``--list_suffix``, which applies to a list input only (a usage error elsewhere)."""
    if suffix and input_format != "list":
        raise UsageError(f"--list_suffix applies to a list input (--input_format list, or an "
                         f"--input ending in .txt); this input is read as {input_format}: "
                         f"drop it")
    return suffix


def check_list_input(lists: str, base: str, flag: str = "--input", suffix: str = "",
                     outside_allowed: bool = False) -> Optional[str]:
    """Reads the lists that ``flag`` names up to their first path: the first file they name,
    or None where it does not exist (with a warning: its line is a dead letter, and a wrong
    base would make every line one). Lists that name no path, that none can be read, that
    are not UTF-8, or whose first path lies outside the base are usage errors, and so is a
    list of IDs read as paths (``path.jpg`` is a file, ``path`` is not): every line would be
    a dead letter. With ``outside_allowed`` (training, which names nothing after the paths),
    a path outside the base is read as any other."""
    unreadable = None  # the first problem met: a line, or a list, that cannot be read
    for list_path in match_files(lists):
        try:
            with FileSystems.open(list_path) as handle:
                for line in read_lines(handle, list_path, base, suffix):
                    if line.path is None:
                        unreadable = unreadable or f"{line.where}: {line.problem}"
                        continue
                    if line.problem and not outside_allowed:
                        raise UsageError(f"{flag}: {line.problem} ({line.where})")
                    if file_at(line.path) is not None:
                        return line.path
                    extension = id_suffix(line.path)
                    if extension:
                        raise UsageError(
                            f"{flag}: {line.where} names {line.path}, which is no file, but "
                            f"{line.path}{extension} is: the list names images by ID; pass "
                            f"--list_suffix {extension}")
                    LOG.warning("the first file listed, %s (%s), does not exist: relative "
                                "lines are read against %s (--input_base)%s", line.path,
                                line.where, base, "" if "." in posixpath.basename(line.path)
                                else "; a line with no extension may be an image's ID "
                                     "(--list_suffix)")
                    return None
        except OSError as error:  # in a glob of lists, the others may be read
            unreadable = unreadable or f"{list_path} cannot be read: {one_line_reason(error)}"
    if unreadable:
        raise UsageError(f"{flag}: {unreadable}")
    raise UsageError(f"{flag} {lists!r} names no file: each line of the list is blank or a "
                     f"# comment (a list names one image path per line)")


def check_masks_match(masks: str, exclude: Optional[str] = None,
                      without: Optional[str] = "nothing would be scored",
                      flag: str = "--masks") -> None:
    """A ``UsageError`` where ``flag`` (a folder or glob of masks) matches no file (outside
    ``exclude``, a run's own output): a mistyped path would otherwise pair no image.
    ``without``: what leaving the masks out would do, where that is allowed."""
    if next(iter(match_files(mask_glob(masks), exclude)), None) is not None:
        return
    if os.path.isfile(masks):
        raise UsageError(f"{flag} {masks!r} is a file; pass the folder that holds the masks, "
                         f"or a glob of them (they pair with images by name)")
    hint = literal_name_hint(masks)
    raise UsageError(f"{flag} {masks!r} matches no file" + (hint or "; check the path" + (
        f" (without masks, drop {flag}: {without})" if without else "")))


def check_output_name(output: str, flag: str = "--output") -> None:
    """An output path with a glob character fails in Beam's file sinks, which take output
    paths as patterns (and an earlier run's files would be matched beside it)."""
    if any(c in output for c in "*?["):
        raise UsageError(f"{flag} {output!r} holds a glob character (* ? [): Beam's file "
                         f"sinks take output paths as patterns and would write or clean up "
                         f"elsewhere; choose a name without them")


def check_scoring_flags(o, input_format: str) -> None:
    """``--strict_labels`` and ``--calibration`` act on masks: image files read without
    ``--masks`` have none, and either would be ignored."""
    for flag in ("strict_labels", "calibration"):
        if getattr(o, flag) and input_format in FILE_FORMATS and not o.masks:
            raise UsageError(f"--{flag} acts on masks, but the images are read without "
                             f"--masks; pass --masks FOLDER or drop --{flag}")


def add_list_flags(group, named: Optional[str] = "keys are") -> None:
    """How a list input's lines are read (``segbeam.file_lists``): the folder they are read
    against, which ``named`` (keys, or a shard's example names; None for training, which
    names nothing after them) are taken relative to, and a suffix for lists of IDs."""
    group.add_argument("--input_base", default=None,
                       help=f"With a list input: the folder that relative lines are read "
                            f"against and that {named} taken relative to (default: the "
                            f"list's folder). Every listed path must lie below it." if named
                       else "With a list input: the folder that relative lines are read "
                            "against (default: the list's folder).")
    group.add_argument("--list_suffix", default="",
                       help="With a list input: appended to each line before it is read as a "
                            "path, for a list that names images by ID (a dataset's split "
                            "file): with .jpg, line 2007_000033 names 2007_000033.jpg.")


def add_pairing_flags(group) -> None:
    """File-name suffixes beside the stem an image and its mask share (``Naming``)."""
    group.add_argument("--image_suffix", default=None,
                       help="A suffix image stems carry beside the stem they share with their "
                            "mask, e.g. _leftImg8bit (--dataset cityscapes sets it).")
    group.add_argument("--mask_suffix", default=None,
                       help="The suffix of mask stems, e.g. _gtFine_labelIds; with one, files "
                            "whose stem lacks it are not masks (--dataset cityscapes sets it).")


class _WithoutWorkersFlagNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Discarding unparseable args" not in record.getMessage()


def quiet_workers_flag_warnings() -> None:
    """Drops the warning each worker of ``--direct_running_mode multi_processing`` logs,
    "Discarding unparseable args", that lists every segbeam flag: a worker parses the options
    before segbeam's options class is imported there, and the launcher has checked every
    flag already."""
    logger = logging.getLogger("apache_beam.runners.portability.local_job_service")
    if not any(isinstance(f, _WithoutWorkersFlagNoise) for f in logger.filters):
        logger.addFilter(_WithoutWorkersFlagNoise())


def absolute_local(path: Optional[str]) -> Optional[str]:
    """A local path or glob made absolute against this directory: the workers of a distributed
    runner may run elsewhere, in another working directory. URLs (``gs://``) stay as they are."""
    if path is None or "://" in path:
        return path
    return os.path.abspath(path)


def prepare_cloud_storage(values: Iterable, no_auth: bool = False, dataflow: bool = False,
                          command: str = "run") -> Optional[str]:
    """Before a command touches the ``gs://`` paths among ``values`` (option values or words
    of its command line): Cloud Storage that cannot be reached is a UsageError at once, not
    minutes of the client's retries per file. Where no credentials are found, Cloud Storage
    is read anonymously at once (Beam would, after retries that print tracebacks), and the
    returned warning says so; credentials that were named but fail, or none for the Dataflow
    runner, which cannot start without them, are UsageErrors. ``--no_auth`` asks for no
    credentials, and an emulator (``STORAGE_EMULATOR_HOST``) takes none."""
    paths = storage.gcs_paths(values)
    if not paths:
        return None
    endpoint = storage.cloud_storage_endpoint()
    problem = storage.connection_problem(endpoint)
    if problem:
        raise UsageError(f"{paths[0]} is on Cloud Storage ({endpoint}), which this machine "
                         f"cannot reach: {problem}; check the network (or the proxy, or "
                         f"STORAGE_EMULATOR_HOST), or use local paths")
    missing = storage.settle_credentials(no_auth)
    if missing is None:
        return None
    reason, named = missing
    if named or dataflow:
        raise UsageError(f"Google Cloud credentials for {paths[0]}: {reason}; run `gcloud auth "
                         f"application-default login` or set GOOGLE_APPLICATION_CREDENTIALS to "
                         f"a service account key")
    quiet = "; --no_auth says that is meant" if command == "run" else ""
    return (f"no Google Cloud credentials were found, so {paths[0]} is read anonymously, "
            f"which reaches public buckets only (for private ones run `gcloud auth "
            f"application-default login`){quiet}")
