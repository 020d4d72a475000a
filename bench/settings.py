"""The global keys of ``bench sweep`` (and of ``bench.run``): parsing and validation in one place.

Every function raises ``ConfigError`` naming the key, so a bad value is rejected before any work
with a message the user can act on. Integer keys accept integral numbers written as floats
(``n_estimates=1e5``), which is how Hydra parses them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from bench.errors import ConfigError, unknown_name

DTYPES = {"float32": torch.float32, "float64": torch.float64}
INTEGER_KEYS = ("n_samples", "n_estimates", "seed")
AUTO = "auto"
REFERENCE_KEYS = ("estimator", "n_estimates")  # of reference_gradient
REFERENCE_DEFAULTS = {"estimator": AUTO, "n_estimates": AUTO}


def as_integer(key: str, value: Any, minimum: int, *, auto: bool = False, why: str = "") -> int:
    """An integer >= ``minimum``; an integral float (1e5) counts as one, a bool does not."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f"{'auto or ' if auto else ''}an integer >= {minimum}{why}"
        raise ConfigError(key, f"expected {expected}, got {value!r}")
    return value


def integral(default: Any, value: Any) -> Any:
    """``value`` as an int where the key's default is an int and the value an integral float
    (``estimator.train_steps=1e3``), so it is the same config (and cell id) as 1000."""
    is_int = isinstance(default, int) and not isinstance(default, bool)
    if is_int and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError("device", f"expected auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError("dtype", f"expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def check_settings(n_samples: Any, n_estimates: Any, seed: Any) -> tuple[int, int, int]:
    """(n_samples, n_estimates, seed) as integers, validated."""
    return (
        as_integer("n_samples", n_samples, 1),
        as_integer("n_estimates", n_estimates, 2, why=" (a variance needs two)"),
        as_integer("seed", seed, 0),
    )


def parse_duration(value: Any) -> float | None:
    """``time_limit``: seconds as a number, or text with a unit (90s, 30m, 1.5h, 2d); none/inf = no limit."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "inf", "")):
        return None
    if isinstance(value, bool):
        raise ConfigError("time_limit", f"expected a duration such as 3600, 30m, 2h or none, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(value).lower())
        if not match:
            raise ConfigError(
                "time_limit", f"expected a duration such as 3600, 30m, 2h or none, got {value!r}"
            )
        seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    if math.isinf(seconds):
        return None
    if not seconds > 0:
        raise ConfigError("time_limit", f"must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def parse_threads(value: Any) -> int | None:
    """``threads``: auto (None) or an integer ≥ 1."""
    if value == "auto":
        return None
    return as_integer("threads", value, 1, auto=True)


def parse_alpha(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError("alpha", f"expected a number in (0, 1), got {value!r}")
    return float(value)


def parse_reference(value: Any) -> str | None:
    if value is None or value in ("none", "null", ""):
        return None
    from bench.registry import REGISTRIES

    if value not in REGISTRIES["estimator"]:
        raise unknown_name("reference", str(value), list(REGISTRIES["estimator"]))
    return str(value)


def parse_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def parse_batch_size(value: Any) -> int | None:
    """``batch_size``: auto (None) or an integer >= 1."""
    return None if value == "auto" else as_integer("batch_size", value, 1, auto=True)


def reference_choices() -> list[str]:
    """Estimators a reference may use: the declared-unbiased ones that need no exact gradient."""
    from bench.registry import REGISTRIES

    return sorted(
        name
        for name, cls in REGISTRIES["estimator"].items()
        if cls.unbiased and "has_exact_gradient" not in getattr(cls, "requires", ())
    )


def parse_reference_gradient(value: Any) -> dict[str, Any]:
    """The config ``reference_gradient`` validated: {"estimator": "auto" | name, "n_estimates": "auto" |
    int}. None (a config without the key) gives the defaults. Errors name the sub-key."""
    from omegaconf import OmegaConf

    if value is None:
        return dict(REFERENCE_DEFAULTS)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, Mapping):
        raise ConfigError("reference_gradient", f"expected the keys estimator and n_estimates, got {value!r}")
    for key in value:
        if key not in REFERENCE_KEYS:
            valid = ", ".join(f"reference_gradient.{k}" for k in REFERENCE_KEYS)
            raise ConfigError(f"reference_gradient.{key}", f"unknown key; valid keys: {valid}")
    settings = {**REFERENCE_DEFAULTS, **value}
    estimator = settings["estimator"]
    if estimator != AUTO:
        from bench.registry import REGISTRIES

        choices = reference_choices()
        cls = REGISTRIES["estimator"].get(estimator) if isinstance(estimator, str) else None
        if cls is None:
            raise ConfigError(
                "reference_gradient.estimator",
                f"unknown estimator {estimator!r}; valid choices: {', '.join([AUTO, *choices])}",
            )
        if estimator not in choices:
            why = "is declared biased" if not cls.unbiased else "needs the exact gradient itself"
            raise ConfigError(
                "reference_gradient.estimator",
                f"{estimator} {why}: a reference gradient must come from a declared-unbiased estimator; "
                f"valid choices: {', '.join([AUTO, *choices])}",
            )
    n_estimates = settings["n_estimates"]
    if n_estimates != AUTO:
        n_estimates = as_integer("reference_gradient.n_estimates", n_estimates, 2, auto=True)
    return {"estimator": estimator, "n_estimates": n_estimates}


def cell_settings(cfg: Any) -> dict[str, Any]:
    """The run_cell settings of a job config (a DictConfig or a plain dict), validated, with the
    integer keys as integers (``normalize`` writes them back, so cell ids agree everywhere)."""
    batch_size = parse_batch_size(cfg["batch_size"])
    n_samples, n_estimates, seed = check_settings(cfg["n_samples"], cfg["n_estimates"], cfg["seed"])
    resolve_dtype(cfg["dtype"])
    resolve_device(str(cfg["device"]))
    return {
        "n_samples": n_samples,
        "n_estimates": n_estimates,
        "seed": seed,
        "dtype": cfg["dtype"],
        "batch_size": batch_size,
        "alpha": parse_alpha(cfg["alpha"]),
        # for problems without an exact gradient (bench.reference); a config without it: defaults
        "reference_gradient": parse_reference_gradient(cfg.get("reference_gradient")),
    }


def normalize(container: dict[str, Any]) -> dict[str, Any]:
    """A job config with its integer keys as integers (``n_estimates=1e5`` → 100000), validated."""
    settings = cell_settings(container)
    container.update({key: settings[key] for key in INTEGER_KEYS})
    if settings["batch_size"] is not None:
        container["batch_size"] = settings["batch_size"]
    return settings


def check_sweep_settings(cfg: Any) -> None:
    """Validate the keys that concern the whole sweep (raising ConfigError)."""
    parse_threads(cfg["threads"])
    parse_reference(cfg["reference"])
    parse_duration(cfg["time_limit"])
    for key in ("resume", "plots", "dry_run"):
        parse_bool(key, cfg[key])


# --- bench train ------------------------------------------------------------------------------------
OPTIMIZERS = ("adam", "sgd")
TRAIN_INTEGER_KEYS = ("n_samples", "seed", "steps", "eval_every", "eval_estimates", "eval_samples")


def parse_lr(value: Any) -> float:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not (math.isfinite(value) and value > 0):
        raise ConfigError("lr", f"expected a positive number, got {value!r}")
    return float(value)


def parse_basket(value: Any) -> list[str]:
    """``basket``: estimator names (a list, or one name; empty: none), each a registered estimator."""
    if value is None or value in ("", "none", "null"):
        return []
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if names is None or not all(isinstance(name, str) for name in names):
        example = "basket=[rloo,disarm]"
        raise ConfigError("basket", f"expected a list of estimator names, e.g. {example}, got {value!r}")
    from bench.registry import group_options

    choices = group_options("estimator")
    for name in names:
        if name not in choices:
            raise unknown_name("basket", name, choices)
    return list(dict.fromkeys(names))


def train_settings(cfg: Any) -> dict[str, Any]:
    """The settings of one training run (a DictConfig or a plain dict), validated, integers as integers."""
    optimizer = cfg["optimizer"]
    if optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", str(optimizer), list(OPTIMIZERS))
    resolve_dtype(cfg["dtype"])
    resolve_device(str(cfg["device"]))
    return {
        "n_samples": as_integer("n_samples", cfg["n_samples"], 1),
        "seed": as_integer("seed", cfg["seed"], 0),
        "dtype": cfg["dtype"],
        "steps": as_integer("steps", cfg["steps"], 1),
        "eval_every": as_integer("eval_every", cfg["eval_every"], 1),
        "optimizer": optimizer,
        "lr": parse_lr(cfg["lr"]),
        "basket": parse_basket(cfg["basket"]),
        "eval_estimates": as_integer("eval_estimates", cfg["eval_estimates"], 0, why=" (0: no variance)"),
        "eval_samples": as_integer("eval_samples", cfg["eval_samples"], 1),
    }


def check_train_command(cfg: Any) -> None:
    """Validate the keys that concern the whole ``bench train`` command (raising ConfigError)."""
    parse_threads(cfg["threads"])
    parse_duration(cfg["time_limit"])
    for key in ("resume", "plots", "dry_run"):
        parse_bool(key, cfg[key])
