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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autotune import atomic
from autotune.presets.schema import STYLES
from autotune.report.draw import plot_edit_grid, plot_front, plot_slices
from autotune.report.read import (
    Pick,
    complete_trials,
    importances,
    objective_labels,
    paper_default_params,
    study_editor,
    study_picks,
    study_tasks,
)
from autotune.task import EditTask
from autotune.tuning import contract


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.4g}"
    return "-" if v is None else html.escape(str(v))


def _html(study: optuna.Study, picks: Sequence[Pick], images: dict[str, str], notes: list[str],
          importances: dict[str, list[tuple[str, float]]]) -> str:
    attrs = study.user_attrs
    model = attrs.get(contract.MODEL) or {}
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {s.name.lower(): states.count(s) for s in TrialState if states.count(s)}
    labels = objective_labels(study)
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
            f"category <b>{_fmt(attrs.get(contract.CATEGORY))}</b>",
            f"model <b>{_fmt(model.get('id'))}</b>",
            f"storage {_fmt(attrs.get(contract.STORAGE))}",
            f"sampler {_fmt((attrs.get(contract.SAMPLER) or {}).get('name'))}",
            f"{_fmt(attrs.get(contract.TASK_COUNT))} tasks",
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
    if not complete_trials(study):
        raise InputError(f"study {study.study_name!r} has no completed trial yet; nothing to report")
    picks = study_picks(study)
    images = {"front": plot_front(study, picks, out / "front.png").name,
              "slices": plot_slices(study, out / "slices.png").name}
    notes: list[str] = []
    if edits:
        chosen, why = (sorted(tasks, key=lambda t: t.id), "given") if tasks is not None else study_tasks(study)
        category = study.user_attrs.get(contract.CATEGORY)
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
        "category": study.user_attrs.get(contract.CATEGORY),
        "model": (study.user_attrs.get(contract.MODEL) or {}).get("id"),
        "objectives": objective_labels(study),
        "points": [{"name": p.name, "kind": p.kind, "trial": p.trial, "params": p.params.to_dict(),
                    "values": list(p.values) if p.values else None, "metrics": p.metrics} for p in picks],
        "front": [{"trial": t.number, "params": t.params, "values": list(t.values)} for t in study.best_trials],
        "importances": importances(study),
        "images": images,
        "notes": notes,
    }
    atomic.write_text(out / "figures.json", json.dumps(figures, indent=2, default=str) + "\n")
    index = out / "index.html"
    atomic.write_text(index, _html(study, picks, images, notes, figures["importances"]))
    return index
