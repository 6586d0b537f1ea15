"""A saved Keras model with custom layers: ``--custom_objects FILE.py`` names the file that
defines them. Without it such a model could not be served at all (the only way was to export
it to ONNX or a SavedModel first); with it the file's code runs before the model loads, in
the launcher and on every worker, which get its text rather than its path."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import write_random_pairs

LAYERS = '''
import keras


@keras.saving.register_keras_serializable(package="segbeam_test")
class Halve(keras.layers.Layer):
    def call(self, x):
        return x / 2.0


class Shift(keras.layers.Layer):  # not registered: found by its class name
    def call(self, x):
        return x - {shift}
'''


def _model_with_custom_layers(tmp_path, shift: float = 0.5) -> tuple[str, str]:
    """(a .keras model, the .py file defining its layers), saved in another process, as a
    user's script would save it."""
    layers = tmp_path / "my_layers.py"
    layers.write_text(LAYERS.format(shift=shift))
    model = tmp_path / "custom.keras"
    subprocess.run([sys.executable, "-c", (
        "import sys, keras; sys.path.insert(0, sys.argv[1]); import my_layers as m; "
        "keras.utils.set_random_seed(0); i = keras.Input((None, None, 3)); "
        "x = m.Shift()(m.Halve()(i)); "
        "keras.Model(i, keras.layers.Conv2D(3, 1)(x)).save(sys.argv[2])"),
        str(tmp_path), str(model)], check=True, capture_output=True,
        env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")})
    return str(model), str(layers)


def test_a_model_with_custom_layers_runs_with_the_file_that_defines_them(tmp_path, capsys):
    from segbeam.pipeline.cli import main

    model, layers = _model_with_custom_layers(tmp_path)
    write_random_pairs(tmp_path, [np.zeros((8, 8), np.uint8)] * 2)
    argv = ["run", "--input", str(tmp_path / "images"), "--model", model, "--num_classes", "3",
            "--no-crf", "--quiet", "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "Keras cannot load" in error and "needs --custom_objects FILE.py" in error
    assert main(argv + ["--custom_objects", layers]) == 0
    assert "2 inputs -> 2 segmented" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "out" / "masks")) == ["i0.png", "i1.png"]


def test_the_files_text_travels_to_the_workers_and_names_the_model(tmp_path):
    """A worker (on Dataflow, another machine) cannot read the launcher's file: the text
    travels with the source. The code decides the outputs as the weights do, so it enters
    the fingerprint (--skip_existing must not reuse rows made with other code)."""
    from segbeam.models.source import ModelSource

    model, layers = _model_with_custom_layers(tmp_path)
    source = ModelSource(model, num_classes=3, custom_objects=layers)
    on_a_worker = pickle.loads(pickle.dumps(source))
    os.remove(layers)
    runtime = on_a_worker.open()
    assert runtime.outputs(np.full((1, 8, 8, 3), 100, np.float32)).shape == (1, 8, 8, 3)

    plain = ModelSource(model, num_classes=3).fingerprint()
    assert source.fingerprint().startswith(plain + "|custom_objects=sha256:")
    again = tmp_path / "again"
    again.mkdir()
    _, layers = _model_with_custom_layers(again, shift=0.25)
    other = ModelSource(model, num_classes=3, custom_objects=layers).fingerprint()
    assert other != source.fingerprint()


def test_a_custom_objects_file_that_fails_or_is_no_python_file_is_one_line(tmp_path):
    from segbeam.models.source import ModelSource

    model, _ = _model_with_custom_layers(tmp_path)
    broken = tmp_path / "broken.py"
    broken.write_text("import keras\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(ValueError, match=r"--custom_objects .*broken.py failed to run: "
                                         r"RuntimeError: no GPU here"):
        ModelSource(model, num_classes=3, custom_objects=str(broken)).open()
    text = tmp_path / "layers.txt"
    text.write_text("")
    with pytest.raises(ValueError, match="layers.txt is not a .py file"):
        ModelSource(model, custom_objects=str(text))
    with pytest.raises(ValueError, match="--custom_objects applies to saved Keras models "
                                         r"\(.keras, .h5\); tiny_fcn is a registry model"):
        ModelSource("tiny_fcn", num_classes=3, custom_objects=str(broken))
