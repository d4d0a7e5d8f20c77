"""Evaluate fixed editing parameters (or a preset) on a task set: images, per-task metrics, a summary table.

    from autotune import Editor, EditParams
    from autotune.evaluation.evaluate import evaluate
    from autotune.scoring import PieBenchScorer
    from autotune.tasks.sources import load_tasks

    editor = Editor.from_pretrained("CompVis/stable-diffusion-v1-4", scheduler="piebench")
    evaluate(editor, load_tasks("/data/PIE-Bench_v1"), EditParams(w_src=0.5, w_tgt=7.5), PieBenchScorer(), "runs/sim")

Writes into `out_dir`:
- ``images/<category>/<task id>.png``: every edit;
- ``results.csv``: one row per task with its parameters and every metric (raw values), and ``seconds``: its
  share of its group's edit time (tasks with the same parameters are edited together) plus its own scoring;
- ``summary.csv`` and ``summary.md``: per category and overall, the mean of each metric (NaN skipped) in
  PIE-Bench's columns and scales (structure distance x10^3, PSNR, LPIPS x10^3, MSE x10^4, SSIM x10^2, CLIP);
- ``run.json``: the model, the scorer's mode and backbones, the parameter source, where the tasks came from, and
  (when the parameters come from presets) how many tasks the presets were tuned on (`autotune.evaluation.overlap`):
  a score on a preset's own tuning tasks is not a held-out score, and the run says so in ``summary.md`` and with a
  `TuningOverlapWarning`.

Resumable: tasks already in ``results.csv`` are not redone. A run directory belongs to one model, scorer
and parameter source; reusing it for another raises `InputError`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune import atomic
from autotune.errors import InputError
from autotune.evaluation.batch import check_prompts, edit_group, edit_groups, tasks_per_call
from autotune.evaluation.overlap import TuningOverlapWarning, tuning_overlap
from autotune.params import EditParams
from autotune.scoring.base import Scorer, metric_info
from autotune.task import EditTask

RESULTS = "results.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
RUN_JSON = "run.json"
log = logging.getLogger(__name__)
_ID_COLUMNS = ("task_id", "category", "image", "method", "w_src", "w_tgt", "params")


@dataclass
class Evaluation:
    """What `evaluate` wrote: per-task rows (raw values) and per-category summary rows (display scale)."""

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    skipped: int  # tasks found done from an earlier run


ParamsSource = EditParams | Callable[[EditTask], EditParams] | Any  # Any: a Preset or PresetStore (has params_for)


def params_for_task(source: ParamsSource, task: EditTask, model_info: dict, style: str | None = None) -> EditParams:
    """EditParams for one task: fixed params, a preset/preset store (by the task's category), or a function."""
    if isinstance(source, EditParams):
        return source
    if hasattr(source, "params_for"):
        return source.params_for(task.category, style, model_info)
    if callable(source):
        return source(task)
    raise TypeError(f"params_or_preset must be EditParams, a Preset, a PresetStore or a function; got {type(source)}")


def describe_source(source: ParamsSource) -> str:
    if isinstance(source, EditParams):
        return json.dumps(source.to_dict(), sort_keys=True)
    label = getattr(source, "label", None) or getattr(source, "description", None)
    return str(label or type(source).__name__)


def evaluate(
    editor,
    tasks: Sequence[EditTask],
    params_or_preset: ParamsSource,
    scorer: Scorer,
    out_dir: str | os.PathLike,
    progress: bool = True,
    style: str | None = None,
    task_batch: int | None = None,
    task_source: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Edit every task, score it, write images and tables into `out_dir` (see module docstring).

    Consecutive tasks with the same parameters are edited together, `task_batch` per engine call (default: the
    editor's `max_batch`; 1 for an engine without `edit_tasks`); a group that fails is retried task by task.
    `task_source` (e.g. {"spec": ..., "split": "heldout", "heldout_fraction": 0.3}) is recorded in run.json and
    summary.md. Warns (`TuningOverlapWarning`) before editing when a preset was tuned on some of the tasks."""
    if task_batch is not None and (isinstance(task_batch, bool) or not isinstance(task_batch, int) or task_batch < 1):
        raise InputError(f"task_batch={task_batch!r} must be a whole number >= 1 (or None: the editor's max_batch)")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"output folder {out}: cannot create it ({exc.strerror or exc})") from None
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise InputError("task ids must be unique within an evaluation; a task source returned duplicates")
    metric_names = list(scorer.metrics())
    run = {
        "model": _jsonable(editor.model_info()),
        "scorer": _jsonable(scorer.describe()),
        "params_source": describe_source(params_or_preset),
        "style": style,
        "metrics": metric_names,
    }
    _check_run(out, run)
    overlap = tuning_overlap(params_or_preset, tasks, run["model"])
    if task_source is not None:
        run["task_source"] = _jsonable(dict(task_source))
    if overlap is not None:
        run["tuning_overlap"] = overlap.to_dict()
        if overlap.message():
            warnings.warn(overlap.message(), TuningOverlapWarning, stacklevel=2)
    atomic.write_text(out / RUN_JSON, json.dumps(run, indent=2, sort_keys=True) + "\n")
    rows = _read_rows(out / RESULTS)
    done = {row["task_id"] for row in rows}
    todo = [t for t in tasks if t.id not in done]
    check_prompts(editor, todo)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="evaluate", unit="task", disable=not progress)
    planned = [(task, params_for_task(params_or_preset, task, run["model"], style)) for task in todo]
    try:
        for group, params in edit_groups(planned, tasks_per_call(editor, task_batch)):
            started = time.perf_counter()
            results = edit_group(editor, group, params)
            seconds = (time.perf_counter() - started) / len(group)  # the group's edit time, shared
            for task, result in zip(group, results, strict=True):
                started = time.perf_counter()
                image_rel = Path("images") / task.category / f"{_safe(task.id)}.png"
                (out / image_rel).parent.mkdir(parents=True, exist_ok=True)
                _save_image(result.image, out / image_rel)
                scores = scorer.score(task, result.pixels[None])[0]
                rows.append(_row(task, params, image_rel, scores, metric_names,
                                 seconds + time.perf_counter() - started))
                _write_rows(out / RESULTS, rows, metric_names)
                bar.update(1)
    finally:
        bar.close()
    wanted = set(ids)
    selected = [row for row in rows if row["task_id"] in wanted]
    summary = summarize(selected, metric_names)
    _write_summary(out, summary, metric_names, run, overlap)
    return Evaluation(out, selected, summary, skipped=len(tasks) - len(todo))


def summarize(rows: Sequence[dict[str, Any]], metric_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-category (then "all") means of each metric, NaN skipped, in display scale."""
    categories = sorted({row["category"] for row in rows})
    groups = [(c, [r for r in rows if r["category"] == c]) for c in categories]
    if len(categories) != 1:
        groups.append(("all", list(rows)))
    summary = []
    for name, group in groups:
        entry: dict[str, Any] = {"category": name, "n": len(group)}
        for metric in metric_names:
            present = [float(r[metric]) for r in group if r.get(metric) not in (None, "")]
            values = [v for v in present if not math.isnan(v)]
            entry[metric] = metric_info(metric).scale * sum(values) / len(values) if values else float("nan")
        summary.append(entry)
    return summary


def _row(task, params, image_rel, scores, metric_names, seconds) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task_id": task.id,
        "category": task.category,
        "image": image_rel.as_posix(),
        "method": params.method,
        "w_src": _guidance(params.w_src),
        "w_tgt": _guidance(params.w_tgt),
        "params": json.dumps(params.to_dict(), sort_keys=True),
    }
    for name in metric_names:
        row[name] = scores.get(name, float("nan"))
    row["seconds"] = round(seconds, 3)
    return row


def _guidance(value) -> Any:
    return value.start if getattr(value, "is_constant", False) else json.dumps(value.to_dict(), sort_keys=True)


def _safe(task_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id).lstrip(".") or "task"


def _columns(metric_names) -> list[str]:
    return [*_ID_COLUMNS, *metric_names, "seconds"]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: Sequence[dict[str, Any]], metric_names) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(metric_names), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def _write_summary(out: Path, summary, metric_names, run, overlap=None) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category", "n", *[metric_info(m).column for m in metric_names]])
    for entry in summary:
        writer.writerow([entry["category"], entry["n"], *[_fmt(entry[m]) for m in metric_names]])
    atomic.write_text(out / SUMMARY_CSV, buffer.getvalue())
    header = ["category", "n", *[metric_info(m).column for m in metric_names]]
    lines = [
        f"scorer: {_scorer_label(run['scorer'])}; model: {run['model'].get('id', '?')}",
        f"params: {run['params_source']}",
    ]
    source = run.get("task_source")
    if source:
        fraction = source.get("heldout_fraction")
        lines.append(f"tasks: {source.get('spec')}, split {source.get('split')}"
                     + (f" (held-out fraction {fraction:g})" if fraction is not None else ""))
    if overlap is not None:
        lines.append(overlap.summary_line())
    lines += [
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for entry in summary:
        cells = [entry["category"], str(entry["n"]), *[_fmt(entry[m]) for m in metric_names]]
        lines.append("| " + " | ".join(cells) + " |")
    atomic.write_text(out / SUMMARY_MD, "\n".join(lines) + "\n")


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.2f}"


def _check_run(out: Path, run: dict) -> None:
    path = out / RUN_JSON
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        keys = ("params_source", "style", "metrics")
        differs = [k for k in keys if previous.get(k) != run.get(k)]
        if previous.get("model", {}).get("id") != run["model"].get("id"):
            differs.append("model")
        if _scorer_label(previous.get("scorer", {})) != _scorer_label(run["scorer"]):
            differs.append("scorer or scorer mode")
        if differs:
            raise InputError(
                f"{out} holds an evaluation with a different {', '.join(differs)}; "
                "use a new --out directory (or delete this one) so results do not mix"
            )


def _scorer_label(describe: dict) -> str:
    name, mode = describe.get("scorer", "?"), describe.get("mode")
    return f"{name} ({mode} mode)" if mode else str(name)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _save_image(image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


