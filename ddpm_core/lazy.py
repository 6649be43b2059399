"""Lazy package exports: a package names what it offers and imports each module at first use.

A package's ``__init__`` writes its exports once, as a mapping of name to module, and takes its
``__getattr__`` and ``__dir__`` from :func:`lazy_exports`; importing the package then imports
none of those modules, so its torch-free parts stay importable without torch (and ``ddpm
--help`` starts fast).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` (its ``__name__``): an exported name is imported
    from its module at first use and kept in the package's namespace; any other name is an
    AttributeError, as for a plain module."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
