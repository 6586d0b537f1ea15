"""Batched inference: a Beam ``ModelHandler`` that holds a segmentation model of any format.

Beam's ``RunInference`` batches records (``batch_elements_kwargs``), loads the model once per
worker and shares it across threads (or processes, with ``large_model``), and reports
metrics. The handler fits each image of a batch to one canvas (images of mixed sizes batch
together), runs the model (a ``segbeam.transforms.predictor.SegmentationPredictor``), and
maps class probabilities back to each image's own size.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Iterable, Optional, Sequence, Union

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from segbeam import compat
from segbeam.crf import labels_from_probabilities
from segbeam.geometry import place_batch, plan_batch, resize_bilinear, restore_probabilities
from segbeam.inference import UNIT_RANGE_AS_LOGITS, UNIT_RANGE_COUNTER, InferenceSettings, \
    is_out_of_memory
from segbeam.models.keras_runtime import keras_on_accelerator
from segbeam.models.source import ModelSource
from segbeam.preprocessing import preprocess
from segbeam.records import DeadLetter, SegmentationRecord, one_line_reason
from segbeam.transforms.fused_crf import FusedCrf, refine_batch
from segbeam.transforms.predictor import SegmentationPredictor, placed_on
from segbeam.transforms.progress import tally
from segbeam.transforms.safe_map import counted

LOG = logging.getLogger(__name__)

_DEVICE_COUNTER = itertools.count()


def _configure_accelerators() -> Optional[str]:
    """TensorFlow: memory growth on every GPU (several model copies or processes can share a
    card), and the next GPU in turn for this model copy. Returns its device name or None."""
    keras = compat.import_keras_quietly()  # the first import of the backend in a worker

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by an earlier copy in this process
            pass
    if not gpus:
        return None
    index = next(_DEVICE_COUNTER) % len(gpus)
    LOG.info("placing a model copy on GPU %d of %d", index, len(gpus))
    return f"/GPU:{index}"


class KerasSegmentationHandler(ModelHandler[SegmentationRecord, SegmentationRecord,
                                            SegmentationPredictor]):
    """Runs a segmentation model of any format (``.keras``, ``.h5``, SavedModel, ONNX,
    registry) on batches of ``SegmentationRecord``; the name is historical.

    Args:
      source: the model (loaded once per worker by ``load_model``).
      inference: canvas fitting, normalisation, output kind, batching and sharing.
      keep_probabilities: False when no later stage needs the class probabilities (no CRF):
        batches whose images are at the model's input size then get labels alone, with no
        softmax and a byte per pixel to copy back instead of two per class.
      fused_crf: with the keras CRF backend, its settings: on a worker whose Keras model runs
        on an accelerator, the CRF then runs right after the model, on the device
        (``segbeam.transforms.fused_crf``), and the CRF stage passes the records through.
      fuse: force that on (tests on a CPU) or off; None decides on the worker.
    """

    def __init__(self, source: ModelSource, inference: InferenceSettings = InferenceSettings(),
                 keep_probabilities: bool = True, fused_crf: Optional[FusedCrf] = None,
                 fuse: Optional[bool] = None):
        super().__init__(min_batch_size=inference.min_batch_size,
                         max_batch_size=inference.batch_size,
                         large_model=inference.large_model,
                         model_copies=inference.model_copies)
        self._source = source
        self._inference = inference
        self._keep_probabilities = keep_probabilities
        self._fused_crf, self._fuse = fused_crf, fuse
        self._fusing = False  # decided where the model is loaded
        self._fitting_rows: Optional[int] = None  # lowered after an out-of-memory error
        compat.restore_beam_inference_memory_metric()

    def __setstate__(self, state):
        # Unpickled on a worker, where RunInference will load the model: the workaround must
        # hold in that process too.
        self.__dict__.update(state)
        compat.restore_beam_inference_memory_metric()

    def load_model(self) -> SegmentationPredictor:
        device = _configure_accelerators()
        with placed_on(device):
            # Random weights are said by the launcher, at the run's start and end (once).
            predictor = SegmentationPredictor(self._source.open(announce=False),
                                              self._inference.model_output, device)
        # A model shared across processes (large_model) answers through a proxy, where device
        # tensors cannot travel: the CRF stays its own stage there.
        self._fusing = bool(self._fused_crf is not None and predictor.serves_keras()
                            and not self._inference.large_model
                            and (self._fuse if self._fuse is not None
                                 else keras_on_accelerator()))
        if self._fusing:
            LOG.info("the keras CRF runs on the device right after the model")
        return predictor

    def run_inference(self, batch: Sequence[SegmentationRecord], model: SegmentationPredictor,
                      inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[Union[SegmentationRecord, DeadLetter]]:
        """Each record with its probabilities and labels; a record the model fails on comes
        back as a DeadLetter (see ``_isolating``), the rest of its batch as results."""
        input_size = self._source.input_size or model.fixed_input_size()
        if input_size is not None or self._inference.resize_mode == "pad":
            results = self._isolating(batch, model, input_size)
        else:
            results = self._by_size(batch, model)
        if model.take_doubt():  # --model_output auto read scores in [0, 1] as logits
            LOG.warning(UNIT_RANGE_AS_LOGITS)
            Metrics.counter("segbeam", UNIT_RANGE_COUNTER).inc()
        return results

    def _by_size(self, batch: Sequence[SegmentationRecord], model: SegmentationPredictor
                 ) -> list:
        """Neither --input_size nor a fixed model input: images of one size batch together,
        each group at its own size padded up to --size_multiple (a batch of mixed sizes cannot
        stack, and there is no size to resize to)."""
        by_size: dict[tuple, list[int]] = {}
        for index, record in enumerate(batch):
            by_size.setdefault(record.image.shape[:2], []).append(index)
        results: list = [None] * len(batch)
        for members in by_size.values():
            group = self._isolating([batch[i] for i in members], model, None, "pad")
            for index, result in zip(members, group):
                results[index] = result
        return results

    def _isolating(self, batch: Sequence[SegmentationRecord], model: SegmentationPredictor,
                   input_size: Optional[tuple[int, int]], resize_mode: Optional[str] = None
                   ) -> list:
        """``_run_batch`` in chunks of at most the size that last fitted in memory; a chunk that
        fails is split in halves and each half run again, so that only the records the model
        fails on become dead letters (at most 2n-1 calls for a batch of n). An out-of-memory
        failure also lowers the chunk size for later batches of this worker (logged and
        counted as ``inference_oom_splits``)."""
        limit = self._fitting_rows or len(batch)
        if len(batch) > limit:
            return [result for start in range(0, len(batch), limit)
                    for result in self._isolating(batch[start:start + limit], model,
                                                  input_size, resize_mode)]
        try:
            return self._run_batch(batch, model, input_size, resize_mode)
        except Exception as error:  # noqa: BLE001 - isolated per record below
            if len(batch) == 1:
                LOG.warning("inference failed for %s: %r", batch[0].key, error)
                return [DeadLetter(batch[0].key, batch[0].source, "inference",
                                   one_line_reason(error))]
            half = len(batch) // 2
            if is_out_of_memory(error):
                self._fitting_rows = half
                Metrics.counter("segbeam", "inference_oom_splits").inc()
                LOG.warning("out of memory at a batch of %d images; retrying in batches of %d",
                            len(batch), half)
            else:
                Metrics.counter("segbeam", "inference_batches_bisected").inc()
                LOG.warning("inference failed for a batch of %d (%s); retrying its halves to "
                            "find the images that fail", len(batch), one_line_reason(error))
            return (self._isolating(batch[:half], model, input_size, resize_mode)
                    + self._isolating(batch[half:], model, input_size, resize_mode))

    def _run_batch(self, batch: Sequence[SegmentationRecord], model: SegmentationPredictor,
                   input_size: Optional[tuple[int, int]], resize_mode: Optional[str] = None
                   ) -> list[SegmentationRecord]:
        settings = self._inference
        canvas, placements = plan_batch([r.image.shape[:2] for r in batch],
                                        resize_mode or settings.resize_mode, input_size,
                                        settings.size_multiple)
        stacked = place_batch([r.image for r in batch], placements, canvas)
        # A Keras model casts a uint8 batch to float inside its compiled graph (on a GPU, a
        # quarter of the bytes to copy and no cast on the host); other formats take float32.
        inputs = stacked if settings.preprocess == "none" and model.serves_keras() \
            else preprocess(stacked, settings.preprocess)
        if self._fusing:
            outputs, kind = model.device_outputs(inputs)
            self._check_outputs(tuple(outputs.shape), len(batch))
            with model.placed():  # the CRF on the model's own GPU
                return refine_batch(batch, placements, canvas, outputs, kind, self._fused_crf)
        if not self._keep_probabilities and all(
                (p.height, p.width) == canvas for p in placements):
            labels = model.predict_labels(inputs)
            if labels.shape == (len(batch), *canvas):
                return [record.replace(probabilities=None, raw_labels=label)
                        for record, label in zip(batch, labels)]
            # A model that predicts at a stride: labels come from resized probabilities below.
        probabilities, labels = model.predict(inputs)
        self._check_outputs(probabilities.shape, len(batch))
        keep = self._keep_probabilities
        results = []
        for record, placement, probs, label in zip(batch, placements, probabilities, labels):
            if probs.shape[:2] == (placement.height, placement.width) == canvas:
                results.append(record.replace(probabilities=probs if keep else None,
                                              raw_labels=label))
                continue  # the model's output is the image's own grid: nothing to map back
            if probs.shape[:2] != canvas:  # models that predict at a stride
                probs = resize_bilinear(probs, *canvas)
            full = restore_probabilities(probs, placement)
            results.append(record.replace(probabilities=full.astype(np.float16) if keep else None,
                                          raw_labels=labels_from_probabilities(full)))
        return results

    def _check_outputs(self, shape: tuple, count: int) -> None:
        if shape[0] != count:
            raise ValueError(f"the model returned {shape[0]} outputs for a batch of {count}")
        if self._source.num_classes and shape[-1] != self._source.num_classes:
            raise ValueError(f"model {self._source.spec} returned {shape[-1]} class scores per "
                             f"pixel but --num_classes is {self._source.num_classes}")

    def get_num_bytes(self, batch: Sequence[SegmentationRecord]) -> int:
        return sum(record.image.nbytes for record in batch)

    def get_metrics_namespace(self) -> str:
        return "segbeam"


def _dead_letters_of_batch(failure: tuple) -> Iterable[DeadLetter]:
    """Each record of a failed batch as a dead letter: the reason is one line (the exception's
    type and first line); the whole error goes to the log."""
    batch, error = failure
    LOG.warning("inference failed for a batch of %d (%s): %r", len(batch),
                ", ".join(r.key for r in batch[:5]), error)
    tally("dead", len(batch))
    for record in batch:
        yield DeadLetter(record.key, record.source, "inference", one_line_reason(error))


def _route(result):
    if isinstance(result, DeadLetter):  # of the model, or of the CRF fused after it
        yield beam.pvalue.TaggedOutput("dead", counted(result))
    else:
        yield result


class RunSegmentationInference(beam.PTransform):
    """records -> (records with probabilities and raw labels, dead letters).

    The records the model fails on become dead letters, found by bisecting their batch; a batch
    that fails outside the model call (Beam's own batching) is dead-lettered whole.
    """

    def __init__(self, handler: KerasSegmentationHandler):
        super().__init__()
        self._handler = handler

    def expand(self, records):
        results, failures = records | "RunInference" >> RunInference(
            self._handler).with_exception_handling()
        routed = results | "FailedRecords" >> beam.FlatMap(_route).with_outputs(
            "dead", main="predicted")
        dead = failures.failed_inferences | "BatchFailuresToDeadLetters" >> beam.FlatMap(
            _dead_letters_of_batch)
        return routed.predicted, (routed.dead, dead) | "InferenceFailures" >> beam.Flatten()
