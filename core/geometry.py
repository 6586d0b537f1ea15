"""Fitting images of any size to a model's input, and mapping class probabilities back.

Images of mixed sizes must batch together, so each is brought to one canvas size first:

- ``resize``: stretch to the canvas (the aspect ratio changes, every pixel is used);
- ``letterbox``: scale to fit inside the canvas keeping the aspect ratio, pad the rest;
- ``pad``: no scaling; pad to the canvas, which is the batch's largest image rounded up to a
  multiple of the model's stride (for fully-convolutional models that take any size).

A ``Placement`` records where the image landed on the canvas, so that probabilities can be
cropped back and resized to the image's own size. Pure numpy and Pillow.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

RESIZE_MODES = ("resize", "letterbox", "pad")


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"256"`` -> (256, 256); ``"360x480"`` or ``"360,480"`` -> (360, 480) (height, width)."""
    if text is None or text == "":
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"--input_size must be N or HxW with positive integers; received "
                         f"{text!r}")
    return values


class Placement(NamedTuple):
    """The image (height x width) occupies canvas[0:content_height, 0:content_width]."""

    height: int
    width: int
    content_height: int
    content_width: int


def placement_for(height: int, width: int, canvas: tuple[int, int], mode: str) -> Placement:
    """Where an image of the given size goes on a canvas of size ``canvas`` (height, width)."""
    canvas_h, canvas_w = canvas
    if mode == "resize":
        return Placement(height, width, canvas_h, canvas_w)
    if mode == "letterbox":
        scale = min(canvas_h / height, canvas_w / width)
        return Placement(height, width, max(1, min(canvas_h, round(height * scale))),
                         max(1, min(canvas_w, round(width * scale))))
    if mode == "pad":
        if height > canvas_h or width > canvas_w:
            raise ValueError(f"a {height}x{width} image does not fit a {canvas_h}x{canvas_w} "
                             f"canvas without scaling; use --resize_mode resize or letterbox")
        return Placement(height, width, height, width)
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")


def pad_canvas(sizes: Sequence[tuple[int, int]], multiple: int) -> tuple[int, int]:
    """The smallest canvas that holds every (height, width), rounded up to ``multiple``."""
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    return (math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)


def place_batch(images: Sequence[np.ndarray], placements: Sequence[Placement],
                canvas: tuple[int, int]) -> np.ndarray:
    """The HxWx3 uint8 images drawn onto one zero canvas each, as their placements say: an
    (N, h, w, 3) uint8 batch, written in place (one copy per image; zeros only where some
    placement leaves part of its canvas bare)."""
    bare = any((p.content_height, p.content_width) != tuple(canvas) for p in placements)
    batch = (np.zeros if bare else np.empty)((len(images), canvas[0], canvas[1], 3), np.uint8)
    for slot, image, placement in zip(batch, images, placements):
        content = image
        if (placement.content_height, placement.content_width) != image.shape[:2]:
            content = np.asarray(Image.fromarray(image).resize(
                (placement.content_width, placement.content_height), Image.BILINEAR))
        slot[: placement.content_height, : placement.content_width] = content
    return batch


def _linear_weights(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of half-pixel-centre linear interpolation (``align_corners=False``),
    the convention of TensorFlow, PyTorch and Pillow for bilinear resizing."""
    centres = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    centres = np.clip(centres, 0, in_size - 1)
    low = np.floor(centres).astype(np.intp)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, (centres - low).astype(np.float32)


def resize_bilinear(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (h, w, C) float array to (height, width, C), separably: cheap
    for many channels, where resizing each channel as an image would not be."""
    in_h, in_w = values.shape[:2]
    out = values.astype(np.float32, copy=False)
    if in_h != height:
        low, high, frac = _linear_weights(height, in_h)
        frac = frac[:, None, None]
        out = out[low] * (1 - frac) + out[high] * frac
    if in_w != width:
        low, high, frac = _linear_weights(width, in_w)
        frac = frac[None, :, None]
        out = out[:, low] * (1 - frac) + out[:, high] * frac
    return out


def restore_probabilities(canvas_probabilities: np.ndarray, placement: Placement) -> np.ndarray:
    """Crops the image's region out of (h, w, C) canvas probabilities and resizes it back to
    the image's own size: (height, width, C) float32."""
    content = canvas_probabilities[: placement.content_height, : placement.content_width]
    return resize_bilinear(content, placement.height, placement.width)


def plan_batch(sizes: Sequence[tuple[int, int]], mode: str,
               input_size: tuple[int, int] | None, multiple: int = 32
               ) -> tuple[tuple[int, int], list[Placement]]:
    """The canvas for a batch of (height, width) images and each image's placement on it.

    ``resize`` and ``letterbox`` need an input size; ``pad`` uses it when given (a model with a
    fixed input), else the batch's largest image rounded up to ``multiple``.
    """
    if mode in ("resize", "letterbox"):
        if input_size is None:
            raise ValueError(f"--resize_mode {mode} needs an input size: pass --input_size, "
                             f"or use --resize_mode pad with a model that takes any size")
        canvas = tuple(input_size)
    else:
        canvas = tuple(input_size) if input_size else pad_canvas(sizes, multiple)
    return canvas, [placement_for(h, w, canvas, mode) for h, w in sizes]
