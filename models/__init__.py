"""Keras segmentation architectures, the name -> builder registry, loading and training.

Importing this package registers every architecture (one module per family) and the custom
layers that saved models need.
"""

from segbeam.models.registry import create_model, get_spec, list_models, register_model  # noqa: F401
from segbeam.models import deeplabv3plus, fcn, layers, segnet, tiny_fcn, unet  # noqa: F401  (registers them)
