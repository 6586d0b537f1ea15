"""Training a registered architecture on image/mask pairs (``segbeam train``), and the minimal
in-memory loop the demo uses.

Feeding is a ``keras.utils.PyDataset`` of numpy arrays, not ``tf.data``, so training runs under
any Keras backend (TensorFlow, JAX on a GPU, PyTorch). Loss: softmax cross-entropy on logits,
pixels weighted by class weights, the ignore index skipped. mIoU is reported every epoch on the
training batches and, when there is a validation set, on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from typing import Optional

import keras
import numpy as np

from segbeam.decode import DARK_HIGH_DEPTH_PEAK, dark_high_depth_warning, \
    mask_turned_apart_warning
from segbeam.labels import MaskLabels, format_values, mostly_ignored
from segbeam.layout import check_writable_folder
from segbeam.models.training_config import OPTIMIZERS, TrainingConfig, parse_class_weights
from segbeam.models.training_record import TRAINING_JSON
from segbeam.models.training_resume import CHECKPOINT, HISTORY, atomic_checkpoint, \
    check_same_pairs, epochs_done, load_checkpoint, record_start, resume_point
from segbeam.run_lock import claim_output, release_output

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainingResult:
    model_path: str
    best_path: Optional[str]
    history: dict[str, list[float]]
    class_weights: Optional[list[float]]
    train_items: int
    val_items: int
    seconds: float
    stopped_early: bool


class WallTimeBudget(keras.callbacks.Callback):
    """Stops training after the epoch in which ``minutes`` of wall time have passed."""

    def __init__(self, minutes: Optional[float]):
        super().__init__()
        self.minutes = minutes
        self.start = time.monotonic()
        self.stopped = False

    def on_epoch_end(self, epoch, logs=None):
        if self.minutes is not None and time.monotonic() - self.start > self.minutes * 60:
            self.stopped = True
            self.model.stop_training = True


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite (a learning rate too
    high, an overflow): the weights are no longer numbers then, and each later epoch trained
    on, reported a chance-level mIoU and saved a model of NaN without a word. ``diverged``:
    (epoch, batch) where it happened, counted from 0."""

    def __init__(self):
        super().__init__()
        self.epoch, self.diverged = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged = (self.epoch, batch)
            self.model.stop_training = True


def _usable(items, labels: MaskLabels, role: str = "training"):
    """Decodes every pair once: drops (with a warning naming each) those that fail, or whose
    mask holds unexpected values under ``labels.strict``; counts unexpected pixels otherwise
    (a warning: they carry no weight), and class pixels for the weights and the log. Returns
    the pairs kept, the class statistics, the count dropped and each kept pair's count of
    scored pixels. ``role`` (training, validation) names the pairs in messages."""
    from segbeam.training_items import decode_item, describe
    from segbeam.models.data import class_statistics

    kept, masks, dropped = [], [], []
    unexpected, unexpected_pairs, values, ignored, pixels, dark = 0, 0, set(), 0, 0, 0
    turned, scored_in = 0, []
    for item in items:
        try:
            decoded = decode_item(item, colour_masks=labels.colours is not None)
            mask, count, found = labels.prepare(decoded.mask)
        except (OSError, ValueError) as error:
            dropped.append(f"{describe(item)}: {error}")
            continue
        dark += 0 < decoded.high_depth_peak < DARK_HIGH_DEPTH_PEAK
        turned += decoded.turned_apart
        unexpected, unexpected_pairs = unexpected + count, unexpected_pairs + bool(count)
        scored = int(np.count_nonzero((mask < labels.num_classes) & (mask != labels.ignore_index)))
        ignored, pixels = ignored + mask.size - scored - count, pixels + mask.size
        scored_in.append(scored)
        values.update(found)
        kept.append(item)
        masks.append(mask)
    for reason in dropped:
        LOG.warning("training pair skipped: %s", reason)
    if dark:
        LOG.warning("training: %s", dark_high_depth_warning(dark))
    if turned:
        LOG.warning("training: %s", mask_turned_apart_warning(turned, "learned from"))
    if unexpected:
        LOG.warning("%d mask pixels in %d %s pairs hold values %s that are not %s; they "
                    "carry no weight (--strict_labels skips such pairs)", unexpected,
                    unexpected_pairs, role, format_values(sorted(values)),
                    labels.describe_expected())
    mostly = mostly_ignored(ignored, pixels, labels.ignore_index, "carry no weight")
    if mostly:
        LOG.warning(mostly)
    if not kept:
        raise ValueError(f"none of the {len(items)} {role} pairs could be read; first "
                         f"problem: {dropped[0] if dropped else 'none found'}")
    _check_scored(scored_in, role, values)
    return kept, class_statistics(masks, labels.num_classes), len(dropped), scored_in


def _check_scored(scored_in: list, role: str, values=()) -> None:
    """Pairs none of whose mask pixels is a class to score: training would learn nothing and
    validation report a loss and an mIoU of 0 over no pixel, choosing best.keras on them."""
    if not sum(scored_in):
        found = f" ({format_values(sorted(values))})" if values else ""
        raise ValueError(f"none of the {len(scored_in)} {role} pairs has a mask pixel to "
                         f"score: every pixel is the ignore index or a value that is not a "
                         f"class{found}; check --num_classes, --ignore_index and --label_map "
                         f"against the masks")


def miou_metric(num_classes: int, ignore_index: Optional[int]) -> keras.metrics.Metric:
    """The mIoU reported while training (on logits), scored as ``segbeam run`` scores: pixels
    labelled ``ignore_index`` are skipped, and an ignore index that is also a class id has no
    IoU of its own (Keras's ``MeanIoU`` would average in a 0 wherever it is predicted)."""
    scored = [c for c in range(num_classes) if c != ignore_index]
    return keras.metrics.IoU(num_classes, scored, name="miou", ignore_class=ignore_index,
                             sparse_y_true=True, sparse_y_pred=False)


def _check_validation_flags(config: TrainingConfig) -> None:
    """One way to say what to validate on, before any data is read."""
    if bool(config.val_images) != bool(config.val_masks):
        raise ValueError("--val_images and --val_masks go together: pass both, or neither")
    if config.val_images and config.val_split > 0:
        raise ValueError("pass --val_images/--val_masks or --val_split, not both (--val_split "
                         "holds part of the training pairs out instead)")


def _warn_shared(items: list, val_items: list) -> None:
    """A validation set that holds training pairs scores images the model learnt from: its
    mIoU (and best.keras, chosen by it) says so."""
    from segbeam.training_items import describe

    shared = sorted({describe(item) for item in items} & {describe(item) for item in val_items})
    if shared:
        LOG.warning("%d of the %d validation pairs are also training pairs (first: %s); their "
                    "validation figures score images the model trains on", len(shared),
                    len(val_items), shared[0])


def _check_input_size(config: TrainingConfig) -> None:
    """Builds the architecture once at ``--input_size`` before any data is read, so that a
    size it cannot take, or maps to labels of another size, is one line, not an error at the
    first batch (the model trained is built for any size)."""
    from segbeam import models

    built = models.create_model_for_size(config.model, config.num_classes, config.input_size)
    produced = tuple(built.output_shape[1:3])
    if produced != tuple(config.input_size):
        raise ValueError(f"model {config.model} maps --input_size {config.input_size[0]}x"
                         f"{config.input_size[1]} to {produced[0]}x{produced[1]} labels; "
                         f"choose a size it keeps, such as a multiple of 32")


def _check_init_weights(config: TrainingConfig) -> None:
    path = config.init_weights
    if not path:
        return
    if "://" not in path and not os.path.isfile(path):
        raise ValueError(f"--init_weights {path!r} is no file; check the path")
    if config.backbone_weights:
        raise ValueError("--init_weights replaces every weight, the backbone's too: drop "
                         "--backbone_weights")


def _init_weights(model, config: TrainingConfig) -> None:
    """Loads --init_weights into the freshly built ``model``, whole or not at all."""
    from segbeam.models.formats import fetched, local_file
    from segbeam.models.source import load_all_weights

    with fetched(config.init_weights, local_file) as local:
        load_all_weights(model, local, config.init_weights, config.model, "--init_weights")


def _optimizer(config: TrainingConfig):
    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.learning_rate)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
    raise ValueError(f"--optimizer must be one of {OPTIMIZERS}; received {config.optimizer!r}")


# What train() writes under --output; an earlier training's are replaced only when asked.
OUTPUTS = ("model.keras", "best.keras", "checkpoints/last.keras", "history.csv", TRAINING_JSON)


def _prepare_output(config: TrainingConfig, cleanup: contextlib.ExitStack) -> None:
    """Refuses an --output that holds an earlier training's files (its model would be lost,
    and a best.keras it left would stand beside a new training without validation); with
    ``overwrite``, removes them first. An --output that is a file or cannot be written is
    refused too, before any work, and so is one that another training or run is writing
    (``segbeam.run_lock``: this training holds it until it ends)."""
    check_writable_folder(config.output)
    cleanup.callback(release_output, config.output)
    claim_output(config.output)
    if config.resume:  # its files are the training going on
        return
    found = [name for name in OUTPUTS if os.path.exists(os.path.join(config.output, name))]
    if found and not config.overwrite:
        raise ValueError(f"--output {config.output} holds an earlier training "
                         f"({', '.join(found)}); pass another --output, or --overwrite to "
                         f"replace it")
    for name in found:
        os.remove(os.path.join(config.output, name))


def train(config: TrainingConfig) -> TrainingResult:
    """Trains ``config.model`` and writes, under ``config.output``: ``model.keras`` (the final
    model), ``best.keras`` (best validation mIoU, when there is validation data),
    ``checkpoints/last.keras`` (after every epoch), ``history.csv`` and ``training.json``."""
    with contextlib.ExitStack() as cleanup:
        return _train(config, cleanup)


def _train(config: TrainingConfig, cleanup: contextlib.ExitStack) -> TrainingResult:
    from segbeam import models
    from segbeam.dataset import Naming
    from segbeam.training_items import find_items, find_training_pairs
    from segbeam.models.data import SegmentationDataset, median_frequency_weights

    explicit_weights = parse_class_weights(config.class_weights, config.num_classes)
    _optimizer(config)  # flag errors before any data is read
    _check_validation_flags(config)
    _check_input_size(config)
    _check_init_weights(config)
    keras.utils.set_random_seed(config.seed)
    # Built (its backbone weights loaded) before any data is read: its errors come first. Its
    # --init_weights load before --overwrite clears --output, where they may lie.
    resumed = None
    if config.resume:  # held first: no other training may write the checkpoint being read
        _prepare_output(config, cleanup)
        resumed = resume_point(config)
        model = load_checkpoint(config)
    else:
        model = models.create_model(config.model, num_classes=config.num_classes,
                                    input_size=None, backbone_weights=config.backbone_weights)
        if config.init_weights:
            _init_weights(model, config)
        _prepare_output(config, cleanup)
    labels = MaskLabels(config.num_classes, config.ignore_index, config.strict_labels,
                        config.label_map, config.mask_colours)
    naming, lists = Naming(config.image_suffix, config.mask_suffix), config.list_reading()
    items, (pixels, present_in), dropped, scored_in = _usable(find_items(
        config.images, config.masks, config.shards, config.containers, naming, *lists), labels)
    if config.val_images:
        val_items = _usable(find_training_pairs(config.val_images, config.val_masks, naming,
                                                *lists), labels, "validation")[0]
        _warn_shared(items, val_items)
    elif config.val_split > 0:
        if not 0 < config.val_split < 1:
            raise ValueError(f"--val_split must be in (0, 1); received {config.val_split}")
        order = np.random.default_rng(config.seed).permutation(len(items))
        count = max(1, round(len(items) * config.val_split))
        if count >= len(items):
            raise ValueError(f"--val_split {config.val_split} holds out all {len(items)} "
                             f"usable pairs, leaving none to train on; lower it, or pass "
                             f"--val_images/--val_masks")
        held_out = sorted(order[:count])
        _check_scored([scored_in[i] for i in held_out], f"--val_split {config.val_split} "
                      f"validation")
        val_items = [items[i] for i in held_out]
        items = [items[i] for i in sorted(order[count:])]
    else:
        val_items = []
    if config.class_weights == "median_frequency":
        class_weights = median_frequency_weights(pixels, present_in)
    else:
        class_weights = explicit_weights
    LOG.info("training on %d pairs (%d unreadable skipped), validating on %d; class weights %s",
             len(items), dropped, len(val_items), class_weights)
    common = dict(size=config.input_size, num_classes=config.num_classes,
                  ignore_index=config.ignore_index, labels=labels, workers=config.workers,
                  use_multiprocessing=False)
    train_data = SegmentationDataset(
        items, config.batch_size, class_weights=class_weights, augment=config.augment,
        scale_range=(config.scale_min, config.scale_max), flip=config.flip, shuffle=True,
        seed=config.seed, **common)
    val_data = SegmentationDataset(val_items, config.batch_size, **common) if val_items \
        else None

    ignore = config.ignore_index
    done = 0
    if resumed:  # compiled as it was saved: its optimizer state goes on
        check_same_pairs(config, items, val_items)
        done = epochs_done(model, len(train_data), config)
        train_data.start_at_epoch(done)
    else:
        model.compile(
            optimizer=_optimizer(config),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                            ignore_class=ignore),
            metrics=[miou_metric(config.num_classes, ignore)])
        os.makedirs(os.path.join(config.output, "checkpoints"), exist_ok=True)
        record_start(config, items, val_items)
    budget, guard = WallTimeBudget(config.max_minutes), DivergenceGuard()
    best_path = os.path.join(config.output, "best.keras") if val_data else None
    callbacks = [
        guard,
        atomic_checkpoint(os.path.join(config.output, CHECKPOINT)),
        keras.callbacks.CSVLogger(os.path.join(config.output, HISTORY), append=bool(resumed)),
        budget,
    ]
    if best_path:
        callbacks.append(atomic_checkpoint(best_path, monitor="val_miou",
                                           best=resumed.best_val_miou if resumed else None))
    start = time.monotonic()
    history = model.fit(train_data, validation_data=val_data, epochs=config.epochs,
                        initial_epoch=done, callbacks=callbacks, verbose=config.verbose)
    seconds = time.monotonic() - start
    if guard.diverged:
        epoch, batch = guard.diverged
        raise ValueError(f"training diverged: the loss became NaN or infinite at epoch "
                         f"{epoch + 1}, batch {batch + 1}, and the weights with it; model.keras "
                         f"was not written ({CHECKPOINT} holds the last epoch whose loss was "
                         f"finite, if one was); lower --learning_rate ({config.learning_rate:g}) "
                         f"and train again with --overwrite")
    model_path = os.path.join(config.output, "model.keras")
    model.save(model_path)
    earlier = resumed.history if resumed else {}
    result = TrainingResult(
        model_path=model_path, best_path=best_path,
        history={k: [float(v) for v in earlier.get(k, [])[:done] + list(values)]
                 for k, values in history.history.items()},
        class_weights=None if class_weights is None else [float(w) for w in class_weights],
        train_items=len(items), val_items=len(val_items), seconds=round(seconds, 1),
        stopped_early=budget.stopped)
    with open(os.path.join(config.output, TRAINING_JSON), "w") as handle:
        json.dump({"config": dataclasses.asdict(config), "result": dataclasses.asdict(result),
                   "backend": keras.backend.backend(), "keras": keras.__version__}, handle,
                  indent=2)
    return result


def fit_on_arrays(model, images: np.ndarray, masks: np.ndarray, *, epochs: int = 10,
                  batch_size: int = 16, learning_rate: float = 1e-2,
                  ignore_index: Optional[int] = None, verbose: int = 0) -> list[float]:
    """Trains a logits model on in-memory arrays with softmax cross-entropy; pixels equal to
    ``ignore_index`` carry no weight. Returns the loss after each epoch."""
    if images.shape[:3] != masks.shape:
        raise ValueError(f"images {images.shape} and masks {masks.shape} disagree")
    weights = np.ones(masks.shape, dtype=np.float32)
    labels = masks.astype(np.int32)
    if ignore_index is not None:
        ignored = labels == ignore_index
        weights[ignored] = 0.0
        labels[ignored] = 0
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(images.astype(np.float32), labels, sample_weight=weights,
                        epochs=epochs, batch_size=batch_size, shuffle=True, verbose=verbose)
    return [float(v) for v in history.history["loss"]]
