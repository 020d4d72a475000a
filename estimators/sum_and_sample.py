"""Sum-and-sample: an exact sum over the most probable categories plus one sample from the rest."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bench.estimators.base import Estimator
from bench.estimators.unordered_set import categorical_parts, single_categorical_reason
from bench.problems.base import Params, Problem


class SumAndSample(Estimator):
    """Sum-and-sample: exact sum over the top categories plus one sample from the rest (Liu et al. 2019).

    Liu, Regier, Tripuraneni, Jordan & McAuliffe 2019, "Rao-Blackwellized stochastic gradients for
    discrete distributions", ICML, §2.

    For one categorical variable, C = the k = n_samples − 1 most probable categories (by θ, a
    deterministic choice), and x one draw from the rest, x ∼ p(· | x ∉ C) = p(x)/(1 − p(C)):
        ĝ = Σ_{c∈C} ∇θ [p(c) f(θ, c)] + (1 − p(C)) [f(θ, x) ∇θ log p(x) + ∇θ f(θ, x)].

    Unbiased: ∇E[f] = Σ_{c∈C} ∇[p(c) f(c)] + Σ_{x∉C} p(x) [f(x) ∇log p(x) + ∇f(θ, x)], and the
    second sum is (1 − p(C)) times an expectation over p(· | x ∉ C). It is the Rao-Blackwellization
    of a single REINFORCE term on the event {x ∈ C} (hence its variance is at most (1 − p(C)) times a
    single sample's; against REINFORCE averaged over n_samples draws it is usually, not always, lower).
    The weight 1 − p(C) is a constant (its θ-dependence is in the exact sum).

    Noise: the problem's own (S, K) uniforms; x is the Gumbel-max over the categories outside C on
    the first row (a Gumbel-max restricted to a subset samples the renormalized categorical); rows
    2..S are drawn (common random numbers) and left unused. With n_samples = 1 it is REINFORCE;
    with n_samples = K the sum is exact and x is the one category left. cost_evals = n_samples
    (k summed categories + 1 sample). Applies to a single categorical variable (``categorical``).
    """

    name = "sum_and_sample"
    unbiased = True
    requires = ("categorical_latent",)

    def why_not(self, problem: Problem, n_samples: int) -> str | None:
        return single_categorical_reason(self.name, problem, n_samples) or super().why_not(problem, n_samples)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        n_summed = noise.shape[0] - 1
        log_p, perturbed, basis = categorical_parts(problem, params, noise)
        constant_log_p = log_p.detach()
        summed = torch.topk(constant_log_p, n_summed).indices  # (k,): C, the most probable categories
        in_sum = torch.zeros_like(perturbed, dtype=torch.bool).scatter(0, summed, True)  # (K,)
        sampled = torch.where(in_sum, -math.inf, perturbed).argmax()  # (): Gumbel-max outside C
        outcomes = torch.cat([summed, sampled[None]])  # (k + 1,)
        cost = problem.cost(params, basis[outcomes])  # (k + 1,)
        rest_weight = torch.exp(
            torch.logsumexp(torch.where(in_sum, -math.inf, constant_log_p), 0)
        )  # 1 − p(C)
        log_p_outcomes = log_p[outcomes]  # (k + 1,)
        exact_part = (torch.exp(log_p_outcomes[:n_summed]) * cost[:n_summed]).sum()
        sampled_part = cost[n_summed] + cost[n_summed].detach() * log_p_outcomes[n_summed]
        return exact_part + rest_weight * sampled_part
