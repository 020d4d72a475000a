"""The unordered set estimator: REINFORCE over a sample drawn without replacement (Kool et al. 2020)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bench.estimators.base import Estimator, detached
from bench.estimators.indecater import estimates_in_chunks, event_shape
from bench.problems.base import Params, Problem

# Quadrature for the set probabilities (``log_set_probabilities``): the trapezoid rule in y = log x on
# [Y_LOW, log(2m + 60)] with step Y_STEP. Against the exact sum over orderings (tests) its error in
# log p(S) is ~1e-14 for sets of 1..6 with logits of scale up to 20, including near-certain sets.
Y_STEP = 0.2
Y_LOW = -40.0  # below: the integrand is < e^-40 times its peak (see the function's docstring)
LOG_SURE = -1e4  # a floor for log(1 − e^−w) so that a zero factor stays finite (no inf − inf)
WORK_PER_NODE = 6  # tensors of k² quadrature values alive at once (for the chunk size)


def single_categorical_reason(name: str, problem: Problem, n_samples: int) -> str | None:
    """Why ``name`` (an estimator over the K categories of ONE categorical variable) does not apply:
    no categorical latent, several variables, or more samples than categories; else None."""
    if not problem.categorical_latent:
        return (
            f"{name} draws categories of a single categorical variable (the flag categorical_latent, "
            f"one variable), which {problem.name} lacks"
        )
    shape = event_shape(problem)
    n_variables = math.prod(shape[:-1])
    if n_variables != 1:
        return (
            f"{name} works on the categories of a single categorical variable; {problem.name} has "
            f"{n_variables} (indecater handles several)"
        )
    if n_samples > shape[-1]:
        return f"{name} uses n_samples distinct categories, so n_samples <= K = {shape[-1]}, got {n_samples}"
    return None


def categorical_parts(problem: Problem, params: Params, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For a single categorical variable: the log-probabilities log p(θ) (K,) (differentiable),
    the first draw's perturbed logits z = φ + Gumbel(u) (K,) (constant), and the event shape's
    one-hot basis (K, *event) to build outcomes with. noise: (S, *event)."""
    event = noise.shape[1:]
    n_classes = event[-1]
    log_p = torch.log_softmax(problem.logits(params).reshape(n_classes), -1)  # (K,)
    perturbed = problem.preimage(detached(params), noise[0]).reshape(n_classes)  # (K,): one row
    basis = torch.eye(n_classes, dtype=noise.dtype, device=noise.device).reshape(n_classes, *event)
    return log_p, perturbed, basis


def log1mexp_of_log(log_w: Tensor) -> Tensor:
    """log(1 − e^(−w)) from log w, accurate for tiny and huge w (Mächler 2012's two branches)."""
    w = torch.exp(log_w)
    small = torch.log(-torch.expm1(-w))  # accurate for w < log 2
    large = torch.log1p(-torch.exp(-w))  # accurate for w ≥ log 2
    return torch.where(log_w < math.log(math.log(2.0)), small, large).clamp(min=LOG_SURE)


def log_set_probabilities(log_p: Tensor, log_rest: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Log-probabilities of a sample S = {s_1..s_k} drawn without replacement, and of the sets that
    leave one or two of its elements out, each under the domain without those elements.

    log_p: (k,) log p(s_i); log_rest: () log p(D \ S) (−inf when S is the whole domain).
    Returns log p(S) (), log p^{D\s}(S \ {s}) (k,), and log p^{D\{s,s'}}(S \ {s,s'}) (k, k) with
    the diagonal set to log p^{D\s}(S \ {s}) (so that the second-order ratio is 1 there).

    All of these are one integral (Kool et al. 2020, appendix; the Gumbel-top-k view): S\A is drawn
    first from D\A iff every Gumbel in S\A beats the maximum of the rest D\S, and the rest is the
    same for every A ⊆ S, so with a_t = p_t / p(D\S)
        p^{D\A}(S\A) = ∫_0^1 Π_{t ∈ S\A} (1 − u^{a_t}) du = ∫ exp(y − e^y) Π_t (1 − exp(−a_t e^y)) dy
    (u = exp(−e^y)). In y the integrand is smooth, each factor is the same double-exponential step
    shifted by −log a_t, and it decays like e^y below and like exp(−e^y) above: the trapezoid rule
    converges geometrically (Y_STEP), computed in log space (logsumexp) so that no probability
    underflows. Cost: k² × ~220 nodes.
    """
    n_items = log_p.shape[-1]
    y_high = math.log(2 * n_items + 60.0)  # above: the tail is < e^-40 of the peak for any a_t (k ≤ 64)
    n_nodes = math.ceil((y_high - Y_LOW) / Y_STEP) + 1
    y = Y_LOW + Y_STEP * torch.arange(n_nodes, dtype=log_p.dtype, device=log_p.device)  # (M,)
    factors = log1mexp_of_log((log_p - log_rest)[:, None] + y[None, :])  # (k, M): log(1 − e^{−a_t e^y})
    base = y - torch.exp(y) + math.log(Y_STEP)  # (M,): the weight e^y e^{−e^y} dy
    full = base + factors.sum(0)  # (M,)
    without_one = full[None, :] - factors  # (k, M)
    without_two = without_one[:, None, :] - factors[None, :, :]  # (k, k, M); diagonal fixed below
    log_set = torch.logsumexp(full, -1)  # (): the quadrature axis is last (contiguous reductions)
    log_without_one = torch.logsumexp(without_one, -1)  # (k,)
    log_without_two = torch.logsumexp(without_two, -1)  # (k, k)
    diagonal = torch.eye(n_items, dtype=torch.bool, device=log_p.device)
    log_without_two = torch.where(diagonal, log_without_one[:, None], log_without_two)
    return log_set, log_without_one, log_without_two


class UnorderedSet(Estimator):
    r"""Unordered set estimator: k categories without replacement, built-in baseline (Kool et al. 2020).

    Kool, van Hoof & Welling 2020, "Estimating gradients for discrete random variables by sampling
    without replacement", ICLR, §4.

    For one categorical variable, S = the k = n_samples categories with the largest perturbed logits
    z = φ + Gumbel (Gumbel-top-k: k distinct categories drawn without replacement):
        ĝ = Σ_{s∈S} ∇θ p(s) R(S, s) [f(s) − b(S, s)] + Σ_{s∈S} p(s) R(S, s) ∇θ f(θ, s),
        R(S, s) = p^{D\s}(S \ {s}) / p(S),
        b(S, s) = Σ_{s'∈S} p(s') R^{D\s}(S, s') f(s'),
        R^{D\s}(S, s') = p^{D\{s,s'}}(S \ {s,s'}) / p^{D\s}(S \ {s}) for s' ≠ s, and 1 for s' = s.
    p(S) is the probability of the unordered set, p^{D\A} the same under the domain without A
    (``log_set_probabilities``: one quadrature, in log space). R and b are constants (no gradient).

    Unbiased: E[Σ_s p(s) R(S, s) g(s, S)] = E_{s∼p} E_{S'∼p^{D\s}}[g(s, S' ∪ {s})] for any g, and
    given s the baseline b is the unordered set estimator of E[f] (the term p(s) f(s) plus the
    estimator of Σ_{s'≠s} p(s') f(s') from the other k − 1 categories), so E[b | s] = E[f] does not
    depend on s and adds no bias. Needs k ≥ 2 (with k = 1 the baseline is p(s) f(s), which biases),
    and k ≤ K. The last term carries a cost's direct dependence on θ (none for ``categorical``).

    Noise: the problem's own (S, K) uniforms per estimate, so every estimator sees the same noise;
    only the first row (the first draw's Gumbels) is used — the top-k of one row of Gumbels IS the
    without-replacement sample; rows 2..S are drawn (common random numbers) and left unused.
    cost_evals = n_samples (f at the k distinct categories). Applies to a single categorical
    variable (``categorical``); skipped elsewhere with the reason.
    """

    name = "unordered_set"
    unbiased = True
    requires = ("categorical_latent",)
    min_samples = 2

    def why_not(self, problem: Problem, n_samples: int) -> str | None:
        return single_categorical_reason(self.name, problem, n_samples) or super().why_not(problem, n_samples)

    def estimate(self, problem: Problem, params: Params, noise: Tensor) -> Params:
        n_samples = noise.shape[1]
        n_nodes = (math.log(2 * n_samples + 60.0) - Y_LOW) / Y_STEP
        element = torch.finfo(noise.dtype).bits // 8
        working_set = element * WORK_PER_NODE * n_samples**2 * int(n_nodes)  # the k² leave-two-out integrals
        return estimates_in_chunks(self, problem, params, noise, working_set)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        n_samples = noise.shape[0]
        log_p, perturbed, basis = categorical_parts(problem, params, noise)
        chosen = torch.topk(perturbed, n_samples).indices  # (k,): S, by Gumbel-top-k
        in_set = torch.zeros_like(perturbed, dtype=torch.bool).scatter(0, chosen, True)  # (K,)
        constant_log_p = log_p.detach()
        log_p_set = constant_log_p[chosen]  # (k,)
        log_rest = torch.logsumexp(torch.where(in_set, -math.inf, constant_log_p), 0)  # log p(D \ S)
        log_set, log_without_one, log_without_two = log_set_probabilities(log_p_set, log_rest)
        cost = problem.cost(params, basis[chosen])  # (k,): f(θ, s), s ∈ S
        constant_cost = cost.detach()
        weight = torch.exp(log_p_set + log_without_one - log_set)  # (k,): p(s) R(S, s)
        # b(S, s) = Σ_s' p(s') R^{D\s}(S, s') f(s'): (k,)
        baseline = (
            torch.exp(log_p_set[None, :] + log_without_two - log_without_one[:, None]) * constant_cost
        ).sum(-1)
        score_weight = weight * (constant_cost - baseline)  # (k,)
        return (score_weight * log_p[chosen]).sum() + (weight * cost).sum()
