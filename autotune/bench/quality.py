"""4. Quality: on each category's held-out split, the tuned preset against SimInversion's (0.5, 7.5) and DDIM-style
(1, 7.5): edit success and fidelity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autotune.bench import markdown
from autotune.bench.efficiency import GridTable
from autotune.params import EditParams
from autotune.task import EditTask
from autotune.tuning.search_space import PAPER_POINTS


@dataclass
class QualityRow:
    category: str
    setting: str
    w_src: float
    w_tgt: float
    edit_success: float
    background_psnr: float
    preservation: float
    full_success: float
    tasks: int


@dataclass
class QualityResult:
    rows: list[QualityRow]
    sources: dict[str, str]  # category -> where the tuned parameters came from

    def markdown(self) -> str:
        table = markdown.table(["category", "parameters", "(w_src, w_tgt)", "edit success", "background PSNR (dB)",
                        "preservation", "full success", "held-out tasks"],
                       [[r.category, r.setting, f"({r.w_src:.3g}, {r.w_tgt:.3g})", f"{r.edit_success:.0%}",
                         r.background_psnr, f"{r.preservation:.0%}", f"{r.full_success:.0%}", r.tasks]
                        for r in self.rows])
        notes = "; ".join(f"{c}: {s}" for c, s in self.sources.items())
        return (table + "\n\nEdit success: the shapes reader finds the asked edit; background PSNR: fidelity outside "
                "the edited region; preservation: share of untouched objects/background read back unchanged; full "
                "success: all three. Only the guidance pair differs between the rows of a category. Tuned "
                f"parameters: {notes}.")


def tuned_params(editor: Any, category: str, grid: GridTable | None = None, style: str = "balanced",
                 presets: Any = None) -> tuple[EditParams | None, str]:
    """The tuned pick for `category`: a tuned preset for this model from the preset store (or `presets`, a
    directory), else the same pick rule applied to the dense grid measured on the tune split; None if neither."""
    from autotune.errors import PresetError
    from autotune.presets.preset import FrontPoint, Preset
    from autotune.presets.store import PresetStore

    try:
        store = PresetStore([Path(presets)]) if presets is not None else PresetStore()
        entry = store.find(category, editor.model_info())
        if entry.preset is not None and entry.preset.kind == "tuned":
            return entry.preset.params(style), f"preset {_shown_path(entry.path)} ({style})"
    except PresetError:
        pass
    if grid is None:
        return None, "no tuned preset for this model and no grid"
    points = []
    for i, s in enumerate(grid.w_src):
        for j, t in enumerate(grid.w_tgt):
            f, e = grid.fidelity[i][j], grid.strength[i][j]
            if math.isfinite(f) and math.isfinite(e):
                points.append(FrontPoint(EditParams(w_src=s, w_tgt=t, steps=grid.steps),
                                         {"fidelity": f, "edit_strength": e}))
    objectives = [{"name": "fidelity", "direction": grid.directions[0], "metrics": {}},
                  {"name": "edit_strength", "direction": grid.directions[1], "metrics": {}}]
    preset = Preset.from_front(points, category=category, model=editor.model_info(), objectives=objectives)
    return preset.params(style), (f"the {style} pick of the {len(grid.w_src)}x{len(grid.w_tgt)} grid's Pareto front "
                                  f"on {grid.tasks} tune-split tasks (no tuned preset for this model)")


def _shown_path(path: Any) -> str:
    """Relative to the working directory when under it: the section is committed and read on other machines."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, TypeError):
        return str(path)


def bench_quality(editor: Any, scorer: Any, heldout: dict[str, Sequence[EditTask]],
                  tuned: dict[str, tuple[EditParams | None, str]], progress: bool = False) -> QualityResult:
    """Edit each held-out task under the tuned pick and the two paper settings in one batch, score, average."""
    from tqdm.auto import tqdm

    rows: list[QualityRow] = []
    sources = {}
    for category, tasks in heldout.items():
        params, source = tuned.get(category, (None, "none"))
        sources[category] = source
        base = params or EditParams()
        settings = [("SimInversion default", base.with_(method="siminversion", **PAPER_POINTS["siminversion"])),
                    ("DDIM-style", base.with_(method="siminversion", **PAPER_POINTS["ddim"]))]
        if params is not None:
            settings.insert(0, ("tuned", params))
        sums = [dict.fromkeys(("edit_success", "background_psnr", "preservation", "full_success"), 0.0)
                for _ in settings]
        for task in tqdm(tasks, desc=f"quality {category}", unit="task", disable=not progress):
            results = editor.edit_task(task, [p for _, p in settings])
            scores = scorer.score(task, torch.stack([r.pixels for r in results]))
            for acc, s in zip(sums, scores, strict=True):
                for k in acc:
                    acc[k] += float(s.get(k, math.nan)) / len(tasks)
            editor.cache.clear()
        for (name, p), acc in zip(settings, sums, strict=True):
            rows.append(QualityRow(category, name, p.w_src.start, p.w_tgt.start, acc["edit_success"],
                                   acc["background_psnr"], acc["preservation"], acc["full_success"], len(tasks)))
    return QualityResult(rows, sources)
