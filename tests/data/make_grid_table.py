"""Record a grid table of the shapes model for the tuner's tests on a jagged landscape (tests/test_tuner.py).

Each task is graded on its own (`autotune.bench.efficiency.grid_scores` on one task at a time), so the table keeps
every task's metrics at every (w_src, w_tgt) cell of the grid and the tests can replay the tuner task by task:

    python tests/data/make_grid_table.py --category add_object --tasks 8 --steps 10 --points 11 \\
        --out tests/data/grid_add_object.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import torch

from autotune.bench._common import bench_space
from autotune.bench.efficiency import grid_scores
from autotune.engine.editor import Editor
from autotune.shapes.scoring import ShapesScorer
from autotune.shapes.tasks import shapes_tasks

METRICS = ("background_psnr", "edit_success", "full_success", "preservation")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--category", default="add_object")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--points", type=int, default=11)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    editor = Editor.from_pretrained("shapes", device="cpu", progress=False)
    scorer = ShapesScorer()
    tasks = shapes_tasks(args.category, "tune", args.tasks)
    per_task = [grid_scores(editor, [task], scorer, points=args.points, steps=args.steps,
                            space=bench_space(args.steps)) for task in tasks]
    first = per_task[0]
    table = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["tests/data/make_grid_table.py", *sys.argv[1:]]),
        "model": {"id": "shapes", "weights": editor.model_info().get("weights")},
        "category": args.category, "split": "tune", "steps": args.steps,
        "task_ids": [t.id for t in tasks],
        "w_src": first.w_src, "w_tgt": first.w_tgt,
        # metrics[name][task][i_src][j_tgt], rounded to 4 decimals
        "metrics": {m: [[[round(float(cell[m]), 4) for cell in row] for row in g.metrics] for g in per_task]
                    for m in METRICS},
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(table, fh, separators=(",", ":"))
        fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
