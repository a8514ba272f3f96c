"""Loading vLLM's pure-Python modules from an unpacked wheel without the rest of vLLM: packages
whose submodules resolve from the wheel but whose __init__ never runs, and inert stub modules for
what those modules import but the golden generators never reach. Shared by make_block_hashes.py
and make_tokenization.py, with the version of the unpacked wheel."""

from __future__ import annotations

import os
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


def vllm_version(src: str) -> str:
    """The version in the unpacked wheel's dist-info METADATA."""
    for entry in os.listdir(src):
        if entry.startswith("vllm-") and entry.endswith(".dist-info"):
            with open(os.path.join(src, entry, "METADATA"), encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
    raise SystemExit("vllm dist-info not found")
