"""Latent variables as estimators see them: the hard sample, its continuous pre-image and the
conditional pre-image given the sample, all driven by the problem's own noise.

A problem declares its latent family with a capability flag and exposes the distribution's
parameters as a differentiable function of ``params``:

  binary_latent:      independent bits b ~ Bernoulli(σ(φ)), φ = ``problem.logits(params)`` of shape
                      (*latent); noise u ~ U(0, 1) of the same shape.
                      z = φ + log u − log(1 − u) (logistic), b = H(z) = 1[z > 0] = 1[u > 1 − σ(φ)].
  categorical_latent: independent categorical variables, one-hot x over the last axis,
                      φ = ``problem.logits(params)`` of shape (*variables, K); noise u ~ U(0, 1) of the
                      same shape. z = φ + G(u), G(u) = −log(−log u) (Gumbel), x = onehot(argmax z).
  gaussian_latent:    x = μ + σ ε, (μ, σ) = ``problem.loc_scale(params)`` each (*latent); ε ~ N(0, I).

Because every function here is a deterministic map of (φ, noise), an estimator that uses the
pre-image z sees exactly the sample every other estimator sees (common random numbers).

Conditional pre-images (Tucker et al. 2017, "REBAR", §3 and appendix; Maddison et al. 2014):
z̃ ~ p(z | H(z) = x) from fresh uniforms v, written so that φ stays differentiable inside it
(the classic bug detaches φ there, which biases REBAR and RELAX).
"""

from __future__ import annotations

import torch
from torch import Tensor

# --- binary -----------------------------------------------------------------------------------------


def logistic(u: Tensor) -> Tensor:
    """Logistic noise log u − log(1 − u) from uniforms in (0, 1)."""
    return torch.log(u) - torch.log1p(-u)


def binary_preimage(logits: Tensor, u: Tensor) -> Tensor:
    """z = φ + logistic(u): (*batch, *latent)."""
    return logits + logistic(u)


def binary_hard(z: Tensor) -> Tensor:
    """b = H(z) = 1[z > 0] as floats."""
    return (z > 0).to(z.dtype)


def binary_conditional(logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """z̃ ~ p(z | b) from uniforms v, differentiable in φ.

    Given b, u is uniform on (1 − p, 1) when b = 1 and on (0, 1 − p) when b = 0 (p = σ(φ)):
      b = 1: u' = 1 − p(1 − v),   z̃ = φ + log u' − log(p (1 − v))
      b = 0: u' = v (1 − p),      z̃ = φ + log(v (1 − p)) − log(1 − v (1 − p))
    written with log σ(±φ) and log1p for stability.
    """
    log_p = torch.nn.functional.logsigmoid(logits)
    log_q = torch.nn.functional.logsigmoid(-logits)  # log(1 − p)
    p, q = torch.exp(log_p), torch.exp(log_q)
    one = logits + torch.log1p(-p * (1.0 - v)) - log_p - torch.log1p(-v)
    zero = logits + torch.log(v) + log_q - torch.log1p(-v * q)
    return torch.where(b > 0.5, one, zero)


def binary_relaxed(z: Tensor, temperature: Tensor | float) -> Tensor:
    """The binary Concrete relaxation σ(z/τ) (Maddison et al. 2017)."""
    return torch.sigmoid(z / temperature)


# --- categorical ------------------------------------------------------------------------------------


def gumbel(u: Tensor) -> Tensor:
    """Gumbel noise −log(−log u) from uniforms in (0, 1)."""
    return -torch.log(-torch.log(u))


def categorical_preimage(logits: Tensor, u: Tensor) -> Tensor:
    """z = φ + Gumbel(u): (*batch, *variables, K)."""
    return logits + gumbel(u)


def categorical_hard(z: Tensor) -> Tensor:
    """x = onehot(argmax_k z_k) over the last axis, as floats."""
    winner = z.argmax(-1, keepdim=True)
    categories = torch.arange(z.shape[-1], device=z.device)
    return (categories == winner).to(z.dtype)


def categorical_conditional(logits: Tensor, x: Tensor, v: Tensor) -> Tensor:
    """z̃ ~ p(z | argmax z = the one-hot x) from uniforms v, differentiable in φ.

    The maximum is Gumbel(logsumexp φ) and independent of which category wins; every other z_k
    is Gumbel(φ_k) truncated below that maximum (inverse-CDF of the truncated Gumbel):
      z̃_top = G(v_top) + logsumexp(φ)
      z̃_k   = −log( exp(−φ_k)(−log v_k) + exp(−z̃_top) ),  k ≠ top.
    """
    maximum = gumbel(v) + torch.logsumexp(logits, -1, keepdim=True)  # (…, K): candidates for z̃_top
    top = (maximum * x).sum(-1, keepdim=True)  # (…, 1): the one at the sampled category
    others = -torch.logaddexp(torch.log(-torch.log(v)) - logits, -top)
    return torch.where(x > 0.5, top.expand_as(others), others)


def categorical_relaxed(z: Tensor, temperature: Tensor | float) -> Tensor:
    """The Gumbel-softmax relaxation softmax(z/τ) over the last axis (Jang et al. 2017)."""
    return torch.softmax(z / temperature, -1)
