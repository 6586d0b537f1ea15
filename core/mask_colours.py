"""Colour-coded masks (CamVid's colour labels, Cityscapes ``*_color.png``, CIHP's colour maps):
each pixel's exact colour names a stored value, which then goes through the label map like a
value read from a class-id mask. A colour the palette does not hold cannot be scored: such
pixels are counted as unexpected, with the colour, never guessed. Pure numpy.

An unexpected colour is reported as the integer ``256 + 0xRRGGBB``: mask values are 0..255, so
the two kinds never mix, and ``format_value`` writes it back as ``#rrggbb``.
"""

from __future__ import annotations

import json
from typing import Optional

import numpy as np

from segbeam.masks_png import voc_palette

COLOUR_CODE_BASE = 256
_VOC = voc_palette()  # built once: read_palette_mask compares every palette mask with it
_VOC.flags.writeable = False


def colour_code(red: int, green: int, blue: int) -> int:
    return COLOUR_CODE_BASE + (red << 16 | green << 8 | blue)


def format_value(value: int) -> str:
    """A stored value as itself; an unexpected colour as ``#rrggbb``."""
    return f"#{value - COLOUR_CODE_BASE:06x}" if value >= COLOUR_CODE_BASE else str(value)


def decode_colours(rgb: np.ndarray, colours: tuple) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(HxW uint8 stored values, HxW bool of pixels whose colour ``colours`` lacks, the codes of
    those colours) for an HxWx3 uint8 mask; ``colours`` holds ((r, g, b), value) pairs."""
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) \
        | rgb[..., 2].astype(np.int32)
    keys = np.array([r << 16 | g << 8 | b for (r, g, b), _ in colours], dtype=np.int32)
    order = np.argsort(keys)
    keys, values = keys[order], np.array([v for _, v in colours], dtype=np.uint8)[order]
    index = np.clip(np.searchsorted(keys, packed), 0, len(keys) - 1)
    unknown = keys[index] != packed
    stored = np.where(unknown, 0, values[index]).astype(np.uint8)
    codes = tuple(int(c) + COLOUR_CODE_BASE for c in np.unique(packed[unknown]))
    return stored, unknown, codes


def read_palette_mask(mask: np.ndarray, colours: tuple, what: str = "mask") -> np.ndarray:
    """Reads a palette PNG where a colour map is configured: an HxWx4 mask (each pixel's
    palette colour, then its index; ``decode.decode_mask``) becomes HxW indices or HxWx3
    colours, whichever the mask means.

    Indices (PASCAL VOC's convention) where both readings give the same values, where the
    palette is only for viewing (VOC's colour map, or grey levels equal to the indices) or
    where no colour it uses is one of ``colours``. Colours where every colour it uses is one
    of ``colours`` and they name other values than the indices: a colour-coded mask saved as
    a palette PNG, whose indices are arbitrary. A mask between the two (some colours known
    and naming other values, some not) is refused, since either reading could be wrong.
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[mask[..., 3].ravel()] = mask[..., :3].reshape(-1, 3)  # one colour per index
    indices = np.flatnonzero(np.bincount(mask[..., 3].ravel(), minlength=256)).astype(np.uint8)
    used = palette[indices]  # the palette colour of each index the mask uses
    if np.array_equal(used, _VOC[indices]) or (used == indices[:, None]).all():
        return np.ascontiguousarray(mask[..., 3])
    stored, unknown, _ = decode_colours(used[np.newaxis], colours)
    disagree = ~unknown[0] & (stored[0] != indices)
    if not disagree.any():
        return np.ascontiguousarray(mask[..., 3])
    if not unknown.any():
        return np.ascontiguousarray(mask[..., :3])
    index, value, (red, green, blue) = indices[disagree][0], stored[0][disagree][0], \
        used[disagree][0]
    raise ValueError(
        f"{what} is a palette PNG that reads two ways: its index {index} is drawn "
        f"#{red:02x}{green:02x}{blue:02x}, the mask colour of value {value}, but "
        f"{int(unknown.sum())} of the colours it uses are no mask colour; convert it to RGB "
        f"to read it by colour, or to a grayscale (L) PNG to read its indices")


def _rgb(text: str) -> tuple[int, int, int]:
    text = text.strip()
    if text.startswith("#") and len(text) == 7:
        rgb = tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
    else:
        rgb = tuple(int(part) for part in text.replace(" ", "").split(","))
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(text)
    return rgb


def parse_mask_palette(spec: Optional[str]) -> Optional[tuple]:
    """``--mask_palette FILE``: JSON (``{"#804080": 0, "0,0,0": 11}``) or CSV (``r,g,b,value``
    or ``#rrggbb,value`` rows; a header row is allowed), colour -> the value a class-id mask
    would store, as sorted ((r, g, b), value) pairs."""
    if not spec:
        return None
    from segbeam.layout import read_bytes

    try:
        text = read_bytes(spec).decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read --mask_palette file {spec}: {error}") from None
    if spec.lower().endswith(".json"):
        try:  # as pairs: a dict would keep the last of a colour given twice, without a word
            items = json.loads(text, object_pairs_hook=list)
        except ValueError:
            items = None
        if not isinstance(items, list) or not all(isinstance(i, tuple) for i in items):
            raise ValueError(f"--mask_palette file {spec} is not a JSON object of "
                             f"COLOUR: VALUE pairs")
    else:
        rows = [[part.strip() for part in line.split(",")]
                for line in text.splitlines() if line.strip()]
        if rows and not (rows[0][0].isdigit() or rows[0][0].startswith("#")):
            rows = rows[1:]  # a header row
        items = [(row[0], row[1]) if len(row) == 2 else
                 (",".join(row[:3]), row[3] if len(row) > 3 else "") for row in rows]
    pairs = {}
    for colour, value in items:
        try:
            value = int(str(value).strip())
            if not 0 <= value <= 255:
                raise ValueError(value)
            rgb = _rgb(str(colour))
        except ValueError:
            raise ValueError(f"--mask_palette entry {colour!r}: {value!r} is not a colour "
                             f"(#rrggbb or r,g,b) and a mask value 0..255") from None
        if pairs.get(rgb, value) != value:
            raise ValueError(f"--mask_palette gives colour {rgb} twice, as {pairs[rgb]} and "
                             f"as {value}; name each colour once")
        pairs[rgb] = value
    if not pairs:
        raise ValueError(f"--mask_palette {spec} holds no colours")
    return tuple(sorted(pairs.items()))
