"""Per-image views for people to browse: the image blended with its coloured labels (JPEG),
and the top-class probability as an 8-bit PNG, for finding uncertain regions. Pure numpy and
Pillow."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

OVERLAY_ALPHA = 0.5  # the labels' share of each overlay pixel
OVERLAY_QUALITY = 90


def overlay_jpeg(image: np.ndarray, labels: np.ndarray, colours: Sequence) -> bytes:
    """``image`` (HxWx3 uint8) blended with ``labels`` drawn in ``colours`` (RGB per class id;
    ids beyond the list are drawn black), as JPEG bytes."""
    table = np.zeros((max(int(labels.max()) + 1, len(colours)), 3), dtype=np.float32)
    table[:len(colours)] = np.asarray(colours, dtype=np.float32)
    blended = (1 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * table[labels]
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=OVERLAY_QUALITY)
    return buffer.getvalue()


def confidence_map(probabilities: np.ndarray) -> np.ndarray:
    """The top-class probability of HxWxC probabilities, scaled to 0..255 (uint8)."""
    top = probabilities.max(axis=-1).astype(np.float32)
    return np.clip(np.round(top * 255), 0, 255).astype(np.uint8)


def confidence_png(confidence: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(confidence, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
