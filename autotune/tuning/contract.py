"""The study contract: what a study records about how it was tuned, under which keys, and the check that makes a
resumed study the same study. This module is the one owner of those keys; the tuner writes them, and the preset
builder, the report and the benchmarks read them through these names.

Study user attrs (JSON), written once when a study is created or first resumed by this version:
`autotune.version`, `autotune.model` (the editor's `model_info()`), `autotune.category`, `autotune.search_space`,
`autotune.base_params`, `autotune.objectives`, `autotune.scorer`, `autotune.task_fingerprint` (of the task set),
`autotune.task_digests` (each task's `task_digest`, sorted: which edits the study saw, so that an evaluation can
tell whether it scores a preset on its own tuning tasks), `autotune.task_count`, `autotune.sampler`,
`autotune.storage` (redacted), and where known `autotune.task_source` (`{"spec", "split", "heldout_fraction"}`) and
`autotune.artifacts`. A resumed study must match on `MUST_MATCH` and on the model id, or it is refused; a key
it lacks (a study made by an older version) is added when it is resumed.

Trial user attrs: `params` (the full EditParams), `metrics` (means over the tasks measured), `per_task` (every
metric of every task), `paper_point` (the name of an enqueued paper point), for a pruned trial
`pruned_after_tasks` and `pruned_by_trial`, for a failed one `fail_kind` and `fail_reason`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna

from autotune.errors import InputError

# Study user attrs
VERSION = "autotune.version"
MODEL = "autotune.model"
CATEGORY = "autotune.category"
SEARCH_SPACE = "autotune.search_space"
BASE_PARAMS = "autotune.base_params"
OBJECTIVES = "autotune.objectives"
SCORER = "autotune.scorer"
TASK_FINGERPRINT = "autotune.task_fingerprint"
TASK_DIGESTS = "autotune.task_digests"
TASK_COUNT = "autotune.task_count"
SAMPLER = "autotune.sampler"
STORAGE = "autotune.storage"
TASK_SOURCE = "autotune.task_source"
ARTIFACTS = "autotune.artifacts"
AUTHOR = "autotune.author"  # read when present (a study prepared by hand may name its author); never written

MUST_MATCH = (CATEGORY, SEARCH_SPACE, BASE_PARAMS, OBJECTIVES, TASK_FINGERPRINT)
REQUIRED = (MODEL, CATEGORY, OBJECTIVES)  # what makes a study one that `autotune tune` wrote

# Trial user attrs
PARAMS = "params"
METRICS = "metrics"
PER_TASK = "per_task"
PAPER_POINT = "paper_point"
PRUNED_AFTER_TASKS = "pruned_after_tasks"
PRUNED_BY_TRIAL = "pruned_by_trial"
FAIL_KIND = "fail_kind"  # "error" | "nan" | "oom" | "stale" | "interrupted"
FAIL_REASON = "fail_reason"  # what went wrong, for people
RETRIED_KINDS = ("stale", "interrupted")  # failures that are re-queued and do not count towards the trial budget


def written_by_autotune(study_attrs: Mapping[str, Any]) -> bool:
    return all(key in study_attrs for key in REQUIRED)


def jsonable(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> float: user attrs must be plain JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def record(study: optuna.Study, attrs: Mapping[str, Any], storage_label: str) -> None:
    """Write the contract's attrs, or check that an existing study was made for the same thing."""
    existing = study.user_attrs
    for key in MUST_MATCH:
        if key in existing and jsonable(existing[key]) != jsonable(attrs[key]):
            raise InputError(
                f"study {study.study_name!r} in {storage_label} was tuned with a different {key.split('.', 1)[1]} "
                f"({existing[key]!r} there, {attrs[key]!r} now); resume it with the same settings or choose a new "
                "--study name")
    model_id = (existing.get(MODEL) or {}).get("id")
    if model_id is not None and model_id != attrs[MODEL].get("id"):
        raise InputError(f"study {study.study_name!r} was tuned on model {model_id!r}, not "
                         f"{attrs[MODEL].get('id')!r}; choose a new --study name")
    for key, value in attrs.items():
        if key not in existing:
            study.set_user_attr(key, jsonable(value))
