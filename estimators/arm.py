"""ARM: the augment-REINFORCE-merge estimator for factorized Bernoulli latents, and the antithetic
pair it shares with DisARM (``estimators.disarm``)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vjp, vmap

from bench.estimators.base import Estimator, detached
from bench.problems.base import Params, Problem


def antithetic_pair(problem: Problem, params: Params, u: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
    """The antithetic pair from the problem's own uniforms u (n_samples, *latent):

      b₁ = 1[u > 1 − σ(φ)]  (exactly ``problem.sample``: the sample every estimator sees),
      b₂ = 1[u < σ(φ)]      (the same draw with u → 1 − u).

    Both are marginally Bernoulli(σ(φ)). b₂ takes b₁'s dtype (float or bool), so ``cost`` gets
    what the problem itself produces.
    """
    first = problem.sample(detached(params), u)  # (S, *latent)
    second = (u < torch.sigmoid(logits.detach())).to(first.dtype)  # (S, *latent)
    return first, second


def lift(delta: Tensor, u: Tensor) -> Tensor:
    """delta (*batch,) with trailing ones to broadcast against u (*batch, *latent)."""
    return delta.reshape(delta.shape + (1,) * (u.ndim - delta.ndim))


def as_bits(b: Tensor, dtype: torch.dtype) -> Tensor:
    """Bits as 0/1 floats of ``dtype``, whether the problem's samples are floats or booleans."""
    return b.to(dtype)


class AntitheticBinary(Estimator):
    """Shared machinery of ARM and DisARM (unregistered: no ``name``).

    Both estimate the gradient w.r.t. the logits φ = ``problem.logits(params)`` from the pair's
    two costs, g_φ (*latent), and pass it to θ by the chain rule: the surrogate holds
    (stopgrad(g_φ) · φ(θ)).sum(). When the cost depends on θ directly (the ELBO's log q), the
    direct term ∇θ f(θ, b) is taken at both members of each pair, ½(∇θ f(θ, b₁) + ∇θ f(θ, b₂)),
    each a valid sample from q, so the average stays unbiased and costs no extra evaluation.

    On a problem whose cost is free of θ (``cost_depends_on_params = False``) the whole batch is
    one pass over (estimates, samples, *latent) arrays and one batched vector-Jacobian product
    through φ(θ), with no per-estimate ``vmap(grad)``; the same estimates to rounding.
    """

    unbiased = True
    requires = ("binary_latent",)
    # the surrogate's direct term averages f over both members of every pair: a model's gradient
    # from it is the plain one at both (``model_samples``), each a sample from q_θ
    plain_model_gradient = True

    def cost_evals(self, n_samples: int, problem: Problem | None = None) -> int:
        return 2 * n_samples  # f(b₁) and f(b₂) per pair

    def why_not(self, problem: Problem, n_samples: int) -> str | None:
        reason = super().why_not(problem, n_samples)
        if reason is not None and not problem.binary_latent:
            return (
                f"{self.name} needs binary latents (factorized Bernoulli with logits, the flag "
                f"binary_latent), which {problem.name} lacks"
            )
        return reason

    def model_samples(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        """Both members of every pair, (2·n_samples, *latent): b₁ first, then b₂."""
        return torch.cat(antithetic_pair(problem, params, noise, problem.logits(detached(params))))

    def logit_gradient(
        self, u: Tensor, first: Tensor, second: Tensor, logits: Tensor, delta: Tensor
    ) -> Tensor:
        """The per-pair gradient w.r.t. φ: u, first, second (*batch, *latent) floats, logits
        (*latent), delta = f(b₁) − f(b₂) (*batch,) → (*batch, *latent)."""
        raise NotImplementedError

    def estimate(self, problem: Problem, params: Params, noise: Tensor) -> Params:
        if problem.cost_depends_on_params:
            return super().estimate(problem, params, noise)
        # noise: u (E, S, *latent)
        logits = problem.logits(detached(params))  # (*latent)
        first, second = antithetic_pair(problem, params, noise, logits)  # (E, S, *latent) each
        n_samples = noise.shape[1]
        costs = problem.cost(params, torch.cat([first, second], 1))  # (E, 2S): one batched call
        delta = costs[:, :n_samples] - costs[:, n_samples:]  # (E, S)
        bits = [as_bits(b, noise.dtype) for b in (first, second)]
        logit_grad = self.logit_gradient(noise, bits[0], bits[1], logits, delta).mean(1)  # (E, *latent)
        _, pullback = vjp(problem.logits, params)
        (grads,) = vmap(pullback)(logit_grad)  # J_φ(θ)ᵀ g_φ per estimate: {name: (E, *shape)}
        return grads

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        # noise: u (S, *latent), the problem's own uniforms
        logits = problem.logits(params)  # (*latent), differentiable in θ
        first, second = antithetic_pair(problem, params, noise, logits)
        n_samples = noise.shape[0]
        costs = problem.cost(params, torch.cat([first, second]))  # (2S,): one batched call
        delta = (costs[:n_samples] - costs[n_samples:]).detach()  # (S,)
        bits = [as_bits(b, noise.dtype) for b in (first, second)]
        per_pair = self.logit_gradient(noise, bits[0], bits[1], logits.detach(), delta)  # (S, *latent)
        logit_grad = per_pair.mean(0)  # (*latent)
        # gradient: chain rule of g_φ through φ(θ), plus the direct term averaged over all 2S samples
        return (logit_grad.detach() * logits).sum() + costs.mean()


class ARM(AntitheticBinary):
    """ARM: augment-REINFORCE-merge, an antithetic pair per draw for binary latents (Yin & Zhou 2019).

    Reference: Yin & Zhou 2019, "ARM: Augment-REINFORCE-merge gradient for stochastic binary
    networks", ICLR.

    For factorized Bernoulli latents b ~ Bernoulli(σ(φ)) with logits φ, one antithetic pair per
    draw from the problem's own uniforms u: b₁ = 1[u > 1 − σ(φ)], b₂ = 1[u < σ(φ)], and per
    logit coordinate

      ĝ_φ = (1/S) Σ_s (f(b₁ₛ) − f(b₂ₛ)) (uₛ − ½),

    passed to θ by the chain rule when φ = φ(θ) (an encoder), plus the direct term
    (1/2S) Σ_s [∇θ f(θ, b₁ₛ) + ∇θ f(θ, b₂ₛ)] when f depends on θ itself (the ELBO's log q).
    Unbiased (the REINFORCE identity on the augmented uniform, then merged with its antithetic
    copy); f may be a black box. Requires ``binary_latent``. cost_evals = 2·n_samples.
    """

    name = "arm"

    def logit_gradient(
        self, u: Tensor, first: Tensor, second: Tensor, logits: Tensor, delta: Tensor
    ) -> Tensor:
        return lift(delta, u) * (u - 0.5)
