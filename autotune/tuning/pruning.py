"""Pruning across tasks for a two-objective study, and its replay on a finished study.

A candidate is measured task by task; `DominationPruner` stops it once a Pareto-front trial dominates it with
confidence on the tasks seen. `replay` asks what a pruner would have done on a study run without pruning (every
trial measured on every task): how many candidate-task edits it would have saved, and whether it would have
stopped a trial of the final front. That is how the pruner's defaults were chosen and checked (docs/tuning.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.trial import TrialState

from autotune.errors import InputError
from autotune.pareto import front_keys, hypervolume
from autotune.scoring.objectives import Objectives
from autotune.tuning import contract


@dataclass
class DominationPruner:
    """Stop a candidate that a Pareto-front trial dominates with confidence on the tasks seen so far.

    After `t >= min_tasks` tasks (and before the last), the candidate c is compared with each front trial r on the
    same tasks: per objective, the paired per-task differences d, oriented so that positive means "r is better",
    and their one-sided Student-t lower bound L = mean(d) - t_{confidence, t-1} * sd(d) / sqrt(t). c is pruned
    when r is no worse on every objective (L >= 0) and better on at least one (L > 0, with a mean difference of
    at least `min_effect` times r's own task-to-task spread, so that near-duplicates are kept): Pareto dominance
    with the noise allowance on c's side. Pairing removes the task-to-task variation both share.

    Pass/fail metrics on a few tasks often give d the same value on every task (sd = 0, e.g. both succeed twice);
    that certainty is spurious, so a zero sd is replaced by the spread of r's values on the tasks not yet seen,
    how far the comparison can still move. If r succeeds on every remaining task the tie stands (c cannot beat
    it there); if r fails on some, c is kept. Paper points are never pruned.
    """

    confidence: float = 0.9
    min_tasks: int = 2
    min_effect: float = 0.05

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1:
            raise InputError(f"pruning confidence={self.confidence} must be in [0.5, 1)")
        if self.min_tasks < 2:
            raise InputError(f"pruning min_tasks={self.min_tasks} must be >= 2 (one task has no spread)")
        if not self.min_effect >= 0:
            raise InputError(f"pruning min_effect={self.min_effect} must be >= 0")

    def dominated_by(self, cand: np.ndarray, refs: Mapping[int, np.ndarray], signs: np.ndarray) -> int | None:
        """`cand`: [t, m] objective values per task so far; `refs`: trial number -> [n, m] on all n tasks, in the
        same task order. Returns the number of a front trial that dominates the candidate, or None."""
        t = cand.shape[0]
        if t < self.min_tasks:
            return None
        from scipy.stats import t as student_t

        quantile = float(student_t.ppf(self.confidence, t - 1))
        for number, ref in refs.items():
            if ref.shape[0] <= t:
                continue  # every task seen: nothing left to save
            oriented = ref * signs
            diff = oriented[:t] - cand * signs  # positive: the reference is better
            mean = diff.mean(axis=0)
            spread = diff.std(axis=0, ddof=1)
            unseen = oriented[t:]
            unseen_spread = unseen.std(axis=0, ddof=1) if len(unseen) >= 2 else np.zeros_like(mean)
            spread = np.where(spread > 0, spread, unseen_spread)
            lower = mean - quantile * spread / math.sqrt(t)
            effect = self.min_effect * oriented.std(axis=0, ddof=1)
            if np.all(lower >= 0) and np.any((lower > 0) & (mean >= effect)):
                return number
        return None


@dataclass
class PruningReplay:
    """What a pruner would have done on a finished study (see `replay`)."""

    trials: int  # trials replayed (COMPLETE, measured on every task)
    tasks: int
    stopped: dict[int, tuple[int, int]] = field(default_factory=dict)  # trial -> (after tasks, by trial)
    front: list[int] = field(default_factory=list)  # the study's final front among the replayed trials
    edits: int = 0  # candidate-task edits with pruning
    full_edits: int = 0  # without
    means: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # trial -> mean objectives, larger=better

    @property
    def cost(self) -> float:
        """Edits with pruning over edits without: the fraction of the engine's work that is left."""
        return self.edits / self.full_edits if self.full_edits else 1.0

    @property
    def front_cut(self) -> list[int]:
        """Trials of the final front that the pruner would have stopped (the pruner's mistakes)."""
        return [n for n in self.front if n in self.stopped]

    @property
    def hypervolume_kept(self) -> float:
        """Hypervolume of the trials not stopped over that of all replayed trials (each objective min-max scaled
        over the replayed trials, reference point at their minimum): 1.0 when no front trial is cut."""
        values = np.array(list(self.means.values()))
        low, span = values.min(axis=0), np.ptp(values, axis=0)
        span[span == 0] = 1.0
        scaled = {n: (v - low) / span for n, v in self.means.items()}
        ref = (-0.01, -0.01)  # just below every scaled point, so each one counts
        full = hypervolume(list(scaled.values()), ref)
        kept = hypervolume([v for n, v in scaled.items() if n not in self.stopped], ref)
        return kept / full if full > 0 else 1.0


def replay(
    study: optuna.Study,
    pruner: DominationPruner | None = None,
    batch: int = 4,
    order: Sequence[int] | None = None,
    task_batch: int | None = 1,
    max_batch: int = 16,
) -> PruningReplay:
    """Replay `pruner` on `study`'s trials as the tuner would have run them, `batch` at a time in trial order.

    Each trial is compared with the front of the trials of earlier batches (trial number // batch), using its
    recorded per-task metrics, at the points where the tuner asks the pruner: after every `task_batch` tasks in
    id order (None: as many as `max_batch` target branches hold for the batch's live trials, the tuner's
    default with the real editor). The study must have been run without pruning (`--no-prune`) so that every
    trial was measured on every task. Paper points are never stopped, as in `tune`. `order` (a permutation of
    the task positions) replays the tasks in another order, to see how much the outcome owes to the one the
    study ran in.
    """
    if batch < 1:
        raise InputError(f"batch={batch} must be >= 1")
    if (task_batch is not None and task_batch < 1) or max_batch < 1:
        raise InputError(f"task_batch={task_batch} and max_batch={max_batch} must be >= 1")
    pruner = pruner or DominationPruner()
    spec = study.user_attrs.get(contract.OBJECTIVES)
    if spec is None:
        raise InputError(f"study {study.study_name!r} has no autotune.objectives attr; replay needs an autotune study")
    objectives = Objectives.from_spec(spec)
    signs = np.array([1.0 if d == "maximize" else -1.0 for d in objectives.directions])
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    task_ids = sorted(set().union(*[(t.user_attrs.get(contract.PER_TASK) or {}).keys() for t in finished]))
    rows = {
        t.number: np.array([objectives.values(t.user_attrs[contract.PER_TASK][tid]) for tid in task_ids], dtype=float)
        for t in finished
        if task_ids and all(tid in (t.user_attrs.get(contract.PER_TASK) or {}) for tid in task_ids)
    }
    if not rows:
        raise InputError(f"study {study.study_name!r} has no trial measured on every task; run it with --no-prune")
    if order is not None:
        if sorted(order) != list(range(len(task_ids))):
            raise InputError(f"order must be a permutation of 0..{len(task_ids) - 1}, got {list(order)}")
        rows = {n: r[list(order)] for n, r in rows.items()}
    paper = {t.number for t in finished if t.user_attrs.get(contract.PAPER_POINT)}
    out = PruningReplay(trials=len(rows), tasks=len(task_ids))
    out.means = {n: r.mean(axis=0) * signs for n, r in rows.items()}
    out.front = front_keys(out.means)
    n_tasks = len(task_ids)
    for group in sorted({n // batch for n in rows}):
        members = [n for n in sorted(rows) if n // batch == group]
        earlier = {n: rows[n].mean(axis=0) * signs for n in rows if n // batch < group}
        refs = {n: rows[n] for n in front_keys(earlier)}
        alive, done = list(members), 0
        while alive and done < n_tasks:
            done = min(n_tasks, done + (task_batch or max(1, max_batch // len(alive))))
            if done >= n_tasks or not refs:
                break
            for number in [n for n in alive if n not in paper]:
                by = pruner.dominated_by(rows[number][:done], refs, signs)
                if by is not None:
                    out.stopped[number] = (done, by)
                    alive.remove(number)
        out.edits += sum(out.stopped[n][0] if n in out.stopped else n_tasks for n in members)
        out.full_edits += n_tasks * len(members)
    return out


__all__ = ["DominationPruner", "PruningReplay", "replay"]
