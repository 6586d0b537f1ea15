"""Configuration objects: frozen dataclasses whose every field says whether it changes results.

A run's ``config_fingerprint`` (what ``--skip_existing`` trusts to decide that an earlier result
still stands) is derived from these classifications, never from a hand-kept list: a field
declared without one makes ``fingerprint_entries`` raise, so a new setting cannot be forgotten.

Each field is declared with ``setting(Effect.X, default)``:

- ``OUTPUT``: changes masks or metrics rows; its value enters the fingerprint under its name.
- ``MODEL``: identifies the model (a path, weights, a seed); the object's own
  ``fingerprint()`` (the model file's hash, say) enters under the name of the field that holds
  the object.
- ``NESTED``: a configuration object whose fields are classified in turn.
- ``NONE``: changes how or where a run works, not what it computes (batch size, paths).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

EFFECT = "segbeam.effect"
OMIT_DEFAULT = "segbeam.omit_default"


class Effect(enum.Enum):
    OUTPUT = "output"
    MODEL = "model"
    NESTED = "nested"
    NONE = "none"


def setting(effect: Effect, default: Any = dataclasses.MISSING,
            omit_default: bool = False) -> Any:
    """A dataclass field classified by ``effect`` (see the module docstring).

    ``omit_default``: an ``OUTPUT`` setting added after fingerprints were first recorded enters
    the fingerprint only when it differs from its default (which must be what runs did before
    it existed), so that earlier results stay valid under ``--skip_existing``."""
    if not isinstance(effect, Effect):
        raise TypeError(f"setting() needs an Effect; received {effect!r}")
    if omit_default and (effect is not Effect.OUTPUT or default is dataclasses.MISSING):
        raise TypeError("omit_default is for OUTPUT settings with a default")
    return dataclasses.field(default=default, metadata={EFFECT: effect,
                                                        OMIT_DEFAULT: omit_default})


def effect_of(field: dataclasses.Field, owner: type) -> Effect:
    effect = field.metadata.get(EFFECT)
    if not isinstance(effect, Effect):
        raise TypeError(f"{owner.__name__}.{field.name} is not classified: declare it with "
                        f"setting(Effect.OUTPUT | MODEL | NESTED | NONE, ...) so that the "
                        f"configuration fingerprint knows whether it changes results")
    return effect


def _plain(value: Any) -> Any:
    """A configuration value as plain data; a dataclass's ``omit_default`` fields left out
    where they hold their default (so they leave earlier fingerprints as they were)."""
    if dataclasses.is_dataclass(value):
        plain = dataclasses.asdict(value)
        for field in dataclasses.fields(value):
            if field.metadata.get(OMIT_DEFAULT) and getattr(value, field.name) == field.default:
                plain.pop(field.name)
        return plain
    return value


def fingerprint_entries(config: Any, name: str = "") -> dict[str, Any]:
    """The settings of ``config`` (recursively) that determine a result, by name.

    ``name`` is the field that holds ``config`` in its parent; ``MODEL`` fields contribute
    ``config.fingerprint()`` under it, once."""
    entries: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        effect = effect_of(field, type(config))
        value = getattr(config, field.name)
        if effect is Effect.OUTPUT:
            if not (field.metadata.get(OMIT_DEFAULT) and value == field.default):
                entries[field.name] = _plain(value)
        elif effect is Effect.NESTED:
            if value is not None:
                entries.update(fingerprint_entries(value, field.name))
        elif effect is Effect.MODEL and name not in entries:
            entries[name] = config.fingerprint()
    return entries


def classified_fields(config_type: type, prefix: str = "") -> dict[str, Effect]:
    """Every field reachable from a configuration class, dotted, with its classification; raises
    where one is not classified. ``NESTED`` fields must be typed with their class."""
    import typing

    hints = typing.get_type_hints(config_type)
    found: dict[str, Effect] = {}
    for field in dataclasses.fields(config_type):
        effect = effect_of(field, config_type)
        found[prefix + field.name] = effect
        if effect is Effect.NESTED:
            nested = [t for t in typing.get_args(hints[field.name]) or (hints[field.name],)
                      if dataclasses.is_dataclass(t)]
            if not nested:
                raise TypeError(f"{config_type.__name__}.{field.name} is NESTED but its type "
                                f"{hints[field.name]} is no configuration class")
            found.update(classified_fields(nested[0], f"{prefix}{field.name}."))
    return found
