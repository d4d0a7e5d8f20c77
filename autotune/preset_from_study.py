"""Rebuild presets from a finished (or running) study's stored record, without re-running anything.

The tuner writes everything a preset needs into the study (see docs/presets.md, "The study contract"):
study user attrs `autotune.*` (model, category, objectives, scorer, search space, task fingerprint, sampler,
redacted storage) and, per COMPLETE trial, `values = [fidelity, edit_strength]` plus user attrs `params`
(the full EditParams), `metrics` (metric means) and optionally `paper_point`. Anyone with read access to the
storage (e.g. the team's PostgreSQL) can therefore rebuild the same preset with `autotune presets from-study`.
"""

from __future__ import annotations

import datetime
import math
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import PresetError
from autotune.params import EditParams
from autotune.preset import (
    OBJECTIVES,
    FrontPoint,
    Preset,
    PresetWarning,
    make_provenance,
    redact_url,
)

ATTR = "autotune."
REQUIRED_ATTRS = ("model", "category", "objectives")


def study_is_autotune(study_attrs: Mapping[str, Any]) -> bool:
    return all(f"{ATTR}{key}" in study_attrs for key in REQUIRED_ATTRS)


def presets_from_study(study: optuna.Study, storage_label: str | None = None) -> list[Preset]:
    """The preset(s) a study's stored trials support: one per study (one model, one category).

    `storage_label` is recorded when the study did not store `autotune.storage` itself (it is redacted
    either way). Raises PresetError when the study was not written by the tuner or has no completed trial.
    """
    attrs = study.user_attrs
    name = study.study_name
    missing = [f"{ATTR}{key}" for key in REQUIRED_ATTRS if f"{ATTR}{key}" not in attrs]
    if missing:
        raise PresetError(
            f"study {name!r} was not written by `autotune tune` (missing user attr(s) {', '.join(missing)})"
        )
    objectives = attrs[f"{ATTR}objectives"]
    if not isinstance(objectives, list) or [o.get("name") for o in objectives] != list(OBJECTIVES):
        raise PresetError(f"study {name!r}: autotune.objectives must list {', '.join(OBJECTIVES)} in that order")
    directions = [d.name.lower() for d in study.directions]
    if directions != [o.get("direction") for o in objectives]:
        raise PresetError(f"study {name!r}: its directions {directions} disagree with autotune.objectives")

    base = attrs.get(f"{ATTR}base_params") or {}
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    points: list[FrontPoint] = []
    for trial in complete:
        point = _point(trial, base, name)
        if point is not None:
            points.append(point)
    if not points:
        raise PresetError(
            f"study {name!r} has no completed trial with usable values yet ({len(trials)} trials in total); "
            "let `autotune tune` finish some trials first"
        )
    references = [p for p in points if p.paper_point]
    storage = attrs.get(f"{ATTR}storage") or storage_label
    provenance = make_provenance(
        "tuned",
        study={"name": name, "storage": redact_url(storage)},
        sampler=attrs.get(f"{ATTR}sampler"),
        n_trials=len(trials),
        n_complete=len(complete),
        task_fingerprint=attrs.get(f"{ATTR}task_fingerprint"),
        task_count=attrs.get(f"{ATTR}task_count"),
        search_space=attrs.get(f"{ATTR}search_space"),
        base_params=base or None,
    )
    # Dated by the last completed trial (not by now), so rebuilding an unchanged study gives an identical file.
    finished = [t.datetime_complete for t in complete if t.datetime_complete is not None]
    if finished:
        provenance["created"] = _utc_iso(max(finished))
    if attrs.get(f"{ATTR}author"):
        provenance["author"] = str(attrs[f"{ATTR}author"])
    if attrs.get(f"{ATTR}version"):
        provenance["autotune_version"] = str(attrs[f"{ATTR}version"])  # the version that tuned, not this one
    preset = Preset.from_front(
        points,
        category=attrs[f"{ATTR}category"],
        model=attrs[f"{ATTR}model"],
        objectives=objectives,
        scorer=attrs.get(f"{ATTR}scorer") or {},
        provenance=provenance,
        references=references,
    )
    return [preset]


def _utc_iso(moment: datetime.datetime) -> str:
    """Optuna stores naive local datetimes; make them UTC ISO strings."""
    if moment.tzinfo is None:
        moment = moment.astimezone()  # interpret as local time
    return moment.astimezone(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _point(trial: FrozenTrial, base: Mapping[str, Any], study_name: str) -> FrontPoint | None:
    values = trial.values or []
    if len(values) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    raw = trial.user_attrs.get("params")
    if raw is None:  # an older or foreign trial: rebuild from the fixed knobs plus the sampled ones
        known = set(EditParams.__dataclass_fields__)
        raw = {**base, **{k: v for k, v in trial.params.items() if k in known}}
    try:
        params = EditParams.from_dict(raw)
    except (ValueError, TypeError) as exc:
        warnings.warn(
            f"study {study_name!r} trial {trial.number}: unusable params ({exc}); skipped", PresetWarning, stacklevel=3
        )
        return None
    metrics = {
        str(k): (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
        for k, v in (trial.user_attrs.get("metrics") or {}).items()
    }
    return FrontPoint(
        params=params,
        values={"fidelity": float(values[0]), "edit_strength": float(values[1])},
        metrics=metrics,
        trial=trial.number,
        paper_point=trial.user_attrs.get("paper_point"),
    )


def presets_from_storage(
    storage: Any, study_names: list[str] | None = None, storage_label: str | None = None
) -> list[Preset]:
    """Presets from the named studies (default: every study in the storage written by `autotune tune`)."""
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    by_name = {s.study_name: s for s in summaries}
    if study_names:
        unknown = [n for n in study_names if n not in by_name]
        if unknown:
            known = ", ".join(sorted(by_name)) or "none"
            raise PresetError(
                f"no study named {', '.join(map(repr, unknown))} in {storage_label}; studies there: {known}"
            )
        names = list(study_names)
    else:
        names = [n for n, s in sorted(by_name.items()) if study_is_autotune(s.user_attrs)]
        if not names:
            raise PresetError(f"no study written by `autotune tune` in {storage_label}")
    out: list[Preset] = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        out.extend(presets_from_study(study, storage_label=storage_label))
    return out
