"""``segbeam train``: train a registered architecture on images + masks and save a ``.keras``
model that ``segbeam run --model`` loads.

Example (SegNet-Basic on CamVid at half resolution, SegNet's class weights)::

    segbeam train --model segnet_basic --images camvid/train --masks camvid/trainannot \\
        --val_images camvid/val --val_masks camvid/valannot --num_classes 11 \\
        --ignore_index 11 --input_size 180x240 --class_weights median_frequency \\
        --epochs 30 --output runs/segnet_basic
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from segbeam.containers import ContainerFields, container_format
from segbeam.dataset_presets import DATASETS, resolve_convention
from segbeam.file_lists import default_base, is_list
from segbeam.pipeline.flags import CommandParser, add_container_flags, add_list_flags, \
    add_pairing_flags, check_container_flags, check_images_match, check_list_input, \
    check_masks_match, list_base, reject_repeated_flags
from segbeam.models.training_config import OPTIMIZERS, TrainingConfig
from segbeam.pipeline.exit_codes import usage_error

DEFAULTS = TrainingConfig(model="", num_classes=0, output="", input_size=(0, 0))


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="segbeam train", allow_abbrev=False,
        description="Train a registered segmentation architecture on image/mask pairs and "
                    "save a .keras model for `segbeam run --model`.")
    data = parser.add_argument_group("data")
    data.add_argument("--images", help="training images: a folder or a glob, or a list of "
                                       "image paths (.txt, one per line, relative to its "
                                       "folder or --input_base)")
    data.add_argument("--masks", help="training masks (class-id PNGs, paired with images by "
                                      "file stem): a folder or a glob")
    data.add_argument("--shards", help="instead of --images/--masks: a glob of TFRecord "
                                       "shards as `segbeam shard` writes them, of Parquet "
                                       "shards (with --mask_column) or of uncompressed "
                                       "WebDataset .tar shards (with --mask_ext)")
    add_container_flags(data, key_column=False)
    add_pairing_flags(data)
    add_list_flags(data, named=None)
    data.add_argument("--val_images", help="validation images (folder, glob or .txt list)")
    data.add_argument("--val_masks", help="validation masks (folder or glob)")
    data.add_argument("--val_split", type=float, default=DEFAULTS.val_split,
                      help="without --val_images: hold out this fraction of the training "
                           "pairs for validation (default: none)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="architecture name (see `segbeam "
                                                      "models`); to start from a saved model "
                                                      "of one, add --init_weights PATH")
    model.add_argument("--num_classes", type=int, default=None,
                       help="classes to predict (required unless --dataset gives them)")
    model.add_argument("--dataset", default=None, choices=tuple(DATASETS),
                       help="a dataset's label conventions: class count, ignore index and "
                            "label map (explicit flags override them)")
    model.add_argument("--input_size", required=True,
                       help="training crop size, HxW or N (e.g. 180x240)")
    model.add_argument("--backbone_weights", default=None,
                       help="'imagenet' (downloads on first use) or a local weights file for "
                            "the backbone; default: random initialisation")
    model.add_argument("--init_weights", default=None, metavar="PATH",
                       help="start from the weights of a saved model (.keras) or weights file "
                            "(.weights.h5) of this architecture and class count, e.g. an "
                            "earlier training's best.keras; the optimizer starts afresh "
                            "(--resume goes on with a stopped training instead)")
    fit = parser.add_argument_group("optimisation")
    fit.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size)
    fit.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    fit.add_argument("--max_minutes", type=float, default=None,
                     help="stop after the epoch in which this much wall time has passed")
    fit.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer,
                     help="adam, or sgd with --momentum")
    fit.add_argument("--learning_rate", type=float, default=DEFAULTS.learning_rate)
    fit.add_argument("--momentum", type=float, default=DEFAULTS.momentum)
    fit.add_argument("--class_weights", default=DEFAULTS.class_weights,
                     help="'none', 'median_frequency' (SegNet's balancing, computed from the "
                          "training masks) or one comma-separated weight per class")
    fit.add_argument("--ignore_index", type=int, default=None,
                     help="mask value that carries no loss and is left out of mIoU (e.g. 11 "
                          "for CamVid's void, 255 for VOC)")
    fit.add_argument("--label_map", default=None,
                     help="stored mask value -> class id, applied to every mask first: inline "
                          "(1:0,2:1,3:2,0:ignore), or a .json / .csv file; values it does not "
                          "map count as unexpected; none: the masks hold class ids (a "
                          "--dataset preset's map is not applied)")
    fit.add_argument("--mask_palette", default=None,
                     help="colour-coded (RGB) masks: a .json or .csv file of colour -> stored "
                          "value (see `segbeam run --help`)")
    fit.add_argument("--strict_labels", action="store_true",
                     help="skip pairs whose masks hold values that are neither a class nor "
                          "--ignore_index (by default they are counted, warned about and "
                          "carry no weight)")
    fit.add_argument("--no_augment", dest="augment", action="store_false",
                     help="resize every pair to --input_size instead of random scale/crop/flip")
    fit.add_argument("--no_flip", dest="flip", action="store_false",
                     help="no random left-right flips")
    fit.add_argument("--scale_min", type=float, default=DEFAULTS.scale_min,
                     help="smallest random scale before cropping")
    fit.add_argument("--scale_max", type=float, default=DEFAULTS.scale_max,
                     help="largest random scale before cropping")
    fit.add_argument("--workers", type=int, default=DEFAULTS.workers,
                     help="threads that load and augment batches")
    fit.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--output", required=True,
                        help="folder for model.keras, best.keras, checkpoints/, history.csv "
                             "and training.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier training's files under --output (without it, "
                             "such an --output is refused)")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the training under --output from its last checkpoint "
                             "(checkpoints/last.keras, optimizer state included), as if it had "
                             "not stopped: the same command, plus --resume; only --epochs, "
                             "--max_minutes, --workers and --quiet may differ")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    return parser


def _check_ranges(args) -> None:
    """A numeric flag outside its range is an error (a negative --epochs trained nothing and
    wrote an untrained model; a negative --val_split held nothing out), not a silent default."""
    wrong = [f"--{name} must be {rule}; received {getattr(args, name)}"
             for name, rule, fits in (
                 ("epochs", "at least 1", lambda v: v >= 1),
                 ("batch_size", "at least 1", lambda v: v >= 1),
                 ("workers", "at least 1", lambda v: v >= 1),
                 ("learning_rate", "positive", lambda v: v > 0),
                 ("momentum", "in [0, 1)", lambda v: 0 <= v < 1),
                 ("val_split", "in [0, 1)", lambda v: 0 <= v < 1),
                 ("max_minutes", "positive", lambda v: v is None or v > 0),
                 ("seed", f"in 0..{2 ** 32 - 1}", lambda v: 0 <= v < 2 ** 32))
             if not fits(getattr(args, name))]
    if wrong:
        raise ValueError(wrong[0])


def _check_ignored(args) -> None:
    """A flag that the others make void is an error, not a silent no-op: --momentum under
    adam, the augmentation's settings under --no_augment."""
    if args.optimizer != "sgd" and args.momentum != DEFAULTS.momentum:
        raise ValueError(f"--momentum applies to --optimizer sgd; {args.optimizer} takes none: "
                         f"drop --momentum or pass --optimizer sgd")
    if not args.augment:
        void = [flag for flag, changed in (
            ("--no_flip", not args.flip), ("--scale_min", args.scale_min != DEFAULTS.scale_min),
            ("--scale_max", args.scale_max != DEFAULTS.scale_max)) if changed]
        if void:
            raise ValueError(f"{void[0]} sets the random augmentation, which --no_augment turns "
                             f"off: drop one of them")
    if args.resume and args.overwrite:
        raise ValueError("--resume goes on with the training under --output, which --overwrite "
                         "would replace: pass one of them")


def _check_list_flags(args) -> None:
    """--input_base and --list_suffix read the lists (.txt) that --images and --val_images
    name; with neither a list they would change nothing, which is an error. The base must be
    a folder."""
    lists = [path for path in (args.images, args.val_images) if path and is_list(path)]
    if not lists:
        given = [flag for flag, value in (("--input_base", args.input_base),
                                          ("--list_suffix", args.list_suffix)) if value]
        if given:
            raise ValueError(f"{given[0]} applies to a list (.txt) given as --images or "
                             f"--val_images; neither is one: drop it")
    elif args.input_base:
        args.input_base = list_base(args.input_base, "list", lists[0])


def config_from(argv: Optional[Sequence[str]]) -> TrainingConfig:
    from segbeam.geometry import parse_size

    parser = build_parser()
    args = parser.parse_args(argv)
    reject_repeated_flags(sys.argv[1:] if argv is None else argv, parser)
    convention = resolve_convention(args.dataset, args.num_classes, None,
                                    -1 if args.ignore_index is None and not args.dataset
                                    else args.ignore_index, args.label_map, args.mask_palette,
                                    args.image_suffix, args.mask_suffix)
    if convention.num_classes is None:
        raise ValueError("--num_classes is required (or a --dataset preset)")
    if convention.num_classes < 2:
        raise ValueError(f"--num_classes must be at least 2; received {args.num_classes}")
    if not 0 < args.scale_min <= args.scale_max:
        raise ValueError(f"need 0 < --scale_min <= --scale_max; received {args.scale_min}, "
                         f"{args.scale_max}")
    _check_ranges(args)
    _check_ignored(args)
    _check_list_flags(args)
    check_container_flags(container_format(args.shards) or "tfrecord" if args.shards
                          else "images", args)
    values = vars(args)
    del values["dataset"], values["mask_palette"]
    values["containers"] = ContainerFields(
        values.pop("image_column"), values.pop("mask_column"), None, values.pop("mask_ext"),
        values.pop("image_feature"), values.pop("mask_feature"))
    values.update(num_classes=convention.num_classes, ignore_index=convention.ignore_index,
                  label_map=convention.label_map, mask_colours=convention.mask_colours,
                  image_suffix=convention.image_suffix, mask_suffix=convention.mask_suffix,
                  input_size=parse_size(args.input_size))
    values["verbose"] = 0 if values.pop("quiet") else 2
    return TrainingConfig(**values)


def _check_architecture(name: str) -> None:
    """``--model`` names an architecture to build; a saved model's path there was "unknown
    model ... (or pass the path of a saved .keras model)", the advice of ``segbeam run``."""
    import difflib

    from segbeam.models.registry import list_models
    from segbeam.models.source import is_model_path

    known = [spec.name for spec in list_models()]
    if name in known:
        return
    if is_model_path(name):
        raise ValueError(f"{name!r} is a saved model, but segbeam train --model takes an "
                         f"architecture to build ({', '.join(known)}); to train on from the "
                         f"weights of a saved model of one of them, pass that architecture "
                         f"and --init_weights {name}")
    close = difflib.get_close_matches(name, known, n=1)
    raise ValueError(f"unknown model {name!r}" + (f"; did you mean {close[0]}?" if close else
                                                  f"; known architectures: {', '.join(known)}"))


def train_command(argv: Sequence[str]) -> int:
    from segbeam import compat

    try:
        config = config_from(argv)
        for flag, path in (("--images", config.images), ("--masks", config.masks),
                           ("--val_images", config.val_images),
                           ("--val_masks", config.val_masks)):
            if path and flag.endswith("masks"):
                check_masks_match(path, without=None, flag=flag)
            elif path:
                check_images_match(path, flag)
                if is_list(path):  # a list of IDs read as paths: say which suffix to pass
                    check_list_input(path, config.input_base or default_base(path), flag,
                                     config.list_suffix, outside_allowed=True)
        compat.import_keras_quietly()
        _check_architecture(config.model)
        from segbeam.models.training import train

        logging.getLogger("segbeam").setLevel(logging.INFO)
        result = train(config)
    except ValueError as error:
        return usage_error("train", error)
    last = {k: v[-1] for k, v in result.history.items()}
    print(json.dumps({"model": result.model_path, "best": result.best_path,
                      "epochs": len(result.history.get("loss", [])), "seconds": result.seconds,
                      "final": {k: round(v, 4) for k, v in last.items()},
                      "stopped_by_time_budget": result.stopped_early}, indent=2))
    return 0
