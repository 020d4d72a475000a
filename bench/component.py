"""What estimators and problems share: registration by ``name``, the config an instance was built
from, and a fingerprint of the code behind a class (so a cell's id changes when its code does)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import sys
import types
from typing import Any

SKIPPED_PARAMETERS = ("self", "device")


class NameClash(TypeError):
    """Two classes claim one registry name; the message names both modules."""


def register(registry: dict[str, type], kind: str, cls: type) -> None:
    """Add ``cls`` under ``cls.name``. The same class defined again (a module executed twice, a
    notebook cell rerun) replaces itself; another class under a taken name is an error."""
    name = cls.name  # type: ignore[attr-defined]
    existing = registry.get(name)
    same = existing is not None and (existing.__module__, existing.__qualname__) == (
        cls.__module__,
        cls.__qualname__,
    )
    if existing is not None and existing is not cls and not same:
        raise NameClash(
            f"{kind} name {name!r} is defined twice: by {existing.__module__}.{existing.__qualname__} and "
            f"by {cls.__module__}.{cls.__qualname__}; rename one (class attribute `name`)"
        )
    registry[name] = cls


def constructor_parameters(cls: type) -> list[inspect.Parameter]:
    """The keyword parameters of ``cls.__init__`` that are config keys (not self, device, *args)."""
    signature = inspect.signature(cls.__init__)
    return [
        parameter
        for parameter in signature.parameters.values()
        if parameter.name not in SKIPPED_PARAMETERS
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]


def bound_config(cls: type, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The config keys a constructor call sets, defaults applied: {keyword: value}."""
    try:
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    except TypeError:
        return {}  # the constructor itself will raise the error that names the problem
    bound.apply_defaults()
    config: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:
        parameter = bound.signature.parameters[name]
        if parameter.kind == parameter.VAR_KEYWORD:
            config.update(value)
        elif parameter.kind != parameter.VAR_POSITIONAL and name not in SKIPPED_PARAMETERS:
            config[name] = list(value) if isinstance(value, tuple) else value
    return config


@functools.cache
def source_digest(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha1(file.read()).hexdigest()


def own_package_modules(module: types.ModuleType) -> list[types.ModuleType]:
    """The modules of ``module``'s own package that it uses by name (``from bench.problems import
    data``, ``from bench.estimators.fast import scaled``): one level, not the whole package."""
    package = module.__name__.rpartition(".")[0]
    if not package:
        return []
    found = {}
    for value in vars(module).values():
        used = value if inspect.ismodule(value) else sys.modules.get(getattr(value, "__module__", "") or "")
        if used is not None and used is not module and used.__name__.rpartition(".")[0] == package:
            found[used.__name__] = used
    return [found[name] for name in sorted(found)]


def code_fingerprint(cls: type) -> str:
    """A hash of the source files of ``cls``, of every class it inherits from that is not Python's or
    torch's own (the estimator's module, its base module ``bench.estimators.base``, ...), and of the
    modules of their own package they use (``bench.problems.data`` for the VAEs). Editing any of them
    changes the fingerprint; so does moving the class to another module."""
    digest = hashlib.sha1()
    modules: dict[str, types.ModuleType] = {}
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "abc", "typing") or klass.__module__.startswith("torch"):
            continue
        digest.update(f"{klass.__module__}.{klass.__qualname__}".encode())
        module = sys.modules.get(klass.__module__)
        if module is not None:
            for used in [module, *own_package_modules(module)]:
                modules.setdefault(used.__name__, used)
    for name in sorted(modules):
        path = getattr(modules[name], "__file__", None)
        digest.update(name.encode())
        if path is not None:
            with contextlib.suppress(OSError):  # source not shipped (a .pyc-only install)
                digest.update(source_digest(path).encode())
    return digest.hexdigest()[:12]
