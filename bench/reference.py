"""The reference gradient of a problem without an exact one (``has_exact_gradient`` false).

Such a problem's bias is measured against a *reference*: the mean of ``n_estimates`` estimates of a
declared-unbiased estimator (``estimator``) at ``Problem.reference_n_samples`` samples each, in
float64, streamed through the cell machinery (``bench.stats.fold``, ``summarize``) from a noise
stream of its own (seeded with ``bench.runner.REFERENCE_STREAM``, whatever the cell's seed), so its
error is independent of every cell's. Its per-dimension standard error enters every bias test:
z_i = (mean_i − ref_i) / sqrt(se_i² + se_ref,i² + floor_i²) (``bench.stats.summarize``), which keeps
the test's false-alarm rate and ``bias_resolution``'s meaning; a larger se_ref only costs power.

Settings (config ``reference_gradient``): ``estimator`` (``auto``: the problem's
``reference_estimator``, rloo unless it says otherwise) and ``n_estimates`` (``auto``: the problem's
``reference_n_estimates``, 200 000 unless it says otherwise). Why 200 000 rloo estimates of 16
samples each: a cell at the default n_estimates = 20 000 has se_i² = var_i(S)/20 000, the reference
se_ref,i² ≈ var_i(1)/(16 · 200 000) (rloo's variance falls about as 1/S), so se_ref/se is about
sqrt(20 000 / 3 200 000 · var(1)/var(S)) = 0.08·sqrt(S·var(S)/var(1)): ≈ 0.08 against a
one-sample cell, ≈ 0.3 against an rloo cell at S = 16 (the largest n_samples of the default grid),
measured in ``tests/test_reference.py``'s docstring. The test's denominator then grows by at most
sqrt(1 + 0.3²) ≈ 1.05, so ``bias_resolution`` loses ≤ 5% against an exact gradient.

A reference is computed once per (problem, problem config, reference settings, code) and cached in
``results/.cache/reference-<problem>-<hash>.json`` (relative to the working directory, like the
VAEs' trained points; written atomically; exact float64 values as JSON), and in memory for the
process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from bench.errors import ConfigError
from bench.problems.base import Problem
from bench.settings import AUTO, parse_reference_gradient

CACHE_DIR = Path("results") / ".cache"
CACHE_VERSION = 1  # bump when the reference's computation changes, so stale caches are not reused

log = logging.getLogger("bench")


@dataclass(frozen=True)
class ReferenceSpec:
    """A resolved reference: which estimator (and its config), samples per estimate, estimates."""

    estimator: str
    n_samples: int
    n_estimates: int
    estimator_config: dict[str, Any] = field(default_factory=dict, hash=False)

    def key(self) -> dict[str, Any]:
        """What identifies the reference (in cell ids and the cache's name)."""
        return {
            "estimator": self.estimator,
            "estimator_config": self.estimator_config,
            "n_samples": self.n_samples,
            "n_estimates": self.n_estimates,
        }


def resolve(problem: type[Problem] | Problem, settings: Mapping[str, Any] | None = None) -> ReferenceSpec:
    """The reference a problem (class or instance) uses under ``settings`` (``reference_gradient``)."""
    from bench.registry import REGISTRIES, default_config

    settings = parse_reference_gradient(settings)
    name = problem.reference_estimator if settings["estimator"] == AUTO else settings["estimator"]
    n_estimates = settings["n_estimates"]
    if n_estimates == AUTO:
        n_estimates = problem.reference_n_estimates
    estimator_cls = REGISTRIES["estimator"][name]
    n_samples = max(problem.reference_n_samples, estimator_cls.min_samples)
    return ReferenceSpec(name, n_samples, int(n_estimates), default_config("estimator", name))


def reference_key(
    problem: str, problem_config: Mapping[str, Any], settings: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The resolved reference settings of a registered problem built from ``problem_config`` when it
    has no exact gradient (they then identify its cells), else None (cell ids stay as they were)."""
    from bench.registry import REGISTRIES

    cls = REGISTRIES["problem"].get(problem)
    if cls is None or cls.exact_gradient_for(dict(problem_config)):
        return None
    return resolve(cls, settings).key()


def check_applies(problem: Problem, settings: Mapping[str, Any] | None) -> None:
    """Raise ConfigError when a problem needs a reference its reference estimator cannot give."""
    from bench.registry import build

    if problem.has_exact_gradient:
        return
    spec = resolve(problem, settings)
    reason = build("estimator", spec.estimator, spec.estimator_config).why_not(problem, spec.n_samples)
    if reason is not None:
        raise ConfigError(
            "reference_gradient.estimator",
            f"{problem.name} has no exact gradient and its reference estimator cannot run: {reason}",
        )


# --- the reference ----------------------------------------------------------------------------------
class Reference(NamedTuple):
    """An estimated gradient, flattened in ``bench.runner.param_names`` order, float64."""

    mean: Tensor  # (P,)
    stderr: Tensor  # (P,): the standard error of ``mean``
    n_estimates: int
    clt_ok: bool  # the normal approximation holds for the reference's mean (``bench.stats.clt_ok``)
    seconds: float  # what computing it took (not loading it)


MEMO: dict[str, Reference] = {}  # this process's references, by cache key digest


def forget() -> None:
    """Forget the references held in memory (the disk cache stays)."""
    MEMO.clear()


def cache_key(problem: Problem, spec: ReferenceSpec) -> dict[str, Any]:
    """Everything the reference's numbers depend on."""
    from bench.runner import REFERENCE_STREAM

    key: dict[str, Any] = {
        "version": CACHE_VERSION,
        "problem": problem.name,
        "class": f"{type(problem).__module__}.{type(problem).__qualname__}",
        "problem_config": problem.config(),
        "reference": spec.key(),
        "seed": REFERENCE_STREAM,
    }
    try:
        from bench.component import code_fingerprint
        from bench.registry import REGISTRIES

        estimator_cls = REGISTRIES["estimator"][spec.estimator]
        key["code"] = [code_fingerprint(type(problem)), code_fingerprint(estimator_cls)]
    except ImportError:  # no fingerprints in this version of bench
        pass
    return key


def cache_path(problem: Problem, key: Mapping[str, Any]) -> tuple[str, Path]:
    text = json.dumps(key, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    return digest, CACHE_DIR / f"reference-{problem.name or 'problem'}-{digest}.json"


def load(path: Path, key: Mapping[str, Any], n_params: int, device: torch.device) -> Reference | None:
    """The cached reference at ``path`` if it is readable, for this key and of this size."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        if json.dumps(payload["key"], sort_keys=True) != json.dumps(key, sort_keys=True, default=str):
            return None
        mean = torch.tensor(payload["mean"], dtype=torch.float64, device=device)
        stderr = torch.tensor(payload["stderr"], dtype=torch.float64, device=device)
        if mean.shape != (n_params,) or stderr.shape != (n_params,):
            return None
        if not (torch.isfinite(mean).all() and torch.isfinite(stderr).all()):
            return None
        return Reference(mean, stderr, int(payload["n_estimates"]), bool(payload["clt_ok"]),
                         float(payload["seconds"]))  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


def save(path: Path, key: Mapping[str, Any], names: list[str], reference: Reference) -> None:
    from bench.output import write_text_atomic

    payload = {
        "key": key,
        "names": names,
        "mean": reference.mean.tolist(),  # float64 → JSON numbers: repr round-trips exactly
        "stderr": reference.stderr.tolist(),
        "n_estimates": reference.n_estimates,
        "clt_ok": reference.clt_ok,
        "seconds": reference.seconds,
    }
    write_text_atomic(json.dumps(payload, default=str), path)


def reference_gradient(
    problem: Problem, settings: Mapping[str, Any] | None = None, *, batch_size: int | None = None
) -> Reference:
    """The problem's reference gradient under ``settings`` (``reference_gradient``): from memory,
    else from results/.cache, else computed (and cached in both)."""
    from bench.runner import param_names

    spec = resolve(problem, settings)
    key = cache_key(problem, spec)
    digest, path = cache_path(problem, key)
    if digest in MEMO:
        return MEMO[digest]
    params = problem.params()
    names = param_names(params)
    reference = load(path, key, len(names), problem.device)
    if reference is None:
        log.info(
            f"  {problem.name}: no exact gradient; computing its reference ({spec.n_estimates:,} "
            f"{spec.estimator} estimates of {spec.n_samples} samples, float64; cached in {path})"
        )
        reference = compute(problem, spec, batch_size=batch_size)
        save(path, key, names, reference)
    MEMO[digest] = reference
    return reference


def compute(problem: Problem, spec: ReferenceSpec, *, batch_size: int | None = None) -> Reference:
    """Stream ``spec.n_estimates`` estimates of the reference estimator in float64 from the
    reference's own noise streams (``REFERENCE_STREAM`` + the cell's offsets) and summarize them."""
    from bench.registry import build
    from bench.runner import (
        AUX_STREAM,
        FIT_AUX_STREAM,
        FIT_STREAM,
        REFERENCE_STREAM,
        auto_batch_size,
        flatten,
        param_names,
    )
    from bench.stats import empty_moments, fold, fold_scratch, summarize

    started = time.perf_counter()
    estimator = build("estimator", spec.estimator, spec.estimator_config)
    reason = estimator.why_not(problem, spec.n_samples)
    if reason is not None:
        raise ConfigError("reference_gradient.estimator", f"the reference estimator cannot run: {reason}")
    dtype, device = torch.float64, problem.device
    problem.prepare(dtype)
    params = {name: value.to(dtype) for name, value in problem.params().items()}
    n_params = len(param_names(params))
    if batch_size is None:
        batch_size = auto_batch_size(problem, n_params, spec.n_samples, dtype, device)

    def stream(offset: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(REFERENCE_STREAM + offset)

    def draw(generator: torch.Generator, aux: torch.Generator, size: int) -> Any:
        return estimator.make_noise(problem, generator, aux, (size, spec.n_samples), dtype)

    if estimator.has_fit:
        fit_generator, fit_aux = stream(FIT_STREAM), stream(FIT_AUX_STREAM)
        estimator.fit(problem, params, lambda size: draw(fit_generator, fit_aux, size))
    generator, aux_generator = stream(0), stream(AUX_STREAM)
    moments = empty_moments(n_params, device)
    scratch = fold_scratch(batch_size, n_params, device)
    done = 0
    while done < spec.n_estimates:
        size = min(batch_size, spec.n_estimates - done)
        batch = flatten(estimator.estimate(problem, params, draw(generator, aux_generator, size)), size)
        moments = fold(moments, batch, scratch)
        done += size
    if not bool(torch.isfinite(moments.mean).all()):
        raise FloatingPointError(
            f"non-finite estimates in {problem.name}'s reference gradient ({spec.estimator})"
        )
    zeros = torch.zeros(n_params, dtype=torch.float64, device=device)
    summary = summarize(moments, zeros, dtype)
    return Reference(
        summary.mean.clone(), summary.stderr.clone(), spec.n_estimates, summary.clt_ok,
        time.perf_counter() - started,
    )  # fmt: skip
