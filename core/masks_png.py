"""Label maps as palette PNGs: pixel value = class id, with a colour palette for viewing."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def voc_palette(size: int = 256) -> np.ndarray:
    """PASCAL VOC's colour map (bit-interleaved class ids): a (size, 3) uint8 array."""
    palette = np.zeros((size, 3), dtype=np.uint8)
    for class_id in range(size):
        value, red, green, blue = class_id, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[class_id] = (red, green, blue)
    return palette


_PALETTE_BYTES = voc_palette().tobytes()


def encode_label_png(labels: np.ndarray) -> bytes:
    """Encodes an HxW label map as a palette PNG (uint8) or a 16-bit grayscale PNG (> 256
    classes), pixel values being class ids."""
    height, width = labels.shape
    if labels.dtype == np.uint8:
        image = Image.frombytes("P", (width, height), np.ascontiguousarray(labels).tobytes())
        image.putpalette(_PALETTE_BYTES)
    else:
        image = Image.frombytes("I;16", (width, height), labels.astype("<u2").tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
