"""Recording a candidate's outcome on its trial: parameters and per-task metrics as user attrs, then the state
(COMPLETE with the objective values, PRUNED with the partial means, FAIL with why); a trial that reaches the
Pareto front also keeps its edited images in Optuna's artifact store, where optuna-dashboard shows them."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune import pareto
from autotune.evaluation.batch import Candidate
from autotune.scoring.objectives import Objectives
from autotune.tuning import contract

logger = logging.getLogger(__name__)


def tell(study: optuna.Study, cand: Candidate, objs: Objectives, signs: np.ndarray, task_ids: Sequence[str],
         sources: list[np.ndarray], artifact_store: Any) -> FrozenTrial | None:
    """Record a candidate's outcome on its trial (attrs first: a finished trial takes no more attrs); the trial as
    stored, or None when another worker had already failed it."""
    try:
        return _record(study, cand, objs, signs, task_ids, sources, artifact_store)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker's sweep took this trial for dead (a heartbeat lost for longer than the grace period)
        # and re-queued it; its retry will record the result.
        logger.warning("trial %d was failed by another worker's sweep before it could be told", cand.trial.number)
        return None


def _record(study: optuna.Study, cand: Candidate, objs: Objectives, signs: np.ndarray, task_ids: Sequence[str],
            sources: list[np.ndarray], artifact_store: Any) -> FrozenTrial:
    trial = cand.trial
    trial.set_user_attr(contract.PARAMS, cand.params.to_dict())
    seen = [tid for tid in task_ids if tid in cand.per_task]
    means: dict[str, float] = {}
    if seen:
        names = sorted({m for tid in seen for m in cand.per_task[tid]})
        for m in names:
            vals = [cand.per_task[tid].get(m, math.nan) for tid in seen]
            means[m] = float(np.mean(vals))
    trial.set_user_attr(contract.METRICS, contract.jsonable(means))
    trial.set_user_attr(contract.PER_TASK, contract.jsonable(cand.per_task))
    if cand.state == "failed":
        trial.set_user_attr(contract.FAIL_KIND, cand.fail_kind)
        trial.set_user_attr(contract.FAIL_REASON, cand.fail_reason)
        logger.warning("trial %d failed (%s): %s", trial.number, cand.fail_kind, cand.fail_reason)
        return study.tell(trial, state=TrialState.FAIL)
    elif cand.state == "pruned":
        trial.set_user_attr(contract.PRUNED_AFTER_TASKS, len(seen))
        trial.set_user_attr(contract.PRUNED_BY_TRIAL, cand.pruned_by)
        return study.tell(trial, state=TrialState.PRUNED)
    values = list(objs.values(means))
    on_front = not any(pareto.dominates(np.asarray(t.values) * signs, np.asarray(values) * signs)
                       for t in study.best_trials)
    if artifact_store is not None and on_front:
        try:
            save_artifact(study, trial, cand, sources, artifact_store)
        except Exception as exc:  # noqa: BLE001 - images are a convenience, the values are the result
            logger.warning("could not store the images of trial %d: %s", trial.number, exc)
    return study.tell(trial, values)


def save_artifact(study: optuna.Study, trial: optuna.Trial, cand: Candidate, sources: list[np.ndarray],
                   artifact_store: Any) -> None:
    """A PNG: the task images on top, this trial's edits below."""
    from PIL import Image

    n = min(len(cand.thumbs), len(sources))
    if n == 0:
        return
    h = max(x.shape[0] for x in sources[:n] + cand.thumbs[:n])
    w = sum(max(s.shape[1], e.shape[1]) for s, e in zip(sources[:n], cand.thumbs[:n], strict=True))
    sheet = np.full((2 * h, w, 3), 255, dtype=np.uint8)
    x = 0
    for s, e in zip(sources[:n], cand.thumbs[:n], strict=True):
        sheet[: s.shape[0], x: x + s.shape[1]] = s
        sheet[h: h + e.shape[0], x: x + e.shape[1]] = e
        x += max(s.shape[1], e.shape[1])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"trial-{trial.number}-edits.png")
        Image.fromarray(sheet).save(path)
        optuna.artifacts.upload_artifact(artifact_store=artifact_store, file_path=path, study_or_trial=trial)
