import numpy as np
import pytest

from segbeam import models


def test_create_model_lists_known_names_on_typos():
    with pytest.raises(ValueError, match="known models: .*tiny_fcn"):
        models.create_model("tiny_fnc", num_classes=3)


@pytest.mark.parametrize("classes, size", [(2, (64, 96)), (11, None)])
def test_tiny_fcn_output_shape(classes, size):
    model = models.create_model("tiny_fcn", num_classes=classes, input_size=size)
    batch = np.zeros((2, 48, 40, 3), np.float32) if size is None else np.zeros((2, *size, 3))
    out = model.predict(batch, verbose=0)
    assert out.shape == (*batch.shape[:3], classes)


def test_bilinear_upsampling_matches_numpy_reference_at_any_size():
    from segbeam.models.layers import BilinearUpsampling
    from segbeam.geometry import resize_bilinear

    layer = BilinearUpsampling(2)
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 5, 2), (2, 4, 4, 1)]:
        values = rng.random(shape).astype(np.float32)
        out = np.asarray(layer(values))
        for i in range(shape[0]):
            np.testing.assert_allclose(out[i], resize_bilinear(values[i], shape[1] * 2,
                                                               shape[2] * 2), atol=1e-5)


def test_saved_model_round_trips_without_importing_custom_layers(tmp_path, tiny_model_path):
    import subprocess
    import sys

    import keras

    from segbeam.models.source import load_model

    batch = np.random.default_rng(0).integers(0, 255, size=(1, 32, 48, 3)).astype(np.float32)
    expected = keras.saving.load_model(tiny_model_path).predict(batch, verbose=0)
    np.testing.assert_allclose(load_model(tiny_model_path, num_classes=3).predict(
        batch, verbose=0), expected, atol=1e-6)
    # A fresh interpreter that imports only our loader (which registers the layers).
    code = ("import numpy as np, sys; from segbeam.models.source import load_model; "
            f"m = load_model({tiny_model_path!r}); print(m.output_shape[-1])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(tmp_path.parent), timeout=120)
    assert result.stdout.strip().endswith("3"), result.stderr[-2000:]


def test_load_model_rejects_class_count_mismatch(tiny_model_path):
    from segbeam.models.source import load_model

    with pytest.raises(ValueError, match="predicts 3 classes but --num_classes is 5"):
        load_model(tiny_model_path, num_classes=5)


def test_training_lowers_the_loss():
    import keras

    from segbeam.models.training import fit_on_arrays
    from segbeam.pipeline.demo import synthetic_scene

    rng = np.random.default_rng(0)
    scenes = [synthetic_scene(rng, 32, 32) for _ in range(32)]
    keras.utils.set_random_seed(0)
    model = models.create_model("tiny_fcn", num_classes=3)
    losses = fit_on_arrays(model, np.stack([s[0] for s in scenes]),
                           np.stack([s[1] for s in scenes]), epochs=4, batch_size=8)
    assert losses[-1] < 0.7 * losses[0]
