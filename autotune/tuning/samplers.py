"""The samplers a study can use, chosen by name and seeded explicitly (Optuna's own default changes between
versions), and what a study records of the one it used."""

from __future__ import annotations

from typing import Any

import optuna

from autotune.errors import InputError
from autotune.tuning.cost_aware_tpe import NEW_SOURCE_COST, CostAwareTPESampler
from autotune.tuning.search_space import SearchSpace

SAMPLERS = ("tpe", "tpe-plain", "gp", "nsga2", "random", "grid")
DEFAULT_SAMPLER = "tpe"
TPE_STARTUP_TRIALS = 4  # random trials (COMPLETE or PRUNED) before TPE models the objectives


def make_sampler(name: str, seed: int, space: SearchSpace, batch: int = 4) -> optuna.samplers.BaseSampler:
    """The sampler `name`, seeded with `seed`.

    - `tpe` (default): multivariate TPE with the constant liar, which treats the batch's RUNNING trials as
      bad so K trials asked together spread out instead of piling on one point; multi-objective capable. It
      models the objectives once 4 trials are done (Optuna's default waits for 10): one batch explores at
      random, then TPE. On the shapes grids that reaches 98% of the best in fewer trials (BENCHMARKS.md, 3).
      It is cost-aware (`CostAwareTPESampler`): a candidate whose w_src no trial has used yet, and so costs
      every task an inversion and a source branch, must look `NEW_SOURCE_COST` times as promising.
    - `tpe-plain`: the same TPE without the cost: every w_src counts alike.
    - `gp`: Gaussian-process Bayesian optimisation (Optuna's GPSampler, multi-objective via log EHVI); best for
      small budgets and few knobs; it considers running trials but has no true q-batch acquisition.
    - `nsga2`: the genetic NSGA-II (population = max(8, 2 * batch)); for large budgets.
    - `random`: a baseline; `grid`: `SearchSpace.grid()` points (5 per numeric knob plus the paper values).
    """
    if name == "tpe":
        return CostAwareTPESampler(space, multivariate=True, constant_liar=True, seed=seed,
                                   n_startup_trials=TPE_STARTUP_TRIALS)
    if name == "tpe-plain":
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed,
                                          n_startup_trials=TPE_STARTUP_TRIALS)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, 2 * batch))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise InputError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)} (default {DEFAULT_SAMPLER})")


def sampler_record(name: str, seed: int) -> dict[str, Any]:
    """What the study (and so the preset's provenance) records of its sampler."""
    return {"name": name, "seed": seed, **({"new_source_cost": NEW_SOURCE_COST} if name == "tpe" else {})}
