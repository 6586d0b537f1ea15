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


def palette_bytes(colours=None) -> bytes:
    """A 256-entry PNG palette: ``colours`` (RGB per class id) first, then VOC's colour map."""
    if not colours:
        return _PALETTE_BYTES
    palette = voc_palette()
    palette[:len(colours)] = np.asarray(colours, dtype=np.uint8)
    return palette.tobytes()


def encode_label_png(labels: np.ndarray, palette: bytes = _PALETTE_BYTES) -> bytes:
    """Encodes an HxW label map as a palette PNG (uint8) or a 16-bit grayscale PNG (> 256
    classes), pixel values being class ids; ``palette`` (``palette_bytes``) colours them for
    viewing."""
    height, width = labels.shape
    if labels.dtype == np.uint8:
        image = Image.frombytes("P", (width, height), np.ascontiguousarray(labels).tobytes())
        image.putpalette(palette)
    else:
        image = Image.frombytes("I;16", (width, height), labels.astype("<u2").tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
