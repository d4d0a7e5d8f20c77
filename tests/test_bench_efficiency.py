"""Sample efficiency graded also on a fresh task set, beside the tables the sampler's settings were chosen on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autotune.bench import _common, efficiency

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _table(category: str, shift: int) -> efficiency.GridTable:
    n = 15
    f = np.minimum(np.add.outer(np.arange(n), np.roll(np.arange(n), shift)), 22).astype(float)
    return efficiency.GridTable(category, list(np.linspace(0, 2, n)), list(np.linspace(1, 12, n)), f.tolist(),
                                f.tolist(), ["maximize", "maximize"], tasks=16, steps=10)


def test_each_row_names_its_task_set():
    tables = [_table("add_object", 0), _table("add_object", 5)]
    labels = ["seed 0 (chosen on)", "seed 7 (fresh)"]
    r = efficiency.bench_efficiency(tables, samplers=("random",), seeds=2, budget=8, batch=4, labels=labels)
    assert [row.task_set for row in r.rows] == labels
    assert r.rows[1].needed["random"] == [efficiency.trials_to_reach(tables[1], "random", s, 8, 4)[0] for s in (0, 1)]
    text = r.markdown()
    assert "| add_object | seed 7 (fresh) | 16 |" in text and "| add_object | seed 0 (chosen on) |" in text
    assert "tasks of a fresh seed that no choice has seen" in text
    with pytest.raises(Exception, match="1 labels for 2 tables"):
        efficiency.bench_efficiency(tables, samplers=("random",), seeds=1, budget=2, labels=labels[:1])


def test_cli_grades_the_fresh_task_set_beside_the_chosen_one(tiny_model_dir, tmp_path):
    from autotune.cli import main

    out, figures = tmp_path / "B.md", tmp_path / "eff.json"
    code = main(["bench", "efficiency", "--model", str(tiny_model_dir), "--steps", "1", "--categories",
                 "change_color", "--tasks", "1", "--grid", "2", "--seeds", "1", "--budget", "2", "--fresh-seed", "5",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--json", str(figures)])
    assert code == 0
    rows = json.loads(figures.read_text())["figures"]["rows"]
    assert [r["task_set"] for r in rows] == ["seed 0 (chosen on)", "seed 5 (fresh)"]
    assert "--fresh-seed 5" in out.read_text()
    grids = sorted((tmp_path / "cache").glob("grid-change_color-*.json"))
    assert len(grids) == 2  # one table per task set, each cached under its tasks
    fresh, _ = _common.fresh_shapes_tasks("change_color", "tune", 1, 5)
    assert fresh[0].metadata["seed"] == 5


def test_a_cached_grid_is_not_read_under_other_objectives(tmp_path, monkeypatch):
    """A change of the default objectives (e.g. full success as edit strength) must recompute the tables."""
    import autotune.scoring.objectives as objectives
    from autotune.shapes.scoring import ShapesScorer
    from autotune.shapes.tasks import shapes_tasks

    made = []
    monkeypatch.setattr(efficiency, "grid_scores", lambda *a, **k: made.append(1) or _table("change_color", 0))

    class Model:
        def model_info(self):
            return {"weights": "w", "scheduler": {}}

    tasks = shapes_tasks("change_color", "tune", 1)
    for _ in range(2):
        efficiency.cached_grid(Model(), tasks, ShapesScorer(), tmp_path, points=15, steps=10)
    assert len(made) == 1  # the second read the cached table
    real = objectives.default_objectives

    def full_success(metrics):
        got = real(metrics)
        return objectives.Objectives(got.fidelity, objectives.Objective("edit_strength", "maximize",
                                                                        {"full_success": 1.0}))

    monkeypatch.setattr(objectives, "default_objectives", full_success)
    efficiency.cached_grid(Model(), tasks, ShapesScorer(), tmp_path, points=15, steps=10)
    assert len(made) == 2 and len(list(tmp_path.glob("grid-*.json"))) == 2
