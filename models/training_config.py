"""What ``segbeam train`` needs, as a plain dataclass: importing it loads no Keras backend, so
the command's flags are parsed (and ``--help`` answered) before any heavy import."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from segbeam.containers import ContainerFields

OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass
class TrainingConfig:
    """What ``segbeam train`` needs; each field is one of its flags."""

    model: str
    num_classes: int
    output: str
    input_size: tuple[int, int]
    images: Optional[str] = None
    masks: Optional[str] = None
    shards: Optional[str] = None
    containers: ContainerFields = ContainerFields()  # where Parquet / WebDataset shards keep them
    val_images: Optional[str] = None
    val_masks: Optional[str] = None
    input_base: Optional[str] = None  # the folder list lines are read against (--images lists)
    list_suffix: str = ""  # appended to each list line: lists of image IDs
    val_split: float = 0.0
    backbone_weights: Optional[str] = None
    init_weights: Optional[str] = None  # a saved model or weights file of this architecture
    batch_size: int = 8
    epochs: int = 10
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    class_weights: str = "none"  # "none", "median_frequency" or comma-separated numbers
    ignore_index: Optional[int] = None
    strict_labels: bool = False  # skip pairs whose masks hold values that are not classes
    label_map: Optional[tuple] = None  # applied to masks first (segbeam.labels.MaskLabels)
    mask_colours: Optional[tuple] = None  # ((r, g, b), stored value): colour-coded masks
    image_suffix: str = ""  # file-name suffixes beside the shared stem (segbeam.dataset.Naming)
    mask_suffix: str = ""
    augment: bool = True
    flip: bool = True
    scale_min: float = 0.75
    scale_max: float = 1.25
    max_minutes: Optional[float] = None
    workers: int = 2
    seed: int = 0
    verbose: int = 2
    overwrite: bool = False  # replace the files of an earlier training under output
    resume: bool = False  # go on with the training under output from its last checkpoint

    def list_reading(self) -> tuple[Optional[str], str]:
        """How ``--images`` and ``--val_images`` lists are read: (base folder, line suffix)."""
        return self.input_base, self.list_suffix


def parse_class_weights(spec: str, num_classes: int) -> Optional[np.ndarray]:
    """``none`` -> None; ``median_frequency`` -> computed later; else C comma-separated
    numbers."""
    if spec in ("none", "median_frequency"):
        return None
    try:
        values = np.array([float(v) for v in spec.split(",")], dtype=np.float64)
    except ValueError:
        raise ValueError(f"--class_weights must be 'none', 'median_frequency' or {num_classes} "
                         f"comma-separated numbers; received {spec!r}") from None
    if len(values) != num_classes or (values < 0).any():
        raise ValueError(f"--class_weights needs {num_classes} non-negative numbers, one per "
                         f"class; received {len(values)}: {spec!r}")
    return values
