"""bench's Hydra sweeper: a thin class over Hydra's basic sweeper; the logic is in ``bench.sweep``.

Hydra accepts plugin classes only from the ``hydra_plugins`` namespace, so the class lives here.
Hydra also discovers plugins by scanning that namespace, which fails for editable installs
(setuptools' import hook hides the package from pkgutil); ``register`` hands the class to Hydra
directly (``bench.sweep.register_sweeper``), so discovery does not matter.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from bench.errors import ConfigError
from bench.output import scratch
from bench.sweep import EXIT_USAGE, check_sweep_settings, check_writable, default_grid, execute, plan


class BenchSweeper(BasicSweeper):
    """Hydra's basic grid sweeper, plus: keys apply only where they exist, duplicate cells are
    dropped, every cell is validated before any work, finished cells are reused, and the results
    are merged at the end."""

    def _compose(self, overrides: list[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        tic = time.perf_counter()
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        user_keys = [o.get_key_element().lstrip("+~") for o in parser.parse_overrides(arguments)]
        overrides = parser.parse_overrides([*default_grid(dict(self.params), user_keys), *arguments])
        (jobs,) = self.split_arguments(overrides, None)
        out = Path(self.config.hydra.sweep.dir)
        try:
            check_sweep_settings(self.config)
            check_writable(out)
            print(f"bench: planning {len(jobs)} jobs (validating every cell's config)...", flush=True)
            grid = plan(jobs, self._compose, self._compose([]), user_keys)
        except ConfigError as error:
            print(f"bench: error: {error}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        print(f"bench: planned in {time.perf_counter() - tic:.1f} s", flush=True)
        OmegaConf.save(self.config, scratch(out) / "multirun.yaml")

        def launch(batch: list[list[str]], start: int) -> Any:
            assert self.launcher is not None
            return self.launcher.launch(batch, initial_job_idx=start)

        status = execute(grid, out, self.config, launch, self.max_batch_size)
        if status:
            sys.exit(status)
        return []
