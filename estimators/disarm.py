"""DisARM: the antithetic estimator for binary latents that integrates out ARM's augmentation."""

from __future__ import annotations

import torch
from torch import Tensor

from bench.estimators.arm import AntitheticBinary, lift


class DisARM(AntitheticBinary):
    """DisARM: ARM with the augmenting uniform integrated out, for binary latents (Dong et al. 2020).

    Reference: Dong, Mnih & Tucker 2020, "DisARM: An antithetic gradient estimator for binary
    latent variables", NeurIPS.

    The same antithetic pair as ARM, b₁ = 1[u > 1 − σ(φ)], b₂ = 1[u < σ(φ)]; per logit coordinate

      ĝ_φᵢ = (1/S) Σ_s ½ (f(b₁ₛ) − f(b₂ₛ)) (−1)^{b₂ₛᵢ} 1[b₁ₛᵢ ≠ b₂ₛᵢ] σ(|φᵢ|),

    i.e. ARM with the uniform integrated out given the pair (Rao-Blackwellization), so its
    variance is never larger than ARM's. Passed to θ by the chain rule when φ = φ(θ), plus the
    direct term (1/2S) Σ_s [∇θ f(θ, b₁ₛ) + ∇θ f(θ, b₂ₛ)] when f depends on θ itself.
    Unbiased; f may be a black box. Requires ``binary_latent``. cost_evals = 2·n_samples.
    Written with 0/1 floats (1 − 2b₂ for the sign), so boolean samples work too.
    """

    name = "disarm"

    def logit_gradient(
        self, u: Tensor, first: Tensor, second: Tensor, logits: Tensor, delta: Tensor
    ) -> Tensor:
        delta = lift(delta, u)  # (*batch, 1, ...) against u (*batch, *latent)
        sign = 1.0 - 2.0 * second  # (−1)^{b₂}
        differ = (first != second).to(u.dtype)  # 1[b₁ ≠ b₂]
        return 0.5 * delta * sign * differ * torch.sigmoid(logits.abs())
