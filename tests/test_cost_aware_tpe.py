"""The cost-aware TPE: fewer new w_src values (each one costs every task its source work), same search otherwise."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest

from autotune.errors import InputError
from autotune.params import EditParams
from autotune.tuning.cost_aware_tpe import CostAwareTPESampler
from autotune.tuning.samplers import TPE_STARTUP_TRIALS, make_sampler
from autotune.tuning.search_space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _objectives(params: dict) -> list[float]:
    """Two objectives in tension, smooth in both knobs (fidelity falls with w_tgt, strength rises)."""
    w_src, w_tgt = params["w_src"], params["w_tgt"]
    return [-(w_src - 0.7) ** 2 - 0.05 * w_tgt, -(w_src - 1.3) ** 2 + 0.1 * w_tgt]


def _run(sampler: optuna.samplers.BaseSampler, space: SearchSpace, trials: int = 32, batch: int = 4
         ) -> list[dict]:
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    dists = space.distributions()
    asked_params = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is marked experimental
        while len(asked_params) < trials:
            batch_trials = [study.ask(dists) for _ in range(batch)]
            for trial in batch_trials:
                asked_params.append(dict(trial.params))
                study.tell(trial, _objectives(trial.params))
    return asked_params


def _distinct_w_src(params: list[dict]) -> int:
    return len({round(p["w_src"], 6) for p in params})


def test_with_a_cost_of_one_it_is_exactly_plain_tpe():
    space = SearchSpace.default()
    plain = make_sampler("tpe-plain", 3, space)
    costless = CostAwareTPESampler(space, new_source_cost=1.0, multivariate=True, constant_liar=True, seed=3,
                                   n_startup_trials=TPE_STARTUP_TRIALS)
    assert _run(plain, space) == _run(costless, space)


def test_it_draws_fewer_w_src_values_than_plain_tpe():
    space = SearchSpace.default()
    plain = [_distinct_w_src(_run(make_sampler("tpe-plain", seed, space), space)) for seed in range(4)]
    aware = [_distinct_w_src(_run(make_sampler("tpe", seed, space), space)) for seed in range(4)]
    assert isinstance(make_sampler("tpe", 0, space), CostAwareTPESampler)
    assert sum(aware) < 0.85 * sum(plain), (aware, plain)


def test_a_prohibitive_cost_keeps_tpe_on_the_w_src_values_already_used():
    space = SearchSpace.default()
    sampler = CostAwareTPESampler(space, new_source_cost=1e12, multivariate=True, constant_liar=True, seed=0,
                                  n_startup_trials=TPE_STARTUP_TRIALS)
    params = _run(sampler, space, trials=24)
    start = {round(p["w_src"], 6) for p in params[:TPE_STARTUP_TRIALS]}
    later = {round(p["w_src"], 6) for p in params[TPE_STARTUP_TRIALS:]}
    # unless all 24 of TPE's candidates are new (then the penalty ties them), the later trials reuse
    assert len(later - start) <= 2, (start, later)


def test_the_discount_is_log_cost_for_new_source_work_only():
    space = SearchSpace.default()
    sampler = make_sampler("tpe", 0, space)
    sampler._known_sources = {sampler.source_key({"w_src": 0.3, "w_tgt": 5.0})}
    sampler._sampled_space = space.distributions()
    import numpy as np

    samples = {"w_src": np.array([0.30000000000000004, 0.4]), "w_tgt": np.array([2.0, 9.0])}

    class Flat:
        def log_pdf(self, samples):
            return np.zeros(len(next(iter(samples.values()))))

    got = sampler._compute_acquisition_func(samples, Flat(), Flat())
    assert got.tolist() == pytest.approx([0.0, -math.log(2.0)])


def test_source_keys_follow_the_editors_source_work():
    space = SearchSpace.default()
    sampler = make_sampler("tpe", 0, space)
    # optuna's float for a grid value and the value itself are one source; w_tgt plays no part in SimInversion's
    assert sampler.source_key({"w_src": 0.6000000000000001, "w_tgt": 2.0}) == \
        sampler.source_key({"w_src": 0.6, "w_tgt": 11.0})
    assert sampler.source_key({"w_src": 0.6, "w_tgt": 2.0}) != sampler.source_key({"w_src": 0.7, "w_tgt": 2.0})
    assert sampler.source_key({"w_src": 0.6}) is None  # not a whole candidate
    # DDIM-style inverts at 1 and runs the source branch at w_tgt: there w_tgt is the source's scale
    ddim = SearchSpace.default(EditParams(method="ddim"))
    sampler = make_sampler("tpe", 0, ddim)
    assert sampler.source_key({"w_src": 0.6, "w_tgt": 2.0}) == sampler.source_key({"w_src": 1.5, "w_tgt": 2.0})
    assert sampler.source_key({"w_src": 0.6, "w_tgt": 2.0}) != sampler.source_key({"w_src": 0.6, "w_tgt": 3.0})


@pytest.mark.parametrize("cost", [0.5, -1, float("nan"), True, "2"])
def test_bad_costs_are_refused(cost):
    with pytest.raises(InputError, match="new_source_cost"):
        CostAwareTPESampler(SearchSpace.default(), new_source_cost=cost)
