"""Measure the speed targets of issue 10 §2 (not a test; run ``python -m tests.perf.targets``).

Each target is a ratio of thread CPU time measured in ONE process, on one thread
(``torch.set_num_threads(1)``), the two sides interleaved call by call (ABBA) over rounds, as in the
gate (``tests/perf/gate.py``). Bench's side is exactly what ``run_cell`` times for one batch, at the
batch size the runner picks (``auto_batch_size``): noise generation, ``estimator.estimate``, and
the runner's ``flatten``. The other side is a hand-vectorized torch version of the same estimator
on the same noise: θ an (E, ...) leaf expanded per estimate, the surrogate summed over estimates,
one ``torch.autograd.grad`` call; for the VAE, the plain ``torch.func.vmap(grad(...))`` version.

Prints each ratio (geometric mean and a 95% interval over rounds) and the throughputs, then the
peak RSS of ``run_cell`` at 1e5 and 1e7 estimates, each in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor
from torch.func import grad, vmap

from bench.output import cpu_model
from bench.problems.base import Params, Problem
from bench.runner import auto_batch_size, flatten
from bench.sweep import build, default_config

DTYPE = torch.float32
Kernel = Callable[[], Tensor]


def make(group: str, name: str, **overrides):
    return build(group, name, {**default_config(group, name), **overrides})


def uniforms(generator: torch.Generator, shape: tuple[int, ...]) -> Tensor:
    """``problems.base.open_uniform``, written out."""
    u = torch.rand(shape, generator=generator, dtype=DTYPE)
    return u.clamp(min=torch.finfo(DTYPE).tiny, max=1.0 - torch.finfo(DTYPE).eps / 2)


def batch_size(problem: Problem, n_samples: int) -> int:
    n_params = sum(value.numel() for value in problem.params().values())
    return auto_batch_size(problem, n_params, n_samples, DTYPE, torch.device("cpu"))


def bench_kernel(problem: Problem, estimator, n_samples: int, n_estimates: int) -> Kernel:
    """What run_cell times for one batch."""
    problem.prepare(DTYPE)
    params = {name: value.to(DTYPE) for name, value in problem.params().items()}
    generator, aux = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    def run() -> Tensor:
        noise = estimator.make_noise(problem, generator, aux, (n_estimates, n_samples), DTYPE)
        return flatten(estimator.estimate(problem, params, noise), n_estimates)

    return run


# --- hand-vectorized versions --------------------------------------------------------------------
def hand_bernoulli_reinforce(problem: Problem, n_samples: int, n_estimates: int) -> Kernel:
    theta, target = problem.theta.to(DTYPE), problem.target.to(DTYPE)
    shape, generator = (n_estimates, n_samples, theta.numel()), torch.Generator().manual_seed(0)

    def run() -> Tensor:
        u = uniforms(generator, shape)
        b = (u > 1.0 - torch.sigmoid(theta)).to(DTYPE)  # (E, S, D)
        f = ((b - target) ** 2).sum(-1)  # (E, S)
        leaf = theta.expand(n_estimates, -1).requires_grad_(True)  # (E, D): θ per estimate
        logits = leaf.unsqueeze(1)
        log_p = (b * F.logsigmoid(logits) + (1.0 - b) * F.logsigmoid(-logits)).sum(-1)  # (E, S)
        (per_estimate,) = torch.autograd.grad((f * log_p).mean(-1).sum(), leaf)
        return per_estimate  # (E, D)

    return run


def closed_form_bernoulli_reinforce(problem: Problem, n_samples: int, n_estimates: int) -> Kernel:
    """The floor: f·(b − σ(θ)) in three lines, no problem API, no flatten (issue 10's "3×")."""
    theta, target = problem.theta.to(DTYPE), problem.target.to(DTYPE)
    shape, generator = (n_estimates, n_samples, theta.numel()), torch.Generator().manual_seed(0)

    def run() -> Tensor:
        probs = torch.sigmoid(theta)
        b = (uniforms(generator, shape) > 1.0 - probs).to(DTYPE)
        return (((b - target) ** 2).sum(-1, keepdim=True) * (b - probs)).mean(1)

    return run


def hand_categorical_rloo(problem: Problem, n_samples: int, n_estimates: int) -> Kernel:
    theta, costs = problem.theta.to(DTYPE), problem.costs.to(DTYPE)
    n_classes = theta.numel()
    shape, generator = (n_estimates, n_samples, n_classes), torch.Generator().manual_seed(0)

    def run() -> Tensor:
        z = theta + -torch.log(-torch.log(uniforms(generator, shape)))  # Gumbel-max, as the problem
        x = (torch.arange(n_classes) == z.argmax(-1, keepdim=True)).to(DTYPE)  # (E, S, K)
        f = (x * costs).sum(-1)  # (E, S)
        baseline = (f.sum(-1, keepdim=True) - f) / (n_samples - 1)
        leaf = theta.expand(n_estimates, -1).requires_grad_(True)  # (E, K)
        log_p = (x * torch.log_softmax(leaf, -1).unsqueeze(1)).sum(-1)  # (E, S)
        (per_estimate,) = torch.autograd.grad(((f - baseline) * log_p).mean(-1).sum(), leaf)
        return per_estimate

    return run


def hand_cartpole_reinforce_rtg(problem: Problem, n_samples: int, n_estimates: int) -> Kernel:
    """The rollout is the environment's (``problem.sample``, plain torch); the estimator is by hand."""
    params = {name: value.to(DTYPE) for name, value in problem.params().items()}
    generator = torch.Generator().manual_seed(0)
    discounts = problem.gamma ** torch.arange(problem.horizon, dtype=DTYPE)

    def run() -> Tensor:
        states, actions, alive = problem.sample(
            params, uniforms(generator, (n_estimates, n_samples, problem.horizon + 1))
        )
        weight = params["weight"].expand(n_estimates, -1, -1).requires_grad_(True)  # (E, 2, 4)
        bias = params["bias"].expand(n_estimates, -1).requires_grad_(True)  # (E, 2)
        logits = torch.einsum("esti,eai->esta", states.to(DTYPE), weight) + bias[:, None, None, :]
        log_pi = torch.log_softmax(logits, -1)  # (E, S, T, 2)
        a, on = actions.to(DTYPE), alive.to(DTYPE)
        chosen = on * (a * log_pi[..., 1] + (1.0 - a) * log_pi[..., 0])  # (E, S, T)
        to_go = (on * discounts).flip(-1).cumsum(-1).flip(-1)  # Σ_{t' ≥ t} γ^t' r_t'
        grads = torch.autograd.grad((to_go * chosen).sum() / n_samples, [weight, bias])
        return torch.cat([g.reshape(n_estimates, -1) for g in grads], 1)

    return run


def plain_vmap_vae_rloo(problem: Problem, n_samples: int, n_estimates: int) -> Kernel:
    """The obvious torch.func version: a surrogate per estimate, vmap(grad) over the batch."""
    problem.prepare(DTYPE)
    images, decoder = problem.constants(DTYPE)
    params = {name: value.to(DTYPE) for name, value in problem.params().items()}
    shape, generator = (
        (n_estimates, n_samples, problem.batch_size, problem.latent_dim),
        torch.Generator().manual_seed(0),
    )

    def mlp(p: Params, prefix: str, inputs: Tensor) -> Tensor:
        hidden = torch.tanh(F.linear(inputs, p[f"{prefix}.0.weight"], p[f"{prefix}.0.bias"]))
        return F.linear(hidden, p[f"{prefix}.2.weight"], p[f"{prefix}.2.bias"])

    def surrogate(p: Params, u: Tensor) -> Tensor:  # u: (S, B, L), one estimate
        logits = mlp(p, "encoder", images)  # (B, L)
        z = (u > 1.0 - torch.sigmoid(logits.detach())).to(u.dtype)  # (S, B, L)
        pixels = mlp(decoder, "decoder", z)  # (S, B, 64)
        log_q = (z * logits - F.softplus(logits)).sum(-1)  # (S, B)
        log_px = (images * pixels - F.softplus(pixels)).sum(-1)
        f = (log_q - log_px + problem.latent_dim * math.log(2.0)).mean(-1)  # (S,)
        baseline = (f.sum() - f) / (n_samples - 1)
        return (f + (f - baseline).detach() * log_q.sum(-1)).mean()

    per_estimate = vmap(grad(surrogate), in_dims=(None, 0))

    def run() -> Tensor:
        return flatten(per_estimate(params, uniforms(generator, shape)), n_estimates)

    return run


# --- timing --------------------------------------------------------------------------------------
def paired_ratio(bench: Kernel, other: Kernel, rounds: int, calls: int) -> dict[str, float]:
    """Thread CPU time of bench / other per round (ABBA interleaving), summarized."""
    for _ in range(2):
        bench(), other()
    bench_seconds, other_seconds = [], []
    for index in range(rounds):
        spent = [0.0, 0.0]
        for call in range(2 * calls):
            side = (call + call // 2 + index) % 2
            start = time.thread_time()
            (bench if side == 0 else other)()
            spent[side] += time.thread_time() - start
        bench_seconds.append(spent[0])
        other_seconds.append(spent[1])
    logs = [math.log(o / b) for b, o in zip(bench_seconds, other_seconds, strict=True)]  # speedups
    mean = sum(logs) / rounds
    half = stats.t.ppf(0.975, rounds - 1) * math.sqrt(
        sum((x - mean) ** 2 for x in logs) / (rounds - 1) / rounds
    )
    return {
        "speedup": math.exp(mean),
        "low": math.exp(mean - half),
        "high": math.exp(mean + half),
        "bench_s_per_call": sum(bench_seconds) / (rounds * calls),
        "other_s_per_call": sum(other_seconds) / (rounds * calls),
    }


def report(label: str, n_estimates: int, figures: dict[str, float], other: str) -> None:
    print(
        f"{label}: bench {n_estimates / figures['bench_s_per_call']:.3g} estimates/CPU-s, {other} "
        f"{n_estimates / figures['other_s_per_call']:.3g}; bench is {figures['speedup']:.2f}× "
        f"(95% interval {figures['low']:.2f}–{figures['high']:.2f}) [E = {n_estimates}]",
        flush=True,
    )


def speed(rounds: int) -> None:
    torch.set_num_threads(1)
    one_bit = make("problem", "bernoulli", theta=[0.0], target=[0.3])
    n = batch_size(one_bit, 1)
    bench = bench_kernel(one_bit, make("estimator", "reinforce"), 1, n)
    hand = hand_bernoulli_reinforce(one_bit, 1, n)
    report("bernoulli 1-bit reinforce S=1 vs hand autograd", n, paired_ratio(bench, hand, rounds, 20), "hand")
    closed = closed_form_bernoulli_reinforce(one_bit, 1, n)
    report("  plain closed form vs hand autograd", n, paired_ratio(closed, hand, rounds, 20), "hand")
    autograd = make("estimator", "reinforce")
    autograd.closed_form = False
    forced = bench_kernel(one_bit, autograd, 1, n)
    report("  bench, closed_form=False, vs hand autograd", n, paired_ratio(forced, hand, rounds, 10), "hand")

    categorical = make("problem", "categorical")
    n = batch_size(categorical, 4)
    bench = bench_kernel(categorical, make("estimator", "rloo"), 4, n)
    hand = hand_categorical_rloo(categorical, 4, n)
    report("categorical rloo S=4 vs hand autograd", n, paired_ratio(bench, hand, rounds, 3), "hand")

    cartpole = make("problem", "cartpole")
    n = batch_size(cartpole, 4)
    bench = bench_kernel(cartpole, make("estimator", "reinforce_rtg"), 4, n)
    hand = hand_cartpole_reinforce_rtg(cartpole, 4, n)
    figures = paired_ratio(bench, hand, max(4, rounds // 2), 1)
    report("cartpole reinforce_rtg S=4 vs hand autograd", n, figures, "hand")

    vae = make("problem", "vae_bernoulli")
    n = batch_size(vae, 4)
    bench = bench_kernel(vae, make("estimator", "rloo"), 4, n)
    plain = plain_vmap_vae_rloo(vae, 4, n)
    figures = paired_ratio(bench, plain, max(4, rounds // 2), 1)
    report("vae_bernoulli rloo S=4 vs plain vmap(grad)", n, figures, "plain")


RSS_SCRIPT = """
import resource, sys, torch
from bench.runner import run_cell
from bench.sweep import build, default_config
torch.set_num_threads(1)
config = {**default_config("problem", "bernoulli"), "theta": [0.0], "target": [0.3]}
problem = build("problem", "bernoulli", config)
estimator = build("estimator", "reinforce", default_config("estimator", "reinforce"))
run_cell(problem, estimator, n_samples=1, n_estimates=1000, seed=0)  # imports, caches, allocator warm
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
row = run_cell(problem, estimator, n_samples=1, n_estimates=int(sys.argv[1]), seed=0).row
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, row["batch_size"], row["estimates_per_s"])
"""


def memory() -> None:
    for n_estimates in (10**5, 10**7):
        out = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(n_estimates)], capture_output=True, text=True, check=True
        ).stdout.split()
        before, after = int(out[0]) / 1024, int(out[1]) / 1024  # ru_maxrss is in KiB on Linux
        print(
            f"run_cell bernoulli 1-bit reinforce, {n_estimates:.0e} estimates: peak RSS {after:.0f} MiB "
            f"(after a 1000-estimate warm-up cell: {before:.0f} MiB), batch {out[2]}, "
            f"{float(out[3]):.3g} estimates/s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{cpu_model()}, torch {torch.__version__}, load average {load}")
    speed(args.rounds)
    if not args.skip_memory:
        memory()


if __name__ == "__main__":
    main()
