"""Loading vLLM's pure-Python modules from an unpacked wheel without the rest of vLLM: packages
whose submodules resolve from the wheel but whose __init__ never runs, and inert stub modules for
what those modules import but the golden generators never reach. Shared by make_block_hashes.py
and make_tokenization.py."""

from __future__ import annotations

import sys
import types
from typing import Any


class StubModule(types.ModuleType):
    """A module whose every attribute is an inert placeholder class."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = type(name, (), {"__module__": self.__name__})
        setattr(self, name, placeholder)
        return placeholder


def package(name: str, path: str | None) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = [path] if path else []  # submodules resolve from the wheel, __init__ never runs
    sys.modules[name] = mod
    return mod


def stub(name: str, package: bool = False, **attrs: Any) -> types.ModuleType:
    mod = StubModule(name)
    if package:
        mod.__path__ = []
    for key, value in attrs.items():
        setattr(mod, key, value)
    sys.modules[name] = mod
    return mod
