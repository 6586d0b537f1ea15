"""Models of every format a user brings: .keras, legacy .h5, SavedModel, ONNX.

One small model (a stride-2 network, so outputs need upsampling) is saved by the real
exporters: Keras 3 (``.keras``, ``.h5``, ``model.export()`` for a SavedModel and, through
tf2onnx, ONNX), plus the same weights written as a PyTorch-style ONNX graph (channels first,
batch fixed to 1, two outputs ``out`` and ``aux``). ``segbeam run`` over the same images with
each must agree with the ``.keras`` run. Legacy Keras 2 files come from tf.keras itself
(``tests/fixtures``, made by ``make_keras2_models.py``).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segbeam.models.formats import detect_format, image_layout
from segbeam.models.source import ModelSource
from tests.conftest import get, put

pytest.importorskip("onnxruntime", reason="the test extra installs onnxruntime")
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SIZES = [(64, 96), (96, 64), (70, 90), (64, 96)]


def _small_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    return keras.Model(inputs, keras.layers.Conv2D(3, 1, name="logits")(x))


def _pytorch_style_onnx(model, path: str) -> None:
    """The Keras model's weights as an ONNX graph laid out the way torch.onnx.export writes
    one: (1, 3, H, W) in, (1, 3, H/2, W/2) ``out`` and a second output ``aux``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    nodes, weights, previous = [], [], "scaled"
    nodes.append(helper.make_node("Mul", ["input", "scale"], ["scaled"]))
    weights.append(numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"))
    for index, layer in enumerate(convs):
        kernel, bias = layer.get_weights()
        weights += [numpy_helper.from_array(kernel.transpose(3, 2, 0, 1).copy(), f"w{index}"),
                    numpy_helper.from_array(bias, f"b{index}")]
        stride = layer.strides[0]
        output = "out" if index == len(convs) - 1 else f"conv{index}"
        nodes.append(helper.make_node("Conv", [previous, f"w{index}", f"b{index}"], [output],
                                      strides=[stride, stride], auto_pad="SAME_UPPER"))
        if output != "out":
            nodes.append(helper.make_node("Relu", [output], [f"relu{index}"]))
            previous = f"relu{index}"
    nodes.append(helper.make_node("Neg", ["out"], ["aux"]))
    graph = helper.make_graph(
        nodes, "pytorch_style", [helper.make_tensor_value_info(
            "input", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, "h", "w"])
         for name in ("out", "aux")], weights)
    onnx_model = helper.make_model(graph, producer_name="pytorch", ir_version=8,
                                   opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, path)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    model = _small_model()
    paths = {"keras": str(folder / "small.keras"), "h5": str(folder / "small.h5"),
             "savedmodel": str(folder / "small_savedmodel"), "onnx": str(folder / "small.onnx"),
             "torch_style": str(folder / "torch_style.onnx")}
    model.save(paths["keras"])
    model.save(paths["h5"])
    model.export(paths["savedmodel"], verbose=False)
    model.export(paths["onnx"], format="onnx", verbose=False)
    _pytorch_style_onnx(model, paths["torch_style"])
    return model, paths


def _images(folder, rng) -> str:
    os.makedirs(folder, exist_ok=True)
    for index, (height, width) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            os.path.join(folder, f"img{index}.png"))
    return os.path.join(folder, "*.png")


def test_every_format_serves_the_same_masks(model_files, tmp_path):
    from segbeam.pipeline.run import run

    _, paths = model_files
    pattern = _images(str(tmp_path / "images"), np.random.default_rng(0))
    masks = {}
    for name, path in paths.items():
        output = tmp_path / name
        extra = ["--output_key", "out"] if name == "torch_style" else []
        outcome = run(["--input", pattern, "--model", path, "--num_classes", "3",
                       "--resize_mode", "pad", "--batch_size", "3", "--no-crf",
                       "--output", str(output), *extra])
        assert outcome.summary["counts"]["segmented"] == len(SIZES), name
        assert outcome.summary["counts"]["dead_letters"] == 0, name
        masks[name] = {os.path.basename(p): np.asarray(Image.open(p))
                       for p in glob.glob(f"{output}/masks/*.png")}
    reference = masks.pop("keras")
    assert len(reference) == len(SIZES)
    for name, found in masks.items():
        assert found.keys() == reference.keys(), name
        for key, labels in found.items():
            assert labels.shape == reference[key].shape
            agreement = float((labels == reference[key]).mean())
            assert agreement >= 0.999, (name, key, agreement)
    # The masks are not trivial: the model's three classes all occur.
    assert len(np.unique(np.concatenate([m.ravel() for m in reference.values()]))) == 3


def test_a_grayscale_model_is_fed_the_luminance_of_each_image(tmp_path):
    """A model of one input channel was refused (or every image a dead letter); it is fed the
    luminance of the RGB, Keras and SavedModel alike, and its masks are those of its own
    prediction on that luminance."""
    import keras

    from segbeam.models.formats import luminance
    from segbeam.pipeline.run import run

    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(x))
    paths = {"keras": str(tmp_path / "gray.keras"), "savedmodel": str(tmp_path / "gray_sm")}
    model.save(paths["keras"])
    model.export(paths["savedmodel"], verbose=False)
    rng = np.random.default_rng(2)
    pattern = _images(str(tmp_path / "images"), rng)
    expected = {}
    for path in sorted(glob.glob(pattern)):
        rgb = np.asarray(Image.open(path))
        scores = model.predict(luminance(rgb)[None] / 255.0, verbose=0)[0]
        expected[os.path.basename(path)] = scores.argmax(-1)
    for name, extra in (("keras", []), ("keras", ["--calibration", "--masks",
                                                  str(tmp_path / "images")]),
                        ("savedmodel", [])):
        output = tmp_path / f"{name}{len(extra)}"
        outcome = run(["--input", pattern, "--model", paths[name], "--num_classes", "3",
                       "--preprocess", "scale_0_1", "--resize_mode", "pad", "--no-crf",
                       "--ignore_index", "-1", "--output", str(output), *extra])
        assert outcome.summary["counts"]["segmented"] == len(SIZES), (name, extra)
        for key, labels in expected.items():
            found = np.asarray(Image.open(output / "masks" / key))
            assert float((found == labels).mean()) >= 0.999, (name, extra, key)
    # not trivial: more than one class (how many depends on the backend's random weights)
    assert len(np.unique(np.concatenate([m.ravel() for m in expected.values()]))) >= 2

    # Per-channel normalisations have no meaning for one channel: refused at launch.
    with pytest.raises(ValueError, match="--preprocess caffe normalises each colour channel"):
        run(["--input", pattern, "--model", paths["keras"], "--preprocess", "caffe",
             "--output", str(tmp_path / "caffe")])


def test_pytorch_style_onnx_is_read_as_channels_first_with_a_fixed_batch(model_files):
    model, paths = model_files
    runtime = ModelSource(paths["torch_style"], output_key="out").open()
    assert (runtime.layout, runtime.batch_limit, runtime.output_names) == (
        "channels_first", 1, ("out", "aux"))
    batch = np.random.default_rng(1).uniform(0, 255, (3, 64, 96, 3)).astype(np.float32)
    np.testing.assert_allclose(runtime.outputs(batch), model.predict(batch, verbose=0),
                               atol=1e-4)
    with pytest.raises(ValueError, match="2 outputs .*out.*aux.*--output_key"):
        ModelSource(paths["torch_style"]).open()
    with pytest.raises(ValueError, match="'logit' is not an output"):
        ModelSource(paths["torch_style"], output_key="logit").open()
    forced = ModelSource(paths["torch_style"], output_key="out", data_format="channels_last")
    with pytest.raises(ValueError, match="check --data_format"):  # loudly, not wrong masks
        forced.open().outputs(batch)


def test_keras2_h5_from_tf_keras_predicts_as_tf_keras_did():
    expected = np.load(os.path.join(FIXTURES, "keras2_small_expected.npz"))
    source = ModelSource(os.path.join(FIXTURES, "keras2_small.h5"), num_classes=3)
    assert source.format == "h5"
    logits = source.open().outputs(expected["images"].astype(np.float32))
    np.testing.assert_allclose(logits, expected["logits"], atol=1e-4)


def test_h5_with_python_code_is_refused_unless_unsafe_loading_is_explicit():
    path = os.path.join(FIXTURES, "keras2_lambda.h5")
    with pytest.raises(ValueError, match="Lambda layer .* --unsafe_model_loading"):
        ModelSource(path).open()
    runtime = ModelSource(path, unsafe_model_loading=True).open()
    assert runtime.outputs(np.zeros((1, 8, 8, 3), np.float32)).shape == (1, 8, 8, 3)


def test_format_detection_and_its_errors(model_files, tmp_path):
    _, paths = model_files
    names = ["unet", "tiny_fcn"]
    assert [detect_format(paths[k], names) for k in ("keras", "h5", "savedmodel", "onnx")] == [
        "keras", "h5", "savedmodel", "onnx"]
    assert detect_format(os.path.join(paths["savedmodel"], "saved_model.pb"), names) == \
        "savedmodel"
    assert detect_format("unet", names) == "registry"
    with pytest.raises(ValueError, match="torch.onnx.export"):
        detect_format(str(tmp_path / "model.pt"), names)
    with pytest.raises(ValueError, match="does not exist"):
        detect_format(str(tmp_path / "missing"), names)
    with pytest.raises(ValueError, match="SavedModel folder .*saved_model.pb"):
        detect_format(str(tmp_path), names)  # a folder without saved_model.pb
    with pytest.raises(ValueError, match="unknown model 'unett'"):
        detect_format("unett", names)
    weights = tmp_path / "small.weights.h5"
    model_files[0].save_weights(str(weights))
    with pytest.raises(ValueError, match="weights only.*registry name"):
        ModelSource(str(weights)).open()


@pytest.mark.parametrize("kind, flags, message", [
    ("registry", {"signature": "serve"}, "--signature applies to SavedModel folders; tiny_fcn "
                                         "is a registry model: drop --signature"),
    ("registry", {"output_key": "logits"}, "--output_key applies to saved models with several"),
    ("registry", {"data_format": "channels_first"}, "registry models take channels-last"),
    ("weights", {"seed": 3}, "--seed applies to registry models without --weights .* is a "
                             "registry model with --weights"),
    ("keras", {"seed": 3}, r"model.keras is a \.keras model: drop --seed"),
    ("keras", {"signature": "serve"}, "--signature applies to SavedModel folders"),
    ("onnx", {"unsafe_model_loading": True}, r"applies to saved Keras models \(.keras, .h5\); "
                                             r"\S*model.onnx is an ONNX model"),
    ("registry", {"unsafe_model_loading": True}, "applies to saved Keras models")])
def test_a_model_flag_that_its_format_ignores_is_an_error(tmp_path, kind, flags, message):
    """Each was accepted without effect: a --signature for a .keras file, a --seed for a
    trained model, an --output_key for a registry model (that one failed on every worker)."""
    for name in ("model.keras", "model.onnx", "w.weights.h5"):
        (tmp_path / name).write_bytes(b"never read")
    spec = {"registry": "tiny_fcn", "weights": "tiny_fcn", "keras": str(tmp_path / "model.keras"),
            "onnx": str(tmp_path / "model.onnx")}[kind]
    weights = str(tmp_path / "w.weights.h5") if kind == "weights" else None
    with pytest.raises(ValueError, match=message):
        ModelSource(spec, weights, 3, **flags)
    ModelSource(spec, weights, 3)  # the defaults apply to every format
    ModelSource("tiny_fcn", None, 3, seed=3)
    ModelSource(str(tmp_path / "model.keras"), None, 3, data_format="channels_last",
                unsafe_model_loading=True, output_key="logits")


def test_layout_from_declared_shapes():
    assert image_layout((None, None, None, 3)) == "channels_last"
    assert image_layout(("batch", 3, "height", "width")) == "channels_first"
    assert image_layout((1, 3, 512, 512)) == "channels_first"
    assert image_layout((1, 3, 3, 3), "channels_first") == "channels_first"
    with pytest.raises(ValueError, match="--data_format"):
        image_layout((1, 3, 3, 3))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        image_layout((None, 224, 224))
    # A grayscale model's channel axis is read (fed the luminance: see the test below); an
    # RGBA model's is refused (every image was a dead letter reading "in user code:").
    assert image_layout((None, None, None, 1)) == "channels_last"
    assert image_layout(("batch", 1, "height", "width")) == "channels_first"
    with pytest.raises(ValueError, match=r"^model m takes 4-channel input \(shape \(1, 256, "
                                         r"256, 4\), channels_last\); segbeam feeds RGB"):
        image_layout((1, 256, 256, 4), what="model m")


def test_savedmodel_signatures_and_a_keras_model_with_two_outputs(model_files, tmp_path):
    import keras

    _, paths = model_files
    with pytest.raises(ValueError, match="no signature 'predict' .*serve"):
        ModelSource(paths["savedmodel"], signature="predict").open()
    assert ModelSource(paths["savedmodel"], signature="serve").open().num_classes() == 3

    inputs = keras.Input((None, None, 3))
    scores = keras.layers.Conv2D(4, 1, name="scores")(inputs)
    edges = keras.layers.Conv2D(1, 1, name="edges")(inputs)
    path = str(tmp_path / "two_outputs.keras")
    keras.Model(inputs, [edges, scores]).save(path)
    with pytest.raises(ValueError, match="2 outputs .*edges.*scores"):
        ModelSource(path).open()
    runtime = ModelSource(path, output_key="scores", num_classes=4).open()
    assert runtime.outputs(np.zeros((2, 8, 8, 3), np.float32)).shape == (2, 8, 8, 4)
    with pytest.raises(ValueError, match="predicts 4 classes but --num_classes is 3"):
        ModelSource(path, output_key="scores", num_classes=3).open()


def test_fingerprints_per_format(model_files, tmp_path):
    import hashlib
    import shutil

    _, paths = model_files
    keras_file = ModelSource(paths["keras"])
    # Unchanged for a .keras file called the default way: earlier runs' fingerprints hold.
    digest = hashlib.sha256(open(paths["keras"], "rb").read()).hexdigest()
    assert keras_file.fingerprint() == f"sha256:{digest}"
    prints = {name: ModelSource(path).fingerprint() for name, path in paths.items()}
    assert len(set(prints.values())) == len(prints)
    assert ModelSource(paths["torch_style"], output_key="out").fingerprint() == \
        prints["torch_style"] + "|output_key=out"
    copy = str(tmp_path / "copy")
    shutil.copytree(paths["savedmodel"], copy)
    assert ModelSource(copy).fingerprint() == prints["savedmodel"]  # content, not location
    with open(os.path.join(copy, "fingerprint.pb"), "ab") as handle:
        handle.write(b"\0")
    assert ModelSource(copy).fingerprint() != prints["savedmodel"]


def test_a_saved_model_gives_its_class_count_where_num_classes_is_left_out(model_files,
                                                                          tmp_path, capsys):
    """--num_classes was required even for a saved model that says how many classes it
    predicts; now its output gives the count, and the run is the one the flag would make."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from segbeam.pipeline.cli import main
    from segbeam.pipeline.options import SegmentationOptions, settings_from

    def settings(*argv):
        return settings_from(PipelineOptions(["--input", str(tmp_path), *argv]).view_as(
            SegmentationOptions))

    _, paths = model_files
    for name in ("keras", "savedmodel", "onnx"):
        given = settings("--model", paths[name], "--num_classes", "3")
        taken = settings("--model", paths[name])
        assert (taken.num_classes, taken.class_names) == (3, ["class_0", "class_1", "class_2"])
        assert taken.config_fingerprint() == given.config_fingerprint(), name
    # A registry name predicts what it is built for: the flag (or a preset) stays required.
    assert main(["run", "--input", str(tmp_path), "--model", "tiny_fcn"]) == 2
    assert "--num_classes is required" in capsys.readouterr().err
    assert settings("--model", "tiny_fcn", "--dataset", "camvid").num_classes == 11


def test_models_inspect_prints_what_a_run_sees(model_files):
    _, paths = model_files
    command = [sys.executable, "-m", "segbeam.pipeline.cli", "models", "--inspect"]
    env = {k: v for k, v in os.environ.items()  # as a user runs it: segbeam hides TF's lines
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "SEGBEAM_QUIETED_TF_LOG_LEVEL")}
    result = subprocess.run([*command, paths["torch_style"], "--output_key", "out"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    for expected in ("format              onnx", "layout              channels_first",
                     "batch size          1", "logits", "stride 2", "torch for torchvision"):
        assert expected in result.stdout, result.stdout
    result = subprocess.run([*command, paths["torch_style"]], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--output_key" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_on_cloud_storage(model_files, gcs_bucket, tmp_path, monkeypatch,
                                 demo_model_path):
    """A SavedModel folder, ONNX files (one with external weights), a .keras file and registry
    weights on gs:// are detected, copied, loaded and fingerprinted like local ones, and their
    copies are gone once loaded: each load left one in the temp folder (a run loads its model
    in the launcher and in every worker)."""
    import tempfile

    _, paths = model_files
    gcs = gcs_bucket()
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    put(f"{gcs}/models/small.keras", open(paths["keras"], "rb").read())
    put(f"{gcs}/models/demo.keras", open(demo_model_path, "rb").read())
    for root, _, names in os.walk(paths["savedmodel"]):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), paths["savedmodel"])
            put(f"{gcs}/models/sm/{relative}", open(os.path.join(root, name), "rb").read())
    put(f"{gcs}/models/small.onnx", open(paths["onnx"], "rb").read())
    assert get(f"{gcs}/models/small.onnx") == open(paths["onnx"], "rb").read()
    external = _with_external_data(paths["torch_style"], tmp_path)
    for name in os.listdir(os.path.dirname(external)):
        put(f"{gcs}/models/external/{name}",
            open(os.path.join(os.path.dirname(external), name), "rb").read())
    batch = np.random.default_rng(2).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    for remote, local in ((f"{gcs}/models/sm", paths["savedmodel"]),
                          (f"{gcs}/models/small.onnx", paths["onnx"]),
                          (f"{gcs}/models/external/model.onnx", external),
                          (f"{gcs}/models/small.keras", paths["keras"])):
        source = ModelSource(remote, num_classes=3, output_key="out" if "ext" in local
                             else None)
        same = ModelSource(local, num_classes=3, output_key=source.output_key)
        assert source.format == same.format
        assert source.fingerprint() == same.fingerprint()
        np.testing.assert_allclose(source.open().outputs(batch), same.open().outputs(batch),
                                   atol=1e-6)
        assert _copies_left(temp) == [], remote
    weights = ModelSource("tiny_fcn", num_classes=3, weights=f"{gcs}/models/demo.keras")
    np.testing.assert_allclose(
        weights.open().outputs(batch),
        ModelSource("tiny_fcn", num_classes=3, weights=demo_model_path).open().outputs(batch),
        atol=1e-6)
    assert _copies_left(temp) == []


def _copies_left(temp) -> list[str]:
    """What the temp folder holds, less the modules TensorFlow's autograph writes there."""
    return [name for name in os.listdir(temp) if not name.startswith("__autograph_generated")]


def _with_external_data(path: str, tmp_path) -> str:
    """The model at ``path`` saved again with its weights in ``model.onnx.data`` beside it,
    as torch.onnx's default exporter writes models."""
    import onnx

    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save_model(onnx.load_model(path), str(folder / "model.onnx"),
                    save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return str(folder / "model.onnx")


def test_an_onnx_model_with_external_data_is_fingerprinted_with_it(model_files, tmp_path):
    _, paths = model_files
    path = _with_external_data(paths["torch_style"], tmp_path)
    source = ModelSource(path, output_key="out")
    before = source.fingerprint()
    assert "+model.onnx.data:" in before
    data = tmp_path / "external" / "model.onnx.data"
    weights = bytearray(data.read_bytes())
    weights[-1] ^= 1  # one bit of one weight
    data.write_bytes(bytes(weights))
    assert source.fingerprint() != before


def test_a_model_that_cannot_be_served_fails_in_one_line_before_any_work(model_files,
                                                                          tmp_path):
    _, paths = model_files
    pattern = _images(str(tmp_path / "images"), np.random.default_rng(0))
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "SEGBEAM_QUIETED_TF_LOG_LEVEL")}
    command = [sys.executable, "-m", "segbeam.pipeline.cli", "run", "--input", pattern,
               "--num_classes", "3", "--resize_mode", "pad", "--output", str(tmp_path / "out")]
    result = subprocess.run([*command, "--model", paths["torch_style"]], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "pass --output_key" in result.stderr, \
        result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "out")

    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not a zip archive")  # Keras: "File not found"
    with pytest.raises(ValueError, match=r"broken.keras is not a \.keras file \(a zip archive"):
        ModelSource(str(broken)).open()
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not HDF5")  # h5py's OSError went up as an internal error
    with pytest.raises(ValueError, match="broken.h5 is not an HDF5 file that h5py can open"):
        ModelSource(str(broken)).open()
    with pytest.raises(ValueError, match="takes 64x64 input but --input_size is 32x32"):
        _fixed_size_model(tmp_path).open()


def _fixed_size_model(tmp_path) -> ModelSource:
    import keras

    inputs = keras.Input((64, 64, 3))
    path = str(tmp_path / "fixed.keras")
    keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs)).save(path)
    return ModelSource(path, input_size=(32, 32))


CHANNELS_FIRST_CHECK = """
import numpy as np, keras
from segbeam.models.source import ModelSource
from segbeam.transforms.predictor import SegmentationPredictor
inputs = keras.Input((3, None, None))
x = keras.layers.Conv2D(6, 3, strides=2, padding="same", data_format="channels_first")(inputs)
scores = keras.layers.Conv2D(4, 1, data_format="channels_first", name="scores")(x)
aux = keras.layers.Conv2D(4, 1, data_format="channels_first", name="aux")(x)
model = keras.Model(inputs, {"scores": scores, "aux": aux})
model.save(PATH)
batch = np.random.default_rng(0).uniform(0, 255, (2, 32, 48, 3)).astype("float32")
expected = np.moveaxis(np.asarray(model(np.moveaxis(batch, -1, 1))["scores"]), 1, -1)
runtime = ModelSource(PATH, output_key="scores", num_classes=4).open()
assert runtime.layout == "channels_first", runtime.layout
np.testing.assert_allclose(runtime.outputs(batch), expected, atol=1e-4)
probabilities, labels = SegmentationPredictor(runtime, "logits").predict(batch)
np.testing.assert_array_equal(labels, expected.argmax(-1))
print(keras.backend.backend(), "ok")
"""


def test_a_channels_first_keras_model_with_dict_outputs_under_jax(tmp_path):
    """TensorFlow's CPU kernels take channels-last convolutions only; JAX runs both."""
    pytest.importorskip("jax", reason="the test extra installs jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    code = CHANNELS_FIRST_CHECK.replace("PATH", repr(str(tmp_path / "cf.keras")))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("jax ok")


def _dry_run_launcher(tmp_path):
    """launch(model, *flags): `segbeam run --dry_run` of that model over a few images."""
    from segbeam.pipeline.run import run

    pattern = _images(str(tmp_path / "images"), np.random.default_rng(0))

    def launch(model, *flags):
        return run(["--input", pattern, "--model", model, "--num_classes", "3", "--output",
                    str(tmp_path / "out"), "--dry_run=True", *flags])
    return launch


def test_sizing_flags_that_the_models_input_makes_void_are_errors(tmp_path):
    """--size_multiple with a model of fixed input, and --resize_mode letterbox with one that
    takes any size (and no --input_size), were ignored: images were fed at the fixed size, or
    at their own."""
    import keras

    fixed = _fixed_size_model(tmp_path).spec
    inputs = keras.Input((None, None, 3))
    any_size = str(tmp_path / "any.keras")
    keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs)).save(any_size)
    launch = _dry_run_launcher(tmp_path)

    with pytest.raises(ValueError, match="the model takes 64x64 only, so every image is fed at"):
        launch(fixed, "--size_multiple", "16")
    with pytest.raises(ValueError, match="--resize_mode letterbox fits images to an input size, "
                                         "but neither --input_size nor the model fixes one"):
        launch(any_size, "--resize_mode", "letterbox")
    with pytest.raises(ValueError, match="neither --input_size nor the model fixes one"):
        launch("tiny_fcn", "--resize_mode", "letterbox")
    with pytest.raises(ValueError, match="with --input_size 32x32 every image is fed at"):
        launch("tiny_fcn", "--input_size", "32", "--size_multiple", "16")
    for model, flags in ((fixed, ["--resize_mode", "letterbox"]),
                         (any_size, ["--size_multiple", "16"]),
                         (any_size, ["--resize_mode", "letterbox", "--input_size", "32"])):
        assert launch(model, *flags).summary is None  # a dry run, accepted


def test_preprocess_for_a_model_that_scales_its_own_input(tmp_path):
    """A saved model that begins with segbeam's ImageNormalization takes raw RGB, so another
    --preprocess normalised its input twice without a word; one that begins with a Rescaling
    layer most likely does too, which the run now says."""
    import keras

    from segbeam.models import create_model

    ours = str(tmp_path / "segnet_basic.keras")
    create_model("segnet_basic", num_classes=3).save(ours)  # saved by a script: no record
    inputs = keras.Input((None, None, 3))
    scaled = keras.layers.Rescaling(1 / 255)(inputs)
    theirs = str(tmp_path / "theirs.keras")
    keras.Model(inputs, keras.layers.Conv2D(3, 1)(scaled)).save(theirs)
    launch = _dry_run_launcher(tmp_path)

    with pytest.raises(ValueError, match="segnet_basic.keras begins with segbeam's "
                                         "ImageNormalization layer, which takes raw RGB"):
        launch(ours, "--preprocess", "caffe")
    [warning] = launch(theirs, "--preprocess", "scale_0_1").manifest["warnings"]
    assert "theirs.keras scales its own (a Rescaling layer among its first)" in warning
    assert "warnings" not in launch(ours).manifest
    assert "warnings" not in launch(theirs).manifest


def test_a_registry_model_with_random_weights_is_said_at_the_runs_end(tmp_path, capsys):
    """A registry name without --weights runs with random weights: the run logged it once,
    among the first lines a progress display scrolls away, and its figures (chance level)
    came with no word at the end, in the manifest or in the report."""
    from segbeam.models import create_model
    from segbeam.pipeline.cli import main

    launch = _dry_run_launcher(tmp_path)
    [warning] = launch("tiny_fcn").manifest["warnings"]
    assert warning.startswith("model tiny_fcn has random weights (seed 0), so its masks and "
                              "figures are chance level")
    weights = str(tmp_path / "tiny.weights.h5")
    create_model("tiny_fcn", num_classes=3).save_weights(weights)
    assert "warnings" not in launch("tiny_fcn", "--weights", weights).manifest

    pattern = _images(str(tmp_path / "run_images"), np.random.default_rng(1))
    assert main(["run", "--input", pattern, "--model", "tiny_fcn", "--num_classes", "3",
                 "--no-crf", "--quiet", "--report", "--output", str(tmp_path / "run")]) == 0
    assert f"segbeam run: warning: {warning}" in capsys.readouterr().err
    assert warning in (tmp_path / "run" / "report" / "report.md").read_text()
