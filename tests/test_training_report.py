"""The report of a training run set: both figures written (PNG and SVG), nothing for an empty table,
no text of a figure overlapping another or running into a panel, and the text summary: ranking by
direction, the t-interval, the paired test at equal cost evaluations, failed runs, one seed.

Statistical checks are seeded. The paired test is Holm-corrected over a setting's pairs at α = 0.05:
with no true difference it reports one in at most 5% of settings (family-wise, normal paired
differences), so the check that two estimators drawn from one distribution are not reported fails
for at most 1 seed in 20; bump its seed at most once, twice means a real bug.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.plots import training_figures
from bench.plots.training import training_plots
from bench.training.summary import labelled, summarize_training
from tests.test_plots import check_figures

EVALS = np.arange(11) * 20  # steps 0, 20, …, 200
EVALS_PER_SAMPLE = {"disarm": 2}
VARIANCE = {"rloo": 0.4, "reinforce_rtg": 0.6, "disarm": 0.3}  # relative to reinforce


def runs(problem: str, objectives: dict[str, np.ndarray], **extra: object) -> list[dict]:
    """Curve rows: ``objectives[estimator]`` is (seeds, evaluations); columns as curves.parquet."""
    direction = extra.pop("direction", "minimize")
    source = extra.pop("objective_source", "exact")
    rng = np.random.default_rng(len(problem))
    rows = []
    for estimator, values in objectives.items():
        per_step = 4 * EVALS_PER_SAMPLE.get(estimator, 1)
        for seed, curve in enumerate(np.atleast_2d(values)):
            steps = EVALS[: len(curve)]
            seconds = np.cumsum(np.r_[0, rng.uniform(0.08, 0.12, len(steps) - 1)]) * per_step
            for step, value, second in zip(steps, curve, seconds, strict=True):
                variance = 10.0 ** (1 - step / 100) * VARIANCE.get(estimator, 1.0) / per_step
                rows.append({
                    "run": f"{problem}-{estimator}-{seed}", "problem": problem, "estimator": estimator,
                    "latent_dim": extra.get("latent_dim"), "n_samples": 4, "seed": seed, "dtype": "float32",
                    "optimizer": "adam", "lr": 0.05, "steps": 200, "eval_every": 20, "eval_estimates": 1000,
                    "eval_samples": 100, "status": "ok", "reason": None, "step": int(step),
                    "cost_evals": int(step) * per_step, "seconds": float(second), "objective": float(value),
                    "objective_source": source, "objective_stderr": None, "objective_iwae": None,
                    "objective_iwae_stderr": None, "direction": direction, "variance": variance,
                    "variance_ci_low": variance * 0.8, "variance_ci_high": variance * 1.25, "bias_norm": None,
                    "eval_seconds": 0.01,
                })  # fmt: skip
    return rows


def table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return frame.astype(dict.fromkeys(["n_samples", "seed", "step", "cost_evals", "latent_dim"], "Int64"))


def learning(rng: np.random.Generator, start: float, gain: float, rates: dict[str, float], seeds: int = 5):
    """Curves start + gain·(1 − exp(−step·rate)) with noise, per estimator (seeds, 11)."""
    shape = 1 - np.exp(-EVALS / 60)
    return {
        name: start + gain * rate * shape + rng.normal(0, abs(gain) * 0.04, (seeds, len(EVALS))) * (EVALS > 0)
        for name, rate in rates.items()
    }


def realistic() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two problems × 3 estimators × 5 seeds × 11 evaluations; the VAE with a basket, one failed run."""
    rng = np.random.default_rng(0)
    vae = learning(rng, 120.0, -30.0, {"reinforce": 0.7, "rloo": 0.9, "disarm": 1.0})
    cartpole = learning(rng, 20.0, 150.0, {"reinforce": 0.6, "reinforce_rtg": 0.8, "rloo": 0.9})
    rows = runs("vae_bernoulli", vae, latent_dim=8, objective_source="bound")
    rows += runs("cartpole", cartpole, direction="maximize")
    curves = table(rows)
    failed = curves["run"] == "cartpole-reinforce-4"
    curves.loc[failed, "status"], curves.loc[failed, "reason"] = "failed", "NaN in the gradient at step 140"
    basket = []
    for _, row in curves[curves["problem"] == "vae_bernoulli"].iterrows():
        for member, factor in (("rloo", 0.5), ("disarm", 0.2)):
            variance = row["variance"] * factor * rng.uniform(0.8, 1.2)
            basket.append({
                "run": row["run"], "problem": row["problem"], "n_samples": 4, "seed": row["seed"],
                "run_estimator": row["estimator"], "step": row["step"], "estimator": member,
                "variance": variance, "variance_ci_low": variance * 0.8, "variance_ci_high": variance * 1.25,
                "bias_norm": None,
            })  # fmt: skip
    return curves, pd.DataFrame(basket)


# --- figures --------------------------------------------------------------------------------------
def test_both_figures_are_written_as_png_and_svg(tmp_path: Path) -> None:
    curves, basket = realistic()
    written = training_figures(curves, basket, tmp_path / "plots")
    names = {path.name for path in written}
    stems = ("training_curves", "variance_along_training")
    assert names == {f"{stem}.{suffix}" for stem in stems for suffix in ("png", "svg")}
    assert all(path.stat().st_size > 1000 for path in written)


def test_nothing_is_written_for_an_empty_table(tmp_path: Path) -> None:
    curves, basket = realistic()
    assert training_figures(curves.iloc[:0], basket.iloc[:0], tmp_path) == []
    only_failed = curves.assign(status="failed")
    assert training_figures(only_failed, None, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_no_text_overlaps_and_the_legend_stays_off_the_panels() -> None:
    """The overlap check of test_plots: texts (legend entries, titles, labels, ticks) pairwise apart,
    inside the figure and out of every panel but their own; with and without a basket."""
    curves, basket = realistic()
    figures = training_plots(curves, basket)
    assert set(figures) == {"training_curves", "variance_along_training"}
    assert len(figures["variance_along_training"].axes) == 3  # VAE: own and basket; cartpole: own
    check_figures(figures)
    check_figures(training_plots(curves[curves["problem"] == "cartpole"], None))


# --- summary --------------------------------------------------------------------------------------
def ranking(text: str) -> list[str]:
    return [line.split()[1] for line in text.splitlines() if line.strip()[:2] in {"1.", "2.", "3."}]


def test_the_summary_ranks_by_direction() -> None:
    finals = {"a": np.array([[0.0, 1.0]]), "b": np.array([[0.0, 3.0]]), "c": np.array([[0.0, 2.0]])}
    assert ranking(summarize_training(table(runs("p", finals)))) == ["a", "c", "b"]
    assert ranking(summarize_training(table(runs("p", finals, direction="maximize")))) == ["b", "c", "a"]


def test_the_interval_is_the_t_interval_over_seeds() -> None:
    finals = np.array([[0.0, v] for v in (1.0, 2.0, 3.0, 4.0, 5.0)])
    text = summarize_training(table(runs("p", {"a": finals})))
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) · s / √n
    assert f"3 [{3 - half:.4g}, {3 + half:.4g}]" in text
    assert "(n = 5 seeds" in text


def test_the_paired_test_finds_a_planted_difference_and_no_other() -> None:
    """`good` is 0.1 lower than `same1`/`same2` in every seed (noise 0.01); `same1` and `same2` come
    from one distribution and must not be reported (family-wise false-alarm rate 5%, seeded)."""
    rng = np.random.default_rng(1)
    base = np.linspace(1.0, 0.5, len(EVALS))
    finals = {name: base + rng.normal(0, 0.01, (6, len(EVALS))) for name in ("same1", "same2")}
    finals["good"] = base - 0.1 * (EVALS > 0) + rng.normal(0, 0.01, (6, len(EVALS)))
    text = summarize_training(table(runs("p", finals)))
    assert "3 pairs tested" in text
    reported = [line.strip() for line in text.splitlines() if "f-evals" in line]
    assert len(reported) == 4, text  # each good–same pair: at the final cost and over the curve
    assert all(line.startswith("good < same") and "over 6 seeds, Holm" in line for line in reported), text
    assert sum(" over the curve to " in line for line in reported) == 2, text


def test_the_comparison_is_at_equal_cost_evaluations() -> None:
    """disarm spends 2 f-evaluations per sample: at reinforce's final cost it is at step 100."""
    seeds = np.arange(4)[:, None] * 0.001
    finals = {"reinforce": np.tile(1.0 - EVALS / 1000, (4, 1)) + seeds, "disarm": 1.0 - EVALS / 250 + seeds}
    text = summarize_training(table(runs("p", finals)))
    # at C = 800 f-evals: reinforce (step 200) 0.8, disarm (step 100) 0.6 in every seed
    assert "disarm < reinforce at 8e2 f-evals: \u0394 = \u22120.2" in text, text


def test_over_the_curve_finds_the_faster_learner_when_both_end_equal() -> None:
    """Both reach 0 at step 200; `fast` gets there by step 40, `slow` only at 200 (seed noise
    0.01): the final point shows nothing, the mean over the curve must (5% family-wise, seeded)."""
    rng = np.random.default_rng(2)
    fast = np.maximum(0.0, 1.0 - EVALS / 40)
    slow = 1.0 - EVALS / 200
    finals = {"fast": fast + rng.normal(0, 0.01, (5, len(EVALS))) * (EVALS < 200),
              "slow": slow + rng.normal(0, 0.01, (5, len(EVALS))) * (EVALS < 200)}  # fmt: skip
    text = summarize_training(table(runs("p", finals)))
    reported = [line.strip() for line in text.splitlines() if "f-evals" in line]
    assert len(reported) == 1 and reported[0].startswith("fast < slow over the curve to"), text


def test_failed_runs_are_named_with_their_reason() -> None:
    curves, _basket = realistic()
    text = summarize_training(curves)
    assert "FAILED run cartpole-reinforce-4 (reinforce, seed 4): NaN in the gradient at step 140" in text


def test_with_one_seed_no_test_runs() -> None:
    finals = {"a": np.array([[0.0, 1.0]]), "b": np.array([[0.0, 2.0]])}
    text = summarize_training(table(runs("p", finals)))
    assert "0 pairs tested, at the cost and over the curve up to it, 1 not (fewer than 2 common seeds" in text
    assert "(no interval: 1 seed)" in text


def test_a_key_only_some_estimators_have_labels_the_estimator_not_the_setting() -> None:
    """A temperature belongs to gumbel_softmax: it is compared with reinforce in one setting."""
    finals = {"reinforce": np.zeros((2, 3)), "gumbel_softmax": np.zeros((2, 3))}
    curves = table(runs("p", finals, latent_dim=8))
    curves["temperature"] = np.where(curves["estimator"] == "gumbel_softmax", 0.5, np.nan)
    frame = labelled(curves)
    assert set(frame["_setting"]) == {"p"}
    assert set(frame["_label"]) == {"reinforce", "gumbel_softmax"}  # one temperature: nothing to tell apart
    assert "1 pair tested" in summarize_training(curves)
    other = curves[curves["estimator"] == "gumbel_softmax"].assign(temperature=1.0)
    other["run"] = other["run"] + "-t1"
    frame = labelled(pd.concat([curves, other], ignore_index=True))
    assert set(frame["_setting"]) == {"p"}
    assert set(frame["_label"]) == {
        "reinforce",
        "gumbel_softmax temperature=0.5",
        "gumbel_softmax temperature=1",
    }


def test_n_samples_labels_the_estimator_so_unequal_samples_meet_at_equal_cost() -> None:
    finals = {"rloo": np.zeros((2, 3)), "disarm": np.zeros((2, 3))}
    curves = table(runs("p", finals))
    curves["n_samples"] = np.where(curves["estimator"] == "rloo", 2, 1)
    frame = labelled(curves)
    assert set(frame["_setting"]) == {"p"} and set(frame["_label"]) == {
        "rloo n_samples=2",
        "disarm n_samples=1",
    }
