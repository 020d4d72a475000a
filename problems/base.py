"""The problem interface: a distribution p(x; θ), a cost f(θ, x), and the exact ∇θ E[f].

Everything is functional: parameters travel as a ``dict[str, Tensor]`` (the same shape as
``torch.func.functional_call`` expects), so an estimator can take per-estimate gradients with
``torch.func.vmap(torch.func.grad(...))``. Randomness enters only through ``noise``, drawn from an
explicit ``torch.Generator``; every sampling function is a deterministic map of (params, noise),
which gives all estimators common random numbers.

Shapes: ``batch`` is any leading batch shape (the runner uses (n_estimates, n_samples); inside a
vmapped estimator it is (n_samples,)). A sample ``x`` may be a tensor or a tuple of tensors.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.component import bound_config, register
from bench.errors import ConfigError
from bench.problems import latent

Params = dict[str, Tensor]
Sample = Any  # a Tensor or a tuple of Tensors (a pytree vmap can carry)


def detached(params: Params) -> Params:
    """The parameters as constants (views sharing their storage, cut from autograd)."""
    return {name: value.detach() for name, value in params.items()}


REGISTRY: dict[str, type[Problem]] = {}


class Problem(ABC):
    """Base class. Subclasses set ``name`` and the capability flags, and register themselves.

    Capability flags (estimators are matched to problems from these):
      discrete: samples are discrete (no pathwise gradient through them).
      has_rsample: ``rsample`` gives x as a differentiable function of (params, noise).
      has_relaxed_cost: ``relaxed_sample``/``relaxed_cost`` exist (a continuous relaxation that
        agrees with ``cost`` at hard samples); Gumbel-softmax estimators need it.
      has_enumerate_support: the outcomes are finite; ``enumerate_outcomes`` lists them, so exact
        expectations (and moments of single-sample estimators) follow by enumeration.
      sequential: ``step_log_probs``/``step_rewards`` expose per-step terms (reward-to-go).
      binary_latent: x is independent bits b ~ Bernoulli(σ(φ)) with φ = ``logits(params)`` (*latent)
        and noise u ~ U(0,1) of that shape, b = 1[φ + logistic(u) > 0] (see ``problems.latent``).
      categorical_latent: x is independent one-hot categoricals, φ = ``logits(params)``
        (*variables, K), noise u ~ U(0,1) of that shape, x = onehot(argmax(φ + Gumbel(u))).
      gaussian_latent: x = μ + σ ε with (μ, σ) = ``loc_scale(params)`` and noise ε ~ N(0, I).
    With a latent flag, ``preimage``/``hard``/``conditional_preimage``/``relax`` give estimators
    the continuous pre-image z of the sample and z̃ ~ p(z | x) from the same noise.
      has_score: ``score`` gives ∇θ log p(x; θ) per sample in closed form, ``weighted_score`` its
        weighted sum over samples (and ``weighted_step_score`` per step when ``sequential``).
      cost_depends_on_params: f(θ, x) depends on θ directly (an ELBO's log q), so ∇θ f ≠ 0. True
        unless a problem declares otherwise: score-function estimators take the closed-form path
        (which drops ∇θ f) only on problems that declare has_score and cost_depends_on_params = False.
    """

    name: ClassVar[str] = ""
    discrete: ClassVar[bool] = False
    has_rsample: ClassVar[bool] = False
    has_relaxed_cost: ClassVar[bool] = False
    has_enumerate_support: ClassVar[bool] = False
    sequential: ClassVar[bool] = False
    binary_latent: ClassVar[bool] = False
    categorical_latent: ClassVar[bool] = False
    gaussian_latent: ClassVar[bool] = False
    has_score: ClassVar[bool] = False
    cost_depends_on_params: ClassVar[bool] = True
    # The exact gradient (see ``exact_gradient``). A problem without one sets this False (a class
    # flag; an instance may also set it, as a VAE beyond enumeration does) and bench measures bias
    # against a reference gradient estimated by ``reference_estimator`` (declared unbiased) with
    # ``reference_n_samples`` samples per estimate and ``reference_n_estimates`` estimates, on a noise
    # stream of its own (``bench.reference``; config ``reference_gradient`` overrides the two).
    has_exact_gradient: ClassVar[bool] = True
    reference_estimator: ClassVar[str] = "rloo"
    reference_n_samples: ClassVar[int] = 16
    reference_n_estimates: ClassVar[int] = 200_000

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            register(REGISTRY, "problem", cls)

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__new__(cls)
        # Every constructor keyword with its default applied, whether or not the subclass hands
        # them to this base class: config() and cell ids never miss a key.
        instance._bound_config = bound_config(cls, args, kwargs)
        return instance

    def __init__(self, device: torch.device | str = "cpu", **config: Any) -> None:
        self.device = torch.device(device)
        self._config = config
        self._exact: Params | None = None

    # --- what every problem provides -------------------------------------------------------
    @abstractmethod
    def params(self) -> Params:
        """The parameter point θ at which gradients are measured, float64, on ``self.device``."""

    @abstractmethod
    def noise(self, generator: torch.Generator, batch: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """Base noise for ``batch`` samples: (*batch, *noise_event), parameter-free."""

    @abstractmethod
    def sample(self, params: Params, noise: Tensor) -> Sample:
        """A hard sample x ~ p(x; θ) as a function of noise. Not differentiable in θ."""

    @abstractmethod
    def log_prob(self, params: Params, x: Sample) -> Tensor:
        """log p(x; θ): (*batch,)."""

    @abstractmethod
    def cost(self, params: Params, x: Sample) -> Tensor:
        """f(θ, x): (*batch,). May depend on θ directly (e.g. −log q in an ELBO)."""

    def exact_gradient(self) -> Params:
        """∇θ E_{p(x;θ)}[f(θ, x)] at ``params()``, float64, computed without sampling. Required
        unless the problem declares ``has_exact_gradient = False``."""
        raise NotImplementedError(
            f"{self.name} has no exact gradient (has_exact_gradient is false): bench measures its bias "
            "against an estimated reference gradient (reference_gradient)"
        )

    @classmethod
    def exact_gradient_for(cls, config: dict[str, Any]) -> bool:
        """Whether an instance built from ``config`` has an exact gradient, decided without building
        it (cell ids depend on it). The class flag, unless a problem decides per config (a VAE
        whose codes are too many to enumerate); a malformed config answers the class flag."""
        return cls.has_exact_gradient

    def exact(self) -> Params:
        """``exact_gradient()``, computed once per instance (it can take seconds)."""
        if not self.has_exact_gradient:
            return Problem.exact_gradient(self)  # raises, naming the problem, even if a subclass defines it
        if self._exact is None:
            self._exact = self.exact_gradient()
        return self._exact

    def prepare(self, dtype: torch.dtype) -> None:  # noqa: B027 (an optional hook: most cache nothing)
        """Build whatever the problem caches for ``dtype``. The runner calls it before fitting and
        estimating, outside any torch.func transform (a cache filled inside one would hold the
        transform's wrapped tensors)."""

    def exact_in(self, dtype: torch.dtype) -> Params | None:
        """The gradient that estimates in ``dtype`` can reach: ∇E[f] computed in ``dtype`` by
        autograd through ``expected_cost(params[, min_prob])``, with outcomes rarer than eps(dtype)
        treated as impossible where the problem supports it (a sampler in ``dtype`` cannot produce
        them: no uniform in float32 exceeds 1 − 2⁻²⁵). None for a problem without ``expected_cost``.
        Its gap to ``exact()`` is bias the dtype causes, which the bias test must not count
        (``bench.stats.rounding_floor``)."""
        expected_cost = getattr(self, "expected_cost", None)
        if expected_cost is None or not self.has_exact_gradient:
            return None
        with torch.inference_mode(False), torch.enable_grad():
            params = {name: value.to(dtype).requires_grad_(True) for name, value in self.params().items()}
            takes_min_prob = "min_prob" in inspect.signature(expected_cost).parameters
            extra = {"min_prob": torch.finfo(dtype).eps} if takes_min_prob else {}
            value = expected_cost(params, **extra)
            if not value.requires_grad:
                return {name: torch.zeros_like(tensor).detach() for name, tensor in params.items()}
            grads = torch.autograd.grad(value, list(params.values()), materialize_grads=True)
        return {name: grad.detach() for name, grad in zip(params, grads, strict=True)}

    def memory_per_sample(self) -> int:
        """Rough count of floats one sample's forward and backward pass keeps alive."""
        return 64

    # --- optional capabilities ------------------------------------------------------------
    def rsample(self, params: Params, noise: Tensor) -> Sample:
        """x = g(θ, noise), differentiable in θ (``has_rsample``)."""
        raise NotImplementedError(f"{self.name} has no reparameterized sampler")

    def relaxed_sample(self, params: Params, noise: Tensor, temperature: float) -> Tensor:
        """A continuous relaxation of ``sample`` driven by the same noise (``has_relaxed_cost``)."""
        raise NotImplementedError(f"{self.name} has no relaxation")

    def relaxed_cost(self, params: Params, y: Tensor) -> Tensor:
        """The cost extended to relaxed samples; equals ``cost`` at hard samples."""
        raise NotImplementedError(f"{self.name} has no relaxed cost")

    def enumerate_outcomes(self) -> Sample:
        """Every outcome x, stacked on a leading axis, float64 (``has_enumerate_support``)."""
        raise NotImplementedError(f"{self.name} cannot enumerate its outcomes")

    def step_log_probs(self, params: Params, x: Sample) -> Tensor:
        """Per-step log π(a_t | s_t), zero after the episode ends: (*batch, T) (``sequential``)."""
        raise NotImplementedError(f"{self.name} is not sequential")

    def step_rewards(self, params: Params, x: Sample) -> Tensor:
        """Per-step discounted terms γ^t r_t that sum to ``cost``: (*batch, T) (``sequential``)."""
        raise NotImplementedError(f"{self.name} is not sequential")

    def cost_and_log_prob(self, params: Params, x: Sample) -> tuple[Tensor, Tensor]:
        """(f(θ, x), log p(x; θ)), each (*batch,). A problem whose two share work that depends on θ
        (a VAE's encoder) overrides this to do it once: computed separately, the shared part is
        differentiated twice (score-function estimators need both)."""
        return self.cost(params, x), self.log_prob(params, x)

    def sampled_cost_and_log_prob(self, params: Params, noise: Tensor) -> tuple[Tensor, Tensor]:
        """``cost_and_log_prob`` at the problem's sample of ``noise`` taken as a constant, as
        score-function surrogates use them: each (*batch,). A problem whose sample shares work with
        them (a VAE's encoder) overrides this to do it once."""
        x = self.sample(detached(params), noise)
        return self.cost_and_log_prob(params, x)

    # --- closed-form score (has_score) -----------------------------------------------------------
    def score(self, params: Params, x: Sample) -> Params:
        """∇θ log p(x; θ) per sample, in closed form (``has_score``): {name: (*batch, *shape)}."""
        raise NotImplementedError(f"{self.name} has no closed-form score")

    def weighted_score(self, params: Params, x: Sample, weights: Tensor) -> Params:
        """Σ_s w_s ∇θ log p(x_s; θ), summed over the LAST batch axis (``has_score``): x with batch
        (*lead, S), weights (*lead, S) → {name: (*lead, *shape)}. This default contracts ``score``;
        a problem may override it to avoid materializing per-sample scores."""
        lead = weights.shape
        contracted = {}
        for name, value in self.score(params, x).items():  # a few named tensors, not samples
            per_sample = value.reshape(*lead, -1)  # (*lead, S, P)
            if lead[-1] == 1:  # one sample: a product, no reduction over a length-1 axis
                summed = weights * per_sample.squeeze(-2)  # (*lead[:-1], P)
            else:
                summed = (weights.unsqueeze(-1) * per_sample).sum(-2)  # (*lead[:-1], P)
            contracted[name] = summed.reshape(*lead[:-1], *value.shape[len(lead) :])
        return contracted

    def weighted_step_score(self, params: Params, x: Sample, step_weights: Tensor) -> Params:
        """Σ_s Σ_t w_st ∇θ log π(a_t | s_t), the per-step scores weighted and summed over the last
        batch axis and the steps (``sequential`` and ``has_score``): step_weights (*lead, S, T) →
        {name: (*lead, *shape)}."""
        raise NotImplementedError(f"{self.name} has no closed-form per-step score")

    # --- latent access (binary_latent, categorical_latent, gaussian_latent) -------------------
    def logits(self, params: Params) -> Tensor:
        """φ, differentiable in ``params``: (*latent) for bits, (*variables, K) for categoricals."""
        raise NotImplementedError(f"{self.name} has no discrete latent with logits")

    def loc_scale(self, params: Params) -> tuple[Tensor, Tensor]:
        """(μ, σ), each (*latent), differentiable in ``params`` (``gaussian_latent``)."""
        raise NotImplementedError(f"{self.name} has no Gaussian latent")

    def preimage(self, params: Params, noise: Tensor) -> Tensor:
        """The continuous z behind the sample: φ + logistic(u) or φ + Gumbel(u), differentiable in θ."""
        if self.binary_latent:
            return latent.binary_preimage(self.logits(params), noise)
        if self.categorical_latent:
            return latent.categorical_preimage(self.logits(params), noise)
        raise NotImplementedError(f"{self.name} has no discrete latent with logits")

    def hard(self, z: Tensor) -> Tensor:
        """H(z): the hard sample of a pre-image; ``hard(preimage(θ, u)) == sample(θ, u)``."""
        if self.binary_latent:
            return latent.binary_hard(z)
        if self.categorical_latent:
            return latent.categorical_hard(z)
        raise NotImplementedError(f"{self.name} has no discrete latent with logits")

    def conditional_preimage(self, params: Params, x: Tensor, noise: Tensor) -> Tensor:
        """z̃ ~ p(z | H(z) = x) from fresh uniforms ``noise``, differentiable in θ."""
        if self.binary_latent:
            return latent.binary_conditional(self.logits(params), x, noise)
        if self.categorical_latent:
            return latent.categorical_conditional(self.logits(params), x, noise)
        raise NotImplementedError(f"{self.name} has no discrete latent with logits")

    def relax(self, z: Tensor, temperature: Tensor | float) -> Tensor:
        """The relaxed sample of a pre-image: σ(z/τ) or softmax(z/τ); ``relaxed_cost`` takes it."""
        if self.binary_latent:
            return latent.binary_relaxed(z, temperature)
        if self.categorical_latent:
            return latent.categorical_relaxed(z, temperature)
        raise NotImplementedError(f"{self.name} has no discrete latent with logits")

    # --- training (bench train; docs/training.md) -------------------------------------------------
    # Whether training descends E[f] ("minimize": a loss, a negative ELBO) or ascends it
    # ("maximize": CartPole's f is the return). The estimators estimate ∇E[f] either way.
    direction: ClassVar[str] = "minimize"

    # ``cost`` reads the model parameters from ``params`` when they are there (named as the model's),
    # so that an estimator declaring ``plain_model_gradient`` gives the model's gradient in the same
    # pass as θ's (``bench.training.loop``); the separate ``model_gradient`` pass otherwise.
    fuses_model: ClassVar[bool] = False

    def training_start(self) -> tuple[Params, Params]:
        """Where ``bench train`` starts, float64 on ``self.device``: (θ, model). θ are the parameters
        the estimator differentiates; model the problem's other trained parameters (a VAE's
        decoder), trained with ``model_gradient``. Default: (``params()``, no model)."""
        return self.params(), {}

    def training_batch(self, model: Params, generator: torch.Generator, dtype: torch.dtype) -> None:  # noqa: B027
        """Make ``cost`` use ``model`` and the next training step's data, drawn with ``generator``
        (a VAE: a fresh minibatch of training images, binarized anew). Default: nothing to do."""

    def evaluation_batch(self, model: Params, dtype: torch.dtype) -> None:  # noqa: B027
        """Make ``cost`` use ``model`` and the fixed data at which variance and bias are measured
        along training (a VAE: its own minibatch). Default: nothing to do."""

    def model_gradient(self, params: Params, model: Params, x: Sample) -> Params:
        """The plain sampled gradient of the model parameters, ∇_model mean_s f(θ, model, x_s), at
        the hard samples ``x`` (batch (n_samples,)) the step's estimate drew: the same for every
        estimator. Default: no model, no gradient."""
        return {}

    def expectation(self, params: Params) -> Tensor | None:
        """E[f] at ``params`` in closed form or by enumeration, differentiable (float64 for a
        float64 θ); None where the problem cannot compute it. Default: ``expected_cost``."""
        expected_cost = getattr(self, "expected_cost", None)
        if expected_cost is None or not self.has_exact_gradient:
            return None
        return expected_cost(params)

    def training_objective(
        self, params: Params, model: Params, generator: torch.Generator, eval_samples: int
    ) -> dict[str, Any]:
        """The training curve's value at (θ, model): {"objective": E[f] or a bound on it,
        "objective_source": "exact" | "bound", "objective_stderr": None when exact, else its
        standard error}; a problem may add columns (a VAE: its IWAE bound). Default: ``expectation``."""
        with torch.no_grad():
            value = self.expectation({name: tensor.to(torch.float64) for name, tensor in params.items()})
        if value is None:
            raise NotImplementedError(f"{self.name} cannot compute its training objective")
        return {"objective": float(value), "objective_source": "exact", "objective_stderr": None}

    # --- helpers ----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The config this instance was built from: every constructor keyword (defaults applied),
        as the subclass normalized it where it passed it to this base class (tables, cell ids)."""
        return {**getattr(self, "_bound_config", {}), **getattr(self, "_config", {})}


def as_tensor_list(
    key: str,
    values: Sequence[float] | float,
    length: int | None = None,
    device: torch.device | str = "cpu",
    like: str | None = None,
) -> Tensor:
    """A config list as a float64 tensor, with a message naming ``key`` when it is malformed;
    ``length``: the length it must have, that of the list ``like`` (a key named in the message)."""
    if isinstance(values, (int, float)):
        values = [float(values)] * (length if length is not None else 1)
    try:
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    except (TypeError, ValueError) as error:
        raise ConfigError(key, f"expected a list of numbers, got {values!r}") from error
    if tensor.ndim != 1 or tensor.numel() == 0:
        raise ConfigError(key, f"expected a non-empty list of numbers, got {values!r}")
    if length is not None and tensor.numel() != length:
        other = f"{like} has {length}" if like else f"{length} are expected"
        message = f"has {tensor.numel()} values but {other}; the lists must have the same length"
        raise ConfigError(key, message)
    if not torch.isfinite(tensor).all():
        raise ConfigError(key, f"values must be finite, got {values!r}")
    return tensor


def open_uniform(generator: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype, device) -> Tensor:
    """Uniforms in the open interval (0, 1), so log u and log(1 − u) stay finite."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    tiny = torch.finfo(dtype).tiny
    return u.clamp_(min=tiny, max=1.0 - torch.finfo(dtype).eps / 2)  # in place: one pass, no copy
