"""Drawing a study's figures: the Pareto front with the paper points and the preset picks, parameter slices, and an
edit grid (source | paper default | conservative | balanced | aggressive)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from autotune import atomic
from autotune.params import EditParams
from autotune.report.read import Pick, complete_trials, objective_labels, pruned_points
from autotune.task import EditTask
from autotune.tuning import contract

PICK_COLORS = {"conservative": "#1b9e77", "balanced": "#7570b3", "aggressive": "#d95f02"}
PICK_SIZES = {"conservative": 300, "balanced": 170, "aggressive": 70}  # nested rings stay visible when picks coincide
PAPER_COLORS = {"siminversion": "#e7298a", "ddim": "#444444"}
PAPER_SIZES = {"siminversion": 380, "ddim": 150}

def _save(fig: Any, path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        os.chmod(tmp, atomic.file_mode())  # as readable as the index.html beside it
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def plot_front(study: optuna.Study, picks: Sequence[Pick], path: Path) -> Path:
    """Every COMPLETE trial, the pruned ones at their partial means, the Pareto front, the paper points and the
    preset picks."""
    from matplotlib.figure import Figure

    trials = complete_trials(study)
    front = sorted({t.number for t in study.best_trials})
    labels = objective_labels(study)
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.subplots()
    pruned = pruned_points(study)
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
    ax.set_title(f"{study.study_name}: {study.user_attrs.get(contract.CATEGORY, '')}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    return _save(fig, path)


def plot_slices(study: optuna.Study, path: Path) -> Path:
    """Each searched parameter against each objective (colour: trial order)."""
    from matplotlib.figure import Figure

    trials = complete_trials(study)
    names = sorted({k for t in trials for k, v in t.params.items() if isinstance(v, (int, float))})
    names = names or ["w_src"]
    labels = objective_labels(study)
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
