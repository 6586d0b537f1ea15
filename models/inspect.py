"""What segbeam sees in a model, without running a pipeline (``segbeam models --inspect``).

Opens the model as a run would, reads its declared shapes, then runs it once on a seeded
random image to see what it really returns: the output kind (logits or probabilities), the
class count and the output stride.
"""

from __future__ import annotations

import numpy as np

from segbeam.inference import looks_like_probabilities
from segbeam.models.source import ModelSource
from segbeam.models.training_record import TRAINING_JSON, read_training_config, \
    training_summary

PROBE_SIZE = (256, 256)


def inspect_model(source: ModelSource) -> list[tuple[str, str]]:
    """(label, value) lines describing ``source``; raises ValueError when it cannot be served."""
    runtime = source.open()
    lines = [(label, str(value)) for label, value in runtime.describe().items()]
    height, width = source.input_size or runtime.fixed_input_size() or PROBE_SIZE
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, (1, height, width, 3)).astype(np.float32)
    try:
        scores = runtime.outputs(batch)
    except Exception as error:  # the model's own failure, reported as a finding
        lines.append(("test run", f"failed on a {height}x{width} image: "
                                  f"{type(error).__name__}: {str(error).splitlines()[0]}"))
        return lines
    kind = "probabilities (non-negative, sum to 1 per pixel): --model_output probabilities" \
        if looks_like_probabilities(scores) else "logits (a softmax is applied)"
    out_h, out_w = scores.shape[1:3]
    if (out_h, out_w) == (height, width):
        grid = "the input's own grid"
    else:
        grid = (f"{out_h}x{out_w} for {height}x{width} input (stride {height / out_h:g}): "
                f"upsampled bilinearly to the input")
    lines += [("test run", f"one random {height}x{width} image, raw RGB in [0, 255]"),
              ("output kind", kind), ("classes seen", str(scores.shape[-1])),
              ("output grid", grid)]
    trained = read_training_config(source.spec) if source.saved else None
    if trained:
        lines.append(("trained with", f"{training_summary(trained)} ({TRAINING_JSON} beside "
                                      f"it; a run warns where it differs)"))
    return lines
