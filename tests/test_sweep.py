"""Planning a sweep: which grid keys apply, in-process (the CLI tests run it end to end)."""

from __future__ import annotations

from bench.sweep import default_grid, hydra_arguments, member_group, override_key

GRID = {
    "problem": "bernoulli,gaussian",
    "estimator": "reinforce,gumbel_softmax",
    "n_samples": "1,4",
    "estimator.temperature": "0.1,1.0",
    "problem.cost": "linear,quadratic",
}


def test_default_grid_applies_untouched():
    assert default_grid(GRID, []) == [f"{k}={v}" for k, v in GRID.items()]


def test_a_typed_key_replaces_its_grid_and_a_chosen_group_drops_its_member_keys():
    assert default_grid(GRID, ["problem", "n_samples"]) == [
        "estimator=reinforce,gumbel_softmax",
        "estimator.temperature=0.1,1.0",
    ]
    assert default_grid(GRID, ["estimator.temperature"]) == [
        "problem=bernoulli,gaussian",
        "estimator=reinforce,gumbel_softmax",
        "n_samples=1,4",
        "problem.cost=linear,quadratic",
    ]


def test_override_keys():
    assert override_key("++estimator.temperature=0.5") == "estimator.temperature"
    assert member_group("problem.sigma") == "problem"
    assert member_group("problem") is None and member_group("n_samples") is None


def test_single_values_of_group_keys_become_one_value_sweeps():
    # Hydra would apply them to the default problem/estimator before bench's sweeper sees them.
    assert hydra_arguments(
        ["estimator=gumbel_softmax", "estimator.temperature=0.3", "n_samples=2", "seed=1"]
    ) == [
        "estimator=choice(gumbel_softmax)",
        "estimator.temperature=choice(0.3)",
        "n_samples=2",
        "seed=1",
    ]
    assert hydra_arguments(["problem=bernoulli,gaussian", "problem.theta=[0.0,1.0]"]) == [
        "problem=bernoulli,gaussian",
        "problem.theta=choice([0.0,1.0])",
    ]
