"""bench's Hydra sweeper. Hydra loads sweepers only from the ``hydra_plugins`` namespace package,
so this thin class lives here; the logic is in ``bench.sweep``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from bench.errors import ConfigError
from bench.sweep import default_grid, finish, plan


class BenchSweeper(BasicSweeper):
    """Hydra's basic grid sweeper, plus: keys apply only where they exist, duplicate cells are
    dropped, every cell is validated before any work, and the results are merged at the end."""

    def _compose(self, overrides: list[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        user_keys = [o.get_key_element().lstrip("+~") for o in parser.parse_overrides(arguments)]
        overrides = parser.parse_overrides([*default_grid(dict(self.params), user_keys), *arguments])
        (jobs,) = self.split_arguments(overrides, None)
        try:
            grid = plan(jobs, self._compose, self._compose([]), user_keys)
        except ConfigError as error:
            print(f"bench: error: {error}", file=sys.stderr)
            sys.exit(2)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        n_skip = sum(reason is not None for reason in grid.skipped)
        print(f"bench: {len(grid.jobs)} cells ({n_skip} will be skipped) -> {sweep_dir}", flush=True)
        size = self.max_batch_size or len(grid.jobs)
        returns = []
        for start in range(0, len(grid.jobs), size):
            batch = grid.jobs[start : start + size]
            results = self.launcher.launch(batch, initial_job_idx=start)
            for result in results:
                _ = result.return_value  # re-raises a job that crashed outside its own handler
            returns.append(results)
        config = OmegaConf.to_container(self.config, resolve=False)
        n_failed = finish(sweep_dir, config, draw_plots=bool(self.config.get("plots", True)))
        if n_failed:
            print(f"bench: {n_failed} cell(s) failed; see the reason column", file=sys.stderr)
            sys.exit(1)
        return returns
