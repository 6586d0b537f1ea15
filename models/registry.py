"""A plain name -> builder registry, timm-style: ``@register_model`` on a builder function,
``create_model(name, ...)`` that fails with the list of known names."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional


class ModelSpec(NamedTuple):
    name: str
    builder: Callable
    description: str
    preprocessing: str  # what the model does to raw [0, 255] RGB input, for `segbeam models`


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, description: str, preprocessing: str):
    """Registers a builder ``f(num_classes, input_size=None, backbone_weights=None, **kw)``
    that returns a ``keras.Model`` mapping (N, H, W, 3) raw RGB in [0, 255] to (N, H, W, C)
    logits."""
    def decorate(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, description, preprocessing)
        return builder
    return decorate


def list_models() -> list[ModelSpec]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}"
                         f" (or pass the path of a saved .keras model)") from None


def create_model(name: str, num_classes: int, input_size: Optional[tuple[int, int]] = None,
                 backbone_weights: Optional[str] = None, **kwargs):
    """Builds the registered architecture ``name``."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2; received {num_classes!r}")
    return get_spec(name).builder(num_classes=num_classes, input_size=input_size,
                                  backbone_weights=backbone_weights, **kwargs)
