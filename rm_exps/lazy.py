"""Modules imported on first use.

Plan validation and `run_plan.py --dry-run` ask the objectives what they are (their capabilities,
their config checks) and compute nothing, so importing the objective registry must not import torch
(seconds). The objective modules name their compute dependencies through `LazyModule`:
`torch = LazyModule("torch")` reads like the import it stands for, and the import happens at the
first attribute access, i.e. when a run first computes with it. (Classes that subclass torch's,
the nn.Modules, live in modules that import torch at their top and are themselves named lazily.)
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """A stand-in for the module `name`, imported (by importlib, once) at its first attribute access."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:  # only called for what the stand-in itself lacks
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (imported)' if self._module is not None else ''}>"
