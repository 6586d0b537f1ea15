"""Model outputs adapted to logits. One output channel (binary segmentation) is served as two
classes, background 0 and foreground 1; whether the channel holds logits or sigmoid
probabilities is said, never guessed. A sigmoid per class is served normalised."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from segbeam.models.output_adapters import sigmoid_logits, two_class_logits
from segbeam.pipeline.cli import main


def _softmax(logits):
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def test_one_channel_becomes_two_logits_whose_softmax_is_background_and_foreground():
    z = np.array([-30.0, -2.0, 0.5, 3.0, 40.0], dtype=np.float32).reshape(1, 1, 5, 1)
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    for kind, scores in (("logits", z), ("probabilities", p.astype(np.float32))):
        two = _softmax(two_class_logits(scores, kind).astype(np.float64))
        np.testing.assert_allclose(two[..., 1], p[..., 0], atol=1e-6)
        np.testing.assert_allclose(two.sum(axis=-1), 1.0, atol=1e-6)
        assert two.argmax(axis=-1).ravel().tolist() == [0, 0, 1, 1, 1]


def _save_model(path, activation: str) -> None:
    """A one-channel model that calls a pixel foreground where its red value exceeds 128."""
    import keras

    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(1, 1, activation=activation)(inputs)
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([np.array([0.1, 0.0, 0.0], np.float32).reshape(1, 1, 3, 1),
                                  np.array([-12.85], np.float32)])
    model.save(path)


def _pairs(folder, count=3):
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    for index in range(count):
        image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / "images" / f"b{index}.png")
        Image.fromarray((image[..., 0] > 128).astype(np.uint8)).save(
            folder / "masks" / f"b{index}.png")


@pytest.mark.parametrize("activation, flags", [("sigmoid", []), ("linear", []),
                                               ("relu", ["--model_output", "logits"])])
def test_a_binary_model_scores_as_two_classes(tmp_path, activation, flags):
    import json

    _pairs(tmp_path)
    _save_model(str(tmp_path / "binary.keras"), activation)
    # Without --num_classes, a one-channel model serves two classes.
    classes = ["--num_classes", "2"] if activation == "linear" else []
    assert main(["run", "--input", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                 "--model", str(tmp_path / "binary.keras"), *classes, "--no-crf",
                 "--quiet", "--output", str(tmp_path / "out"), *flags]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    raw = summary["evaluation"]["raw"]
    assert raw["labelled_pixels"] == 3 * 24 * 32
    # relu turns every background logit into 0, which is a tie: background, as argmax says
    assert raw["pixel_accuracy"] == 1.0 and raw["miou"] == 1.0, raw


def test_a_binary_model_that_does_not_say_what_it_emits_asks_for_the_flag(tmp_path, capsys):
    _pairs(tmp_path, count=1)
    _save_model(str(tmp_path / "binary.keras"), "relu")
    argv = ["run", "--input", str(tmp_path / "images"), "--model",
            str(tmp_path / "binary.keras"), "--no-crf", "--output", str(tmp_path / "out")]
    assert main(argv + ["--num_classes", "2"]) == 2
    error = capsys.readouterr().err
    assert "has one output channel" in error and "pass --model_output logits or" in error
    assert len(error.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    assert main(argv + ["--num_classes", "1"]) == 2
    assert "served as 2 classes" in capsys.readouterr().err


def test_a_sigmoid_per_class_is_served_as_its_scores_normalised(tmp_path):
    """Read as logits, sigmoid scores in [0, 1] gave softmax probabilities near 1/C: the CRF's
    unary had no say and the calibration figures measured nothing."""
    import keras

    from segbeam.models.source import ModelSource
    from segbeam.transforms.predictor import SegmentationPredictor

    scores = np.array([[0.9, 0.2, 0.05], [0.3, 0.6, 0.6]], np.float32)
    normalised = _softmax(sigmoid_logits(scores).astype(np.float64))
    np.testing.assert_allclose(normalised, scores / scores.sum(axis=-1, keepdims=True),
                               atol=1e-6)
    inputs = keras.Input((None, None, 3))
    heads = keras.layers.Conv2D(3, 1, activation="sigmoid")(inputs)
    path = str(tmp_path / "sigmoid.keras")
    keras.Model(inputs, heads).save(path)
    batch = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    raw = keras.models.load_model(path).predict(batch, verbose=0)
    predictor = SegmentationPredictor(ModelSource(path, num_classes=3).open())
    probabilities, labels = predictor.predict(batch)
    np.testing.assert_allclose(probabilities.astype(np.float32),
                               raw / raw.sum(axis=-1, keepdims=True), atol=2e-3)
    assert np.array_equal(labels, raw.argmax(axis=-1))


@pytest.mark.parametrize("sharing", [[], ["--large_model"]])
def test_scores_in_0_1_that_auto_reads_as_logits_are_counted_and_warned_about(tmp_path, capsys,
                                                                                sharing):
    """An ONNX or SavedModel export with a sigmoid per class (whose final activation segbeam
    cannot see) gave scores in [0, 1]: --model_output auto read them as logits and their
    flattened softmax fed the CRF and the calibration figures, without a word. Behind
    --large_model's proxy the model runs in another process, where Beam counts nothing."""
    import keras

    from segbeam.inference import UNIT_RANGE_AS_LOGITS, UNIT_RANGE_COUNTER

    _pairs(tmp_path)
    inputs = keras.Input((None, None, 3))
    scores = keras.layers.ReLU(max_value=1.0)(keras.layers.Conv2D(2, 1)(inputs))  # in [0, 1]
    keras.Model(inputs, scores).save(tmp_path / "capped.keras")
    run = ["run", "--input", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
           "--model", str(tmp_path / "capped.keras"), "--num_classes", "2", "--quiet", *sharing]
    assert main([*run, "--output", str(tmp_path / "auto")]) == 0
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert manifest["beam_counters"][UNIT_RANGE_COUNTER] == 1  # one look decides
    assert f"WARNING: {UNIT_RANGE_AS_LOGITS}" in capsys.readouterr().out
    assert main([*run, "--model_output", "probabilities", "--output", str(tmp_path / "p")]) == 0
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert UNIT_RANGE_COUNTER not in (manifest["beam_counters"] or {})
    assert UNIT_RANGE_AS_LOGITS not in capsys.readouterr().out


def test_declared_probabilities_are_normalised_and_logits_declared_so_are_refused(tmp_path):
    """--model_output probabilities (the README's way for a sigmoid per class outside Keras)
    passed scores that do not sum to one on as probabilities: calibration figures and the
    CRF's unary were computed on them as they were. Logits declared so were taken as they
    were too."""
    import keras
    from keras import ops

    from segbeam.inference import normalise_probabilities, to_probabilities
    from segbeam.models.source import ModelSource
    from segbeam.transforms.fused_crf import as_probabilities
    from segbeam.transforms.predictor import SegmentationPredictor

    scores = np.array([[[[0.9, 0.2, 0.05], [0.3, 0.6, 0.6], [0.0, 0.0, 0.0]]]], np.float32)
    expected = np.array([[[[0.9, 0.2, 0.05], [0.3, 0.6, 0.6], [1, 1, 1]]]], np.float32)
    expected /= expected.sum(axis=-1, keepdims=True)  # a pixel of zeros: uniform
    np.testing.assert_allclose(to_probabilities(scores, "probabilities"), expected, atol=1e-6)
    np.testing.assert_allclose(normalise_probabilities(scores), expected, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(as_probabilities(
        ops.convert_to_tensor(scores), "probabilities")), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"outputs range from -2 to 0\.9, outside \[0, 1\]"):
        to_probabilities(np.array([[-2.0, 0.9]], np.float32), "probabilities")

    inputs = keras.Input((None, None, 3))
    for activation in ("sigmoid", "linear"):
        heads = keras.layers.Conv2D(3, 1, activation=activation)(inputs)
        keras.Model(inputs, heads).save(str(tmp_path / f"{activation}.keras"))
    batch = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    path = str(tmp_path / "sigmoid.keras")
    raw = keras.models.load_model(path).predict(batch, verbose=0)
    predictor = SegmentationPredictor(ModelSource(path, num_classes=3).open(), "probabilities")
    probabilities, labels = predictor.predict(batch)  # in the Keras serving graph
    np.testing.assert_allclose(probabilities.astype(np.float32),
                               raw / raw.sum(axis=-1, keepdims=True), atol=2e-3)
    assert np.array_equal(labels, raw.argmax(axis=-1))
    linear = ModelSource(str(tmp_path / "linear.keras"), num_classes=3).open()
    with pytest.raises(ValueError, match="ends in a linear layer, so its outputs are logits"):
        SegmentationPredictor(linear, "probabilities")  # the final layer says it
    hidden = keras.Model(inputs, keras.Model(inputs, linear.keras_model(inputs))(inputs))
    hidden.save(str(tmp_path / "hidden.keras"))  # a sub-model's linear layer: outputs say it
    hidden = SegmentationPredictor(
        ModelSource(str(tmp_path / "hidden.keras"), num_classes=3).open(), "probabilities")
    with pytest.raises(ValueError, match="they are not probabilities; pass --model_output logits"):
        hidden.predict(batch)


def test_logits_declared_as_probabilities_are_dead_letters_that_count(tmp_path):
    """Each image of a model whose outputs are no probabilities under --model_output
    probabilities ends as a dead letter at stage inference that names the range: accounted
    for, never scored on those outputs."""
    import json

    import keras

    inputs = keras.Input((None, None, 3))
    head = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    head.layers[-1].set_weights([np.full((1, 1, 3, 2), 0.05, np.float32),  # logits -2..36
                                 np.array([-2.0, 2.0], np.float32)])
    keras.Model(inputs, head(inputs)).save(str(tmp_path / "logits.keras"))  # a hidden linear
    _pairs(tmp_path, count=2)
    assert main(["run", "--input", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                 "--model", str(tmp_path / "logits.keras"), "--num_classes", "2",
                 "--model_output", "probabilities", "--no-crf", "--quiet",
                 "--output", str(tmp_path / "out")]) == 1  # every input a dead letter
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    counts = summary["counts"]
    assert counts["accounted_for"] and counts["inputs"] == 2 and counts["segmented"] == 0
    assert counts["dead_letters_by_stage"] == {"inference": 2}
    letters = [json.loads(line) for path in (tmp_path / "out" / "dead_letters").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    assert sorted(d["key"] for d in letters) == ["b0", "b1"]
    assert all("outside [0, 1]: they are not probabilities" in d["reason"] for d in letters)


def _nested_softmax_model(path) -> None:
    """A two-class model whose softmax sits inside a sub-model: its final layer does not say
    that it emits probabilities, only its outputs do."""
    import keras

    inputs = keras.Input((None, None, 3))
    head = keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(inputs))
    head.layers[-1].set_weights([np.array([[0.05, -0.05], [0, 0], [0, 0]], np.float32)
                                 .reshape(1, 1, 3, 2), np.array([-6.4, 6.4], np.float32)])
    keras.Model(inputs, head(inputs)).save(path)


def test_probabilities_declared_as_logits_are_refused(tmp_path, capsys):
    """--model_output logits on a model that emits probabilities took their softmax: the
    labels stood, but the CRF's unary and the calibration were computed on flattened
    probabilities without a word (the demo model with a softmax added: ECE 42.02 for 0.44,
    CRF mIoU 97.38 for 97.73)."""
    import keras

    from segbeam.inference import to_probabilities

    probabilities = np.array([[[[0.9, 0.05, 0.05], [0.2, 0.3, 0.5]]]], np.float32)
    with pytest.raises(ValueError, match=r"--model_output logits, but the model's outputs are "
                                         r"probabilities \(in \[0, 1\], summing to one"):
        to_probabilities(probabilities, "logits")  # how formats other than Keras are served
    logits = np.array([[[[0.9, 0.05, 0.04], [0.2, 0.3, 0.5]]]], np.float32)  # sums of 0.99
    np.testing.assert_allclose(to_probabilities(logits, "logits").sum(axis=-1), 1, atol=1e-6)

    # A Keras model whose final layer says it: refused by the launcher.
    _pairs(tmp_path, count=2)
    inputs = keras.Input((None, None, 3))
    for name, outputs in (
            ("softmax", keras.layers.Conv2D(3, 1, activation="softmax")(inputs)),
            ("softmax", keras.layers.Softmax()(keras.layers.Conv2D(3, 1)(inputs))),
            ("sigmoid", keras.layers.Conv2D(3, 1, activation="sigmoid")(inputs)),
            ("sigmoid", keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))):
        path = str(tmp_path / "ends.keras")
        keras.Model(inputs, outputs).save(path)
        assert main(["run", "--input", str(tmp_path / "images"), "--model", path,
                     "--model_output", "logits", "--output", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"segbeam run: error: --model_output logits, but model {path} ends in a {name}, "
            f"so its outputs are probabilities, whose softmax would flatten them; pass "
            f"--model_output probabilities (or auto)"]

    # One whose softmax is hidden in a sub-model: each image a dead letter saying so.
    _nested_softmax_model(str(tmp_path / "nested.keras"))
    assert main(["run", "--input", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                 "--model", str(tmp_path / "nested.keras"), "--model_output", "logits",
                 "--quiet", "--output", str(tmp_path / "out")]) == 1  # every one a dead letter
    counts = json.loads((tmp_path / "out" / "summary.json").read_text())["counts"]
    assert (counts["inputs"], counts["segmented"], counts["dead_letters_by_stage"]) == (
        2, 0, {"inference": 2})
    letters = [json.loads(line) for path in (tmp_path / "out" / "dead_letters").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    assert len(letters) == 2 and all("but the model's outputs are probabilities" in d["reason"]
                                     for d in letters)
    assert main(["run", "--input", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                 "--model", str(tmp_path / "nested.keras"), "--quiet",
                 "--output", str(tmp_path / "auto")]) == 0
    counts = json.loads((tmp_path / "auto" / "summary.json").read_text())["counts"]
    assert counts["segmented"] == 2  # as auto reads them, they serve


def test_probabilities_declared_as_logits_fail_in_the_fused_crf_too(tmp_path, rng):
    """The CRF fused after the model on a GPU checks them too (tested here on the CPU)."""
    from segbeam.crf import CrfParams
    from segbeam.inference import InferenceSettings
    from segbeam.models.source import ModelSource
    from segbeam.pipeline.demo import synthetic_scene
    from segbeam.records import DeadLetter, SegmentationRecord
    from segbeam.transforms.fused_crf import FusedCrf
    from segbeam.transforms.inference import KerasSegmentationHandler

    _nested_softmax_model(str(tmp_path / "nested.keras"))
    source = ModelSource(str(tmp_path / "nested.keras"), num_classes=2, input_size=(64, 64))
    records = [SegmentationRecord("k", "s", image=synthetic_scene(rng, 64, 64)[0])]
    fused = FusedCrf(CrfParams(backend="keras", min_side=32), 2, 255)
    for fuse in (True, False):
        handler = KerasSegmentationHandler(source, InferenceSettings(model_output="logits"),
                                           fused_crf=fused, fuse=fuse)
        [letter] = handler.run_inference(records, handler.load_model())
        assert isinstance(letter, DeadLetter) and letter.stage == "inference", fuse
        assert "but the model's outputs are probabilities" in letter.reason


def test_a_binary_model_declared_against_what_it_emits_is_refused(tmp_path, capsys):
    """A one-channel model's channel was taken as --model_output declared it: logits declared
    probabilities were clipped to [0, 1] (a logit of 0.3, a sigmoid of 0.57, became background),
    sigmoid scores declared logits put every pixel in the foreground."""
    _pairs(tmp_path, count=1)
    for activation, declared, emits in (("linear", "probabilities", "a linear layer"),
                                        ("sigmoid", "logits", "a sigmoid")):
        path = str(tmp_path / f"{activation}.keras")
        _save_model(path, activation)
        assert main(["run", "--input", str(tmp_path / "images"), "--model", path,
                     "--model_output", declared, "--output", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err
        assert f"--model_output {declared}, but model {path} ends in {emits}" in error
    # Formats that do not say (ONNX, SavedModel) are checked on their outputs.
    with pytest.raises(ValueError, match=r"range from -3 to 3, outside \[0, 1\]"):
        two_class_logits(np.array([[[[-3.0], [3.0]]]], np.float32), "probabilities")

    # A Keras model whose linear layer sits in a sub-model does not say either: its scores
    # outside [0, 1] are refused in the graph, image by image (they were clipped unseen).
    import keras

    _save_model(str(tmp_path / "linear.keras"), "linear")
    inner = keras.saving.load_model(str(tmp_path / "linear.keras"))
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, inner(inputs)).save(str(tmp_path / "nested.keras"))
    # red 133 everywhere (and a size that takes no padding): linear outputs of 0.45, which
    # pass for probabilities
    Image.fromarray(np.full((32, 32, 3), 133, np.uint8)).save(tmp_path / "images" / "mid.png")
    for crf in ("--crf", "--no-crf"):
        out = tmp_path / f"nested{crf}"
        assert main(["run", "--input", str(tmp_path / "images"), "--model",
                     str(tmp_path / "nested.keras"), "--model_output", "probabilities", crf,
                     "--quiet", "--output", str(out)]) == 0
        counts = json.loads((out / "summary.json").read_text())["counts"]
        assert (counts["segmented"], counts["dead_letters_by_stage"]) == (1, {"inference": 1})
        [letter] = [json.loads(line) for path in (out / "dead_letters").glob("*.jsonl")
                    for line in path.read_text().splitlines()]
        assert letter["key"] == "b0"
        assert re.search(r"--model_output probabilities, but \d+ of the model's outputs are "
                         r"outside \[0, 1\] \(or NaN\)", letter["reason"]), letter


def _overflowing_model(path) -> None:
    """Two classes; class 0's logit is 1e36 times the pixel's channel sum (raw RGB): finite
    for images no brighter than 100 (at most 3e38), +infinite in float32 where a pixel is
    brighter, so that its softmax is NaN."""
    import keras

    inputs = keras.Input((None, None, 3))
    head = keras.layers.Conv2D(2, 1, use_bias=False)
    model = keras.Model(inputs, head(inputs))
    weights = np.zeros((1, 1, 3, 2), np.float32)
    weights[0, 0, :, 0] = 1e36
    head.set_weights([weights])
    model.save(path)


def test_outputs_that_are_nan_or_infinite_make_dead_letters_not_labels(tmp_path):
    """A model whose outputs overflowed still gave labels (the argmax of NaN) that were
    written and scored without a word (mIoU 25.10 on the demo with --no-crf), or with the CRF
    died there with "cannot reshape array of size 0"."""
    rng = np.random.default_rng(1)
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for index, top in enumerate((100, 100, 256, 256)):  # two dark images, two bright ones
        image = rng.integers(0, top, (32, 64, 3), dtype=np.uint8)  # no padding: labels alone
        Image.fromarray(image).save(tmp_path / "images" / f"i{index}.png")
        Image.fromarray((image[..., 0] > 50).astype(np.uint8)).save(
            tmp_path / "masks" / f"i{index}.png")
    model = str(tmp_path / "overflow.keras")
    _overflowing_model(model)
    common = ["run", "--input", str(tmp_path / "images"), "--model", model, "--num_classes",
              "2", "--preprocess", "none", "--model_output", "logits", "--quiet"]
    for name, flags in (("masks, no CRF", ["--masks", str(tmp_path / "masks"), "--no-crf"]),
                        ("masks, CRF", ["--masks", str(tmp_path / "masks")]),
                        ("labels only", ["--no-crf"])):
        out = tmp_path / name.replace(" ", "_").replace(",", "")
        assert main([*common, *flags, "--output", str(out)]) == 0, name
        counts = json.loads((out / "summary.json").read_text())["counts"]
        assert (counts["segmented"], counts["dead_letters_by_stage"]) == (
            2, {"inference": 2}), name
        letters = [json.loads(line) for path in (out / "dead_letters").glob("*.jsonl")
                   for line in path.read_text().splitlines()]
        assert sorted(letter["key"] for letter in letters) == ["i2", "i3"], name
        assert all("NaN or infinite values, from which labels would be arbitrary"
                   in letter["reason"] for letter in letters), name


def test_outputs_that_are_nan_are_refused_in_every_path(tmp_path):
    """The fused CRF's path, and the numpy path that formats other than Keras take."""
    from segbeam.crf import CrfParams
    from segbeam.inference import InferenceSettings, check_probability_range, \
        non_finite_count, to_probabilities
    from segbeam.models.source import ModelSource
    from segbeam.records import DeadLetter, SegmentationRecord
    from segbeam.transforms.fused_crf import FusedCrf
    from segbeam.transforms.inference import KerasSegmentationHandler
    from segbeam.transforms.predictor import SegmentationPredictor

    _overflowing_model(str(tmp_path / "overflow.keras"))
    source = ModelSource(str(tmp_path / "overflow.keras"), num_classes=2, input_size=(32, 32))
    records = [SegmentationRecord("k", "s", image=np.full((32, 32, 3), 255, np.uint8))]
    fused = FusedCrf(CrfParams(backend="keras", min_side=16), 2, 255)
    for fuse in (True, False):
        handler = KerasSegmentationHandler(
            source, InferenceSettings(model_output="logits", preprocess="none"),
            fused_crf=fused, fuse=fuse)
        [letter] = handler.run_inference(records, handler.load_model())
        assert isinstance(letter, DeadLetter) and letter.stage == "inference", fuse
        assert "NaN or infinite values" in letter.reason, fuse

    class Scores:  # a model of another format: its scores reach numpy as they are
        keras_model, name = None, "scores"

        def outputs(self, batch):
            scores = np.zeros((len(batch), 4, 4, 2), np.float32)
            scores[0, 1, 1, 0] = np.nan
            return scores

        def num_classes(self):
            return 2

    predictor = SegmentationPredictor(Scores(), "logits")
    batch = np.zeros((2, 4, 4, 3), np.float32)
    for call in (predictor.predict, predictor.predict_labels):
        with pytest.raises(ValueError, match="outputs hold 1 NaN or infinite values"):
            call(batch)
    assert non_finite_count(np.array([np.nan, np.inf, -np.inf, 1.0])) == 2
    with pytest.raises(ValueError, match="outputs hold NaN values, from which labels would"):
        check_probability_range(float("nan"), float("nan"))
    assert np.isfinite(to_probabilities(np.array([[[[0.0, -np.inf]]]]), "logits")).all()
