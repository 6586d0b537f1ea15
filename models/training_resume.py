"""``segbeam train --resume``: going on with a training that stopped (``--max_minutes``, an
interrupted or preempted machine) from its last checkpoint, optimizer state included, as if it
had not stopped.

A training writes the settings it started with beside its checkpoints
(``checkpoints/config.json``); a resume refuses other settings (a different learning rate, other
data) rather than mix two trainings in one model. Only the settings that do not change what is
learnt may differ: ``--epochs`` (the total to reach), ``--max_minutes``, ``--workers`` and
``--quiet``, and ``--output`` (the folder may have been moved). Paths compare as the files they
name, however spelled. So do the pairs the flags name (``checkpoints/pairs.json``): files added
to a folder or a list edited since the start are refused too.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
from typing import NamedTuple, Optional

from segbeam.models.training_config import TrainingConfig

CHECKPOINT = os.path.join("checkpoints", "last.keras")
STARTED_WITH = os.path.join("checkpoints", "config.json")
STARTED_ON = os.path.join("checkpoints", "pairs.json")
HISTORY = "history.csv"
# Settings a resume may change: how long and how fast, not what is learnt; and where the
# training's folder is (it may have been moved: a resume reads whatever --output names).
FREE_TO_CHANGE = ("epochs", "max_minutes", "workers", "verbose", "resume", "overwrite",
                  "output")
# Settings that name files: compared as the files they name, not as spelled.
# Every setting at its default: what a training started before a setting existed had.
_DEFAULTS = TrainingConfig(model="", num_classes=0, output="", input_size=(0, 0))
_PATHS = ("model", "images", "masks", "shards", "val_images", "val_masks", "backbone_weights",
          "init_weights", "input_base")


class ResumePoint(NamedTuple):
    """A stopped training's history so far (``history.csv``) and the best validation mIoU it
    reached (None without validation). The epochs it finished are counted from the
    checkpoint's optimizer steps (``epochs_done``), which the history may lag by one where
    the machine stopped between the two writes."""

    history: dict[str, list[float]]
    best_val_miou: Optional[float]


def _settings(config: TrainingConfig) -> dict:
    """The settings as JSON keeps them (tuples as lists), so that a read-back file compares,
    with local paths made absolute and normal (``_as_file``)."""
    return _with_files(json.loads(json.dumps(dataclasses.asdict(config))))


def _with_files(settings: dict) -> dict:
    return {name: _as_file(value) if name in _PATHS else value
            for name, value in settings.items()}


def _as_file(value):
    """A local path (or glob) absolute and normal, so that ``data/x`` and ``./data//x`` compare
    equal; a remote one without a trailing slash; a name that is no path (``unet``,
    ``imagenet``) as it is."""
    if not isinstance(value, str) or not value:
        return value
    if "://" in value:
        return value.rstrip("/")
    if "/" in value or os.path.exists(value):
        return os.path.normpath(os.path.abspath(value))
    return value


def record_start(config: TrainingConfig, items: list, val_items: list) -> None:
    """Keeps the settings a training starts with beside its checkpoints, and which pairs it
    trains and validates on (``_pairs``)."""
    with open(os.path.join(config.output, STARTED_WITH), "w") as handle:
        json.dump(_settings(config), handle, indent=2)
    with open(os.path.join(config.output, STARTED_ON), "w") as handle:
        json.dump(_pairs(items, val_items), handle, indent=2)


def _pairs(items: list, val_items: list) -> dict:
    """How many training and validation pairs, and a hash of which (each image and mask as
    the file it names): the same flags can name other pairs by the time a training resumes
    (files added to a folder, a list edited)."""
    from segbeam.training_items import describe

    def named(item) -> str:
        return f"{_as_file(describe(item))} {_as_file(getattr(item, 'mask_source', None))}"

    digest = hashlib.sha256()
    for role, group in (("train", items), ("val", val_items)):
        for item in group:
            digest.update(f"{role} {named(item)}\n".encode())
    return {"training_pairs": len(items), "validation_pairs": len(val_items),
            "sha256": digest.hexdigest()}


def check_same_pairs(config: TrainingConfig, items: list, val_items: list) -> None:
    """ValueError where a resumed training would read other pairs than it started with (a
    training from before this record is not checked)."""
    path = os.path.join(config.output, STARTED_ON)
    if not os.path.isfile(path):
        return
    with open(path) as handle:
        started = json.load(handle)
    now = _pairs(items, val_items)
    if now != started:
        raise ValueError(f"--resume goes on with the training as it started, but the flags now "
                         f"name other pairs: {now['training_pairs']} training and "
                         f"{now['validation_pairs']} validation pairs (it started with "
                         f"{started['training_pairs']} and {started['validation_pairs']}, or "
                         f"as many but other files); restore the data it started with, or "
                         f"start a new training")


# Settings whose flag is not their name.
_FLAGS = {"augment": "--no_augment", "flip": "--no_flip", "mask_colours": "--mask_palette",
          "containers": "the shard fields (--image_column, --mask_column, ...)"}


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name)


def resume_point(config: TrainingConfig) -> ResumePoint:
    """Checks that ``config.output`` holds a training to resume under the same settings and
    reads where it stands; ValueError saying what is missing or which flags differ."""
    missing = [name for name in (CHECKPOINT, STARTED_WITH)
               if not os.path.isfile(os.path.join(config.output, name))]
    if missing:
        raise ValueError(f"--resume: --output {config.output} holds no {' or '.join(missing)} "
                         f"of an earlier training to go on from; start it without --resume")
    with open(os.path.join(config.output, STARTED_WITH)) as handle:
        started = _with_files(json.load(handle))  # one written before paths were made so
    now = _settings(config)
    # A setting added since the training started was at its default then.
    started = {**{name: value for name, value in _settings(_DEFAULTS).items()
                  if name not in started}, **started}
    differ = [f"{_flag(name)} {json.dumps(now.get(name))} (it started with "
              f"{json.dumps(started.get(name))})"
              for name in sorted(set(started) | set(now))
              if name not in FREE_TO_CHANGE and started.get(name) != now.get(name)]
    if differ:
        raise ValueError(f"--resume goes on with the training as it started; these settings "
                         f"differ: {'; '.join(differ)}")
    history: dict[str, list[float]] = {}
    path = os.path.join(config.output, HISTORY)
    if os.path.isfile(path):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                for name, value in row.items():
                    if name != "epoch" and value != "NA":  # Keras's CSVLogger: no value
                        history.setdefault(name, []).append(float(value))
    best = max(history["val_miou"]) if history.get("val_miou") else None
    return ResumePoint(history, best)


def atomic_checkpoint(path: str, monitor: Optional[str] = None, best: Optional[float] = None):
    """A callback that saves the model to ``path`` after every epoch by writing a temporary
    file and renaming it: a machine stopped mid-save leaves the previous checkpoint, not a file
    cut short (Keras's ``ModelCheckpoint`` writes in place). With ``monitor``, only an epoch
    whose ``logs[monitor]`` is finite and above every earlier one's (and ``best``, a resumed
    training's best so far) is saved, as ``ModelCheckpoint(save_best_only=True, mode="max")``
    does."""
    import keras

    class AtomicCheckpoint(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = best

        def on_epoch_end(self, epoch, logs=None):
            if not _finite_epoch(self.model, logs):  # diverged: the last good file stays
                return
            if monitor is not None:
                value = (logs or {}).get(monitor)
                if value is None or not math.isfinite(value) or \
                        (self.best is not None and not value > self.best):
                    return
                self.best = float(value)
            temporary = f"{path}.tmp-{os.getpid()}.keras"
            try:
                self.model.save(temporary)
                os.replace(temporary, path)
            finally:
                if os.path.exists(temporary):
                    os.remove(temporary)

    return AtomicCheckpoint()


def _finite_epoch(model, logs: Optional[dict]) -> bool:
    """Whether an epoch ended with a finite loss and finite weights (one that diverged, or
    whose last update did, saves nothing)."""
    import numpy as np

    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
        return False
    return all(np.isfinite(weights).all() for weights in model.get_weights())


def load_checkpoint(config: TrainingConfig):
    """The model of the last finished epoch, compiled, its optimizer state as it was;
    ValueError where the checkpoint cannot be loaded (a machine that stopped while writing
    it)."""
    import keras

    path = os.path.join(config.output, CHECKPOINT)
    try:
        return keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001 - zipfile, h5py and Keras raise their own types
        raise ValueError(f"--resume: {path} cannot be loaded ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); it may have "
                         f"been cut short while written: start again, or from best.keras "
                         f"with --init_weights") from error


def epochs_done(model, steps_per_epoch: int, config: TrainingConfig) -> int:
    """The epochs the checkpointed ``model`` has trained, from its optimizer's step count;
    ValueError where that already reaches ``--epochs``."""
    import keras

    done = int(keras.ops.convert_to_numpy(model.optimizer.iterations)) // steps_per_epoch
    if done >= config.epochs:
        raise ValueError(f"--resume: the training under {config.output} has done {done} of "
                         f"--epochs {config.epochs} already; raise --epochs to train on")
    return done
