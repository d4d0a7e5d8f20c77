"""TPE that counts what a candidate costs: a w_src the study has not used yet costs every task its source work.

The editor caches each task's inversion and source branch by `EditParams.source_group()` (w_src, for
SimInversion), so a trial whose w_src an earlier trial (or one of its own batch) already used pays only for its
target branch, and a trial with a new one pays for the inversion and the source branch too: about three times the
UNet samples (two predictions per step for each of inversion, source and target branch). Plain TPE does not know
that and spends most of a 32-trial study's budget on new w_src values (15-19 of 21).

This sampler ranks TPE's candidates by density ratio per unit cost, as cost-aware Bayesian optimisation does
(Snoek et al. 2012, "expected improvement per second"): the acquisition log l(x) - log g(x) of a candidate with
unused source work is lowered by log(new_source_cost). The default cost, 2 (below the measured 3, so a clearly
better new w_src still wins), was chosen on the shapes grid tables, where it reached 98% of the grid's best within
30 trials about as often as plain TPE did, drew about a third fewer w_src values and needed less work to get there
(BENCHMARKS.md, 3; docs/tuning.md, "Samplers"). The known set is the study's trials (COMPLETE, PRUNED, RUNNING):
what this process's cache holds when one worker runs the study; other workers' inversions count only if they share
the editor's disk cache (`cache_dir=`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import InputError
from autotune.tuning.search_space import SearchSpace

NEW_SOURCE_COST = 2.0
_KNOWN_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class CostAwareTPESampler(optuna.samplers.TPESampler):
    """`optuna.samplers.TPESampler` (same arguments) that prefers candidates whose source work is already done."""

    def __init__(self, space: SearchSpace, *, new_source_cost: float = NEW_SOURCE_COST, **tpe_kwargs: Any) -> None:
        if isinstance(new_source_cost, bool) or not isinstance(new_source_cost, (int, float)) \
                or not new_source_cost >= 1.0:
            raise InputError(f"new_source_cost={new_source_cost!r} must be a number >= 1 (1: plain TPE)")
        # Optuna's TPE has no public hook for the acquisition; these two methods are the ones other cost-aware TPEs
        # override too. Fail here, not with a silently plain TPE, if a future Optuna renames them.
        for name in ("_sample", "_compute_acquisition_func"):
            if not callable(getattr(optuna.samplers.TPESampler, name, None)):
                raise RuntimeError(f"optuna {optuna.__version__}'s TPESampler has no {name}(); "
                                   "the cost-aware TPE needs it: use --sampler tpe-plain, or optuna 4.x-5.x")
        super().__init__(**tpe_kwargs)
        self.space = space
        self.new_source_cost = float(new_source_cost)
        self._known_sources: set[Hashable] = set()
        self._sampled_space: dict[str, BaseDistribution] = {}

    def source_key(self, values: Mapping[str, Any]) -> Hashable | None:
        """The source work a trial with these knob values needs (None when they are not a whole candidate)."""
        if not set(self.space.knobs) <= set(values):
            return None
        try:
            params = self.space.to_params({name: values[name] for name in self.space.knobs})
        except InputError:
            return None
        return (params.source_group(), params.steps)

    def _sample(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
                ) -> dict[str, Any]:
        known = set()
        for other in study.get_trials(deepcopy=False, states=_KNOWN_STATES):
            if other.number != trial.number:
                known.add(self.source_key(self._get_params(other, study)))
        self._known_sources = known - {None}
        self._sampled_space = search_space
        return super()._sample(study, trial, search_space)

    def _compute_acquisition_func(self, samples: dict[str, np.ndarray], mpe_below: Any, mpe_above: Any
                                  ) -> np.ndarray:
        acquisition = super()._compute_acquisition_func(samples, mpe_below, mpe_above)
        if self.new_source_cost == 1.0 or not samples:
            return acquisition
        external = {name: [self._sampled_space[name].to_external_repr(v) for v in values]
                    for name, values in samples.items()}
        keys = [self.source_key({name: column[k] for name, column in external.items()})
                for k in range(len(acquisition))]
        if any(key is None for key in keys):
            # An independent sample of one knob cannot name its source work: left as TPE ranks it.
            return acquisition
        new = np.array([key not in self._known_sources for key in keys], dtype=bool)
        return acquisition - math.log(self.new_source_cost) * new
