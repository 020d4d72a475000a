"""The estimator registry: every ``Estimator`` subclass with a ``name`` in this package.

Adding an estimator is one module here (a subclass of ``estimators.base.Estimator``) plus
``conf/estimator/<name>.yaml``; importing this package registers it, and the conformance tests
pick it up from ``REGISTRY``.
"""

from __future__ import annotations

import importlib
import pkgutil

from bench.estimators.base import REGISTRY, Estimator

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Estimator"]
