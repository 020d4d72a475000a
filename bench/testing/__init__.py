"""A conformance kit for your own estimators, in your own pytest suite (modelled on scikit-learn's
``parametrize_with_checks``; docs/testing.md lists the checks and the conventions they enforce)::

    from bench.testing import parametrize_with_checks

    @parametrize_with_checks([MyEstimator(), MyEstimator(temperature=2.0)])
    def test_bench_checks(estimator, check):
        check(estimator)

One pytest param per (estimator, check, problem), id ``MyEstimator(temperature=2.0)-check_float64-
bernoulli``, on bench's toy problems at their YAML defaults (or ``problems=``) that the estimator
applies to at n_samples max(3, min_samples). ``check_estimator`` runs the same checks without
pytest. Every check works on a deep copy fitted as ``bench.runner.run_cell`` fits it, so the
estimator passed in is never changed.
"""

from __future__ import annotations

import functools
import sys
import unittest
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.estimators.base import Estimator
from bench.problems.base import Problem
from bench.testing.checks import (
    CHECK_NAMES,
    CHECKS,
    TOY_PROBLEMS,
    CheckFailed,
    ExpectedFailed,
    SkipCheck,
    budget,
    check_unbiased,
    check_why_not_agrees,
    estimator_id,
    problem_id,
    samples_for,
)

__all__ = [
    "CHECKS", "TOY_PROBLEMS", "CheckFailed", "CheckReport", "CheckResult", "budget", "check_estimator",
    "parametrize_with_checks",
]  # fmt: skip


# --- binding checks to problems -------------------------------------------------------------------
class BoundCheck(functools.partial):
    """``check(estimator)``: a check with its problem bound (``functools.partial``); its repr and
    ``__name__`` are ``check_name-problem``. Bound to no problem, it skips with ``skip_reason``."""

    check_name: str
    problem_name: str
    skip_reason: str | None

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        try:
            if self.skip_reason is not None:
                raise SkipCheck(f"{self.check_name}: {self.skip_reason}")
            return super().__call__(*args, **kwargs)
        except SkipCheck as skip:  # under pytest: a skip reported at the user's test, not in pytest
            pytest = sys.modules.get("pytest")
            try:
                error = pytest.skip.Exception(str(skip), _use_item_location=True) if pytest else skip
            except TypeError:  # a pytest without the keyword
                error = skip
            raise error from None

    def __repr__(self) -> str:
        return self.__name__


def bind(
    check: Callable[[Estimator, Problem], None], problem: Problem | None, reason: str | None = None
) -> BoundCheck:
    bound = BoundCheck(check, problem=problem)
    bound.check_name, bound.skip_reason = check.__name__, reason
    bound.problem_name = "none" if problem is None else problem_id(problem)
    bound.__name__ = f"{bound.check_name}-{bound.problem_name}"
    return bound


def toy_problems() -> list[Problem]:
    """bench's toy problems at their YAML defaults."""
    from bench import registry

    return [
        registry.build("problem", name, registry.default_config("problem", name)) for name in TOY_PROBLEMS
    ]


def bound_checks(estimator: Estimator, problems: Sequence[Problem] | None = None) -> list[BoundCheck]:
    """Every check bound to every problem it runs on: the problems ``estimator`` applies to at its
    n_samples (``check_why_not_agrees``: every problem), ``check_unbiased`` only for estimators
    declaring ``unbiased``. A check with no applicable problem is bound to none and skips, giving
    each problem's reason."""
    problems = toy_problems() if problems is None else list(problems)
    n_samples = samples_for(estimator)
    reasons = {problem_id(p): estimator.why_not(p, n_samples) for p in problems}
    applicable = [p for p in problems if reasons[problem_id(p)] is None]
    why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items()) or "no problem given"
    bound = []
    for check in CHECKS:
        if check is check_unbiased and not estimator.unbiased:
            continue
        targets = problems if check is check_why_not_agrees else applicable
        bound.extend(bind(check, p) for p in targets)
        if not targets:
            bound.append(bind(check, None, f"{estimator_id(estimator)} applies to no problem ({why})"))
    return bound


def expected_for(estimator: Estimator, expected_failed_checks: ExpectedFailed) -> dict[str, str]:
    """{check name or ``check-problem``: reason}, validated against the check names."""
    table = expected_failed_checks(estimator) if callable(expected_failed_checks) else expected_failed_checks
    unknown = [key for key in table or {} if key.split("-", 1)[0] not in CHECK_NAMES]
    if unknown:
        raise ValueError(
            f"expected_failed_checks: unknown check {unknown[0]!r}; known: {', '.join(CHECK_NAMES)}"
        )
    return dict(table or {})


def expected_reason(expected: Mapping[str, str], check: BoundCheck) -> str | None:
    return expected.get(check.__name__, expected.get(check.check_name))


def parametrize_with_checks(
    estimators: Sequence[Estimator],
    *,
    expected_failed_checks: ExpectedFailed = None,
    problems: Sequence[Problem] | None = None,
) -> Any:
    """A ``pytest.mark.parametrize("estimator, check", ...)`` decorator with one param per
    (estimator, check, problem), id ``estimator-check-problem``. ``expected_failed_checks``: a
    callable estimator → {check name (every problem) or ``check-problem`` (one): reason}, or such a
    dict; those params are marked ``xfail(strict=True)``, so an expected failure that passes fails
    the suite (remove it from the table). ``problems``: Problem instances instead of the toys."""
    import pytest

    problems = toy_problems() if problems is None else list(problems)
    params = []
    for estimator in estimators:
        expected, label = expected_for(estimator, expected_failed_checks), estimator_id(estimator)
        for check in bound_checks(estimator, problems):
            reason = expected_reason(expected, check)
            marks = () if reason is None else (pytest.mark.xfail(reason=reason, strict=True),)
            params.append(pytest.param(estimator, check, marks=marks, id=f"{label}-{check.__name__}"))
    return pytest.mark.parametrize("estimator, check", params)


# --- without pytest ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    """One check on one problem: status passed | failed | xfailed | xpassed | skipped."""

    check: str
    problem: str
    status: str
    message: str = ""

    def __str__(self) -> str:
        return f"{self.status:8} {self.check}-{self.problem}" + (f": {self.message}" if self.message else "")


@dataclass(frozen=True)
class CheckReport:
    """What ``check_estimator`` found; ``failures`` holds failed checks and strict xpasses."""

    estimator: str
    results: tuple[CheckResult, ...]

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status in ("failed", "xpassed")]

    def status(self, check: str, problem: str | None = None) -> list[str]:
        """The statuses of ``check`` (on ``problem``, or on every problem)."""
        return [r.status for r in self.results if r.check == check and problem in (None, r.problem)]

    def __str__(self) -> str:
        return "\n".join([f"bench checks of {self.estimator}:", *(f"  {r}" for r in self.results)])


def run_check(estimator: Estimator, check: BoundCheck, reason: str | None) -> CheckResult:
    try:
        if check.skip_reason is not None:
            raise SkipCheck(f"{check.check_name}: {check.skip_reason}")
        check.func(estimator, *check.args, **check.keywords)
    except unittest.SkipTest as skip:
        return CheckResult(check.check_name, check.problem_name, "skipped", str(skip))
    except Exception as error:  # an error is a failure, as in pytest
        message = str(error) if isinstance(error, AssertionError) else f"{type(error).__name__}: {error}"
        status = "failed" if reason is None else "xfailed"
        return CheckResult(check.check_name, check.problem_name, status, message)
    if reason is not None:
        return CheckResult(check.check_name, check.problem_name, "xpassed", f"expected to fail: {reason}")
    return CheckResult(check.check_name, check.problem_name, "passed")


def check_estimator(
    estimator: Estimator,
    *,
    expected_failed_checks: ExpectedFailed = None,
    problems: Sequence[Problem] | None = None,
    raise_on_failure: bool = True,
) -> CheckReport:
    """Run every check of ``parametrize_with_checks`` on ``estimator`` without pytest. Returns a
    ``CheckReport``; with ``raise_on_failure``, raises CheckFailed listing the failures (failed
    checks and expected failures that passed)."""
    expected = expected_for(estimator, expected_failed_checks)
    results = tuple(
        run_check(estimator, check, expected_reason(expected, check))
        for check in bound_checks(estimator, problems)
    )
    report = CheckReport(estimator_id(estimator), results)
    if raise_on_failure and report.failures:
        lines = "\n".join(f"  {r}" for r in report.failures)
        raise CheckFailed(f"{len(report.failures)} bench check(s) failed for {report.estimator}:\n{lines}")
    return report
