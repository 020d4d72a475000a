"""The conformance suite, run through bench's own kit (``bench.testing``, docs/testing.md): every
registered estimator, built from its YAML defaults (trained ones at 30 steps), runs every check on
every toy problem it applies to (finite, shaped estimates; same seeds, same estimates; common random
numbers; batch invariance; float64; cost_evals counted against the evaluations made; why_not; and,
for estimators declaring themselves unbiased, the bias test). The bias test also runs here on every
other problem (the VAEs, cartpole), the kit covering the toys. A newly registered estimator or
problem joins without editing this file. The kit itself is tested: it rejects known-wrong estimators,
``expected_failed_checks`` turns a failure into a strict xfail, and its pytest ids name estimator,
check and problem.

False-alarm rate: each bias test rejects at α = 1e-3 family-wise over the gradient's dimensions
(the harness's own ``bias_pvalue``: Bonferroni over per-dimension z-tests). Seeds are fixed; per
torch.distributions' rule, a failing seed may be bumped once, and a second failure is a bug.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from bench import estimators, problems
from bench.estimators.base import Estimator, detached, score_function_surrogate
from bench.problems.bernoulli import Bernoulli
from bench.problems.categorical import Categorical
from bench.runner import run_cell
from bench.sweep import default_config, group_options
from bench.testing import (
    TOY_PROBLEMS,
    CheckFailed,
    budget,
    check_estimator,
    parametrize_with_checks,
)
from tests.conftest import ROOT, make, make_for_tests
from tests.test_trained import DetachedRebar

ALPHA = 1e-3
N_ESTIMATES = 20_000
N_SAMPLES = 3

# Genuine exceptions to the kit's checks, each with its reason: {estimator name: {check or
# "check-problem": reason}}. Empty: every built-in passes every check on every toy it applies to.
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {}


def expected_failed_checks(estimator: Estimator) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS.get(estimator.name, {})


@parametrize_with_checks(
    [make_for_tests("estimator", name) for name in sorted(estimators.REGISTRY)],
    expected_failed_checks=expected_failed_checks,
)
def test_bench_checks(estimator, check):
    # check_unbiased: α = 1e-3 family-wise over dimensions (see module docstring).
    check(estimator)


def unbiased_cases() -> list[tuple[str, str]]:
    """(problem, estimator) pairs beyond the toy problems (the kit's check_unbiased covers those)."""
    cases = []
    for problem_name in group_options("problem"):
        if problem_name in TOY_PROBLEMS:
            continue
        problem = make("problem", problem_name)
        for estimator_name in sorted(estimators.REGISTRY):
            estimator = make_for_tests("estimator", estimator_name)
            if estimator.unbiased and estimator.why_not(problem, N_SAMPLES) is None:
                cases.append((problem_name, estimator_name))
    return cases


@pytest.mark.statistical
@pytest.mark.parametrize("problem_name,estimator_name", unbiased_cases())
def test_declared_unbiased_estimator_is_unbiased(problem_name, estimator_name):
    # α = 1e-3 family-wise over dimensions (see module docstring); the kit's budget rule.
    problem = make("problem", problem_name)
    estimator = make_for_tests("estimator", estimator_name)
    result = run_cell(
        problem, estimator, n_samples=N_SAMPLES, n_estimates=budget(estimator, problem), seed=11
    )
    assert result.row["status"] == "ok"
    assert result.row["bias_pvalue"] > ALPHA, result.row


class HalfBaseline(Estimator):
    """A deliberately biased score-function estimator (test only, unregistered: no ``name``):
    ĝ = mean_s [(f_s − f_s/2) ∇log p_s], a baseline that depends on its own sample, so
    E[ĝ] = ∇E[f] / 2."""

    unbiased = True  # the lie the conformance check must catch

    def surrogate(self, problem, params, noise):
        x = problem.sample(detached(params), noise)
        cost = problem.cost(params, x)
        return score_function_surrogate(cost, problem.log_prob(params, x), cost / 2)


@pytest.mark.statistical
@pytest.mark.parametrize(
    "problem,estimator",
    [
        (Categorical(), make("estimator", "gumbel_softmax", temperature=1.0)),
        (Categorical(cost="quadratic"), make("estimator", "st_gumbel_softmax", temperature=1.0)),
        (make("problem", "bernoulli"), make("estimator", "st_gumbel_softmax", temperature=0.5)),
    ],
    ids=["gumbel_softmax-categorical", "st-categorical-quadratic", "st-bernoulli"],
)
def test_the_same_check_rejects_biased_estimators(problem, estimator):
    # Test the test: the identical check (α = 1e-3, same n_estimates) must reject these.
    result = run_cell(problem, estimator, n_samples=N_SAMPLES, n_estimates=N_ESTIMATES, seed=11)
    assert result.row["bias_pvalue"] < ALPHA, result.row


# --- the kit itself ---------------------------------------------------------------------------------
@pytest.mark.statistical
@pytest.mark.parametrize(
    "estimator,n_problems",
    [(HalfBaseline(), 4), (DetachedRebar(), 3)],
    ids=["half-baseline", "detached-rebar"],
)
def test_the_kit_rejects_known_wrong_estimators(estimator, n_problems):
    # Test the test: the kit's check_unbiased (the bias test above, α = 1e-3) rejects both on every
    # toy they apply to (observed p < 1e-100), and only it: every other convention holds.
    report = check_estimator(estimator, raise_on_failure=False)
    failed = [r for r in report.results if r.status == "failed"]
    assert [r.check for r in failed] == ["check_unbiased"] * n_problems, report
    assert all(r.status in ("passed", "skipped") for r in report.results if r.check != "check_unbiased")
    message = failed[0].message
    assert "\n" not in message and re.fullmatch(
        r"check_unbiased on \w+: expected bias p-value > 0.001 \(alpha, Bonferroni over \d+ dims\); "
        r"measured p=\S+, bias \S+ vs resolution \S+",
        message,
    ), message


@pytest.mark.statistical
def test_expected_failed_checks_turn_a_failure_into_xfail():
    # α = 1e-3 (the bias test); one problem keeps it quick.
    bernoulli = [make("problem", "bernoulli")]
    known = {"check_unbiased": "its baseline includes the sample's own cost"}
    report = check_estimator(HalfBaseline(), problems=bernoulli, expected_failed_checks=known)
    assert report.status("check_unbiased") == ["xfailed"] and not report.failures
    with pytest.raises(CheckFailed, match=r"check_unbiased on bernoulli: expected bias p-value > 0\.001"):
        check_estimator(HalfBaseline(), problems=bernoulli)
    # strict: an expected failure that passes is a failure
    wrong = {"check_unbiased-bernoulli": "wrongly expected"}
    rloo = make("estimator", "rloo")
    report = check_estimator(rloo, problems=bernoulli, expected_failed_checks=wrong, raise_on_failure=False)
    assert report.status("check_unbiased", "bernoulli") == ["xpassed"] and len(report.failures) == 1
    with pytest.raises(ValueError, match="unknown check 'check_unbiasd'"):
        check_estimator(rloo, problems=bernoulli, expected_failed_checks={"check_unbiasd": "a typo"})


KIT_SUITE = """
from bench import Estimator, detached, score_function_surrogate
from bench.registry import build, default_config
from bench.testing import parametrize_with_checks


class Reinforce(Estimator):
    def __init__(self, temperature=1.0):
        super().__init__(temperature=temperature)

    def weight(self, cost):
        return cost

    def surrogate(self, problem, params, noise):
        x = problem.sample(detached(params), noise)
        cost = problem.cost(params, x)
        return score_function_surrogate(cost, problem.log_prob(params, x), self.weight(cost))


class Half(Reinforce):
    def weight(self, cost):
        return cost / 2


PROBLEMS = [build("problem", "bernoulli", default_config("problem", "bernoulli"))]


def known(estimator):
    return {"check_unbiased": "halves the gradient"} if isinstance(estimator, Half) else {}


@parametrize_with_checks([Reinforce(), Reinforce(temperature=2.0), Half()], expected_failed_checks=known,
                         problems=PROBLEMS)
def test_expected(estimator, check):
    check(estimator)


@parametrize_with_checks([Half()], problems=PROBLEMS)
def test_unexpected(estimator, check):
    check(estimator)


@parametrize_with_checks([Reinforce()], expected_failed_checks={"check_unbiased": "wrong"}, problems=PROBLEMS)
def test_strict(estimator, check):
    check(estimator)
"""


def run_pytest(directory, *args: str) -> str:
    """pytest on ``directory``/test_kit.py in a subprocess that imports this checkout's bench."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_kit.py", *args],
        cwd=directory, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return run.stdout + run.stderr


@pytest.mark.statistical
def test_parametrize_with_checks_ids_and_outcomes_in_a_user_suite(tmp_path):
    # A user's suite in a subprocess: ids name estimator, check and problem; an expected failure is
    # an xfail, an unexpected one fails, and an expected one that passes fails (strict). α = 1e-3.
    (tmp_path / "test_kit.py").write_text(textwrap.dedent(KIT_SUITE))
    collected = run_pytest(tmp_path, "--collect-only")
    ids = re.findall(r"^test_kit\.py::(\w+\[.*\])$", collected, flags=re.MULTILINE)
    assert len(ids) == 5 * 8, collected  # 8 checks on the one problem, per estimator
    for expected in (
        "test_expected[Reinforce-check_finite_and_shaped-bernoulli]",
        "test_expected[Reinforce(temperature=2.0)-check_finite_and_shaped-bernoulli]",
        "test_expected[Half-check_unbiased-bernoulli]",
        "test_strict[Reinforce-check_why_not_agrees-bernoulli]",
    ):
        assert expected in ids, collected
    outcome = run_pytest(tmp_path, "-rfx")
    summary = outcome.strip().splitlines()[-1]  # "2 failed, 37 passed, 1 xfailed in 9.87s"
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|xfailed|xpassed)", summary)}
    assert counts == {"passed": 37, "failed": 2, "xfailed": 1}, outcome
    assert "FAILED test_kit.py::test_unexpected[Half-check_unbiased-bernoulli]" in outcome, outcome
    assert "FAILED test_kit.py::test_strict[Reinforce-check_unbiased-bernoulli]" in outcome, outcome


# --- variance against enumeration ---------------------------------------------------------------
def noise_for_outcomes(problem, outcomes: torch.Tensor) -> torch.Tensor:
    """Noise that makes ``problem.sample`` return each given outcome (float64)."""
    if isinstance(problem, Bernoulli):
        p = torch.sigmoid(problem.theta)
        return torch.where(outcomes > 0.5, 1 - p / 2, (1 - p) / 2)
    # Categorical: the chosen category's Gumbel is ≈ 27.6, the others ≈ 0.37.
    return torch.where(outcomes > 0.5, torch.full_like(outcomes, 1 - 1e-12), torch.full_like(outcomes, 0.5))


def exact_moments(problem, estimator, n_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and fourth central moment per dimension of one estimate, by enumerating
    every n_samples-tuple of outcomes (valid for estimators that see only the outcomes)."""
    outcomes = problem.enumerate_outcomes()  # (M, event)
    params = problem.params()
    log_probs = problem.log_prob(params, outcomes)  # (M,)
    tuples = torch.tensor(list(itertools.product(range(len(outcomes)), repeat=n_samples)))  # (M^S, S)
    weights = log_probs[tuples].sum(1).exp()  # (M^S,)
    noise = noise_for_outcomes(problem, outcomes[tuples])  # (M^S, S, event)
    assert torch.equal(problem.sample(params, noise), outcomes[tuples])
    grads = estimator.estimate(problem, params, noise)["theta"]  # (M^S, D)
    mean = (weights[:, None] * grads).sum(0)
    centered = grads - mean
    var = (weights[:, None] * centered**2).sum(0)
    mu4 = (weights[:, None] * centered**4).sum(0)
    return mean, var, mu4


@pytest.mark.statistical
@pytest.mark.parametrize("problem_name", ["bernoulli", "categorical"])
@pytest.mark.parametrize(
    "estimator_name,n_samples", [("reinforce", 1), ("reinforce", 3), ("rloo", 2), ("rloo", 3)]
)
def test_empirical_variance_matches_enumeration(problem_name, estimator_name, n_samples):
    # α = 1e-3 family-wise (Bonferroni over dimensions) for the z-test of s² against σ², whose
    # standard error sqrt((μ4 − σ⁴)/n) also comes from enumeration.
    problem = make("problem", problem_name)
    estimator = make("estimator", estimator_name)
    mean, var, mu4 = exact_moments(problem, estimator, n_samples)
    torch.testing.assert_close(mean, problem.exact()["theta"], rtol=1e-10, atol=1e-12)  # unbiased, exactly
    n = 200_000
    result = run_cell(problem, estimator, n_samples=n_samples, n_estimates=n, seed=5, dtype="float64")
    empirical = torch.tensor([d["var"] for d in result.dims], dtype=torch.float64)
    z = (empirical - var) / torch.sqrt((mu4 - var**2) / n)
    critical = float(torch.special.ndtri(torch.tensor(1 - ALPHA / (2 * len(var)), dtype=torch.float64)))
    assert z.abs().max() < critical, (empirical, var, z)
    assert result.row["variance"] == pytest.approx(float(empirical.sum()))


@pytest.mark.statistical
def test_variance_check_rejects_a_wrong_variance():
    # Test the test: reinforce's empirical variance against rloo's exact variance must fail the
    # same α = 1e-3 check (their variances differ on bernoulli at n_samples=3).
    problem = make("problem", "bernoulli")
    _mean, var, mu4 = exact_moments(problem, make("estimator", "rloo"), 3)
    n = 200_000
    result = run_cell(
        problem, make("estimator", "reinforce"), n_samples=3, n_estimates=n, seed=5, dtype="float64"
    )
    empirical = torch.tensor([d["var"] for d in result.dims], dtype=torch.float64)
    z = (empirical - var) / torch.sqrt((mu4 - var**2) / n)
    critical = float(torch.special.ndtri(torch.tensor(1 - ALPHA / (2 * len(var)), dtype=torch.float64)))
    assert z.abs().max() > critical


def test_every_problem_builds_from_its_yaml():
    for name in group_options("problem"):
        problem = problems.REGISTRY[name](**default_config("problem", name))
        exact = problem.exact()
        assert all(torch.isfinite(v).all() and v.dtype == torch.float64 for v in exact.values())
