"""Rebuild presets from a finished (or running) study's stored record, without re-running anything.

The tuner writes everything a preset needs into the study (`autotune.tuning.contract`; docs/presets.md, "The
study contract"): the study's model, category, objectives, scorer, search space, task fingerprint, sampler and
redacted storage, and per COMPLETE trial `values = [fidelity, edit_strength]` with its full parameters, metric
means and paper-point name. Anyone with read access to the storage (e.g. the team's PostgreSQL) can therefore
rebuild the same preset with `autotune presets from-study`; the tuner itself builds its preset here.
"""

from __future__ import annotations

import datetime
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import PresetError
from autotune.params import EditParams
from autotune.presets.preset import OBJECTIVES, FrontPoint, Preset, PresetWarning
from autotune.presets.provenance import make_provenance
from autotune.presets.schema import MAX_TASK_DIGESTS
from autotune.presets.store import InstallResult, save_preset
from autotune.redact import redact_url
from autotune.tuning import contract


def presets_from_study(study: optuna.Study, storage_label: str | None = None) -> list[Preset]:
    """The preset(s) a study's stored trials support: one per study (one model, one category).

    `storage_label` is recorded when the study did not store `autotune.storage` itself (it is redacted
    either way). Raises PresetError when the study was not written by the tuner or has no completed trial.
    """
    attrs = study.user_attrs
    name = study.study_name
    missing = [key for key in contract.REQUIRED if key not in attrs]
    if missing:
        raise PresetError(
            f"study {name!r} was not written by `autotune tune` (missing user attr(s) {', '.join(missing)})"
        )
    objectives = attrs[contract.OBJECTIVES]
    if not isinstance(objectives, list) or [o.get("name") for o in objectives] != list(OBJECTIVES):
        raise PresetError(f"study {name!r}: autotune.objectives must list {', '.join(OBJECTIVES)} in that order")
    directions = [d.name.lower() for d in study.directions]
    if directions != [o.get("direction") for o in objectives]:
        raise PresetError(f"study {name!r}: its directions {directions} disagree with autotune.objectives")

    base = attrs.get(contract.BASE_PARAMS) or {}
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
    storage = attrs.get(contract.STORAGE) or storage_label
    provenance = make_provenance(
        "tuned",
        study={"name": name, "storage": redact_url(storage)},
        sampler=attrs.get(contract.SAMPLER),
        n_trials=len(trials),
        n_complete=len(complete),
        task_fingerprint=attrs.get(contract.TASK_FINGERPRINT),
        task_count=attrs.get(contract.TASK_COUNT),
        task_source=_task_source(attrs.get(contract.TASK_SOURCE)),
        task_digests=_task_digests(attrs.get(contract.TASK_DIGESTS), name),
        search_space=attrs.get(contract.SEARCH_SPACE),
        base_params=base or None,
    )
    # Dated by the last completed trial (not by now), so rebuilding an unchanged study gives an identical file.
    finished = [t.datetime_complete for t in complete if t.datetime_complete is not None]
    if finished:
        provenance["created"] = _utc_iso(max(finished))
    if attrs.get(contract.AUTHOR):
        provenance["author"] = str(attrs[contract.AUTHOR])
    if attrs.get(contract.VERSION):
        provenance["autotune_version"] = str(attrs[contract.VERSION])  # the version that tuned, not this one
    preset = Preset.from_front(
        points,
        category=attrs[contract.CATEGORY],
        model=attrs[contract.MODEL],
        objectives=objectives,
        scorer=attrs.get(contract.SCORER) or {},
        provenance=provenance,
        references=references,
    )
    return [preset]


def _task_source(source: Any) -> dict[str, Any] | None:
    """The study's task source as the preset records it (spec, split, held-out fraction, and the shapes world's
    version when it is not the first), if it was recorded."""
    if not isinstance(source, Mapping):
        return None
    keys = ("spec", "split", "heldout_fraction", "world_version")
    return {k: source[k] for k in keys if source.get(k) is not None} or None


def _task_digests(digests: Any, study_name: str) -> list[str] | None:
    """The digests of the tasks the study saw, for `autotune evaluate`'s overlap check; left out (with a warning)
    beyond MAX_TASK_DIGESTS so the preset stays under its size cap."""
    if not isinstance(digests, list):
        return None
    if len(digests) > MAX_TASK_DIGESTS:
        warnings.warn(f"study {study_name!r} saw {len(digests)} tasks, more than the {MAX_TASK_DIGESTS} a preset "
                      "lists; their digests are left out, so `autotune evaluate` cannot tell whether it scores "
                      "this preset on its own tuning tasks", PresetWarning, stacklevel=3)
        return None
    return sorted(str(d) for d in digests)


def _utc_iso(moment: datetime.datetime) -> str:
    """Optuna stores naive local datetimes; make them UTC ISO strings."""
    if moment.tzinfo is None:
        moment = moment.astimezone()  # interpret as local time
    return moment.astimezone(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _point(trial: FrozenTrial, base: Mapping[str, Any], study_name: str) -> FrontPoint | None:
    values = trial.values or []
    if len(values) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    raw = trial.user_attrs.get(contract.PARAMS)
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
        for k, v in (trial.user_attrs.get(contract.METRICS) or {}).items()
    }
    return FrontPoint(
        params=params,
        values={"fidelity": float(values[0]), "edit_strength": float(values[1])},
        metrics=metrics,
        trial=trial.number,
        paper_point=trial.user_attrs.get(contract.PAPER_POINT),
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
        names = [n for n, s in sorted(by_name.items()) if contract.written_by_autotune(s.user_attrs)]
        if not names:
            raise PresetError(f"no study written by `autotune tune` in {storage_label}")
    out: list[Preset] = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        out.extend(presets_from_study(study, storage_label=storage_label))
    return out


def save_study_preset(study: optuna.Study, presets_dir: str | os.PathLike | None
                      ) -> tuple[Preset | None, InstallResult | None]:
    """Build the study's preset and save it in `presets_dir` (default: the user's presets directory) under its
    standard name, keeping a preset it replaces (`autotune.presets.store.save_preset`); (None, None) when no trial
    has completed yet."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None, None
    preset = presets_from_study(study, storage_label=study.user_attrs.get(contract.STORAGE))[0]
    return preset, save_preset(preset, Path(presets_dir) if presets_dir is not None else None)
