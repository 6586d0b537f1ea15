"""The Python file that defines a saved Keras model's custom layers (``--custom_objects``).

A ``.keras`` file stores each custom layer's class name and configuration, not its code: Keras
loads it only where that code has been imported (a class registered with
``keras.saving.register_keras_serializable``) or is passed as ``custom_objects``. The user
names the file that defines them; its text is read once, where the run starts, and travels
with the model's settings, so that every worker (on any runner, with no access to the
launcher's files) runs the same code before it loads the model. The file's classes and
functions are passed to Keras as ``custom_objects``; registering them works as well.
"""

from __future__ import annotations

import hashlib
import sys
import types

_MODULES: dict[str, types.ModuleType] = {}  # code's SHA-256 -> the module run from it


def read_custom_objects(path: str) -> str:
    """The text of the ``--custom_objects`` file (local or on any Beam filesystem)."""
    from segbeam.layout import read_bytes

    if not path.endswith(".py"):
        raise ValueError(f"--custom_objects {path} is not a .py file: name the Python file "
                         f"that defines the model's custom layers")
    try:
        return read_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--custom_objects {path} is not UTF-8 text") from None


def code_digest(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def custom_objects(code: str, name: str) -> dict:
    """The classes and functions that ``code`` (the file ``name``) defines, by name, after
    running it once in this process as a module of its own; a ValueError in one line where
    it fails to run."""
    digest = code_digest(code)
    module = _MODULES.get(digest)
    if module is None:
        module = types.ModuleType(f"segbeam_custom_objects_{digest[:16]}")
        module.__file__ = name
        sys.modules[module.__name__] = module  # what Keras and pickling look classes up in
        try:
            exec(compile(code, name, "exec"), module.__dict__)  # noqa: S102 - the user's file
        except Exception as error:  # noqa: BLE001 - the user's code may raise anything
            del sys.modules[module.__name__]
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(f"--custom_objects {name} failed to run: "
                             f"{type(error).__name__}: {first}") from None
        _MODULES[digest] = module
    return {key: value for key, value in vars(module).items()
            if not key.startswith("_") and callable(value)
            and getattr(value, "__module__", None) == module.__name__}
