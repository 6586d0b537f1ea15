"""Backbone helpers: pretrained weights copied by layer name from ``keras.applications``.

The architectures build their encoders themselves (FCN and SegNet need ceil-mode pooling,
DeepLab needs atrous convolutions), naming every layer as ``keras.applications`` does, so that
ImageNet weights, or a local weights file for the same network, copy over by name.
``backbone_weights`` is ``None`` (random init), ``"imagenet"`` (Keras downloads the file on
first use; never in tests) or the path of a local weights file for the ``keras.applications``
network.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Optional

import keras


def check_backbone_weights(backbone_weights: Optional[str], model_name: str,
                           allows_imagenet: bool = True) -> None:
    if backbone_weights is None:
        return
    if backbone_weights == "imagenet":
        if not allows_imagenet:
            raise ValueError(f"{model_name} has no ImageNet backbone: --backbone_weights "
                             f"(backbone_weights) must be a local weights file, or none")
        return
    if not os.path.exists(backbone_weights):
        raise ValueError(f"{model_name}: --backbone_weights (backbone_weights) must be "
                         f"'imagenet' or an existing weights file, or none; received "
                         f"{backbone_weights!r}")
    if not _readable_weights(backbone_weights):  # else h5py's OSError from deep in Keras
        raise ValueError(f"{model_name}: backbone weights {backbone_weights} are not a weights "
                         f"file Keras can read (HDF5 .h5, or a .keras archive); check that it "
                         f"was saved whole, or downloaded completely")


def _readable_weights(path: str) -> bool:
    import zipfile

    import h5py

    return zipfile.is_zipfile(path) if path.endswith(".keras") else h5py.is_hdf5(path)


def copy_weights_by_name(model: keras.Model, source: keras.Model,
                         names: Iterable[str]) -> list[str]:
    """Copies the weights of the named layers from ``source`` into ``model``; returns the
    names copied. Raises when a named layer is missing or its weights differ in shape."""
    copied = []
    for name in names:
        try:
            target_layer, source_layer = model.get_layer(name), source.get_layer(name)
        except ValueError as error:
            raise ValueError(f"backbone layer {name!r} is missing: {error}") from None
        target_layer.set_weights(source_layer.get_weights())
        copied.append(name)
    return copied


def load_backbone(model: keras.Model, application: Callable, backbone_weights: Optional[str],
                  names: Iterable[str], **application_kwargs) -> None:
    """Builds ``application(weights=backbone_weights, ...)`` and copies the named layers."""
    if backbone_weights is None:
        return
    source = application(weights=backbone_weights, **application_kwargs)
    copy_weights_by_name(model, source, names)
