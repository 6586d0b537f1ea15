"""The embedded default: what ``segbeam run`` does without ``--input``.

It generates scenes (discs and boxes on a textured background, with class-id masks), trains
the small ``tiny_fcn`` model on other generated scenes for about half a minute (in float64, so
that the model does not depend on the CPU; see ``training_dtype``), and runs the whole pipeline
over the generated images. Nothing is downloaded. The inputs include an image without a mask
and one corrupt file, to show that both are handled: the corrupt file becomes a dead letter
and the counts still add up.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PIL import Image

DEMO_CLASSES = ["background", "disc", "box"]


def synthetic_scene(rng: np.random.Generator, height: int, width: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A noisy scene and its mask: 0 background, 1 discs (warm colours), 2 boxes (cool)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 140, size=3)
    slope = rng.uniform(-40, 40, size=3)
    image = base + slope * (yy / height)[..., None]
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(1, 3)):
        top, left = rng.integers(0, height * 3 // 4), rng.integers(0, width * 3 // 4)
        box_h, box_w = rng.integers(height // 8, height // 3), rng.integers(width // 8, width // 3)
        region = (slice(top, top + box_h), slice(left, left + box_w))
        image[region] = [rng.uniform(20, 70), rng.uniform(60, 130), rng.uniform(170, 240)]
        mask[region] = 2
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(min(height, width) / 12, min(height, width) / 5)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        image[disc] = [rng.uniform(180, 250), rng.uniform(40, 110), rng.uniform(20, 70)]
        mask[disc] = 1
    image += rng.normal(0, 18, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_demo_inputs(folder: str, count: int = 24, seed: int = 1) -> tuple[str, str]:
    """Writes ``count`` scenes of mixed sizes as PNGs plus masks, one image without a mask and
    one corrupt file. Returns (image glob, mask folder)."""
    rng = np.random.default_rng(seed)
    images, masks = os.path.join(folder, "images"), os.path.join(folder, "masks")
    os.makedirs(images, exist_ok=True)
    os.makedirs(masks, exist_ok=True)
    sizes = [(96, 128), (120, 160), (128, 128), (144, 112)]
    for index in range(count):
        image, mask = synthetic_scene(rng, *sizes[index % len(sizes)])
        name = f"scene_{index:03d}.png"
        Image.fromarray(image).save(os.path.join(images, name))
        if index != count - 1:  # the last scene has no ground truth
            Image.fromarray(mask).save(os.path.join(masks, name))
    with open(os.path.join(images, "corrupt_000.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + b"this is not the rest of a PNG file")
    return os.path.join(images, "*.png"), masks


def training_dtype() -> str:
    """``float64`` where the Keras backend computes in it (TensorFlow, torch; JAX only with
    ``jax_enable_x64``), else ``float32``.

    In float32, oneDNN rounds differently per instruction set and TensorFlow's kernels split
    sums by thread count, and 144 Adam steps at a learning rate of 1e-2 amplify those last
    bits into weights that differ by up to 1.4 between machines (the demo's mIoU then moves
    by over a point). In float64 the same differences stay near 1e-8 (measured: oneDNN on,
    off or held to AVX2 give identical weights, one thread instead of two moves them by
    5e-8), so the float32 model saved from them no longer depends on the CPU's instruction
    set or thread count (float32 inference may still flip near-tied pixels).
    """
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return "float64" if jax.config.jax_enable_x64 else "float32"
    return "float64"


def train_demo_model(path: str, seed: int = 0, samples: int = 192, size: int = 64,
                     epochs: int = 12, dtype: Optional[str] = None) -> list[float]:
    """Trains ``tiny_fcn`` on generated scenes and saves it as a float32 ``.keras`` file.

    ``dtype`` is the precision of the training arithmetic; None picks ``training_dtype()``,
    so that the demo's model does not depend on the machine's CPU."""
    import keras

    from segbeam import models
    from segbeam.models.training import fit_on_arrays

    rng = np.random.default_rng(seed + 1000)
    scenes = [synthetic_scene(rng, size, size) for _ in range(samples)]
    images = np.stack([s[0] for s in scenes])
    masks = np.stack([s[1] for s in scenes])
    keras.utils.set_random_seed(seed)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype or training_dtype())
    try:
        trainer = models.create_model("tiny_fcn", num_classes=len(DEMO_CLASSES))
        losses = fit_on_arrays(trainer, images, masks, epochs=epochs, batch_size=16,
                               learning_rate=1e-2)
    finally:
        keras.config.set_dtype_policy(policy)
    model = models.create_model("tiny_fcn", num_classes=len(DEMO_CLASSES))
    model.set_weights([np.asarray(w, dtype=np.float32) for w in trainer.get_weights()])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    model.save(path)
    return losses


def demo_argv(output: str, extra: Optional[list[str]] = None) -> list[str]:
    """Prepares the demo under ``output``/demo_inputs and returns the ``segbeam run`` flags."""
    folder = os.path.join(output, "demo_inputs")
    image_glob, mask_folder = write_demo_inputs(folder)
    model_path = os.path.join(folder, "tiny_fcn_demo.keras")
    given = {argument.split("=", 1)[0] for argument in extra or []}  # the user's own win
    if "--model" not in given and not os.path.exists(model_path):  # theirs needs no training
        losses = train_demo_model(model_path)
        print(f"segbeam demo: trained tiny_fcn on generated scenes, loss "
              f"{losses[0]:.3f} -> {losses[-1]:.3f}; saved {model_path}")
    defaults = {"--input": image_glob, "--masks": mask_folder, "--output": output,
                "--model": model_path, "--num_classes": str(len(DEMO_CLASSES)),
                "--class_names": ",".join(DEMO_CLASSES), "--input_size": "128",
                "--ignore_index": "-1"}
    kept = [item for flag, value in defaults.items() if flag not in given
            for item in (flag, value)]
    return [*kept, *(extra or [])]
