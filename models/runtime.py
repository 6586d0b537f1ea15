"""A loaded model of any format behind one interface: batches of RGB in, class scores out.

Every format (``segbeam.models.formats``) loads into a ``ModelRuntime``. The inference stage
sees only this: it feeds (N, H, W, 3) float32 batches, already preprocessed, and gets (N, h, w,
C) float32 scores back (logits or probabilities; h, w may be a stride of H, W). Layout
(channels first or last), the choice of one output among several, fixed batch sizes and
input dtypes are the runtime's business. A Keras runtime also exposes ``keras_model`` (NHWC
in, one NHWC output), so that the post-processing can be compiled into the model's graph.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from segbeam.models.formats import fixed_size, image_layout, input_channels, luminance


def choose_output(names: Sequence[str], output_key: Optional[str], model: str,
                  shapes: Optional[Sequence] = None) -> int:
    """The index of the output to use: the only one, or the one ``--output_key`` names."""
    names = list(names)
    if output_key is not None:
        if output_key not in names:
            raise ValueError(f"--output_key {output_key!r} is not an output of {model}; its "
                             f"outputs are {', '.join(names)}")
        return names.index(output_key)
    if len(names) == 1:
        return 0
    listed = ", ".join(f"{n} {tuple(s)}" if shapes else n
                       for n, s in zip(names, shapes or [None] * len(names)))
    raise ValueError(f"{model} has {len(names)} outputs ({listed}); pass --output_key with the "
                     f"one that holds the class scores")


def to_channels_last(values: np.ndarray, layout: str) -> np.ndarray:
    return np.moveaxis(values, 1, -1) if layout == "channels_first" else values


def to_model_layout(batch: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(batch, -1, 1)) if layout == "channels_first" \
        else batch


class ModelRuntime:
    """The common part. Subclasses set the attributes in ``__init__`` and implement
    ``_run(batch in the model's layout) -> outputs in the model's layout``.

    format: one of ``segbeam.models.formats.FORMATS``. name: the ``--model`` value.
    layout: the model's own layout. input_shape / output_shape: as the model declares them, in
    its own layout (unknown dimensions as None or names). batch_limit: the batch size a model
    was exported with (PyTorch exports fix it to 1 unless told otherwise), else None.
    """

    format: str = ""
    name: str = ""
    layout: str = "channels_last"
    input_shape: tuple = ()
    output_shape: tuple = ()
    output_names: tuple = ()
    output_name: str = ""
    batch_limit: Optional[int] = None
    input_channels: int = 3  # 1: a grayscale model, fed the luminance of each RGB batch
    keras_model: Any = None
    producer: str = ""

    def _set_shapes(self, input_shape: Sequence, output_shape: Sequence, data_format: str):
        self.input_shape, self.output_shape = tuple(input_shape), tuple(output_shape)
        self.layout = image_layout(self.input_shape, data_format, f"model {self.name}")
        self.input_channels = input_channels(self.input_shape, self.layout)
        if len(self.output_shape) != 4:
            raise ValueError(f"model {self.name}'s output {self.output_name or ''} has shape "
                             f"{self.output_shape}; segbeam needs per-pixel class scores, "
                             f"(N, H, W, C) or (N, C, H, W)")
        batch = self.input_shape[0]
        self.batch_limit = batch if isinstance(batch, int) and batch > 0 else None

    def fixed_input_size(self) -> Optional[tuple[int, int]]:
        return fixed_size(self.input_shape, self.layout)

    def num_classes(self) -> Optional[int]:
        """The class count the model declares, or None when its output shape leaves it open."""
        count = self.output_shape[-1 if self.layout == "channels_last" else 1]
        return count if isinstance(count, int) and count > 0 else None

    def outputs(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w, C) float32 scores for a preprocessed (N, H, W, 3) float32 batch."""
        limit = self.batch_limit or len(batch)
        parts = []
        for start in range(0, len(batch), limit):
            chunk = batch[start:start + limit]
            padded = chunk
            if len(chunk) < limit:  # a model exported for a fixed batch: fill the last one
                filler = np.zeros((limit - len(chunk), *chunk.shape[1:]), chunk.dtype)
                padded = np.concatenate([chunk, filler])
            if self.input_channels == 1:
                padded = luminance(padded)
            feed = to_model_layout(padded, self.layout)
            self._check_input(feed.shape)
            result = np.asarray(self._run(feed))
            parts.append(to_channels_last(result, self.layout)[:len(chunk)])
        values = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if values.ndim != 4:
            raise ValueError(f"model {self.name} returned shape {values.shape} for a batch of "
                             f"{batch.shape}; expected per-pixel class scores")
        return values.astype(np.float32, copy=False)

    def _check_input(self, shape: tuple) -> None:
        declared = self.input_shape[1:]
        if any(isinstance(d, int) and d != got for d, got in zip(declared, shape[1:])):
            raise ValueError(f"model {self.name} takes input {self.input_shape} ({self.layout})"
                             f" but was fed {shape}: check --data_format and --input_size")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_channel_preprocess(self, preprocess: str) -> None:
        """A one-channel model takes the luminance of the preprocessed RGB: a normalisation of
        each colour channel apart (caffe, torch) has no meaning there; a ValueError."""
        if self.input_channels == 1 and preprocess in ("caffe", "torch"):
            raise ValueError(f"--preprocess {preprocess} normalises each colour channel apart, "
                             f"but model {self.name} takes one channel (the luminance of the "
                             f"RGB image, in [0, 255]); pass --preprocess none, scale_0_1 or "
                             f"scale_-1_1")

    def preprocessing_hint(self) -> str:
        return ("unknown: use the normalisation the model was trained with (--preprocess; "
                "README, Bring your own model)")

    def preprocess_warning(self, preprocess: str) -> Optional[str]:
        """Where the model shows that ``--preprocess`` normalises its input a second time: a
        warning, or a ValueError where that is certain; None where nothing shows it."""
        return None

    def describe(self) -> dict:
        """What ``segbeam models --inspect`` prints."""
        return {"format": self.format, "layout": self.layout,
                "input shape": self.input_shape, "output shape": self.output_shape,
                "outputs": ", ".join(self.output_names) or "-",
                "output used": self.output_name or "-",
                "input channels": "1 (fed the luminance of each RGB image)"
                if self.input_channels == 1 else 3,
                "classes": "1 (binary: served as 2 classes, background 0 and foreground 1)"
                if self.num_classes() == 1 else self.num_classes() or "not declared",
                "fixed input size": "x".join(map(str, self.fixed_input_size() or ())) or
                "any (pass --input_size, or --resize_mode pad)",
                "batch size": self.batch_limit or "any",
                "producer": self.producer or "-",
                "preprocessing hint": self.preprocessing_hint()}
