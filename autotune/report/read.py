"""Reading a study for its report: the picks and paper points, the pruned trials, the parameter importances, and
the tasks and model it was tuned on, all from what the tuner recorded (`autotune.tuning.contract`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.params import UNET_METHODS, EditParams
from autotune.presets.schema import STYLES
from autotune.task import EditTask
from autotune.tuning import contract
from autotune.tuning.search_space import PAPER_POINTS


@dataclass
class Pick:
    """A named point of the study: a preset pick or a paper point."""

    name: str
    kind: str  # "pick" | "paper"
    trial: int | None
    params: EditParams
    values: tuple[float, float] | None
    metrics: dict[str, Any]


# ---------------------------------------------------------------------------------------------------------------------
# Reading the study


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and len(t.values) == 2 and all(math.isfinite(v) for v in t.values)]


def pruned_points(study: optuna.Study) -> list[tuple[float, float]]:
    """Pruned trials at their partial means (the tasks seen before they stopped), where the study says how."""
    from autotune.errors import AutotuneError
    from autotune.scoring.objectives import Objectives

    try:
        objectives = Objectives.from_spec(study.user_attrs.get(contract.OBJECTIVES))
    except (AutotuneError, TypeError, AttributeError):
        return []
    points = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        metrics = t.user_attrs.get(contract.METRICS) or {}
        try:
            values = objectives.values(metrics)
        except (KeyError, TypeError, ValueError):
            continue
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            points.append((float(values[0]), float(values[1])))
    return points


def objective_labels(study: optuna.Study) -> list[str]:
    labels = []
    objectives = study.user_attrs.get(contract.OBJECTIVES) or []
    for k, name in enumerate(("fidelity", "edit strength")):
        direction = study.directions[k].name.lower()
        spec = objectives[k] if k < len(objectives) else {}
        terms = " + ".join(f"{w:g}·{m}" if w != 1 else m for m, w in (spec.get("metrics") or {}).items())
        labels.append(f"{name} ({direction}{': ' + terms if terms else ''})")
    return labels


def study_picks(study: optuna.Study) -> list[Pick]:
    """The preset picks (as `autotune.presets.preset` computes them from the study) and the paper points."""
    from autotune.tuning.to_preset import presets_from_study

    by_number = {t.number: t for t in complete_trials(study)}
    out: list[Pick] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preset = presets_from_study(study)[0]
    for style in STYLES:
        if style not in preset.picks:
            continue
        index = preset.picks[style].get("front_index")
        point = preset.front[index] if index is not None else None
        trial = by_number.get(point.trial) if point is not None and point.trial is not None else None
        metrics = dict(trial.user_attrs.get(contract.METRICS, {})) if trial else {}
        out.append(Pick(style, "pick", trial.number if trial else None, preset.picks[style]["params"],
                        tuple(trial.values) if trial else None, metrics))
    for t in by_number.values():
        name = t.user_attrs.get(contract.PAPER_POINT)
        if name:
            params = EditParams.from_dict(t.user_attrs[contract.PARAMS])
            metrics = dict(t.user_attrs.get(contract.METRICS, {}))
            out.append(Pick(name, "paper", t.number, params, tuple(t.values), metrics))
    return out


def paper_default_params(study: optuna.Study, picks: Sequence[Pick]) -> EditParams:
    """The published default as the study ran it: its paper-point trial (SimInversion's (0.5, 7.5) when the study has
    it, else its first, e.g. FlowEdit's), else SimInversion's pair on the base parameters; a flow study's base is
    itself its model's published setting unless the command line changed it, so the model's own is used."""
    papers = [p for p in picks if p.kind == "paper"]
    for p in sorted(papers, key=lambda p: p.name != "siminversion"):
        return p.params
    base = EditParams.from_dict(study.user_attrs.get(contract.BASE_PARAMS) or {})
    if base.method in UNET_METHODS:
        return base.with_(method="siminversion", **PAPER_POINTS["siminversion"])
    from autotune.engine.family import family_for_method

    model = study.user_attrs.get(contract.MODEL) or {}
    return family_for_method(base.method).defaults_for(model, base.method).params


def study_tasks(study: optuna.Study) -> tuple[list[EditTask] | None, str]:
    """The tasks the study was tuned on, checked against its task fingerprint; (None, why) when not available.

    Read from the study attr `autotune.task_source` ({"spec": ..., "split": ..., "heldout_fraction": ...}) when the
    tuner recorded it (a study of a task file or PIE-Bench folder recorded before splits existed has no fraction:
    it saw every task); for the shapes world the tasks are regenerated from the category and count and accepted if
    the fingerprint matches.
    """
    from autotune.task import task_fingerprint

    attrs = study.user_attrs
    category = attrs.get(contract.CATEGORY)
    fingerprint = attrs.get(contract.TASK_FINGERPRINT)
    count = attrs.get(contract.TASK_COUNT)
    candidates: list[tuple[str, Any]] = []
    source = attrs.get(contract.TASK_SOURCE)
    if isinstance(source, dict) and source.get("spec"):
        from autotune.tasks.sources import is_shapes, load_tasks

        fraction = None if is_shapes(source["spec"]) else source.get("heldout_fraction")
        recorded = source.get("split", "tune") if fraction is not None or is_shapes(source["spec"]) else "all"

        def from_source(spec=source["spec"], split=recorded, fraction=fraction,
                        version=int(source.get("world_version", 1))) -> list[EditTask]:
            return load_tasks(spec, category, split, fraction, version)

        candidates.append((f"{source['spec']} ({recorded})", from_source))
    from autotune.shapes.tasks import SHAPES_CATEGORIES, SPLITS, shapes_tasks

    if category in SHAPES_CATEGORIES and isinstance(count, int):
        for split in SPLITS:
            candidates.append((f"shapes:{category} ({split} split, {count} tasks)",
                               lambda split=split: shapes_tasks(category, split, count)))
    for label, load in candidates:
        try:
            tasks = sorted((t for t in load() if t.category == category), key=lambda t: t.id)
        except Exception:  # noqa: BLE001 - a source that no longer loads is simply not the one
            continue
        if tasks and (fingerprint is None or task_fingerprint(tasks) == fingerprint):
            return tasks, label
    return None, ("the study does not say where its tasks come from: the tuner should record the study attr "
                  "`autotune.task_source` = {\"spec\": <--tasks>, \"split\": <--split>}; pass tasks= to write_report")


def study_editor(study: optuna.Study, device: str | None = None) -> Any:
    """An Editor on the model the study was tuned with (`autotune.model`: its local path, else its id)."""
    from autotune.engine.editor import Editor

    info = study.user_attrs.get(contract.MODEL) or {}
    model = info.get("path") if info.get("path") and Path(info["path"]).exists() else info.get("id")
    if not model:
        from autotune.errors import InputError

        raise InputError(f"study {study.study_name!r} records no model (study attr autotune.model)")
    return Editor.from_pretrained(str(model), device=device, scheduler=info.get("scheduler_mode", "checkpoint"),
                                  progress=False)


def importances(study: optuna.Study) -> dict[str, list[tuple[str, float]]]:
    trials = complete_trials(study)
    if len(trials) < 4:
        return {}
    out = {}
    for k, name in enumerate(("fidelity", "edit strength")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(study, target=lambda t, k=k: t.values[k])
            out[name] = [(p, float(v)) for p, v in imp.items()]
        except Exception:  # noqa: BLE001 - importances need varied trials; the page works without them
            continue
    return out
