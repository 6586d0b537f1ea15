"""Training data: image/mask pairs (found and read by ``segbeam.dataset``, the reader the
pipeline uses too) fed to Keras by a ``keras.utils.PyDataset`` (plain numpy, so training runs
on any backend), with SegNet's median-frequency class weights and flip/scale/crop
augmentation.

The array functions (``resize_pair``, ``augment_pair``, ``median_frequency_weights``) are pure
and tested on their own; ``SegmentationDataset`` only loads, calls them and stacks batches.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import keras
import numpy as np
from PIL import Image

from segbeam.training_items import TrainingItem, load_item
from segbeam.labels import MaskLabels


def resize_pair(image: np.ndarray, mask: Optional[np.ndarray], size: tuple[int, int]
                ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Resizes to (height, width): the image bilinearly, the mask by nearest neighbour (class
    ids must not blend)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image, mask
    resized = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    if mask is None:
        return resized, None
    return resized, np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))


def augment_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int],
                 rng: np.random.Generator, scale_range: tuple[float, float] = (1.0, 1.0),
                 flip: bool = True, crop: bool = True, fill_label: int = 255
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A random training view of ``size``: the pair is first resized to cover ``size`` times
    a random scale, then (with ``crop``) a random ``size`` window is cut, padding with black
    and ``fill_label`` (the ignore id) where the scaled pair is smaller, or (without ``crop``)
    resized to ``size``; then flipped left-right at random."""
    height, width = size
    scale = rng.uniform(*scale_range)
    if crop:
        fit = max(height / image.shape[0], width / image.shape[1]) * scale
        scaled_h = max(1, round(image.shape[0] * fit))
        scaled_w = max(1, round(image.shape[1] * fit))
        image, mask = resize_pair(image, mask, (scaled_h, scaled_w))
        pad_h, pad_w = max(0, height - scaled_h), max(0, width - scaled_w)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
            mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=fill_label)
        top = int(rng.integers(0, image.shape[0] - height + 1))
        left = int(rng.integers(0, image.shape[1] - width + 1))
        image = image[top:top + height, left:left + width]
        mask = mask[top:top + height, left:left + width]
    else:
        image, mask = resize_pair(image, mask, size)
    if flip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def class_statistics(masks: Sequence[np.ndarray], num_classes: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per class: pixels labelled with it, and pixels of the masks in which it appears."""
    pixels = np.zeros(num_classes, dtype=np.int64)
    present_in = np.zeros(num_classes, dtype=np.int64)
    for mask in masks:
        counts = np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
        pixels += counts
        present_in[counts > 0] += mask.size
    return pixels, present_in


def median_frequency_weights(pixels: np.ndarray, present_in: np.ndarray) -> np.ndarray:
    """SegNet's median-frequency balancing (Eigen and Fergus): ``freq(c)`` = pixels of class c
    divided by the pixels of the images where c is present; weight = median(freq) / freq(c).
    Classes never seen get weight 0."""
    seen = pixels > 0
    if not seen.any():
        raise ValueError("no labelled pixels in the training masks; cannot compute class "
                         "weights")
    frequency = np.zeros(len(pixels), dtype=np.float64)
    frequency[seen] = pixels[seen] / present_in[seen]
    weights = np.zeros(len(pixels), dtype=np.float64)
    weights[seen] = np.median(frequency[seen]) / frequency[seen]
    return weights


def weight_table(class_weights: Optional[np.ndarray], num_classes: int,
                 ignore_index: Optional[int]) -> np.ndarray:
    """A lookup from every uint8 label value to its pixel weight: the class weights (ones if
    none) for 0..C-1, zero for the ignore index and for any value outside 0..C-1."""
    table = np.zeros(256, dtype=np.float32)
    table[:num_classes] = 1.0 if class_weights is None else class_weights
    if ignore_index is not None and 0 <= ignore_index < 256:
        table[ignore_index] = 0.0
    return table


class SegmentationDataset(keras.utils.PyDataset):
    """Batches of (raw RGB float32 NxHxWx3, labels int32 NxHxW, pixel weights float32 NxHxW).

    Masks go through ``labels``' label map first, where it has one. Labels outside 0..C-1 (the
    ignore index, crop padding) get weight 0 and are mapped to the ignore index (or 0 when
    there is none) so that the loss and metric can skip them. With ``augment``, each epoch
    sees a new random view of every pair (seeded by epoch, so runs repeat).
    """

    def __init__(self, items: Sequence[TrainingItem], batch_size: int, size: tuple[int, int],
                 num_classes: int, ignore_index: Optional[int],
                 class_weights: Optional[np.ndarray] = None, augment: bool = False,
                 scale_range: tuple[float, float] = (1.0, 1.0), flip: bool = True,
                 shuffle: bool = False, seed: int = 0, labels: Optional[MaskLabels] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.labels = labels
        if not items:
            raise ValueError("a training dataset needs at least one image/mask pair")
        self.items = list(items)
        self.batch_size = batch_size
        self.size = tuple(size)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.table = weight_table(class_weights, num_classes, ignore_index)
        self.augment, self.scale_range, self.flip = augment, scale_range, flip
        self.shuffle, self.seed = shuffle, seed
        self._epoch = 0
        self._order = np.arange(len(self.items))
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def start_at_epoch(self, epoch: int) -> None:
        """Serves epoch ``epoch`` next, in the order and with the views an uninterrupted
        training would have had (a resumed training)."""
        self._epoch = epoch
        self.on_epoch_end()

    def on_epoch_end(self):
        if self.shuffle:
            self._order = np.random.default_rng((self.seed, self._epoch)).permutation(
                len(self.items))
        self._epoch += 1

    def __getitem__(self, index: int):
        chosen = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng((self.seed, self._epoch, index))
        fill = self.ignore_index if self.ignore_index is not None and 0 <= self.ignore_index \
            < 256 else 255
        images, labels = [], []
        for position in chosen:
            colours = self.labels is not None and self.labels.colours is not None
            image, mask = load_item(self.items[position], colour_masks=colours)
            if self.labels is not None and (self.labels.label_map is not None or colours):
                mask = self.labels.prepare(mask)[0]
            if self.augment:
                image, mask = augment_pair(image, mask, self.size, rng, self.scale_range,
                                           self.flip, fill_label=fill)
            else:
                image, mask = resize_pair(image, mask, self.size)
            images.append(image)
            labels.append(mask)
        labels = np.stack(labels)
        weights = self.table[labels]
        labels = labels.astype(np.int32)
        # Values that are not classes carry no weight; the loss and metric skip the ignore id.
        labels[labels >= self.num_classes] = (self.ignore_index if self.ignore_index
                                              is not None else 0)
        return np.stack(images).astype(np.float32), labels, weights
