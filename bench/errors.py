"""Errors a user can act on: each names the config key or the valid choices."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid config value; the message starts with the key, e.g. ``problem.sigma: ...``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class NotApplicable(Exception):
    """An estimator cannot run on a problem (or at these settings); the message is the reason."""


def unknown_name(kind: str, name: str, choices: list[str]) -> ConfigError:
    return ConfigError(kind, f"unknown {kind} {name!r}; valid choices: {', '.join(sorted(choices))}")
