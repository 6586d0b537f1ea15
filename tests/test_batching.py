"""Batches when no input size is known, and dead-letter reasons that fit on one line."""

from __future__ import annotations

import numpy as np
from PIL import Image

from segbeam.records import REASON_LENGTH, one_line_reason


def test_without_an_input_size_images_batch_by_size(tmp_path):
    """A model that takes any size, no --input_size: every image is segmented at its own size
    (before, every batch of mixed sizes became dead letters and the run exited 0)."""
    from segbeam.pipeline.run import run

    sizes = [(40, 56), (64, 64), (40, 56), (33, 70), (64, 64)]
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for index, (height, width) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"i{index}.png")
    # tiny_fcn resizes inside: before, its second input size also failed under TensorFlow
    # (Keras's predict function retraced with unknown sizes; see _compiled).
    outcome = run(["--input", f"{tmp_path}/images/*.png", "--model", "tiny_fcn",
                   "--num_classes", "3", "--batch_size", "5", "--min_batch_size", "5",
                   "--crf_iterations", "1", "--output", str(tmp_path / "out")])
    counts = outcome.summary["counts"]
    assert (counts["segmented"], counts["dead_letters"]) == (5, 0)
    for index, size in enumerate(sizes):
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"i{index}.png"))
        assert mask.shape == size


def test_a_long_multi_line_error_becomes_a_one_line_reason():
    error = RuntimeError("Graph execution error:\n\nDetected at node model/conv\n" + "x" * 5000)
    assert one_line_reason(error) == "RuntimeError: Graph execution error:"
    keras_error = ValueError("Exception encountered when calling Concatenate.call().\n\n"
                             "\x1b[1mDimension 1 in both shapes must be equal\x1b[0m\n\nArgs")
    assert one_line_reason(keras_error) == ("ValueError: Exception encountered when calling "
                                            "Concatenate.call(). Dimension 1 in both shapes "
                                            "must be equal")
    in_user_code = ValueError(  # a tf.function's error: the trace first, then the error
        "in user code:\n\n    File \"/m/keras_runtime.py\", line 130, in None  *\n"
        "        lambda x: model(x, training=False)\n\n    ValueError: Exception encountered "
        "when calling Functional.call().\n    \n    \x1b[1mInput 0 of layer 'conv2d' is "
        "incompatible with the layer\x1b[0m\n    \n    Arguments received:\n")
    assert one_line_reason(in_user_code) == (
        "ValueError: Exception encountered when calling Functional.call(). Input 0 of layer "
        "'conv2d' is incompatible with the layer")
    beam_form = (KeyError, "KeyError('x')", ["Traceback ...\n", "  File ...\n",
                                              "KeyError: 'x'\nmore\n"])
    assert one_line_reason(beam_form) == "KeyError: 'x'"
    long = one_line_reason(ValueError("y" * 5000))
    assert long.startswith("ValueError: yyy") and long.endswith("...")
    assert len(long) <= REASON_LENGTH + len("ValueError: ")


def test_a_model_copy_computes_on_the_device_it_was_loaded_on(demo_model_path):
    """TensorFlow places a compiled function where it is called, not where the model's weights
    are: every call into a copy loaded on the second device (two logical CPUs standing in for
    two GPUs) must run there, the model and the fused CRF alike. Before, they ran on the
    first, whichever device the copy was given."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "tests.placement_check", demo_model_path],
                            cwd=root, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "KERAS_BACKEND": "tensorflow",
                                 "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-4000:]
    devices = json.loads(result.stdout.strip().splitlines()[-1])
    assert devices == {"model": ["CPU:1"], "crf": ["CPU:1"]}
