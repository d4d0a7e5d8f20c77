"""`autotune bench`: measure speed and quality against baselines run in the same process; write BENCHMARKS.md.

Examples:
    autotune bench throughput --model shapes --device cpu
    autotune bench all --model shapes --steps 20 --tasks 4 --out BENCHMARKS.md
Each benchmark prints its figures and rewrites its own section of --out (with this command, date and machine).
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from autotune.errors import InputError

_ORDER = ("throughput", "overhead", "efficiency", "quality", "inversion", "memory", "predictor")
_TITLES = {
    "throughput": "1. Tuning throughput: autotune's loop vs. the naive loop",
    "overhead": "2. Engine overhead: one candidate edit vs. its UNet passes alone",
    "efficiency": "3. Sample efficiency: trials to reach 98% of a dense grid's best",
    "quality": "4. Quality on the held-out split: tuned preset vs. the paper's defaults",
    "inversion": "5. Inversion error vs. w_inv (SimInversion replication)",
    "memory": "6. Peak memory of a tuning run",
    "predictor": "7. Per-image guidance (style auto) on the held-out split: predictor vs. the pick and the oracle",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark throughput, overhead, sample efficiency, quality, inversion and memory",
        description="Run a benchmark on the shapes world's tasks, print its figures and rewrite its section of "
        "BENCHMARKS.md. Every ratio is measured against a baseline run in the same process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("which", choices=(*_ORDER, "all"))
    parser.add_argument("--model", default="shapes", help="model to benchmark (short name, folder, file, hub id)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file whose sections are rewritten")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of every edit")
    parser.add_argument("--tasks", type=int, default=8, help="shapes tasks per category")
    parser.add_argument("--categories", default=",".join(_shapes_categories()),
                        help="comma-separated shapes categories (efficiency, quality)")
    parser.add_argument("--category", default="change_color", help="category of throughput, overhead, memory")
    parser.add_argument("--trials", type=int, default=16, help="trials of the throughput and memory tuning runs")
    parser.add_argument("--naive-trials", type=int, help="trials timed in the naive loop (default: all)")
    parser.add_argument("--batch", type=int, default=4, help="trials per batch")
    parser.add_argument("--task-batch", type=int, help="tasks per engine call in the throughput run (default: as "
                        "`autotune tune`, as many as the editor's max_batch target branches hold)")
    parser.add_argument("--no-invert-ahead", dest="invert_ahead", action="store_false",
                        help="throughput: each engine call inverts its own tasks (`autotune tune --no-invert-ahead`)")
    parser.add_argument("--sampler", default="tpe", help="sampler of the throughput run")
    parser.add_argument("--grid", type=int, default=15, help="grid points per axis (efficiency, quality)")
    parser.add_argument("--seeds", type=int, default=5, help="sampler seeds (efficiency)")
    parser.add_argument("--budget", type=int, default=60, help="trial budget per sampler run (efficiency)")
    parser.add_argument("--paper-points", action="store_true",
                        help="efficiency: enqueue the paper points first in every sampler run, as `autotune tune` does")
    parser.add_argument("--jobs", type=int, default=1,
                        help="efficiency: sampler runs in this many worker processes (same figures, less wall time)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (overhead)")
    parser.add_argument("--runs", type=int, default=1, help="runs of the whole throughput comparison; the median "
                        "is reported, with every run's ratio")
    parser.add_argument("--inversion-samples", type=int, default=20, help="rendered scenes (inversion)")
    parser.add_argument("--presets", help="directory of tuned presets (quality, predictor); default: the preset lookup "
                        "order")
    parser.add_argument("--oracle-grid", type=int, default=0, metavar="N",
                        help="predictor: also edit an N x N grid over the search space for the oracle (0: the "
                        "predictor's candidates only)")
    parser.add_argument("--cache-dir", default=".autotune/bench", help="where grid tables are kept between runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); 1 is steadier on a "
                        "machine that other jobs share")
    parser.set_defaults(handler=run)


def _shapes_categories() -> tuple[str, ...]:
    from autotune.bench._common import SHAPES_CATEGORIES

    return SHAPES_CATEGORIES


def command_line(args: argparse.Namespace, which: str) -> str:
    """The exact command that reproduces one benchmark's figures (every option spelled out)."""
    parts = ["autotune", "bench", which, "--model", args.model, "--device", args.device, "--steps", str(args.steps)]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    opts = {
        "throughput": [("--category", args.category), ("--tasks", args.tasks), ("--trials", args.trials),
                       ("--batch", args.batch), ("--task-batch", args.task_batch), ("--sampler", args.sampler),
                       ("--naive-trials", args.naive_trials), ("--runs", args.runs), ("--seed", args.seed)]
        + ([("--no-invert-ahead", True)] if not args.invert_ahead else []),
        "overhead": [("--category", args.category), ("--repeats", args.repeats)],
        "efficiency": [("--categories", args.categories), ("--tasks", args.tasks), ("--grid", args.grid),
                       ("--seeds", args.seeds), ("--budget", args.budget), ("--batch", args.batch),
                       ("--jobs", args.jobs if args.jobs > 1 else None)]
        + ([("--paper-points", True)] if args.paper_points else []),
        "quality": [("--categories", args.categories), ("--tasks", args.tasks), ("--grid", args.grid),
                    ("--presets", args.presets)],
        "inversion": [("--inversion-samples", args.inversion_samples), ("--seed", args.seed)],
        "memory": [("--category", args.category), ("--tasks", args.tasks), ("--trials", args.trials),
                   ("--batch", args.batch)],
        "predictor": [("--categories", args.categories), ("--tasks", args.tasks), ("--presets", args.presets),
                      ("--oracle-grid", args.oracle_grid or None), ("--seed", args.seed)],
    }[which]
    for flag, value in opts:
        if value is True:  # a switch
            parts.append(flag)
        elif value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import optuna

    from autotune.bench import _common, markdown

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    unknown = [c for c in [*categories, args.category] if c not in _common.SHAPES_CATEGORIES]
    if unknown:
        raise InputError(f"not a shapes category: {', '.join(unknown)}; use {', '.join(_common.SHAPES_CATEGORIES)}")
    for name in ("steps", "tasks", "trials", "batch", "grid", "seeds", "budget", "jobs", "repeats", "runs",
                 "inversion_samples"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    which = list(_ORDER) if args.which == "all" else [args.which]
    state: dict = {}
    for name in which:
        result, notes = _run_one(name, args, categories, state)
        machine = _common.machine_info(args.device)
        text = markdown.section(_TITLES[name], command_line(args, name), machine, result.markdown(), notes)
        print(text)
        markdown.write_section(args.out, name, text)
        print(f"(section {name!r} of {args.out} rewritten)\n")
    return 0


def _editor(args: argparse.Namespace, state: dict):
    if "editor" not in state:
        from autotune.engine.editor import Editor

        state["editor"] = Editor.from_pretrained(args.model, device=args.device, progress=False)
    return state["editor"]


def _tasks(category: str, split: str, count: int, seed: int = 0):
    from autotune.shapes.tasks import shapes_tasks

    return shapes_tasks(category, split, count, seed)


def _grids(args: argparse.Namespace, categories: list[str], state: dict):
    from autotune.bench import efficiency
    from autotune.shapes.scoring import ShapesScorer

    if "grids" not in state:
        editor = _editor(args, state)
        state["grids"] = {c: efficiency.cached_grid(editor, _tasks(c, "tune", args.tasks, args.seed), ShapesScorer(),
                                                    args.cache_dir, points=args.grid, steps=args.steps, progress=True)
                          for c in categories}
    return state["grids"]


def _run_one(name: str, args: argparse.Namespace, categories: list[str], state: dict):
    from autotune.bench import efficiency, inversion, memory, overhead, quality, throughput
    from autotune.params import EditParams
    from autotune.shapes.scoring import ShapesScorer

    scorer = ShapesScorer()
    if name == "throughput":
        editor = _editor(args, state)
        tasks = _tasks(args.category, "tune", args.tasks, args.seed)
        return throughput.bench_throughput(editor, tasks, scorer, trials=args.trials, batch=args.batch,
                                           steps=args.steps, sampler=args.sampler, seed=args.seed,
                                           naive_trials=args.naive_trials, task_batch=args.task_batch,
                                           progress=True, runs=args.runs, invert_ahead=args.invert_ahead), ""
    if name == "overhead":
        editor = _editor(args, state)
        task = _tasks(args.category, "tune", 1, args.seed)[0]
        return overhead.bench_overhead(editor, task, EditParams(steps=args.steps), repeats=args.repeats), ""
    if name == "efficiency":
        grids = _grids(args, categories, state)
        return efficiency.bench_efficiency(list(grids.values()), seeds=args.seeds, budget=args.budget,
                                           batch=args.batch, paper_points=args.paper_points, jobs=args.jobs,
                                           progress=True), ""
    if name == "quality":
        editor = _editor(args, state)
        tuned = {}
        for c in categories:
            params, source = quality.tuned_params(editor, c, None, presets=args.presets)
            if params is None:
                params, source = quality.tuned_params(editor, c, _grids(args, [c], {"editor": editor}).get(c),
                                                      presets=args.presets)
            tuned[c] = (params, source)
        heldout = {c: _tasks(c, "heldout", args.tasks, args.seed) for c in categories}
        return quality.bench_quality(editor, scorer, heldout, tuned, progress=True), ""
    if name == "inversion":
        model = _model_folder(args.model)
        return inversion.bench_inversion(model, args.inversion_samples, args.steps, args.seed), ""
    if name == "predictor":
        from autotune.bench import predictor

        editor = _editor(args, state)
        presets = predictor.shipped_presets(editor, categories, args.presets)
        heldout = {c: _tasks(c, "heldout", args.tasks, args.seed) for c in categories}
        return predictor.bench_predictor(editor, scorer, presets, heldout, grid=args.oracle_grid,
                                         cache_dir=args.cache_dir, seed=args.seed, progress=True), ""
    if name == "memory":
        return memory.bench_memory(args.model, args.device, category=args.category, trials=args.trials,
                                   batch=args.batch, tasks=args.tasks, steps=args.steps), ""
    raise InputError(f"unknown benchmark {name!r}")


def _model_folder(model: str) -> str:
    """The shapes measurement loads a diffusers folder; resolve the short names to one."""
    from autotune.engine.checkpoint import SHORT_NAMES

    folder = SHORT_NAMES.get(model, model)
    if not Path(folder).is_dir():
        raise InputError(f"the inversion benchmark needs a local diffusers folder; {model!r} is not one")
    return str(folder)
