"""Keras segmentation architectures, the name -> builder registry, loading and training.

Importing this package imports no Keras backend: the registry lists models from its catalogue
and imports a family module when one of its models is built; ``segbeam.models.layers`` (the
custom layers that saved models need) registers itself when a model is built or loaded.
"""

from segbeam.models.registry import (create_model, create_model_for_size, get_spec,  # noqa: F401
                                     list_models, register_model)
