"""The problem registry: every ``Problem`` subclass with a ``name`` in this package.

Adding a problem is one module here (a subclass of ``problems.base.Problem``) plus
``conf/problem/<name>.yaml``.
"""

from __future__ import annotations

import importlib
import pkgutil

from bench.problems.base import REGISTRY, Problem

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Problem"]
