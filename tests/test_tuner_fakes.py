"""A fake editor and scorer with a known optimum, for testing the tuner's loop without a diffusion model.

The editor writes the candidate's (w_src, w_tgt) into the pixels; the scorer reads them back and returns smooth
metrics whose trade-off is known exactly:

    preservation = 0.9 - (w_src - 0.5)^2 - 0.03 * w_tgt + task offset      (fidelity, maximize)
    full_success = 0.9 - 0.5 * (w_src - 0.5)^2 - exp(-w_tgt / 3) + task offset  (edit strength, maximize)

so the Pareto set is w_src = 0.5 with w_tgt anywhere, the SimInversion point (0.5, 7.5) is on it and the DDIM
point (1, 7.5) is dominated. Run as a script it is a tuner worker process (for the storage tests).

`GridLandscape` and `GridScorer` are the opposite: a jagged landscape recorded from the shipped shapes model
(tests/data/grid_add_object.json, made by tests/data/make_grid_table.py: 8 add_object tasks, 10 steps, an 11 x 11
grid, each task's metrics at every cell). Pass/fail metrics over 8 tasks move in steps of 1/8, neighbouring cells
differ by up to a third of the range, and the best scalarised cells are 4 of 121. The scorer reads the candidate's
(w_src, w_tgt) back from the fake editor's pixels and returns the recorded metrics of the nearest cell.
This module holds no tests; pytest collects it and finds none.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from autotune.params import EditParams
from autotune.task import EditTask

SIZE = 8


def true_values(w_src: float, w_tgt: float, offset: float = 0.0) -> tuple[float, float]:
    fid = 0.9 - (w_src - 0.5) ** 2 - 0.03 * w_tgt + offset
    strength = 0.9 - 0.5 * (w_src - 0.5) ** 2 - math.exp(-w_tgt / 3) + offset
    return fid, strength


def make_tasks(n: int = 3, category: str = "change_color", seed: int = 0) -> list[EditTask]:
    rng = np.random.default_rng(seed)
    tasks = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        tasks.append(EditTask(id=f"t{i:02d}", image=Image.fromarray(pixels), source_prompt=f"a red square {i}",
                              target_prompt=f"a blue square {i}", category=category, blend_words=("red", "blue"),
                              metadata={"offset": float(rng.normal(0, 0.05))}))
    return tasks


@dataclass
class Result:
    pixels: torch.Tensor
    params: EditParams


class FakeEditor:
    """Counts its batched calls. `fail_above`: w_tgt above it raises; `oom_above`: raises an OOM-like error;
    `delay`: seconds per call (so a worker can be killed mid-trial)."""

    def __init__(self, fail_above: float | None = None, oom_above: float | None = None, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail_above, self.oom_above, self.delay = fail_above, oom_above, delay

    def model_info(self) -> dict:
        return {"id": "fake/editor", "revision": "0", "scheduler": {"_class_name": "DDIMScheduler"}}

    def edit_task(self, task: EditTask, candidates: list[EditParams]) -> list[Result]:
        self.calls.append((task.id, len(candidates)))
        if self.delay:
            time.sleep(self.delay)
        out = []
        for p in candidates:
            w_src, w_tgt = p.w_src.start, p.w_tgt.start
            if self.oom_above is not None and w_tgt > self.oom_above:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if self.fail_above is not None and w_tgt > self.fail_above:
                raise RuntimeError(f"fake engine failure at w_tgt={w_tgt:.2f}")
            x = torch.zeros(3, SIZE, SIZE)
            x[0] = w_src / 2.0
            x[1] = w_tgt / 12.0
            x[2] = 0.5 + task.metadata["offset"]
            out.append(Result(x, p))
        return out


class FakeScorer:
    """Reads (w_src, w_tgt) back from the pixels. `nan_below`: preservation is NaN when w_src is below it."""

    def __init__(self, nan_below: float | None = None) -> None:
        self.nan_below = nan_below
        self.calls = 0

    def metrics(self) -> dict[str, str]:
        return {"preservation": "maximize", "full_success": "maximize", "background_psnr": "maximize"}

    def describe(self) -> dict:
        return {"mode": "fake", "version": 1}

    def score(self, task: EditTask, edited: torch.Tensor) -> list[dict[str, float]]:
        self.calls += 1
        out = []
        for x in edited:
            w_src, w_tgt = float(x[0].mean()) * 2.0, float(x[1].mean()) * 12.0
            offset = float(x[2].mean()) - 0.5
            fid, strength = true_values(w_src, w_tgt, offset)
            if self.nan_below is not None and w_src < self.nan_below:
                fid = math.nan
            out.append({"preservation": fid, "full_success": strength, "background_psnr": 30 + 10 * fid})
        return out


GRID_TABLE = Path(__file__).resolve().parent / "data" / "grid_add_object.json"


class GridLandscape:
    """A recorded grid table: `metrics[name][task, i_src, j_tgt]` over the grid `w_src` x `w_tgt`."""

    def __init__(self, path: Path = GRID_TABLE) -> None:
        table = json.loads(path.read_text(encoding="utf-8"))
        self.command = table["command"]
        self.w_src, self.w_tgt = np.array(table["w_src"]), np.array(table["w_tgt"])
        self.metrics = {name: np.array(values, dtype=float) for name, values in table["metrics"].items()}
        self.n_tasks = len(table["task_ids"])

    def tasks(self) -> list[EditTask]:
        """One fake task per recorded task (the fake editor's offset is 0: the table holds the truth)."""
        tasks = make_tasks(self.n_tasks, category="add_object")
        for i, task in enumerate(tasks):
            task.metadata.update(offset=0.0, index=i)
        return tasks

    def cell(self, w_src: float, w_tgt: float) -> tuple[int, int]:
        """The nearest cell; values are rounded to 1e-6 first, so that a value read back from float32 pixels and the
        trial's own value find the same cell, and a value halfway between two cells takes the lower one."""
        w_src, w_tgt = round(w_src, 6), round(w_tgt, 6)
        return int(np.abs(self.w_src - w_src).argmin()), int(np.abs(self.w_tgt - w_tgt).argmin())

    def task_metrics(self, task: int, w_src: float, w_tgt: float) -> dict[str, float]:
        i, j = self.cell(w_src, w_tgt)
        return {name: float(values[task, i, j]) for name, values in self.metrics.items()}

    def means(self, w_src: float, w_tgt: float) -> dict[str, float]:
        i, j = self.cell(w_src, w_tgt)
        return {name: float(values[:, i, j].mean()) for name, values in self.metrics.items()}


class GridScorer:
    """The shapes scorer's metrics, read from a `GridLandscape` at the candidate's nearest cell."""

    def __init__(self, landscape: GridLandscape) -> None:
        self.landscape = landscape

    def metrics(self) -> dict[str, str]:
        return dict.fromkeys(self.landscape.metrics, "maximize")

    def describe(self) -> dict:
        return {"scorer": "recorded grid", "command": self.landscape.command}

    def score(self, task: EditTask, edited: torch.Tensor) -> list[dict[str, float]]:
        return [self.landscape.task_metrics(task.metadata["index"], float(x[0].mean()) * 2.0,
                                            float(x[1].mean()) * 12.0) for x in edited]


def main(argv: list[str] | None = None) -> int:
    """A tuner worker: `python tests/test_tuner_fakes.py --storage URL --study NAME --trials N ...`."""
    from autotune.tuning.storage import open_storage
    from autotune.tuning.tuner import tune

    ap = argparse.ArgumentParser()
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--trials", type=int, required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--project-dir", default=None)
    ap.add_argument("--sampler", default="random")
    ap.add_argument("--start-file", help="after the imports, write <this>.<pid>.ready and wait for this file")
    args = ap.parse_args(argv)
    if args.start_file:  # a start line, so that slow imports do not let one worker finish before the other begins
        import os

        open(f"{args.start_file}.{os.getpid()}.ready", "w").close()
        while not os.path.exists(args.start_file):
            time.sleep(0.05)
    store = open_storage(args.storage, project_dir=args.project_dir, heartbeat_interval=1, grace_period=3)
    result = tune(FakeEditor(delay=args.delay), make_tasks(args.tasks), category="change_color", trials=args.trials,
                  batch=args.batch, storage=store, study_name=args.study, sampler=args.sampler, seed=args.seed,
                  scorer=FakeScorer(), progress=False, prune=False, artifacts=False, save_preset=False)
    print(f"worker done: {result.counts} calls={result.engine_calls}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
