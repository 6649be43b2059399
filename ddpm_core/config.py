"""One way to store a config dataclass as JSON and read it back.

The model and classifier configs are frozen dataclasses whose fields are ints, floats, strings,
booleans and tuples of those. :class:`StoredConfig` gives them :meth:`~StoredConfig.to_dict`
(JSON-ready: tuples become lists) and :meth:`~StoredConfig.from_dict` (lists become tuples
again; unknown keys and values of the wrong type are refused with a ValueError naming them).
A checkpoint's config is untrusted input, so ``from_dict`` checks types before the dataclass's
own ``__post_init__`` checks values. Torch-free.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

_Config = TypeVar("_Config", bound="StoredConfig")


class StoredConfig:
    """Mixin for frozen dataclasses stored in checkpoints as JSON objects."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples as lists)."""
        return {field.name: _to_json(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
        """Rebuild a config from :meth:`to_dict`'s output; missing keys take their defaults.

        Raises:
            ValueError: ``data`` is not a mapping, has keys the config does not know, has values
                of the wrong type, or has values the config's own validation refuses.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        known = [field.name for field in dataclasses.fields(cls) if field.init]
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)} (known: {', '.join(known)})")
        values: dict[str, Any] = {}
        bad: list[str] = []
        for name, value in data.items():
            try:
                values[name] = _from_json(value, hints[name])
            except TypeError:
                bad.append(f"{name}={value!r} (expected {_type_name(hints[name])})")
        if bad:
            raise ValueError(f"bad {cls.__name__} values: {'; '.join(bad)}")
        return cls(**values)


def _to_json(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_to_json(item) for item in value]
    return value


def _from_json(value: Any, annotation: Any) -> Any:
    """``value`` converted to ``annotation`` (int, float, str, bool, tuple[X, ...]); TypeError when it is not one."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        item_types = typing.get_args(annotation)
        if len(item_types) == 2 and item_types[1] is Ellipsis:
            return tuple(_from_json(item, item_types[0]) for item in value)
        if len(item_types) != len(value):
            raise TypeError(value)
        return tuple(_from_json(item, item_type) for item, item_type in zip(value, item_types, strict=True))
    if annotation is bool:
        if not isinstance(value, bool):
            raise TypeError(value)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(value)
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(value)
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    return value  # a type this module does not check: the dataclass validates it


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is tuple:
        return "a list of " + " and ".join(
            _type_name(item) for item in typing.get_args(annotation) if item is not Ellipsis
        )
    return getattr(annotation, "__name__", str(annotation))
