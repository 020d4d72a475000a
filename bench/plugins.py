"""Plugins: estimators and problems from the user's own code join bench's registries.

Three ways in, all with the same meaning:
- an installed distribution declaring an entry point in the group ``bench.plugins``
  (``[project.entry-points."bench.plugins"] mylab = "mylab.estimators"``);
- the environment variable ``BENCH_PLUGINS`` (comma-separated module names or paths to .py files);
- the sweep's global key ``plugins`` (a list of the same).

Importing a plugin module registers its ``Estimator`` and ``Problem`` subclasses that have a
``name`` (``__init_subclass__`` of the base classes). A plugin that fails to import is recorded with
its error: the sweep refuses to start (exit 2, naming the module and its distribution), while
``bench list`` shows it as broken and lists the others.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.errors import ConfigError

ENTRY_POINT_GROUP = "bench.plugins"
ENVIRONMENT = "BENCH_PLUGINS"


@dataclass
class Plugin:
    """One plugin source: what was asked for, where the request came from, and how it went."""

    spec: str  # a module name or a path to a .py file
    origin: str  # "entry point mylab (distribution mylab-bench)", "BENCH_PLUGINS", "plugins key"
    module: str | None = None  # the imported module's name
    error: str | None = None  # why it could not be imported

    def describe(self) -> str:
        return f"{self.spec} ({self.origin})"


# What this process has loaded, by spec: plugins are Python modules, and like sys.modules this
# record lives as long as the process (a module imported twice would register its classes twice).
LOADED: dict[str, Plugin] = {}


def split_specs(value: str | Iterable[str] | None) -> list[str]:
    """``a,b`` or ["a", "b"] → ["a", "b"] (blanks dropped)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(item) for item in value]
    return [item.strip() for item in items if item and item.strip()]


def is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def import_path(spec: str) -> str:
    """Import a .py file as a module named after its stem (prefixed when that name is taken by
    another module); return the module name."""
    path = Path(spec).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = path.stem if path.stem.isidentifier() else "bench_plugin"
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) != str(path):
        name = f"bench_plugin_{name}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return name
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before executing: pickling and dataclasses look it up there
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return name


def load_one(spec: str, origin: str) -> Plugin:
    """Import one plugin (once per process); errors are recorded, not raised."""
    key = str(Path(spec).expanduser().resolve()) if is_path(spec) else spec
    if key in LOADED:
        return LOADED[key]
    plugin = Plugin(spec, origin)
    try:
        if is_path(spec):
            plugin.module = import_path(spec)
        else:
            plugin.module = importlib.import_module(spec).__name__
    except Exception as error:  # a plugin's own bug: reported with its module, never a crash here
        plugin.error = f"{type(error).__name__}: {error}"
    LOADED[key] = plugin
    forget_schema()
    return plugin


def forget_schema() -> None:
    """New classes may bring new config keys: the registry-wide column schema is recomputed."""
    output = sys.modules.get("bench.output")
    if output is not None:
        output.config_schema.cache_clear()
    clear = getattr(sys.modules.get("bench.registry"), "clear_caches", None)
    if clear is not None:  # not while bench.registry itself is being imported
        clear()


def entry_point_plugins() -> list[tuple[str, str]]:
    """(module, origin) for every entry point in the ``bench.plugins`` group."""
    from importlib.metadata import entry_points

    found = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        distribution = getattr(point, "dist", None)
        dist_name = f" (distribution {distribution.name})" if distribution is not None else ""
        found.append((point.value.split(":", 1)[0], f"entry point {point.name}{dist_name}"))
    return found


def load_installed() -> list[Plugin]:
    """Entry points and BENCH_PLUGINS: what every bench process loads with its registries."""
    plugins = [load_one(module, origin) for module, origin in entry_point_plugins()]
    plugins += [load_one(spec, ENVIRONMENT) for spec in split_specs(os.environ.get(ENVIRONMENT))]
    return plugins


def load(specs: str | Iterable[str] | None, origin: str = "plugins key") -> list[Plugin]:
    """Load the ``plugins`` key's modules and raise ConfigError naming any that failed, with every
    other plugin of this process that failed too (the sweep checks before any work)."""
    requested = [load_one(spec, origin) for spec in split_specs(specs)]
    broken = [plugin for plugin in [*LOADED.values()] if plugin.error]
    if broken:
        lines = "; ".join(f"{plugin.describe()}: {plugin.error}" for plugin in broken)
        raise ConfigError("plugins", f"could not import {lines}")
    return requested


def broken() -> list[Plugin]:
    return [plugin for plugin in LOADED.values() if plugin.error]


def module_of(cls: type) -> str:
    """Where a registered class comes from: its module, with the plugin origin when it is one."""
    for plugin in LOADED.values():
        inside = plugin.module is not None and (cls.__module__ + ".").startswith(plugin.module + ".")
        if inside:
            source = "" if plugin.spec == plugin.module else f"{plugin.spec}, "
            return f"{cls.__module__} ({source}{plugin.origin})"
    return cls.__module__
