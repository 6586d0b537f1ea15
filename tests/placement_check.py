"""Where a model copy computes under TensorFlow: the CPU split into two logical devices stands
in for a worker with two GPUs, and the handler is told that this copy was loaded on the second
(as ``_configure_accelerators`` picks the next GPU for each copy). Prints one JSON object: the
devices the model's compiled functions and the fused CRF ran on. Run as ``python -m
tests.placement_check`` with ``KERAS_BACKEND=tensorflow``; ``test_batching.py`` runs it."""

from __future__ import annotations

import json
import sys

import numpy as np


def main(model_path: str) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import segbeam.models.keras_runtime as keras_runtime
    import segbeam.transforms.inference as inference
    from segbeam.crf import CrfParams
    from segbeam.crf_keras import KerasDenseCrf
    from segbeam.inference import InferenceSettings
    from segbeam.models.source import ModelSource
    from segbeam.pipeline.demo import synthetic_scene
    from segbeam.records import SegmentationRecord
    from segbeam.transforms.fused_crf import FusedCrf

    devices: dict[str, set] = {"model": set(), "crf": set()}
    predict = keras_runtime._tensorflow_predict

    def watched_predict(model):
        run = predict(model)

        def call(batch):
            outputs = run(batch)
            for output in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
                devices["model"].add(output.device.split("device:")[-1])
            return outputs
        return call

    refine_many = KerasDenseCrf.refine_many

    def watched_refine(self, *args, **kwargs):
        marginals = refine_many(self, *args, **kwargs)
        devices["crf"].add(marginals.device.split("device:")[-1])
        return marginals

    keras_runtime._tensorflow_predict = watched_predict
    KerasDenseCrf.refine_many = watched_refine
    inference._configure_accelerators = lambda: "/CPU:1"
    rng = np.random.default_rng(0)
    records = [SegmentationRecord(f"k{i}", f"s{i}", image=synthetic_scene(rng, 64, 64)[0])
               for i in range(2)]
    source = ModelSource(model_path, num_classes=3, input_size=(64, 64))
    for fused in (None, FusedCrf(CrfParams(backend="keras", min_side=32))):
        handler = inference.KerasSegmentationHandler(source, InferenceSettings(),
                                                     fused_crf=fused, fuse=fused is not None)
        results = handler.run_inference(records, handler.load_model())
        assert all(r.raw_labels is not None for r in results)
    print(json.dumps({name: sorted(found) for name, found in devices.items()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
