"""The gallery panels of a report (image | ground truth | prediction | CRF): each image and
mask read from where the run found or wrote it, resized to the panel, coloured by class over
the image, and embedded as a JPEG data URI. A panel that cannot be read is shown as missing;
images on Cloud Storage that the report found out of reach (``cloud_storage_unread``) are not
tried."""

from __future__ import annotations

import base64
import io
from typing import Callable, Optional

import numpy as np
from PIL import Image

PANEL_WIDTH = 240


def jpeg_data_uri(array: np.ndarray) -> str:
    """Panels are photographs with overlays: JPEG keeps a report of dozens of them small."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def panel_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, PANEL_WIDTH / width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def colourise(labels: np.ndarray, colours: np.ndarray, image: Optional[np.ndarray],
              valid: int) -> np.ndarray:
    """Labels as colours, blended half-and-half over ``image`` when there is one; ids at or
    above ``valid`` (the ignore index, unknown ids) stay black (or show the image dimmed)."""
    known = labels < valid
    coloured = np.zeros((*labels.shape, 3), np.uint8)
    coloured[known] = colours[labels[known]]
    if image is None:
        return coloured
    blended = (image.astype(np.float32) * 0.5 + coloured * 0.5)
    blended[~known] = image[~known] * 0.3
    return blended.astype(np.uint8)


def read_optional(reader: Callable[[], np.ndarray]) -> Optional[np.ndarray]:
    try:
        return reader()
    except Exception:  # noqa: BLE001 - a panel that cannot be read is shown as missing
        return None


def gallery_panels(entry: dict, colours: np.ndarray) -> list[tuple[str, Optional[str]]]:
    from segbeam.decode import decode_image, decode_mask
    from segbeam.layout import read_bytes

    size = panel_size(entry["height"], entry["width"])

    def read(name: str, decode: Callable, mode: int) -> Optional[np.ndarray]:
        path = entry.get(name)
        if not path or entry.get("cloud_storage_unread") and path.startswith("gs://"):
            return None
        return read_optional(lambda: np.asarray(Image.fromarray(decode(read_bytes(path)))
                                                 .resize(size[::-1], mode)))

    image = read("source", decode_image, Image.BILINEAR)
    valid = len(colours)
    panels = [("image", None if image is None else jpeg_data_uri(image))]
    if entry.get("mask_source"):
        truth = read("mask_source", decode_mask, Image.NEAREST)
        panels.append(("ground truth", None if truth is None else
                       jpeg_data_uri(colourise(truth, colours, image, valid))))
    if entry.get("raw_mask_path"):
        raw = read("raw_mask_path", decode_mask, Image.NEAREST)
        panels.append(("prediction", None if raw is None else
                       jpeg_data_uri(colourise(raw, colours, image, valid))))
    prediction = read("mask_path", decode_mask, Image.NEAREST)
    title = "CRF" if entry.get("raw_mask_path") else \
        "prediction (CRF-refined)" if entry.get("crf_applied") else "prediction"
    panels.append((title, None if prediction is None else
                   jpeg_data_uri(colourise(prediction, colours, image, valid))))
    return panels
