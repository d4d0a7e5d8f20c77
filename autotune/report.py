"""A study's result as pictures: the Pareto front with the paper points and the preset picks, parameter slices,
an edit grid (source | paper default | conservative | balanced | aggressive), and one index.html with the figures.

    from autotune.report import write_report
    index = write_report(study, "reports/sd15-color")                     # loads the model and tasks from the study
    index = write_report(result.study, out, editor=editor, tasks=tasks)  # what `autotune tune --report` calls

Everything comes from what the tuner recorded on the study (docs/tuning.md, "The study contract"): the user attrs
`autotune.model`, `autotune.category`, `autotune.objectives`, `autotune.task_fingerprint`, `autotune.task_count`
(and `autotune.task_source` when recorded), and per trial `params`, `metrics` and `paper_point`.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune import atomic
from autotune.params import EditParams
from autotune.search_space import PAPER_POINTS
from autotune.tasks import EditTask

STYLES = ("conservative", "balanced", "aggressive")
PICK_COLORS = {"conservative": "#1b9e77", "balanced": "#7570b3", "aggressive": "#d95f02"}
PICK_SIZES = {"conservative": 300, "balanced": 170, "aggressive": 70}  # nested rings stay visible when picks coincide
PAPER_COLORS = {"siminversion": "#e7298a", "ddim": "#444444"}
PAPER_SIZES = {"siminversion": 380, "ddim": 150}


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


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and len(t.values) == 2 and all(math.isfinite(v) for v in t.values)]


def _pruned_points(study: optuna.Study) -> list[tuple[float, float]]:
    """Pruned trials at their partial means (the tasks seen before they stopped), where the study says how."""
    from autotune.errors import AutotuneError
    from autotune.objectives import Objectives

    try:
        objectives = Objectives.from_spec(study.user_attrs.get("autotune.objectives"))
    except (AutotuneError, TypeError, AttributeError):
        return []
    points = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        metrics = t.user_attrs.get("metrics") or {}
        try:
            values = objectives.values(metrics)
        except (KeyError, TypeError, ValueError):
            continue
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            points.append((float(values[0]), float(values[1])))
    return points


def _objective_labels(study: optuna.Study) -> list[str]:
    labels = []
    objectives = study.user_attrs.get("autotune.objectives") or []
    for k, name in enumerate(("fidelity", "edit strength")):
        direction = study.directions[k].name.lower()
        spec = objectives[k] if k < len(objectives) else {}
        terms = " + ".join(f"{w:g}·{m}" if w != 1 else m for m, w in (spec.get("metrics") or {}).items())
        labels.append(f"{name} ({direction}{': ' + terms if terms else ''})")
    return labels


def study_picks(study: optuna.Study) -> list[Pick]:
    """The preset picks (as `autotune.preset` computes them from the study) and the paper points."""
    from autotune.preset_from_study import presets_from_study

    by_number = {t.number: t for t in _complete(study)}
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
        out.append(Pick(style, "pick", trial.number if trial else None, preset.picks[style]["params"],
                        tuple(trial.values) if trial else None, dict(trial.user_attrs.get("metrics", {})) if trial
                        else {}))
    for t in by_number.values():
        name = t.user_attrs.get("paper_point")
        if name:
            out.append(Pick(name, "paper", t.number, EditParams.from_dict(t.user_attrs["params"]), tuple(t.values),
                            dict(t.user_attrs.get("metrics", {}))))
    return out


def paper_default_params(study: optuna.Study, picks: Sequence[Pick]) -> EditParams:
    """SimInversion's (0.5, 7.5) as the study ran it: its paper-point trial, else the base parameters at 0.5/7.5."""
    for p in picks:
        if p.kind == "paper" and p.name == "siminversion":
            return p.params
    base = EditParams.from_dict(study.user_attrs.get("autotune.base_params") or {})
    return base.with_(method="siminversion", **PAPER_POINTS["siminversion"])


def study_tasks(study: optuna.Study) -> tuple[list[EditTask] | None, str]:
    """The tasks the study was tuned on, checked against its task fingerprint; (None, why) when not available.

    Read from the study attr `autotune.task_source` ({"spec": ..., "split": ...}) when the tuner recorded it; for
    the shapes world the tasks are regenerated from the category and count and accepted if the fingerprint matches.
    """
    from autotune.tuner import task_fingerprint

    attrs = study.user_attrs
    category = attrs.get("autotune.category")
    fingerprint = attrs.get("autotune.task_fingerprint")
    count = attrs.get("autotune.task_count")
    candidates: list[tuple[str, Any]] = []
    source = attrs.get("autotune.task_source")
    if isinstance(source, dict) and source.get("spec"):
        def from_source() -> list[EditTask]:
            from autotune.task_sources import load_tasks

            return load_tasks(source["spec"], category, source.get("split", "tune"))

        candidates.append((f"{source['spec']} ({source.get('split', 'tune')})", from_source))
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
    from autotune.editor import Editor

    info = study.user_attrs.get("autotune.model") or {}
    model = info.get("path") if info.get("path") and Path(info["path"]).exists() else info.get("id")
    if not model:
        from autotune.errors import InputError

        raise InputError(f"study {study.study_name!r} records no model (study attr autotune.model)")
    return Editor.from_pretrained(str(model), device=device, scheduler=info.get("scheduler_mode", "checkpoint"),
                                  progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# Pictures


def _save(fig: Any, path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def plot_front(study: optuna.Study, picks: Sequence[Pick], path: Path) -> Path:
    """Every COMPLETE trial, the pruned ones at their partial means, the Pareto front, the paper points and the
    preset picks."""
    from matplotlib.figure import Figure

    trials = _complete(study)
    front = sorted({t.number for t in study.best_trials})
    labels = _objective_labels(study)
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.subplots()
    pruned = _pruned_points(study)
    if pruned:
        ax.scatter([p[0] for p in pruned], [p[1] for p in pruned], s=16, marker="x", c="#d0a0a0", linewidths=1,
                   label=f"pruned ({len(pruned)}), mean over the tasks seen", zorder=0)
    xs = [t.values[0] for t in trials]
    ys = [t.values[1] for t in trials]
    ax.scatter(xs, ys, s=18, c="#bbbbbb", label=f"trials ({len(trials)} complete)", zorder=1)
    pts = sorted((t.values[0], t.values[1]) for t in trials if t.number in front)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color="#1f78b4", ms=5, lw=1.2,
                label=f"Pareto front ({len(pts)})", zorder=2)
    for p in picks:
        if p.values is None:
            continue
        if p.kind == "paper":
            ax.scatter([p.values[0]], [p.values[1]], marker="*", s=PAPER_SIZES.get(p.name, 220),
                       c=PAPER_COLORS.get(p.name, "k"), edgecolors="white", linewidths=0.8, zorder=4,
                       label=f"paper point {p.name} ({p.params.w_src.start:g}, {p.params.w_tgt.start:g})")
        else:
            ax.scatter([p.values[0]], [p.values[1]], marker="o", s=PICK_SIZES[p.name], facecolors="none",
                       edgecolors=PICK_COLORS[p.name], linewidths=2.2, zorder=5,  # hollow: above a paper star it marks
                       label=f"{p.name} pick ({p.params.w_src.start:.3g}, {p.params.w_tgt.start:.3g})")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(f"{study.study_name}: {study.user_attrs.get('autotune.category', '')}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    return _save(fig, path)


def plot_slices(study: optuna.Study, path: Path) -> Path:
    """Each searched parameter against each objective (colour: trial order)."""
    from matplotlib.figure import Figure

    trials = _complete(study)
    names = sorted({k for t in trials for k, v in t.params.items() if isinstance(v, (int, float))})
    names = names or ["w_src"]
    labels = _objective_labels(study)
    fig = Figure(figsize=(3.4 * len(names) + 1.2, 6.0), layout="constrained")
    axes = fig.subplots(2, len(names), squeeze=False)
    order = [t.number for t in trials]
    for j, name in enumerate(names):
        for k in range(2):
            ax = axes[k][j]
            pts = [(t.params[name], t.values[k], t.number) for t in trials if name in t.params]
            if pts:
                sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=[p[2] for p in pts], cmap="viridis",
                                s=20, vmin=min(order), vmax=max(order))
            ax.set_xlabel(name)
            if j == 0:
                ax.set_ylabel(labels[k], fontsize=8)
            ax.grid(alpha=0.3)
    if trials:
        fig.colorbar(sc, ax=axes.ravel().tolist(), label="trial number", shrink=0.8)
    fig.suptitle("parameter slices", fontsize=10)
    return _save(fig, path)


def plot_edit_grid(editor: Any, tasks: Sequence[EditTask], columns: Sequence[tuple[str, EditParams]],
                   path: Path) -> Path:
    """Rows: tasks; columns: the source, then each named parameter set (edited in one batch per task)."""
    from matplotlib.figure import Figure

    rows = []
    for task in tasks:
        results = editor.edit_task(task, [p for _, p in columns])
        rows.append([np.asarray(editor.prepare_image(task.image))] + [np.asarray(r.image) for r in results])
    ncols = len(columns) + 1
    fig = Figure(figsize=(1.9 * ncols, 1.9 * len(rows) + 0.7), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    titles = ["source"] + [f"{name}\n({p.w_src.start:.3g}, {p.w_tgt.start:.3g})" for name, p in columns]
    for i, (task, images) in enumerate(zip(tasks, rows, strict=True)):
        for j, image in enumerate(images):
            ax = axes[i][j]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
        axes[i][0].set_ylabel(_wrap(task.target_prompt, 28), fontsize=7)
    fig.suptitle("edit grid: source | paper default | conservative | balanced | aggressive  (w_src, w_tgt)",
                 fontsize=9)
    return _save(fig, path)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line])


# ---------------------------------------------------------------------------------------------------------------------
# The page


def _importances(study: optuna.Study) -> dict[str, list[tuple[str, float]]]:
    trials = _complete(study)
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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.4g}"
    return "-" if v is None else html.escape(str(v))


def _html(study: optuna.Study, picks: Sequence[Pick], images: dict[str, str], notes: list[str],
          importances: dict[str, list[tuple[str, float]]]) -> str:
    attrs = study.user_attrs
    model = attrs.get("autotune.model") or {}
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {s.name.lower(): states.count(s) for s in TrialState if states.count(s)}
    labels = _objective_labels(study)
    metric_names = sorted({m for p in picks for m, v in p.metrics.items() if isinstance(v, (int, float))})
    head = ["point", "trial", "w_src", "w_tgt", labels[0], labels[1], *metric_names]
    rows = []
    for p in picks:
        vals = p.values or (math.nan, math.nan)
        rows.append([("paper point " if p.kind == "paper" else "pick ") + p.name, p.trial, p.params.w_src.start,
                     p.params.w_tgt.start, vals[0], vals[1], *[p.metrics.get(m) for m in metric_names]])
    front = sorted(study.best_trials, key=lambda t: -t.values[0] if study.directions[0].name == "MAXIMIZE"
                   else t.values[0])
    front_rows = [[t.number, *[_fmt(v) for k, v in sorted(t.params.items())], _fmt(t.values[0]), _fmt(t.values[1])]
                  for t in front]
    param_names = sorted({k for t in front for k in t.params})

    def table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
        th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        tr = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, str) and c.startswith('<') else _fmt(c)}</td>"
                                      for c in row) + "</tr>" for row in body)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table>"

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>autotune study {html.escape(study.study_name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}"
        ".note{color:#a33}</style></head><body>",
        f"<h1>Study {html.escape(study.study_name)}</h1>",
        "<p>" + " · ".join([
            f"category <b>{_fmt(attrs.get('autotune.category'))}</b>",
            f"model <b>{_fmt(model.get('id'))}</b>",
            f"storage {_fmt(attrs.get('autotune.storage'))}",
            f"sampler {_fmt((attrs.get('autotune.sampler') or {}).get('name'))}",
            f"{_fmt(attrs.get('autotune.task_count'))} tasks",
            "trials: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
        ]) + "</p>",
        "<h2>Picks and paper points</h2>",
        table(head, rows),
    ]
    for key, title in (("front", "Pareto front"), ("slices", "Parameter slices"), ("edits", "Edit grid")):
        if key in images:
            parts.append(f"<h2>{title}</h2><img src='{html.escape(images[key])}' alt='{title}'>")
    for note in notes:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    if importances:
        parts.append("<h2>Parameter importances (fANOVA)</h2>")
        parts.append(table(["objective", "parameter", "importance"],
                           [[obj, p, v] for obj, imp in importances.items() for p, v in imp]))
    parts.append("<h2>Pareto front</h2>")
    parts.append(table(["trial", *param_names, labels[0], labels[1]], front_rows))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(study: optuna.Study, out_dir: str | os.PathLike, *, editor: Any = None,
                 tasks: Sequence[EditTask] | None = None, edit_tasks: int = 4, edits: bool = True,
                 device: str | None = None) -> Path:
    """Write front.png, slices.png, edits.png (unless `edits=False` or no model/tasks), figures.json and
    index.html into `out_dir`; return the path of index.html.

    `editor` and `tasks` default to the study's model and tasks (see `study_editor`, `study_tasks`); the tuner
    passes its own to avoid loading them twice. The edit grid uses the first `edit_tasks` tasks by id.
    """
    from autotune.errors import InputError

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not _complete(study):
        raise InputError(f"study {study.study_name!r} has no completed trial yet; nothing to report")
    picks = study_picks(study)
    images = {"front": plot_front(study, picks, out / "front.png").name,
              "slices": plot_slices(study, out / "slices.png").name}
    notes: list[str] = []
    if edits:
        chosen, why = (sorted(tasks, key=lambda t: t.id), "given") if tasks is not None else study_tasks(study)
        category = study.user_attrs.get("autotune.category")
        if chosen is not None:
            chosen = [t for t in chosen if category is None or t.category == category][:edit_tasks]
        if not chosen:
            notes.append(f"No edit grid: {why}")
        else:
            editor = editor if editor is not None else study_editor(study, device)
            by_name = {p.name: p.params for p in picks if p.kind == "pick"}
            columns = [("paper default", paper_default_params(study, picks))]
            columns += [(s, by_name[s]) for s in STYLES if s in by_name]
            images["edits"] = plot_edit_grid(editor, chosen, columns, out / "edits.png").name
    figures = {
        "study": study.study_name,
        "category": study.user_attrs.get("autotune.category"),
        "model": (study.user_attrs.get("autotune.model") or {}).get("id"),
        "objectives": _objective_labels(study),
        "points": [{"name": p.name, "kind": p.kind, "trial": p.trial, "params": p.params.to_dict(),
                    "values": list(p.values) if p.values else None, "metrics": p.metrics} for p in picks],
        "front": [{"trial": t.number, "params": t.params, "values": list(t.values)} for t in study.best_trials],
        "importances": _importances(study),
        "images": images,
        "notes": notes,
    }
    atomic.write_text(out / "figures.json", json.dumps(figures, indent=2, default=str) + "\n")
    index = out / "index.html"
    atomic.write_text(index, _html(study, picks, images, notes, figures["importances"]))
    return index
