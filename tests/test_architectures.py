"""Structure of each architecture family (under the default backend; ``test_backends`` runs
every one under TensorFlow and JAX), backbone weights from local files, and saving."""

import os

import numpy as np
import pytest

from segbeam import models


def _layer_names(model):
    return [layer.name for layer in model.layers]


def test_convolutionalize_turns_a_dense_layer_into_the_equivalent_convolution():
    import keras

    from segbeam.models.fcn import convolutionalize

    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 3, 3, 2)).astype(np.float32)
    kernel = rng.normal(size=(18, 4)).astype(np.float32)
    dense = features.reshape(2, -1) @ kernel  # Flatten (channels last) then Dense
    conv = keras.layers.Conv2D(4, 3, use_bias=False)
    conv.build((None, 3, 3, 2))
    conv.set_weights([convolutionalize(kernel, (3, 3, 2))])
    np.testing.assert_allclose(np.asarray(conv(features))[:, 0, 0], dense, rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(ValueError, match="cannot become"):
        convolutionalize(kernel, (7, 7, 512))


@pytest.mark.parametrize("name, skips", [("fcn32s", []), ("fcn16s", ["score_pool4"]),
                                         ("fcn8s", ["score_pool4", "score_pool3"])])
def test_fcn_variants_fuse_their_skips_and_upsample_bilinearly(name, skips):
    from segbeam.models.layers import bilinear_kernel_size, upsample_filt

    model = models.create_model(name, num_classes=5, input_size=(96, 128))
    names = _layer_names(model)
    assert all(skip in names for skip in skips)
    assert not {"score_pool4", "score_pool3"} - set(skips) & set(names)
    stride = int(name[3:-1])
    final = model.get_layer(f"upscore{stride}")
    assert final.strides == (stride, stride) and not final.trainable
    kernel = np.asarray(final.kernel)
    assert kernel.shape == (bilinear_kernel_size(stride),) * 2 + (5, 5)
    np.testing.assert_allclose(kernel[:, :, 3, 3], upsample_filt(bilinear_kernel_size(stride)))
    assert model.get_layer("fc6").kernel.shape == (7, 7, 512, 4096)
    # Score layers start at zero (as in the FCN reference code): a fresh model predicts zeros.
    batch = np.random.default_rng(0).uniform(0, 255, (1, 96, 128, 3)).astype(np.float32)
    assert not np.asarray(model(batch, training=False)).any()


@pytest.mark.parametrize("output_stride, expected", [(16, (None, 8, 8, 2048)),
                                                     (8, (None, 16, 16, 2048))])
def test_deeplab_output_stride_and_atrous_rates(output_stride, expected):
    model = models.create_model("deeplabv3plus", num_classes=3, input_size=(128, 128),
                                output_stride=output_stride)
    assert model.get_layer("conv5_block3_out").output.shape == expected
    assert model.get_layer("conv2_block3_out").output.shape == (None, 32, 32, 256)
    rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    for rate in rates:
        assert model.get_layer(f"aspp_rate{rate}_conv").dilation_rate == (rate, rate)
    assert model.get_layer("decoder_low_level_conv").filters == 48
    assert model.get_layer("aspp_pool_proj_conv").output.shape == (None, 1, 1, 256)


def test_deeplab_rejects_unsupported_output_stride():
    with pytest.raises(ValueError, match="`output_stride` must be 8 or 16. Received: 32"):
        models.create_model("deeplabv3plus", num_classes=3, output_stride=32)


def test_segnet_basic_matches_the_paper_layout():
    model = models.create_model("segnet_basic", num_classes=11)
    convs = [layer for layer in model.layers if layer.name.endswith("_conv")]
    assert [c.name for c in convs] == [f"encoder{i}_conv" for i in range(1, 5)] + \
        [f"decoder{i}_conv" for i in range(4, 0, -1)]
    assert all(c.kernel_size == (7, 7) and c.filters == 64 for c in convs)
    names = _layer_names(model)
    assert not any(n.startswith("decoder") and n.endswith("relu") for n in names)
    assert sum(n.startswith("encoder") and n.endswith("relu") for n in names) == 4
    # 7x7 convs with bias, batch norm (4 weights per channel), a 1x1 classifier
    first = 7 * 7 * 3 * 64 + 64 + 4 * 64
    other = 7 * 7 * 64 * 64 + 64 + 4 * 64
    assert model.count_params() == first + 7 * other + 64 * 11 + 11


def test_unet_taps_mobilenetv2_at_the_documented_strides():
    from segbeam.models.unet import SKIP_LAYERS

    model = models.create_model("unet", num_classes=4, input_size=(128, 160))
    encoder = model.get_layer("mobilenetv2_encoder")
    sizes = [tuple(encoder.get_layer(n).output.shape[1:3]) for n in SKIP_LAYERS]
    assert sizes == [(64, 80), (32, 40), (16, 20), (8, 10), (4, 5)]
    momenta = {layer.momentum for layer in encoder.layers
               if layer.__class__.__name__ == "BatchNormalization"}
    assert momenta == {0.99}  # not keras.applications' 0.999: see models/unet.py
    frozen = models.create_model("unet", num_classes=4, freeze_encoder=True, dropout=0.5)
    assert not frozen.get_layer("mobilenetv2_encoder").trainable
    assert "decoder1_dropout" in _layer_names(frozen)


def _assert_same_weights(ours, theirs, names):
    for name in names:
        mine, source = ours.get_layer(name).weights, theirs.get_layer(name).weights
        assert len(mine) == len(source) > 0, name
        for a, b in zip(mine, source):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_backbone_weights_load_from_local_files(tmp_path):
    import keras

    mobilenet = keras.applications.MobileNetV2(weights=None, include_top=False,
                                               input_shape=(None, None, 3))
    path = str(tmp_path / "mobilenet_v2.weights.h5")
    mobilenet.save_weights(path)
    unet = models.create_model("unet", num_classes=3, backbone_weights=path)
    _assert_same_weights(unet.get_layer("mobilenetv2_encoder"), mobilenet,
                         ("Conv1", "block_13_expand", "block_16_project"))

    resnet = keras.applications.ResNet50(weights=None, include_top=False,
                                         input_shape=(None, None, 3))
    path = str(tmp_path / "resnet50.weights.h5")
    resnet.save_weights(path)
    deeplab = models.create_model("deeplabv3plus", num_classes=3, backbone_weights=path)
    _assert_same_weights(deeplab, resnet, ("conv1_conv", "conv3_block2_2_bn",
                                           "conv5_block3_3_conv"))


def test_bad_backbone_weights_say_what_is_accepted():
    with pytest.raises(ValueError, match="'imagenet' or an existing weights file"):
        models.create_model("unet", num_classes=3, backbone_weights="/nope/weights.h5")
    with pytest.raises(ValueError, match="segnet_basic trains from scratch: drop "
                                         "--backbone_weights"):
        models.create_model("segnet_basic", num_classes=3, backbone_weights="imagenet")
    with pytest.raises(ValueError, match="tiny_fcn has no pretrained backbone: drop "
                                         "--backbone_weights"):
        models.create_model("tiny_fcn", num_classes=3, backbone_weights="imagenet")


@pytest.mark.parametrize("name", ["segnet_basic", "unet", "fcn8s", "deeplabv3plus", "segnet"])
def test_saved_models_round_trip_to_identical_outputs(tmp_path, name):
    import keras

    from segbeam.models.source import load_model

    keras.utils.set_random_seed(3)
    model = models.create_model(name, num_classes=4)
    batch = np.random.default_rng(0).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    expected = np.asarray(model(batch, training=False))
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    np.testing.assert_array_equal(np.asarray(load_model(path, num_classes=4)(
        batch, training=False)), expected)
    weights = str(tmp_path / f"{name}.weights.h5")
    model.save_weights(weights)
    np.testing.assert_array_equal(np.asarray(load_model(name, num_classes=4, weights=weights)(
        batch, training=False)), expected)


def test_segbeam_models_lists_every_architecture_with_its_parameter_count(capsys):
    from segbeam.pipeline.cli import main

    assert main(["models", "--num_classes", "11"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split()[1] for line in lines[1:] if not line[0].isspace()}
    assert set(listed) == {spec.name for spec in models.list_models()}
    counted = models.create_model("segnet_basic", num_classes=11).count_params()
    assert listed["segnet_basic"] == f"{counted:,}"
    assert all(int(count.replace(",", "")) > 0 for count in listed.values())
    assert any("caffe" in line for line in lines) and any("[-1, 1]" in line for line in lines)


def test_a_saved_segnet_loads_in_a_fresh_interpreter_through_the_pipeline_loader(tmp_path):
    """The custom layers (index pooling, unpooling, normalisation) register themselves when
    the loader is imported; the user imports nothing."""
    import subprocess
    import sys

    path = str(tmp_path / "segnet_basic.keras")
    models.create_model("segnet_basic", num_classes=5).save(path)
    code = ("import numpy as np; from segbeam.models.source import load_model; "
            f"m = load_model({path!r}); "
            "print(m.predict(np.zeros((1, 37, 53, 3), 'float32'), verbose=0).shape)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=root, timeout=300)
    assert result.stdout.strip().endswith("(1, 37, 53, 5)"), result.stderr[-2000:]
