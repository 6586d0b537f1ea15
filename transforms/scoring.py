"""Per-image scoring against the ground-truth mask, and the per-image metrics row."""

from __future__ import annotations

from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa

from segbeam.boundary import BoundaryScores, score_boundaries
from segbeam.calibration import CalibrationSums, to_vector
from segbeam.heap import release_freed_memory
from segbeam.metrics import confusion_matrix, nan_to_none, sparse_confusion, \
    summarise_confusion
from segbeam.records import SegmentationRecord
from segbeam.transforms.safe_map import SafeMap


def score_record(record: SegmentationRecord, num_classes: int,
                 ignore_index: Optional[int]) -> SegmentationRecord:
    """Adds confusion matrices (raw, and CRF where it ran) for images that have a mask, and
    drops the arrays no later stage needs (image, mask, probabilities). Once per image, it also
    hands the memory the previous images freed back to the system (``segbeam.heap``)."""
    release_freed_memory()
    confusion_raw = confusion_crf = boundary_raw = boundary_crf = None
    if record.mask is not None:
        confusion_raw = confusion_matrix(record.raw_labels, record.mask, num_classes,
                                         ignore_index)
        boundary_raw = score_boundaries(record.raw_labels, record.mask, num_classes,
                                        ignore_index)
        if record.crf_labels is not None:
            confusion_crf = confusion_matrix(record.crf_labels, record.mask, num_classes,
                                             ignore_index)
            boundary_crf = score_boundaries(record.crf_labels, record.mask, num_classes,
                                            ignore_index)
    return record.replace(confusion_raw=confusion_raw, confusion_crf=confusion_crf,
                          boundary_raw=boundary_raw, boundary_crf=boundary_crf,
                          image=None, mask=None, probabilities=None)


CONFUSION_CELL = pa.struct([pa.field("truth", pa.int32(), nullable=False),
                            pa.field("predicted", pa.int32(), nullable=False),
                            pa.field("pixels", pa.int64(), nullable=False)])


def metrics_schema(num_classes: int, class_names: list[str]) -> pa.Schema:
    """The per-image Parquet schema. Per-class IoU lists are indexed by class id; the class
    names travel in the schema's metadata. ``confusion_raw`` / ``confusion_crf`` hold the
    image's confusion matrix (non-zero cells), so that dataset figures can be recomputed from
    the rows of any subset of images, and a later incremental run can reuse the row as it is.
    ``unexpected_pixels`` / ``unexpected_values``: mask pixels that are neither a class nor
    the ignore index, and their values (null without a mask, and in rows made before they
    were counted). ``image_frames``: the image file's frame count (an animated GIF or a
    multi-page TIFF has several; the first is segmented); null in rows made before it was kept.
    ``high_depth_peak``: a 16-bit image's peak value on 0..65535 (0 for 8-bit images; below
    4096 it came out dark, ``segbeam.decode.DARK_HIGH_DEPTH_PEAK``); null in rows made before.
    ``bf_raw`` / ``bf_crf``: the image's boundary F1, ``bf_classes_*`` per class (null for
    classes absent from both maps), ``boundary_intersection_*`` / ``boundary_union_*``: the
    boundary-IoU pixel counts per class (``segbeam.boundary``); null without a mask.
    ``calibration_raw`` / ``calibration_crf``: the calibration sums (``segbeam.calibration``:
    15 bins of pixel counts, confidence sums and correct counts, then the NLL and Brier sums);
    null without probabilities or a mask.
    ``source_stamp``: what the file listing said of the image and mask files when the row was
    made (``segbeam.incremental.input_stamp``), kept under ``--skip_existing`` so that
    ``--change_detection stamp`` can tell them unchanged without reading them; null otherwise,
    for shard records, and in rows made before it was kept.
    ``mask_png_size``: the bytes of the mask PNG as written, so that ``--skip_existing`` keeps
    a row only while its mask file is the one written; null in rows made before it was kept.
    """
    iou = pa.list_(pa.float64())
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("mask_source", pa.string()),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("has_mask", pa.bool_(), nullable=False),
        pa.field("crf_applied", pa.bool_(), nullable=False),
        pa.field("labelled_pixels", pa.int64()),
        pa.field("pixel_accuracy_raw", pa.float64()),
        pa.field("miou_raw", pa.float64()),
        pa.field("iou_raw", iou),
        pa.field("pixel_accuracy_crf", pa.float64()),
        pa.field("miou_crf", pa.float64()),
        pa.field("iou_crf", iou),
        pa.field("mask_path", pa.string(), nullable=False),
        pa.field("content_sha256", pa.string(), nullable=False),
        pa.field("config_fingerprint", pa.string(), nullable=False),
        pa.field("confusion_raw", pa.list_(CONFUSION_CELL)),
        pa.field("confusion_crf", pa.list_(CONFUSION_CELL)),
        pa.field("unexpected_pixels", pa.int64()),
        pa.field("unexpected_values", pa.list_(pa.int32())),
        pa.field("image_frames", pa.int32()),
        pa.field("high_depth_peak", pa.int32()),
        pa.field("source_stamp", pa.string()),
        pa.field("mask_png_size", pa.int64()),
        *[field for variant in ("raw", "crf") for field in (
            pa.field(f"bf_{variant}", pa.float64()),
            pa.field(f"bf_classes_{variant}", iou),
            pa.field(f"boundary_intersection_{variant}", pa.list_(pa.int64())),
            pa.field(f"boundary_union_{variant}", pa.list_(pa.int64())),
            pa.field(f"calibration_{variant}", pa.list_(pa.float64())))],
    ]
    metadata = {"class_names": ",".join(class_names), "num_classes": str(num_classes)}
    return pa.schema(fields, metadata=metadata)


def _figures(confusion: Optional[np.ndarray], ignore_index: Optional[int]) -> tuple:
    if confusion is None:
        return None, None, None, None
    summary = summarise_confusion(confusion, ignore_index)
    none_if_nan = nan_to_none([summary["pixel_accuracy"], summary["miou"]])
    return (summary["labelled_pixels"], none_if_nan[0], none_if_nan[1],
            nan_to_none(summary["iou"]))


def _cells(confusion: Optional[np.ndarray]) -> Optional[list[dict]]:
    return None if confusion is None else sparse_confusion(confusion)


def metrics_row(record: SegmentationRecord, config_fingerprint: str,
                ignore_index: Optional[int] = None) -> dict:
    """The per-image Parquet row of a scored record whose mask PNG has been written;
    ``config_fingerprint`` identifies the model and settings that produced it;
    ``ignore_index``: the run's (a class id among them is not scored)."""
    labelled, accuracy_raw, miou_raw, iou_raw = _figures(record.confusion_raw, ignore_index)
    _, accuracy_crf, miou_crf, iou_crf = _figures(record.confusion_crf, ignore_index)
    return {
        "key": record.key, "source": record.source, "mask_source": record.mask_source,
        "height": record.height, "width": record.width, "has_mask": record.has_mask,
        "crf_applied": record.crf_applied,
        "labelled_pixels": labelled,
        "pixel_accuracy_raw": accuracy_raw, "miou_raw": miou_raw, "iou_raw": iou_raw,
        "pixel_accuracy_crf": accuracy_crf, "miou_crf": miou_crf, "iou_crf": iou_crf,
        "mask_path": record.mask_path,
        "content_sha256": record.content_sha256, "config_fingerprint": config_fingerprint,
        "confusion_raw": _cells(record.confusion_raw),
        "confusion_crf": _cells(record.confusion_crf),
        "unexpected_pixels": record.unexpected_pixels if record.has_mask else None,
        "unexpected_values": list(record.unexpected_values) if record.has_mask else None,
        "image_frames": record.frames,
        "high_depth_peak": record.high_depth_peak,
        "source_stamp": record.source_stamp or None,
        "mask_png_size": record.mask_png_size or None,
        **_boundary_fields(record.boundary_raw, "raw"),
        **_boundary_fields(record.boundary_crf, "crf"),
        "calibration_raw": _calibration_vector(record.calibration_raw),
        "calibration_crf": _calibration_vector(record.calibration_crf),
    }


def _calibration_vector(sums: Optional[CalibrationSums]) -> Optional[list]:
    return None if sums is None else to_vector(sums).tolist()


def _boundary_fields(scores: Optional[BoundaryScores], variant: str) -> dict:
    if scores is None:
        return {f"bf_{variant}": None, f"bf_classes_{variant}": None,
                f"boundary_intersection_{variant}": None, f"boundary_union_{variant}": None}
    return {f"bf_{variant}": scores.bf, f"bf_classes_{variant}": nan_to_none(scores.bf_per_class),
            f"boundary_intersection_{variant}": scores.intersections.tolist(),
            f"boundary_union_{variant}": scores.unions.tolist()}


# Fields added to the metrics row after its first version, with the value that a row written
# before them gets when a later run reuses it (null: not known for that row).
ADDED_FIELDS = {"unexpected_pixels": None, "unexpected_values": None, "image_frames": None,
                "high_depth_peak": None, "source_stamp": None, "mask_png_size": None,
                **_boundary_fields(None, "raw"), **_boundary_fields(None, "crf"),
                "calibration_raw": None, "calibration_crf": None}


def complete_row(row: dict) -> dict:
    """A metrics row read back from an earlier run, with the fields it predates."""
    return {**ADDED_FIELDS, **row}


class ScoreImages(beam.PTransform):
    """records with labels -> (scored records, dead letters)."""

    def __init__(self, num_classes: int, ignore_index: Optional[int]):
        super().__init__()
        self._num_classes, self._ignore_index = num_classes, ignore_index

    def expand(self, records):
        return records | "Score" >> SafeMap("metrics", score_record, self._num_classes,
                                            self._ignore_index)
