"""Which mask values a run scores, and the ones it cannot: counted, never dropped silently.

A mask pixel is a class (``0..num_classes-1``), the ignore index (excluded on purpose), or
unexpected: a value the run has no class for (Oxford-IIIT Pets trimaps hold 1..3, say, and
``--num_classes 3`` leaves every 3 without a class). Unexpected pixels cannot be scored; they
are counted per image with their distinct values, summed in the summary and warned about, and
``--strict_labels`` makes such a mask a dead letter instead. Pure numpy.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import numpy as np

from segbeam.config import Effect, setting
from segbeam.decode import InvalidInputError
from segbeam.mask_colours import decode_colours, format_value, read_palette_mask

SHOWN_VALUES = 10  # distinct unexpected values named in a message


IGNORE = "ignore"  # a label map's target for the ignore index


@dataclasses.dataclass(frozen=True)
class MaskLabels:
    """num_classes: the classes scored. ignore_index: the value excluded on purpose, or None.
    strict: a mask with unexpected values is an error (a dead letter), not a warning.
    label_map: (stored value, class id or ``"ignore"``) pairs applied to every mask before
    scoring and training; with one, the stored values it does not map are the unexpected
    ones. colours: ((r, g, b), stored value) pairs that read colour-coded (RGB) masks
    (``segbeam.mask_colours``); colours it lacks are unexpected."""

    num_classes: int = setting(Effect.OUTPUT)
    ignore_index: Optional[int] = setting(Effect.OUTPUT, None)
    strict: bool = setting(Effect.OUTPUT, False, omit_default=True)
    label_map: Optional[tuple] = setting(Effect.OUTPUT, None, omit_default=True)
    colours: Optional[tuple] = setting(Effect.OUTPUT, None, omit_default=True)  # mask palette

    def __post_init__(self):
        if self.label_map is None:
            return
        for source, target in self.label_map:
            if not 0 <= source <= 255:
                raise ValueError(f"--label_map maps {source}, but mask values are 0..255")
            if target == IGNORE and self.ignore_index is None:
                raise ValueError(f"--label_map maps {source} to ignore, but there is no "
                                 f"ignore index (--ignore_index is -1)")
            if target != IGNORE and not 0 <= target < self.num_classes:
                raise ValueError(f"--label_map maps {source} to {target}, which is not a class "
                                 f"(0..{self.num_classes - 1})")
        if self.ignore_index is None and self.num_classes > 255:
            raise ValueError("--label_map with more than 255 classes needs an --ignore_index")

    def describe_expected(self) -> str:
        if self.label_map is not None:
            return f"a value --label_map maps ({format_values([s for s, _ in self.label_map])})"
        ignored = f" or the ignore index {self.ignore_index}" if self.ignore_index is not None \
            else " (no ignore index)"
        return f"a class 0..{self.num_classes - 1}{ignored}"

    def lookup_table(self) -> np.ndarray:
        """Stored value -> class id (uint8, 256 entries); values the map leaves out go to the
        ignore index, or to 255 (outside the classes) when there is none, so that no metric
        counts them. Built once per map, not per mask."""
        return _lookup_table(self.label_map, self.ignore_index)

    def prepare(self, mask: np.ndarray, what: str = "mask"
                ) -> tuple[np.ndarray, int, tuple[int, ...]]:
        """(the mask as class ids, its unexpected pixel count, their stored values); raises an
        ``InvalidInputError`` for a mask with unexpected values under ``strict``. An HxWx3
        mask is colour-coded: it is read through ``colours`` first."""
        unknown, colour_codes = None, ()
        if mask.ndim == 3 and mask.shape[2] == 4:  # a palette PNG (decode.decode_mask)
            try:
                mask = read_palette_mask(mask, self.colours, what) if self.colours \
                    else np.ascontiguousarray(mask[..., 3])
            except ValueError as error:
                raise InvalidInputError(str(error)) from None
        if mask.ndim == 3:
            if self.colours is None:
                raise InvalidInputError(
                    f"{what} is a colour image, not class ids; pass --mask_palette FILE (its "
                    f"colours) or a --dataset whose colours it uses, or convert it to a "
                    f"single-channel PNG of class ids")
            mask, unknown, colour_codes = decode_colours(mask, self.colours)
        counted = mask if unknown is None or not unknown.any() else mask[~unknown]
        if self.label_map is None:
            count, values = unexpected_labels(counted, self.num_classes, self.ignore_index)
        else:
            counts = np.bincount(counted.ravel(), minlength=256)
            counts[[source for source, _ in self.label_map]] = 0
            count, values = int(counts.sum()), tuple(int(v) for v in np.flatnonzero(counts))
        if colour_codes:
            count, values = count + int(unknown.sum()), values + colour_codes
        if count and self.strict:
            raise InvalidInputError(
                f"{what} has {count} pixels of values {format_values(values)} that are not "
                f"{self.describe_expected()} (--strict_labels); fix --num_classes / "
                f"--ignore_index / --label_map, or drop --strict_labels to score the rest and "
                f"count them")
        if self.label_map is not None:
            mask = self.lookup_table()[mask]
        if colour_codes:
            mask = np.where(unknown, self.ignore_index if self.ignore_index is not None else 255,
                            mask).astype(np.uint8)
        return mask, count, values


@functools.lru_cache(maxsize=16)
def _lookup_table(label_map: tuple, ignore_index: Optional[int]) -> np.ndarray:
    unmapped = ignore_index if ignore_index is not None else 255
    table = np.full(256, unmapped, dtype=np.uint8)
    for source, target in label_map:
        table[source] = ignore_index if target == IGNORE else target
    table.flags.writeable = False  # shared by every call
    return table


def parse_label_map(spec: Optional[str]) -> Optional[tuple]:
    """``--label_map``: inline (``1:0,2:1,3:2,0:ignore``), a JSON file (``{"1": 0, "0":
    "ignore"}``) or a CSV file (``from,to`` rows; a header row is allowed), as sorted
    (stored value, class id or ``"ignore"``) pairs; None without a spec."""
    if not spec:
        return None
    import json

    from segbeam.layout import read_bytes

    suffix = spec.lower().rsplit(".", 1)[-1]
    if suffix in ("json", "csv"):
        try:
            text = read_bytes(spec).decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read --label_map file {spec}: {error}") from None
    if suffix == "json":
        try:  # as pairs: a dict would keep the last of a key given twice, without a word
            items = json.loads(text, object_pairs_hook=list)
        except ValueError:
            items = None
        if not isinstance(items, list) or not all(isinstance(i, tuple) for i in items):
            raise ValueError(f"--label_map file {spec} is not a JSON object of VALUE: CLASS "
                             f"pairs")
    elif suffix == "csv":
        items = [line.split(",")[:2] for line in text.splitlines() if line.strip()]
        if items and not items[0][0].strip().isdigit():
            items = items[1:]  # a header row
    else:
        items = [pair.split(":", 1) for pair in spec.split(",") if pair.strip()]
    pairs = {}
    for item in items:
        try:
            source, target = (str(part).strip() for part in item)
            value, mapped = int(source), IGNORE if target.lower() == IGNORE else int(target)
        except ValueError:
            raise ValueError(f"--label_map entry {':'.join(map(str, item))!r} is not "
                             f"VALUE:CLASS or VALUE:ignore") from None
        if pairs.get(value, mapped) != mapped:
            raise ValueError(f"--label_map maps {value} twice, to {pairs[value]} and to "
                             f"{mapped}; name each value once")
        pairs[value] = mapped
    if not pairs:
        raise ValueError(f"--label_map {spec!r} maps nothing")
    return tuple(sorted(pairs.items()))


def unexpected_labels(mask: np.ndarray, num_classes: int, ignore_index: Optional[int]
                      ) -> tuple[int, tuple[int, ...]]:
    """(pixels whose value is neither a class nor the ignore index, their distinct values,
    smallest first)."""
    counts = np.bincount(mask.ravel(), minlength=num_classes)
    counts[:num_classes] = 0
    if ignore_index is not None and 0 <= ignore_index < counts.size:
        counts[ignore_index] = 0
    return int(counts.sum()), tuple(int(v) for v in np.flatnonzero(counts))




def format_values(values) -> str:
    shown = ", ".join(format_value(v) for v in list(values)[:SHOWN_VALUES])
    return f"[{shown}{', ...' if len(values) > SHOWN_VALUES else ''}]"


def label_warnings(summary: dict, label_map: Optional[Sequence] = None) -> list[str]:
    """What the summary says about mask values the run could not score, in sentences.
    ``label_map``: the run's (a map decides which stored values are expected)."""
    labels = summary.get("labels") or {}
    warnings = []
    if labels.get("unexpected_pixels"):
        held = (f"{labels['unexpected_pixels']:,} mask pixels in "
                f"{labels['images_with_unexpected']} images hold values "
                f"{format_values(labels['unexpected_values'])}")
        if label_map:
            warnings.append(
                f"{held} that the label map (--label_map or --dataset) does not name; they were"
                f" not scored (if these masks already hold class ids, such as a run's own "
                f"masks or ADE20K's reduced to 0..149 with 255 for other, pass --label_map "
                f"none; --strict_labels makes such masks dead letters)")
        else:
            warnings.append(
                f"{held} that are neither a class (0..{summary['num_classes'] - 1}) nor the "
                f"ignore index ({labels.get('ignore_index')}); they were not scored (check "
                f"--num_classes and --ignore_index; --strict_labels makes such masks dead "
                f"letters)")
    mostly = mostly_ignored(labels.get("ignored_pixels") or 0, labels.get("mask_pixels") or 0,
                            labels.get("ignore_index"))
    if mostly:
        warnings.append(mostly)
    if labels.get("images_not_checked"):
        warnings.append(f"{labels['images_not_checked']} images kept from earlier runs were "
                        f"not checked for unexpected mask values")
    return warnings


def mostly_ignored(ignored: int, pixels: int, ignore_index: Optional[int],
                   done: str = "were not scored") -> Optional[str]:
    """A warning when half or more of the mask pixels are ignored: what binary masks of 0 and
    255 look like under the default ignore index 255, their whole foreground unused."""
    if not pixels or ignored < pixels / 2:
        return None
    return (f"{ignored / pixels:.0%} of the mask pixels ({ignored:,}) are ignored (the ignore "
            f"index {ignore_index}, or a value --label_map ignores) and {done}; if a class is "
            f"stored as that value (binary masks of 0 and 255), map it: --label_map 0:0,255:1")
