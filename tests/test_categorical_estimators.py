"""Shared helpers for the part-2 estimators' tests (unordered_set, sum_and_sample, indecater,
reinmax, gapped_st, rao_blackwell_st) and the tests that concern all six: declarations,
applicability (which problems, and the reasons for the others), config errors, cost_evals.

The per-estimator tests live in tests/test_<estimator>.py and import the helpers below: noise that
produces a chosen outcome (so an estimator that sees only the hard sample can be averaged exactly
over all outcomes), the ordered draws without replacement with their probabilities, and the
moments of an estimate under an enumerated law.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bench import estimators
from bench.errors import ConfigError
from bench.sweep import group_options
from tests.conftest import make

ALPHA = 1e-3
PART_TWO = ("unordered_set", "sum_and_sample", "indecater", "reinmax", "gapped_st", "rao_blackwell_st")
STRAIGHT_THROUGH = ("reinmax", "gapped_st", "rao_blackwell_st")


# --- helpers -------------------------------------------------------------------------------------
def fixed_noise(problem, n_estimates: int, n_samples: int, seed: int = 0) -> torch.Tensor:
    return problem.noise(torch.Generator().manual_seed(seed), (n_estimates, n_samples), torch.float64)


def gumbel(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u))


def uniforms_for_perturbed(logits: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """The uniforms u with logits + G(u) = perturbed (G the Gumbel inverse CDF)."""
    return torch.exp(-torch.exp(-(perturbed - logits)))


def noise_with_order(logits: torch.Tensor, order, n_samples: int) -> torch.Tensor:
    """(n_samples, K) uniforms for one categorical whose FIRST row's perturbed logits rank the
    categories in ``order`` first (in that order) and every other category below them; the other
    rows are 0.5 (the estimators under test use only the first row)."""
    perturbed = torch.full_like(logits, -5.0)
    for rank, category in enumerate(order):
        perturbed[category] = 10.0 - 2.0 * rank
    first = uniforms_for_perturbed(logits, perturbed)  # (K,)
    return torch.cat([first[None], torch.full((n_samples - 1, logits.numel()), 0.5, dtype=logits.dtype)])


def onehot_noise(outcomes: torch.Tensor) -> torch.Tensor:
    """Uniforms whose Gumbel-max is the given one-hots (any shape (..., K)), for logits spread < 25:
    the chosen class's Gumbel is ≈ 27.6, the others' ≈ 0.37."""
    return torch.where(outcomes > 0.5, torch.full_like(outcomes, 1 - 1e-12), torch.full_like(outcomes, 0.5))


def bit_noise(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Uniforms u with 1[u > 1 − σ(φ)] = bits."""
    p = torch.sigmoid(logits)
    return torch.where(bits > 0.5, 1 - p / 2, (1 - p) / 2)


def ordered_draws(probs: torch.Tensor, k: int) -> list[tuple[tuple[int, ...], float]]:
    """Every ordered draw of k distinct categories without replacement with its probability
    Π_i p(s_i) / (1 − Σ_{j<i} p(s_j)); the remaining mass is summed directly (no 1 − Σ)."""
    p = probs.tolist()
    draws = []
    for order in itertools.permutations(range(len(p)), k):
        probability = 1.0
        for i, category in enumerate(order):
            remaining = sum(p[c] for c in range(len(p)) if c not in order[:i])
            probability *= p[category] / remaining
        draws.append((order, probability))
    return draws


def drawn_first(masses: list[float], rest: float) -> float:
    """Probability that sampling without replacement (weights ∝ masses, plus a rest of mass
    ``rest``) draws all of ``masses``' items before any of the rest: a sum over orderings."""
    total = 0.0
    for order in itertools.permutations(range(len(masses))):
        probability = 1.0
        for i, item in enumerate(order):
            probability *= masses[item] / (sum(masses[j] for j in order[i:]) + rest)
        total += probability
    return total


def weighted_moments(grads: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mean, variance and fourth central moment per dimension of an estimate taking the value
    grads[i] (M, P) with probability weights[i] (M,)."""
    assert abs(float(weights.sum()) - 1.0) < 1e-12
    mean = (weights[:, None] * grads).sum(0)
    centered = grads - mean
    return mean, (weights[:, None] * centered**2).sum(0), (weights[:, None] * centered**4).sum(0)


def critical_value(alpha: float, n_tests: int, sides: int = 2) -> float:
    """The Bonferroni critical |z| for ``n_tests`` z-tests at family-wise level ``alpha``."""
    level = torch.tensor(1 - alpha / (sides * n_tests), dtype=torch.float64)
    return float(torch.special.ndtri(level))


def variance_z(empirical: torch.Tensor, var: torch.Tensor, mu4: torch.Tensor, n: int) -> torch.Tensor:
    """z of the sample variance against the exact σ², standard error sqrt((μ4 − σ⁴)/n)."""
    return (empirical - var) / torch.sqrt((mu4 - var**2) / n)


def softmax_jacobian(probs: torch.Tensor) -> torch.Tensor:
    """diag(π) − ππᵀ: (..., K, K)."""
    return torch.diag_embed(probs) - probs[..., :, None] * probs[..., None, :]


def latent_problems() -> dict[str, list[str]]:
    """Registered problems by latent family (from the flags)."""
    families: dict[str, list[str]] = {"binary": [], "categorical": [], "other": []}
    for name in group_options("problem"):
        problem = make("problem", name)
        key = "binary" if problem.binary_latent else "categorical" if problem.categorical_latent else "other"
        families[key].append(name)
    return families


# --- tests on all six ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", PART_TWO)
def test_declarations(name):
    estimator = make("estimator", name)
    assert estimator.unbiased == (name in ("unordered_set", "sum_and_sample", "indecater"))
    assert "ĝ" in type(estimator).__doc__
    assert estimator.cost_evals(4) == 4  # indecater without a problem: per variable and class


@pytest.mark.parametrize("name", PART_TWO)
def test_applicability_and_reasons(name):
    for problem_name in group_options("problem"):
        problem = make("problem", problem_name)
        reason = make("estimator", name).why_not(problem, 3)
        discrete = problem.binary_latent or problem.categorical_latent
        if name in ("unordered_set", "sum_and_sample"):
            # `categorical` is the registered problem with a single categorical variable
            assert (reason is None) == (problem_name == "categorical"), (problem_name, reason)
            if problem.categorical_latent and problem_name != "categorical":
                assert "single categorical variable" in reason
        elif name == "indecater":
            assert (reason is None) == discrete, (problem_name, reason)
        else:
            assert (reason is None) == (discrete and problem.has_relaxed_cost), (problem_name, reason)
        if reason is not None:
            assert name in reason and problem_name in reason


def test_straight_through_family_covers_every_discrete_latent():
    families = latent_problems()
    covered = {"bernoulli", "categorical", "multicategorical", "vae_bernoulli", "vae_categorical"}
    discrete = set(families["binary"] + families["categorical"])
    assert covered <= discrete
    for name in (*STRAIGHT_THROUGH, "indecater"):
        for problem_name in covered:
            assert make("estimator", name).why_not(make("problem", problem_name), 4) is None, (
                name,
                problem_name,
            )


def test_without_replacement_estimators_need_enough_categories():
    problem = make("problem", "categorical")  # K = 4
    for name in ("unordered_set", "sum_and_sample"):
        assert make("estimator", name).why_not(problem, 4) is None
        assert "n_samples <= K = 4" in make("estimator", name).why_not(problem, 5)
    assert "n_samples >= 2" in make("estimator", "unordered_set").why_not(problem, 1)
    assert make("estimator", "sum_and_sample").why_not(problem, 1) is None


@pytest.mark.parametrize(
    "name,key,bad",
    [
        ("reinmax", "temperature", 0.5),
        ("reinmax", "temperature", 0.0),
        ("reinmax", "temperature", "hot"),
        ("gapped_st", "temperature", -1.0),
        ("gapped_st", "gap", 0.0),
        ("gapped_st", "gap", float("inf")),
        ("rao_blackwell_st", "temperature", 0),
        ("rao_blackwell_st", "n_conditional", 0),
        ("rao_blackwell_st", "n_conditional", 2.5),
        ("rao_blackwell_st", "n_conditional", True),
    ],
)
def test_bad_config_names_the_key(name, key, bad):
    with pytest.raises(ConfigError, match=rf"^estimator\.{key}:"):
        make("estimator", name, **{key: bad})


def test_reinmax_refuses_temperatures_below_one_with_a_reason():
    with pytest.raises(ConfigError, match="ReinMax needs temperature >= 1"):
        make("estimator", "reinmax", temperature=0.9)
    assert make("estimator", "reinmax", temperature=1.0).temperature == 1.0


def test_indecater_cost_evals_count_every_variable_and_class():
    indecater = make("estimator", "indecater")
    assert indecater.cost_evals(4, make("problem", "multicategorical")) == 4 * 3 * 3  # D = 3, K = 3
    assert indecater.cost_evals(2, make("problem", "bernoulli")) == 2 * 3 * 2  # D = 3 bits
    assert indecater.cost_evals(3, make("problem", "categorical")) == 3 * 1 * 4  # D = 1, K = 4


def test_registered():
    for name in PART_TWO:
        assert name in estimators.REGISTRY and name in group_options("estimator")


def test_ordered_draws_are_a_law():
    probs = torch.softmax(torch.tensor([0.3, -1.0, 1.5, 0.0, -0.2], dtype=torch.float64), 0)
    for k in (1, 2, 3, 5):
        total = sum(probability for _, probability in ordered_draws(probs, k))
        assert total == pytest.approx(1.0, abs=1e-14)
    # unordered sets: the sum over orderings equals the drawn_first probability
    by_set: dict[frozenset, float] = {}
    for order, probability in ordered_draws(probs, 3):
        by_set[frozenset(order)] = by_set.get(frozenset(order), 0.0) + probability
    for subset, probability in by_set.items():
        rest = float(sum(probs[c] for c in range(5) if c not in subset))
        assert drawn_first([float(probs[c]) for c in sorted(subset)], rest) == pytest.approx(
            probability, rel=1e-13
        )
    assert math.isclose(sum(by_set.values()), 1.0, abs_tol=1e-14)
