"""A plain name -> builder registry, timm-style: ``@register_model(name)`` on a builder
function, ``create_model(name, ...)`` that fails with the list of known names.

The catalogue below is data: listing the models (``segbeam models --no_counts``) imports no
family module and so no Keras backend. A family module is imported when one of its models is
built; its ``@register_model`` binds the builder to its catalogue entry.
"""

from __future__ import annotations

import importlib
from typing import Callable, NamedTuple, Optional


class ModelSpec(NamedTuple):
    name: str
    family: str  # the module under segbeam.models that builds it
    description: str
    preprocessing: str  # what the model does to raw [0, 255] RGB input, for `segbeam models`


_CAFFE = "built in: caffe (BGR minus ImageNet mean)"
CATALOGUE = (
    ModelSpec("deeplabv3plus", "deeplabv3plus", "DeepLabV3+: ResNet50 (atrous), ASPP 6/12/18 "
              "with image pooling, decoder with 48-channel low-level skip", _CAFFE),
    ModelSpec("fcn16s", "fcn", "FCN-16s: FCN-32s plus a pool4 skip, 16x deconvolution", _CAFFE),
    ModelSpec("fcn32s", "fcn", "FCN-32s: VGG16, fc6/fc7 as convolutions, 32x bilinear "
              "deconvolution", _CAFFE),
    ModelSpec("fcn8s", "fcn", "FCN-8s: FCN-16s plus a pool3 skip, 8x deconvolution", _CAFFE),
    ModelSpec("segnet", "segnet", "SegNet: VGG16 encoder (13 conv + BN), decoder unpooling with "
              "the encoder's max-pooling indices", _CAFFE),
    ModelSpec("segnet_basic", "segnet", "SegNet-Basic: 4 x (7x7x64 conv, BN, ReLU, pool) "
              "encoder, 4 x (unpool, 7x7x64 conv, BN) decoder; trains from scratch",
              "built in: x / 255"),
    ModelSpec("tiny_fcn", "tiny_fcn", "small encoder-decoder (3 stride-2 stages, one skip); "
              "demos and tests", "built in: x / 255"),
    ModelSpec("unet", "unet", "U-Net: MobileNetV2 encoder (5 taps), pix2pix decoder with skip "
              "concatenation", "built in: [-1, 1] (MobileNetV2)"),
)
_SPECS = {spec.name: spec for spec in CATALOGUE}
_BUILDERS: dict[str, Callable] = {}


def register_model(name: str):
    """Registers a builder ``f(num_classes, input_size=None, backbone_weights=None, **kw)``
    that returns a ``keras.Model`` mapping (N, H, W, 3) raw RGB in [0, 255] to (N, H, W, C)
    logits. ``name`` must have a catalogue entry."""
    if name not in _SPECS:
        raise ValueError(f"model name {name!r} has no entry in segbeam.models.registry."
                         f"CATALOGUE; add one (family, description, preprocessing)")

    def decorate(builder: Callable) -> Callable:
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder
    return decorate


def list_models() -> list[ModelSpec]:
    return [_SPECS[name] for name in sorted(_SPECS)]


def get_spec(name: str) -> ModelSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_SPECS))}"
                         f" (or pass the path of a saved .keras model)") from None


def check_preprocess(name: str, preprocess: str, model: Optional[str] = None) -> None:
    """Raises ValueError where ``--preprocess`` would normalise the input of the registered
    architecture ``name`` (served as ``model``: a saved one) a second time: every registry
    model takes raw RGB in [0, 255] and normalises it inside its graph."""
    spec = _SPECS.get(name)
    if spec is None or preprocess == "none":
        return
    served = f"{model}, a {name} model that segbeam trained," if model else name
    raise ValueError(normalised_twice(preprocess, f"{served} takes raw RGB in [0, 255] and "
                                                  f"normalises it inside its graph "
                                                  f"({spec.preprocessing})"))


def normalised_twice(preprocess: str, why: str) -> str:
    """The error for a --preprocess that a model's own normalisation repeats (``why``: what
    shows the model normalises raw RGB itself)."""
    return f"--preprocess {preprocess} would normalise the input a second time: {why}; drop " \
           f"--preprocess"


def create_model(name: str, num_classes: int, input_size: Optional[tuple[int, int]] = None,
                 backbone_weights: Optional[str] = None, **kwargs):
    """Builds the registered architecture ``name``."""
    spec = get_spec(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2; received {num_classes!r}")
    importlib.import_module(f"segbeam.models.{spec.family}")  # registers its builders
    return _BUILDERS[name](num_classes=num_classes, input_size=input_size,
                           backbone_weights=backbone_weights, **kwargs)


def create_model_for_size(name: str, num_classes: int, input_size: tuple[int, int], **kwargs):
    """``create_model`` at a fixed ``input_size``, where an architecture that cannot take the
    size says so in one line that names it (Keras's own error names a layer)."""
    get_spec(name)  # an unknown name is no matter of size
    try:
        return create_model(name, num_classes, input_size=input_size, **kwargs)
    except ValueError as error:
        height, width = input_size
        raise ValueError(f"model {name} cannot be built for --input_size {height}x{width} "
                         f"({error}); choose a size it takes, such as a multiple of 32"
                         ) from None
