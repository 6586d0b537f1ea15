"""Dataset-level evaluation: the per-image confusion matrices of the metrics rows summed with a
CombineFn, then figures derived from the sums (never from the mean of per-image figures), and
the run summary."""

from __future__ import annotations

import collections
import heapq
import json
from typing import Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from segbeam.boundary import BoundaryTotals
from segbeam.calibration import VECTOR_LENGTH, calibration_figures, from_vector
from segbeam.decode import DARK_HIGH_DEPTH_PEAK
from segbeam.metrics import DATASET_METRICS, dense_confusion, fixed_point, from_fixed_point, \
    nan_to_none, summarise_confusion
from segbeam.metrics_columns import NotColumnar, add_columns

VARIANTS = ("raw", "crf")


class ConfusionSum(beam.CombineFn):
    """Sums the per-image confusion matrices (raw and CRF) of metrics rows and counts images.

    Rows rather than records, so that rows kept from an earlier run (``--skip_existing``) count
    exactly as the rows of images segmented now.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self._num_classes = num_classes

    def create_accumulator(self):
        zeros = np.zeros((self._num_classes, self._num_classes), dtype=np.int64)
        return {"images": 0, "images_with_mask": 0, "raw": zeros, "crf": zeros.copy(),
                "crf_images": 0, "unexpected_pixels": 0, "images_with_unexpected": 0,
                "images_unchecked": 0, "unexpected_values": frozenset(),
                "mask_pixels": 0, "ignored_pixels": 0,
                "multi_frame_images": 0, "dark_16_bit_images": 0,
                **{f"boundary_{v}": BoundaryTotals(self._num_classes) for v in VARIANTS},
                **{f"calibration_{v}": fixed_point(np.zeros(VECTOR_LENGTH)) for v in VARIANTS},
                **{f"calibrated_images_{v}": 0 for v in VARIANTS}}

    def add_input(self, accumulator, row: dict):
        accumulator["images"] += 1
        accumulator["multi_frame_images"] += (row.get("image_frames") or 1) > 1
        accumulator["dark_16_bit_images"] += 0 < (row.get("high_depth_peak") or 0) < \
            DARK_HIGH_DEPTH_PEAK
        if row["confusion_raw"] is not None:
            accumulator["images_with_mask"] += 1
            accumulator["raw"] += dense_confusion(row["confusion_raw"], self._num_classes)
            accumulator["boundary_raw"].add(row, "raw")
            _add_calibration(accumulator, row, "raw")
            unexpected = row.get("unexpected_pixels")
            if unexpected is None:  # a row reused from a run that did not count them
                accumulator["images_unchecked"] += 1
            else:
                # Every mask pixel is scored, unexpected, or ignored (on purpose, by the ignore
                # index or a label map sending its value there).
                pixels = row["height"] * row["width"]
                accumulator["mask_pixels"] += pixels
                accumulator["ignored_pixels"] += pixels - row["labelled_pixels"] - unexpected
            if unexpected:
                accumulator["unexpected_pixels"] += unexpected
                accumulator["images_with_unexpected"] += 1
                accumulator["unexpected_values"] |= frozenset(row["unexpected_values"])
        if row["confusion_crf"] is not None:
            accumulator["crf_images"] += 1
            accumulator["crf"] += dense_confusion(row["confusion_crf"], self._num_classes)
            accumulator["boundary_crf"].add(row, "crf")
            _add_calibration(accumulator, row, "crf")
        return accumulator

    def add_batch(self, accumulator, batch: pa.RecordBatch):
        """``add_input`` for every row of ``batch`` at once, on its columns
        (``segbeam.metrics_columns``: the same sums to the bit, without a dict per row). A
        batch the columns cannot sum exactly is summed row by row, which says what is wrong
        with it."""
        sums = self.create_accumulator()
        try:
            add_columns(sums, batch, self._num_classes)
        except NotColumnar:
            sums = self.create_accumulator()
            for row in batch.to_pylist():
                sums = self.add_input(sums, row)
        return self.merge_accumulators([accumulator, sums])

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for other in accumulators:
            for name, value in other.items():
                merged[name] = merged[name] | value if isinstance(value, frozenset) \
                    else merged[name] + value
        return merged

    def extract_output(self, accumulator):
        return accumulator


class RunTotals(beam.CombineFn):
    """Everything a run's summary counts, in one pass over elements tagged by kind: metrics
    rows of images segmented now (``segmented``) or kept from before (``reused``), both summed
    by ``ConfusionSum``; inputs ``skipped``; mask files no image took (``unclaimed``, their
    paths, of which the first ``EXAMPLES`` are kept); dead letters (``dead``, their stages).

    One combine rather than one per count: each global combine is a shuffle and a side input
    of its own, about a third of a second of every run on the local runner."""

    KINDS = ("segmented", "reused", "skipped", "unclaimed", "dead")
    EXAMPLES = 20

    def __init__(self, num_classes: int):
        super().__init__()
        self._rows = ConfusionSum(num_classes)

    def create_accumulator(self):
        return {"rows": self._rows.create_accumulator(), "counts": collections.Counter(),
                "dead_by_stage": collections.Counter(), "unclaimed_first": []}

    def add_input(self, accumulator, tagged: tuple):
        kind, value = tagged
        if kind not in self.KINDS:
            raise ValueError(f"RunTotals counts {', '.join(self.KINDS)}; received {kind!r}")
        accumulator["counts"][kind] += 1
        if kind in ("segmented", "reused"):
            accumulator["rows"] = self._rows.add_input(accumulator["rows"], value)
        elif kind == "dead":
            accumulator["dead_by_stage"][value] += 1
        elif kind == "unclaimed":
            accumulator["unclaimed_first"] = heapq.nsmallest(
                self.EXAMPLES, [*accumulator["unclaimed_first"], value])
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        merged = accumulators[0]
        merged["rows"] = self._rows.merge_accumulators([a["rows"] for a in accumulators])
        for other in accumulators[1:]:
            merged["counts"] += other["counts"]
            merged["dead_by_stage"] += other["dead_by_stage"]
            merged["unclaimed_first"] = heapq.nsmallest(
                self.EXAMPLES, [*merged["unclaimed_first"], *other["unclaimed_first"]])
        return merged

    def extract_output(self, accumulator):
        counts = accumulator["counts"]
        return {"totals": accumulator["rows"], "segmented": counts["segmented"],
                "reused": counts["reused"], "skipped": counts["skipped"],
                "masks_without_image": counts["unclaimed"],
                "masks_without_image_examples": accumulator["unclaimed_first"],
                "dead_by_stage": sorted(accumulator["dead_by_stage"].items())}


def summarise_run(run_totals: dict, inputs: int, **settings) -> dict:
    """``build_summary`` from ``RunTotals``' output (one element, even from no input) and the
    number of inputs."""
    return build_summary(None, inputs=inputs, **run_totals, **settings)


def _add_calibration(accumulator: dict, row: dict, variant: str) -> None:
    vector = row.get(f"calibration_{variant}")
    if vector is not None:
        accumulator[f"calibration_{variant}"] += fixed_point(vector)
        accumulator[f"calibrated_images_{variant}"] += 1


def _variant_summary(confusion: np.ndarray, class_names: list[str],
                     boundary: BoundaryTotals, calibration: np.ndarray,
                     calibrated_images: int, ignore_index: Optional[int]) -> dict:
    figures = summarise_confusion(confusion, ignore_index)
    edges = boundary.summary()
    per_class = [
        {"class_id": i, "name": class_names[i], "iou": iou, "accuracy": accuracy, "dice": dice,
         "boundary_f1": bf, "boundary_iou": biou,
         "truth_pixels": int(figures["truth_pixels"][i]),
         "predicted_pixels": int(figures["predicted_pixels"][i])}
        for i, (iou, accuracy, dice, bf, biou) in enumerate(zip(
            nan_to_none(figures["iou"]), nan_to_none(figures["class_accuracy"]),
            nan_to_none(figures["dice"]), nan_to_none(edges["per_class_boundary_f1"]),
            nan_to_none(edges["per_class_boundary_iou"])))]
    overall = dict(zip(DATASET_METRICS, nan_to_none([figures[k] for k in DATASET_METRICS])))
    return {**overall, "boundary_f1": edges["boundary_f1"],
            "boundary_iou": edges["boundary_iou"], "boundary_images": edges["boundary_images"],
            "rows_without_boundary": edges["rows_without_boundary"],
            "calibration": calibration_figures(from_vector(from_fixed_point(calibration))),
            "calibrated_images": calibrated_images,
            "labelled_pixels": figures["labelled_pixels"], "per_class": per_class,
            "confusion": confusion.tolist()}


def build_summary(_, totals: dict, inputs: int, segmented: int, dead_by_stage: list,
                  class_names: list[str], ignore_index: Optional[int], reused: int = 0,
                  skipped: int = 0, config_fingerprint: Optional[str] = None,
                  palette: Optional[tuple] = None, masks_without_image: int = 0,
                  masks_without_image_examples: Sequence[str] = ()) -> dict:
    """The run summary: counts (which must add up) and evaluation for raw and CRF labels.

    segmented: images that went through the model in this run. reused: unchanged images whose
    row and mask in this run's directory were kept. skipped: unchanged images whose result
    stands in an earlier date partition. outputs = segmented + reused, the rows of this run's
    metrics; every input is one of segmented, reused, skipped or a dead letter. ``labels``:
    mask pixels that were neither a class nor the ignore index (not scored), the images that
    had them and their values; ``images_not_checked``, rows reused from runs that did not
    count them. ``masks_without_image``: mask files that no input image took (not an input, so
    not in the accounting), with the first few by path. ``multi_frame_images``: images whose
    file held several frames (animated, multi-page), of which the first was segmented.
    ``dark_16_bit_images``: 16-bit images whose values stayed below 4096, so that, scaled from
    0..65535, they came out dark (their rows' ``high_depth_peak`` names them).
    """
    dead = dict(sorted(dead_by_stage))
    dead_total = sum(dead.values())
    outputs = segmented + reused
    summary = {
        "num_classes": len(class_names),
        "class_names": class_names,
        "ignore_index": ignore_index,
        "config_fingerprint": config_fingerprint,
        "counts": {
            "inputs": inputs, "outputs": outputs, "segmented": segmented, "reused": reused,
            "skipped": skipped, "dead_letters": dead_total, "dead_letters_by_stage": dead,
            "images_with_mask": totals["images_with_mask"],
            "masks_without_image": masks_without_image,
            "multi_frame_images": totals["multi_frame_images"],
            "dark_16_bit_images": totals["dark_16_bit_images"],
            "accounted_for": inputs == segmented + reused + skipped + dead_total
            and totals["images"] == outputs,
        },
        "labels": {
            "ignore_index": ignore_index,
            "unexpected_pixels": totals["unexpected_pixels"],
            "images_with_unexpected": totals["images_with_unexpected"],
            "unexpected_values": sorted(totals["unexpected_values"]),
            "images_not_checked": totals["images_unchecked"],
            "mask_pixels": totals["mask_pixels"],
            "ignored_pixels": totals["ignored_pixels"],
        },
        "evaluation": {},
    }
    if masks_without_image:
        summary["masks_without_image"] = sorted(masks_without_image_examples)
    if palette:  # the classes' colours (--dataset), for reports; VOC's colour map otherwise
        summary["palette"] = [list(colour) for colour in palette]
    if totals["images_with_mask"]:
        for variant in VARIANTS if totals["crf_images"] else ("raw",):
            summary["evaluation"][variant] = _variant_summary(
                totals[variant], class_names, totals[f"boundary_{variant}"],
                totals[f"calibration_{variant}"], totals[f"calibrated_images_{variant}"],
                ignore_index)
    return summary


def summary_schema(class_names: list[str]) -> pa.Schema:
    values = pa.list_(pa.float64())
    return pa.schema([
        pa.field("variant", pa.string(), nullable=False),
        pa.field("labelled_pixels", pa.int64()),
        *[pa.field(name, pa.float64()) for name in DATASET_METRICS],
        pa.field("iou", values),
        pa.field("class_accuracy", values),
        pa.field("dice", values),
        pa.field("truth_pixels", pa.list_(pa.int64())),
        pa.field("predicted_pixels", pa.list_(pa.int64())),
        pa.field("boundary_f1", pa.float64()),
        pa.field("boundary_iou", pa.float64()),
        pa.field("class_boundary_f1", values),
        pa.field("class_boundary_iou", values),
    ], metadata={"class_names": json.dumps(class_names)})


def summary_rows(summary: dict) -> list[dict]:
    """One Parquet row per evaluated variant (raw, crf); per-class lists indexed by class id."""
    rows = []
    for variant in VARIANTS:
        figures = summary["evaluation"].get(variant)
        if figures is None:
            continue
        per_class = figures["per_class"]
        rows.append({
            "variant": variant,
            **{k: figures[k] for k in ("labelled_pixels", *DATASET_METRICS)},
            "iou": [c["iou"] for c in per_class],
            "class_accuracy": [c["accuracy"] for c in per_class],
            "dice": [c["dice"] for c in per_class],
            "truth_pixels": [c["truth_pixels"] for c in per_class],
            "predicted_pixels": [c["predicted_pixels"] for c in per_class],
            "boundary_f1": figures["boundary_f1"], "boundary_iou": figures["boundary_iou"],
            "class_boundary_f1": [c["boundary_f1"] for c in per_class],
            "class_boundary_iou": [c["boundary_iou"] for c in per_class],
        })
    return rows
