"""Decoding encoded images and masks into arrays: pure functions, no Beam.

Images become HxWx3 uint8 RGB whatever their mode (grayscale, 16-bit, 32-bit float with [0, 1]
read as black to white, palette, RGBA, CMYK), with the EXIF orientation applied. Masks become
HxW uint8 class ids. Anything unusable raises ``InvalidInputError`` with a message that says
what was wrong and what to do.
"""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 100_000_000
LOSSY_FORMATS = ("JPEG", "MPO")  # Pillow's names of lossy-only formats: no mask survives them


def lossy_format(image_format: Optional[str], data: bytes) -> Optional[str]:
    """The name of ``data``'s lossy compression, if it has one (``image_format`` as Pillow
    names it): JPEG always, WebP when its bitstream is VP8 (WebP's lossless one is VP8L)."""
    if image_format in LOSSY_FORMATS:
        return image_format
    if image_format == "WEBP" and _webp_bitstream(data) == b"VP8 ":
        return "lossy WebP"
    return None


def _webp_bitstream(data: bytes) -> Optional[bytes]:
    """The first image chunk's name in a WebP file (b'VP8 ' or b'VP8L'), looking inside an
    extended file's chunks and an animation's first frame."""
    offset, end = 12, len(data)
    while offset + 8 <= end:
        name, size = data[offset:offset + 4], int.from_bytes(data[offset + 4:offset + 8],
                                                             "little")
        if name in (b"VP8 ", b"VP8L"):
            return name
        # An animation frame's own chunks start after its 16-byte header.
        offset += 8 + 16 if name == b"ANMF" else 8 + size + (size & 1)
    return None


class InvalidInputError(ValueError):
    """An input that cannot be used; it becomes a dead letter, the run goes on."""


def _open(data: bytes, what: str, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidInputError(f"{what} is empty (0 bytes); re-export or remove the file")
    try:
        with warnings.catch_warnings():
            # Our own limit below is the one that applies; Pillow's warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise InvalidInputError(f"{what} is too large to decode safely: {error}") from error
    except Image.UnidentifiedImageError as error:
        raise InvalidInputError(
            f"{what} is not in an image format Pillow can identify ({len(data)} bytes, "
            f"starting {data[:8]!r}); check that the file is a JPEG or PNG") from error
    except Exception as error:  # Pillow raises several types for broken headers
        raise InvalidInputError(f"{what} has an unreadable header ({len(data)} bytes; "
                                f"{type(error).__name__}: {error})") from error
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidInputError(
            f"{what} has {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (a possible decompression bomb); raise --max_image_pixels if the "
            f"image is genuine")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Exception as error:
        raise InvalidInputError(
            f"{what} is corrupt or truncated ({type(error).__name__}: {error})") from error
    return image


def _oriented(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not cost us a readable image
        return image


# A 16-bit image (scaled from 0..65535) whose values all stay below this holds 12 bits or
# fewer (or 8-bit data in a 16-bit file): it comes out dark, at most 15 of 255.
DARK_HIGH_DEPTH_PEAK = 4096


def dark_high_depth_warning(count: int) -> str:
    return (f"{count:,} images read as 16-bit hold values below {DARK_HIGH_DEPTH_PEAK} only: "
            f"scaled from 0..65535, they came out dark (at most 15 of 255) and the model saw "
            f"them so; if they hold 8-, 10- or 12-bit data, convert them to 8-bit over their "
            f"own range")


def _to_rgb(image: Image.Image) -> tuple[np.ndarray, int]:
    """(the image as RGB, the peak value of a 16-bit image scaled from 0..65535, else 0)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit (or wider) grayscale: scale its range to 8 bits rather than clipping; a float
        # image in [0, 1] (TIFF's convention for normalised data) as [0, 1].
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0:
            raise InvalidInputError(
                f"image holds {'NaN or infinite' if not np.isfinite(values).all() else 'negative'}"
                f" values, which no intensity reads as; export it as 8- or 16-bit integers, or "
                f"floats in [0, 1]")
        top = 65535.0 if mode.startswith("I;16") or values.max() > 255 else 255.0
        if values.max() > 65535:
            raise InvalidInputError(
                f"image holds values up to {values.max():.6g}, beyond 16 bits (65535), which "
                f"no intensity scale here reads; export it as 8- or 16-bit integers, or "
                f"floats in [0, 1]")
        if mode == "F" and values.max() <= 1:
            top = 1.0
        elif mode == "F" and values.max() < 16:
            raise InvalidInputError(
                f"float image holds values up to {values.max():.6g}: above [0, 1], which is "
                f"read as black to white, yet on the 0..255 scale it would come out dark (at "
                f"most 15 of 255), so neither reading is safe; clip it to [0, 1], or scale "
                f"it to 0..255")
        gray = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2), int(values.max()) if top == 65535 else 0
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels are composited over black, the usual zero padding value.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB")), 0
    return np.asarray(image.convert("RGB")), 0


def _stored_bits(opened: Image.Image, data: bytes) -> Optional[int]:
    """The bits per sample a PNG or TIFF file stores (16 for 16-bit colour), else None."""
    if opened.format == "PNG" and data[12:16] == b"IHDR":
        return data[24]
    bits = getattr(opened, "tag_v2", {}).get(258) if opened.format == "TIFF" else None
    return max(bits) if isinstance(bits, tuple) and bits else bits


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 what: str = "image") -> np.ndarray:
    """Decodes JPEG/PNG (or anything Pillow reads) bytes into an HxWx3 uint8 RGB array; of a
    multi-frame file (animated GIF/PNG/WebP, multi-page TIFF), the first frame."""
    return decode_image_frames(data, max_pixels, what)[0]


def decode_image_frames(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                        what: str = "image") -> tuple[np.ndarray, int]:
    """``decode_image`` and the number of frames the file holds (1 for a still image)."""
    return _decode_image(data, max_pixels, what)[:2]


def _decode_image(data: bytes, max_pixels: int, what: str
                  ) -> tuple[np.ndarray, int, int, int]:
    """(the image, its file's frame count, its peak value on 0..65535 if the file stores 16
    bits per sample, else 0, its EXIF orientation: 1 where it has none)."""
    opened = _open(data, what, max_pixels)
    frames = int(getattr(opened, "n_frames", 1) or 1)
    orientation = _loaded_orientation(opened)
    image = _oriented(opened)
    rgb, peak = _to_rgb(image)
    if not peak and image.mode in ("RGB", "RGBA", "LA") and _stored_bits(opened, data) == 16:
        # Pillow reads 16-bit colour to 8 bits by keeping each value's high byte: the 8-bit
        # peak v stands for 16-bit values of v * 257 (to within the dropped low byte).
        peak = int(rgb.max()) * 257
    array = np.array(rgb, dtype=np.uint8, order="C")  # owned and writable
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f"{what} decoded to an unusable shape {array.shape}")
    return array, frames, peak, orientation


def _loaded_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1-8) of an image already loaded (read from its file, where
    a PNG's tag may follow the pixels, would decode it again), 1 where it has none."""
    try:
        return int(image.getexif().get(0x0112) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: as _oriented, leave it unturned
        return 1


def decode_mask(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                what: str = "mask", colour: bool = False) -> np.ndarray:
    """Decodes a class-id mask into HxW uint8.

    JPEG and lossy WebP masks are refused: lossy compression turns class ids into
    neighbouring ids. So are RGBA and LA masks with any pixel not fully opaque. Palette
    ('P'), grayscale ('L') and bilevel ('1': 0 and 1) masks are read as stored values (for
    a palette PNG the palette index is the class id, as in PASCAL VOC). 16-bit masks are
    accepted when every value fits in 0..255. Colour-coded RGB masks are refused, since
    their colours would need a class map, unless ``colour`` (a mask palette is configured):
    then an RGB(A) mask comes back as HxWx3 uint8, for ``segbeam.labels`` to read through
    the palette, and a palette mask as HxWx4 uint8 (each pixel's palette colour, then its
    index), since either could be what it means (``mask_colours.read_palette_mask``
    decides).
    """
    opened = _open(data, what, max_pixels)
    lossy = lossy_format(opened.format, data)
    if lossy:
        raise InvalidInputError(
            f"{what} is a {lossy} image: its lossy compression changes class ids along "
            f"region edges (into other classes, without a trace), so it cannot be scored or "
            f"trained on; store masks as PNG")
    check_mask_depth(opened, data, what)
    image = _oriented(opened)
    mode = image.mode
    if mode in ("RGBA", "LA"):
        check_opaque(image, what)
    if mode == "P" and colour:
        return _palette_and_indices(image)
    if mode == "1":  # a bilevel mask stores 0 and 1 (Pillow's convert("L") makes 1 255)
        values = np.asarray(image, dtype=np.uint8)
    elif mode in ("P", "L"):
        values = np.asarray(image)
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.int64)
        if values.min() < 0 or values.max() > 255:
            raise InvalidInputError(
                f"{what} holds values {values.min()}..{values.max()}; class ids must fit in "
                f"0..255")
    elif mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"))
        if colour:
            return np.array(rgb, dtype=np.uint8, order="C")
        if not (np.array_equal(rgb[..., 0], rgb[..., 1])
                and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise InvalidInputError(
                f"{what} is a colour ({mode}) image, not class ids; pass --mask_palette FILE "
                f"(its colours) or a --dataset whose colours it uses, or convert it to a "
                f"single-channel PNG whose pixel values are class ids")
        values = rgb[..., 0]
    elif mode == "LA":
        values = np.asarray(image)[..., 0]
    else:
        raise InvalidInputError(f"{what} has image mode {mode!r}; expected a class-id PNG "
                                f"(mode L or P)")
    return np.array(values, dtype=np.uint8, order="C")


def check_mask_depth(opened: Image.Image, data: bytes, what: str) -> None:
    """Refuses a mask that stores 16 bits per colour sample: Pillow reads it to 8 bits by
    each value's high byte, so class ids 0..255 stored there all read as 0, and colours hold
    only if their low bytes carry nothing."""
    if opened.mode in ("RGB", "RGBA", "LA") and _stored_bits(opened, data) == 16:
        raise InvalidInputError(
            f"{what} stores 16 bits per colour sample ({opened.mode}), which is read to 8 bits "
            f"by each value's high byte: its class ids or colours cannot be read exactly; "
            f"save it as an 8-bit PNG (grayscale or palette class ids, or 8-bit colours)")


def check_opaque(image: Image.Image, what: str) -> None:
    """Refuses a mask with transparent pixels: its class ids are read from the colour or gray
    under the alpha, which viewers do not show, and transparency may well mean "unlabelled"."""
    alpha = np.asarray(image.getchannel("A"))
    seethrough = int(np.count_nonzero(alpha < 255))
    if seethrough:
        raise InvalidInputError(
            f"{what} has {seethrough:,} transparent or translucent pixels ({image.mode} alpha "
            f"below 255): class ids are read from the values under the alpha, so what the "
            f"transparency means (unlabelled?) cannot be told; save the mask without alpha, "
            f"with those pixels set to the class or ignore index they mean")


def _palette_and_indices(image: Image.Image) -> np.ndarray:
    """HxWx4 uint8: a palette image's colour per pixel, then its index; HxW indices alone
    where an index has no palette entry (no colour to read)."""
    indices = np.asarray(image)
    palette = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
    if int(indices.max()) >= len(palette):
        return np.array(indices, dtype=np.uint8, order="C")
    return np.ascontiguousarray(np.dstack([palette[indices], indices]), dtype=np.uint8)


class DecodedInput(NamedTuple):
    image: np.ndarray
    mask: Optional[np.ndarray]
    frames: int  # the image file's frame count; the first frame is used
    high_depth_peak: int = 0  # a 16-bit image's peak value (scaled from 0..65535), else 0
    # The image was turned or mirrored by its EXIF orientation and its mask was not (masks
    # are taken as drawn on the image as shown: ``mask_turned_apart_warning``).
    turned_apart: bool = False


def decode_pair(image_bytes: bytes, mask_bytes: Optional[bytes],
                max_pixels: int = DEFAULT_MAX_PIXELS, colour_masks: bool = False
                ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Decodes an image and its optional mask and checks that their sizes agree."""
    return decode_input(image_bytes, mask_bytes, max_pixels, colour_masks)[:2]


def decode_input(image_bytes: bytes, mask_bytes: Optional[bytes],
                 max_pixels: int = DEFAULT_MAX_PIXELS, colour_masks: bool = False
                 ) -> DecodedInput:
    """``decode_pair``, with the image file's frame count; with ``colour_masks``, an RGB mask
    is kept as colours (HxWx3)."""
    image, frames, peak, orientation = _decode_image(image_bytes, max_pixels, "image")
    if mask_bytes is None:
        return DecodedInput(image, None, frames, peak)
    mask = decode_mask(mask_bytes, max_pixels, colour=colour_masks)
    if mask.shape[:2] != image.shape[:2]:
        turned = mask.shape[:2] == image.shape[1::-1] and orientation in range(5, 9)
        raise InvalidInputError(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image.shape[1]}x{image.shape[0]} (width x height); a mask must match its image "
            f"pixel for pixel" + (
                ". The image is turned by its EXIF orientation (as viewers show it) and the "
                "mask matches it unturned: rotate the mask to match, or save the image "
                "without the orientation tag" if turned else ""))
    turned_apart = orientation != 1 and (_orientation(mask_bytes) or 1) != orientation
    return DecodedInput(image, mask, frames, peak, turned_apart)


# The Beam counter of such images (``segbeam.transforms.read``), read back by the report.
TURNED_APART_COUNTER = "images_turned_apart_from_their_mask"


def mask_turned_apart_warning(count: int, done: str = "segmented and scored") -> str:
    """What to say of images that their EXIF orientation turned (or mirrored) and their masks
    did not: the masks were scored as drawn on the image as shown, which a mask made from the
    stored pixels (a script reading the file without the tag) is not; only where the turn
    keeps the shape (a half turn, a mirror, a square image) does nothing else catch it."""
    return (f"{count} image{'s' * (count != 1)} with a mask carr{'y' if count != 1 else 'ies'} "
            f"an EXIF orientation that turns or mirrors the image, and not the mask: each was "
            f"{done} as viewers show it, its mask taken as drawn on the turned "
            f"image (as labelling tools show it); a mask made from the stored pixels is "
            f"misaligned with it: save such images without the orientation tag (e.g. exiftool "
            f"-Orientation= ) or turn their masks to match")


def _orientation(data: bytes) -> Optional[int]:
    """The EXIF orientation tag of an image file (1-8), or None."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - only a hint for an error message
        return None
