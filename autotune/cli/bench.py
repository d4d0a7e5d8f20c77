"""`autotune bench`: measure speed and quality against baselines run in the same process; write BENCHMARKS.md.

Examples:
    autotune bench throughput --model shapes --device cpu --runs 5
    autotune bench quality --model shapes --tasks 60
    autotune bench gpu --device cuda                      # full-size architectures, random weights, ~8 minutes
    autotune bench all --model shapes --steps 20 --tasks 4 --out BENCHMARKS.md
Each benchmark prints its figures and rewrites its own section of --out (with this command, date and machine);
--json also writes every figure (every run, every task's scores) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autotune import atomic
from autotune.cli._common import HelpFormatter
from autotune.errors import InputError

# As autotune.bench._common.BENCHMARKS, spelled out so that building the parser does not import torch.
_ORDER = ("throughput", "overhead", "efficiency", "quality", "inversion", "memory", "predictor", "gpu")
_TITLES = {
    "throughput": "1. Tuning throughput, like for like: autotune's loop vs. the naive and strong naive loops",
    "overhead": "2. Engine overhead: one candidate edit vs. its denoiser passes alone",
    "efficiency": "3. Sample efficiency: trials to reach 98% of a dense grid's best",
    "quality": "4. Quality on a fresh held-out set: preset picks vs. the published settings, with intervals",
    "inversion": "5. Inversion error vs. w_inv (SimInversion replication)",
    "memory": "6. Peak memory of a tuning run",
    "predictor": "7. Per-image guidance (style auto) on a fresh held-out set: predictor vs. the pick and the oracle",
    "gpu": "8. Full-size architectures on a GPU (random weights)",
}
# --tasks when not given: per category, what each benchmark's figures need
_TASKS = {"throughput": 8, "overhead": 1, "efficiency": 16, "quality": 60, "memory": 8, "predictor": 60}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark throughput, overhead, sample efficiency, quality, inversion, memory, the per-image "
        "predictor and full-size architectures on a GPU",
        description="Run a benchmark on the shapes world's tasks, print its figures and rewrite its section of "
        "BENCHMARKS.md. Every ratio is measured against a baseline run in the same process.",
        formatter_class=HelpFormatter)
    parser.add_argument("which", choices=(*_ORDER, "all"), help="the benchmark; all: every one but gpu")
    parser.add_argument("--model", default="shapes", help="model to benchmark (short name, folder, file, hub id)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file whose sections are rewritten")
    parser.add_argument("--steps", type=int, help="DDIM steps of every edit (default 50; gpu: the model's bench.json)")
    parser.add_argument("--tasks", type=int, help="shapes tasks per category (default: throughput and memory 8, "
                        "overhead 1, efficiency 16, quality and predictor 60; gpu: the model's bench.json)")
    parser.add_argument("--categories", default=",".join(_shapes_categories()),
                        help="comma-separated shapes categories (efficiency, quality, predictor)")
    parser.add_argument("--category", default="change_color", help="category of throughput, overhead, memory")
    parser.add_argument("--trials", type=int, help="trials of the throughput and memory tuning runs (default 16; gpu: "
                        "the model's bench.json)")
    parser.add_argument("--naive-trials", type=int, help="trials timed in the naive loop (default: all; the strong "
                        "naive loop always runs all)")
    parser.add_argument("--batch", type=int, help="trials per batch (default 4; gpu: the model's bench.json)")
    parser.add_argument("--sampler", default="tpe", help="sampler of the throughput run")
    parser.add_argument("--thread-counts", help="throughput: comma-separated torch thread counts to run the whole "
                        "comparison at (default: 1 and the machine's default, or --threads)")
    parser.add_argument("--no-factors", dest="factors", action="store_false",
                        help="throughput: skip the tuner's runs with batching, caching, pruning or the cost-aware "
                        "sampler switched off (the split of the gain into its factors)")
    parser.add_argument("--grid", type=int, default=15, help="grid points per axis (efficiency, quality)")
    parser.add_argument("--seeds", type=int, default=5, help="sampler seeds (efficiency)")
    parser.add_argument("--budget", type=int, default=60, help="trial budget per sampler run (efficiency)")
    parser.add_argument("--paper-points", action="store_true",
                        help="efficiency: enqueue the paper points first in every sampler run, as `autotune tune` does")
    parser.add_argument("--jobs", type=int, default=1,
                        help="efficiency: sampler runs in this many worker processes (same figures, less wall time)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repeats: timed ones (overhead), fresh processes of each kind (memory); medians with "
                        "every repeat kept")
    parser.add_argument("--runs", type=int, help="runs of the whole throughput comparison; medians with their "
                        "range, every run kept (default 5; gpu: the model's bench.json)")
    parser.add_argument("--heldout-seed", type=int, help="quality, predictor: the held-out split seed (default: "
                        "issue 22's fresh seed, which no tuning or design decision has read)")
    parser.add_argument("--fresh-seed", type=int, help="efficiency: grade the grid tables also on tasks of this "
                        "seed, beside the set the sampler settings were chosen on (default: issue 22's fresh seed; "
                        "-1: none)")
    parser.add_argument("--models", default="all", help="gpu: comma-separated model folders of autotune/bench/configs "
                        "(default: all of them)")
    parser.add_argument("--size", default="full", choices=("full", "tiny"), help="gpu: the published architecture, "
                        "or its tiny version for a CPU check")
    parser.add_argument("--json", help="also write the figures as JSON here (gpu: default bench-gpu.json)")
    parser.add_argument("--inversion-samples", type=int, default=20, help="rendered scenes (inversion)")
    parser.add_argument("--presets", help="directory of tuned presets (quality, predictor); default: the preset lookup "
                        "order. quality: several, comma-separated, each category's tuned preset read from each (one "
                        "per method: FlowEdit and flow inversion on a flow model)")
    parser.add_argument("--oracle-grid", type=int, default=0, metavar="N",
                        help="predictor: also edit an N x N grid over the search space for the oracle (0: the "
                        "predictor's candidates only)")
    parser.add_argument("--cache-dir", default=".autotune/bench", help="where grid tables are kept between runs")
    parser.add_argument("--seed", type=int, default=0, help="task seed (throughput, overhead, memory, the grid tables "
                        "the sampler was chosen on) and the tuner's seed")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: as every autotune command, "
                        "docs/tuning.md, CPU threads); 1 is steadier on a machine that other jobs share")
    parser.set_defaults(handler=run)


def _shapes_categories() -> tuple[str, ...]:
    from autotune.bench._common import SHAPES_CATEGORIES

    return SHAPES_CATEGORIES


# Settings left unset on the command line; gpu reads its own from each model's bench.json.
_DEFAULTS = {"steps": 50, "trials": 16, "batch": 4, "runs": 5}


def _setting(args: argparse.Namespace, name: str, which: str) -> Any:
    """The value a benchmark runs with: the command line's, else its default (None for gpu: the model's)."""
    value = getattr(args, name)
    if value is not None or which == "gpu":
        return value
    if name == "tasks":
        return _TASKS.get(which, 8)
    if name == "heldout_seed":
        from autotune.bench.quality import HELDOUT_SEED

        return HELDOUT_SEED
    if name == "fresh_seed":
        from autotune.bench.efficiency import FRESH_TASK_SEED

        return FRESH_TASK_SEED
    return _DEFAULTS[name]


def command_line(args: argparse.Namespace, which: str) -> str:
    """The exact command that reproduces one benchmark's figures (every option spelled out)."""
    def get(name: str) -> Any:
        return _setting(args, name, which)

    if which == "gpu":
        parts = ["autotune", "bench", "gpu", "--device", args.device, "--size", args.size, "--models", args.models]
        if args.threads:
            parts += ["--threads", str(args.threads)]
        opts = [("--tasks", get("tasks")), ("--trials", get("trials")), ("--batch", get("batch")),
                ("--steps", get("steps")), ("--naive-trials", args.naive_trials), ("--runs", get("runs")),
                ("--category", args.category)]
        for flag, value in opts:
            if value is not None:
                parts += [flag, str(value)]
        return shlex.join(parts)
    parts = ["autotune", "bench", which, "--model", args.model, "--device", args.device, "--steps", str(get("steps"))]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    opts = {
        "throughput": [("--category", args.category), ("--tasks", get("tasks")), ("--trials", get("trials")),
                       ("--batch", get("batch")), ("--sampler", args.sampler), ("--naive-trials", args.naive_trials),
                       ("--thread-counts", args.thread_counts), ("--runs", get("runs")), ("--seed", args.seed)]
        + ([] if args.factors else [("--no-factors", True)]),
        "overhead": [("--category", args.category), ("--repeats", args.repeats)],
        "efficiency": [("--categories", args.categories), ("--tasks", get("tasks")), ("--grid", args.grid),
                       ("--seeds", args.seeds), ("--budget", args.budget), ("--batch", get("batch")),
                       ("--fresh-seed", get("fresh_seed")), ("--jobs", args.jobs if args.jobs > 1 else None)]
        + ([("--paper-points", True)] if args.paper_points else []),
        "quality": [("--categories", args.categories), ("--tasks", get("tasks")),
                    ("--heldout-seed", get("heldout_seed")), ("--presets", args.presets)],
        "inversion": [("--inversion-samples", args.inversion_samples), ("--seed", args.seed)],
        "memory": [("--category", args.category), ("--tasks", get("tasks")), ("--trials", get("trials")),
                   ("--batch", get("batch")), ("--repeats", args.repeats)],
        "predictor": [("--categories", args.categories), ("--tasks", get("tasks")),
                      ("--heldout-seed", get("heldout_seed")), ("--presets", args.presets),
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
    from autotune import threads

    threads.configure(args.threads)
    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    unknown = [c for c in [*categories, args.category] if c not in _common.SHAPES_CATEGORIES]
    if unknown:
        raise InputError(f"not a shapes category: {', '.join(unknown)}; use {', '.join(_common.SHAPES_CATEGORIES)}")
    for name in ("steps", "tasks", "trials", "batch", "grid", "seeds", "budget", "jobs", "repeats", "runs",
                 "inversion_samples", "naive_trials"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    which = [n for n in _ORDER if n != "gpu"] if args.which == "all" else [args.which]
    state: dict = {}
    for name in which:
        refused = _not_applicable(name, args, state)
        if refused and args.which == "all":
            print(f"(skipped {name}: {refused})\n")
            continue
        if refused:
            raise InputError(refused)
        result, notes = _run_one(name, args, categories, state)
        machine = _common.machine_info(args.device)
        if max(getattr(result, "thread_counts", None) or [0]) > 0:  # the header names the threads it ran at, and
            machine["torch_threads"] = max(result.thread_counts)  # the load it made is counted as its own
        section, title = _section_of(name, args.model)
        try:
            text = markdown.section(title, command_line(args, name), machine, result.markdown(), notes)
        except Exception:  # the figures took long to measure: keep them before the error ends the run
            kept = Path(f"bench-{name}-figures.json")
            atomic.write_text(kept, json.dumps({"benchmark": name, "command": command_line(args, name),
                                                "machine": machine, "figures": asdict(result)}, indent=1, default=str))
            print(f"error: the {name} section could not be written; its figures are kept in {kept}", file=sys.stderr)
            raise
        print(text)
        markdown.write_section(args.out, section, text)
        print(f"(section {section!r} of {args.out} rewritten)\n")
        json_path = args.json or ("bench-gpu.json" if name == "gpu" else None)
        if json_path:
            path = Path(json_path if len(which) == 1 else f"{Path(json_path).with_suffix('')}-{name}.json")
            atomic.write_text(path, json.dumps({"benchmark": name, "command": command_line(args, name),
                                                "machine": machine, "figures": asdict(result)},
                                               indent=1, default=str))
            print(f"(figures written to {path})\n")
    return 0


def _thread_counts(args: argparse.Namespace) -> list[int] | None:
    if not args.thread_counts:
        return None
    try:
        counts = [int(n) for n in args.thread_counts.split(",") if n.strip()]
    except ValueError:
        raise InputError(f"--thread-counts {args.thread_counts!r}: comma-separated whole numbers, e.g. 1,2") from None
    if not counts or any(n < 1 for n in counts):
        raise InputError(f"--thread-counts {args.thread_counts!r}: each count must be >= 1")
    return counts


def _section_of(name: str, model: str) -> tuple[str, str]:
    """The section a benchmark rewrites and its title: its own for the shapes UNet model and any other model; for
    the other shipped short names (`shapes-flow`) a section of their own (`quality-shapes-flow`), so that the two
    shapes models' figures stand side by side in one file."""
    from autotune.engine.checkpoint import SHORT_NAMES

    if model in SHORT_NAMES and model != "shapes":
        return f"{name}-{model}", f"{_TITLES[name]} ({model})"
    return name, _TITLES[name]


def _not_applicable(name: str, args: argparse.Namespace, state: dict) -> str | None:
    """Why benchmark `name` does not apply to `--model`'s family (`_common.APPLIES_TO`), or None. The inversion
    benchmark loads a folder of its own: its pipeline class is read from the folder's model_index.json."""
    from autotune.bench import _common

    if name == "gpu" or name not in _common.APPLIES_TO:
        return None
    if name == "inversion":
        folder = Path(_model_folder(args.model))
        try:
            pipeline = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))["_class_name"]
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"the inversion benchmark needs a diffusers folder with a model_index.json naming its "
                             f"pipeline (_class_name); {folder} has none") from None
    else:
        pipeline = _common.pipeline_class(_editor(args, state))
    return _common.not_applicable(name, pipeline)


def _editor(args: argparse.Namespace, state: dict):
    if "editor" not in state:
        from autotune.engine.editor import Editor

        state["editor"] = Editor.from_pretrained(args.model, device=args.device, progress=False)
    return state["editor"]


def _tasks(category: str, split: str, count: int, seed: int, model: str):
    """Shapes tasks in the model's own world (`shapes_world_of`: version 2 for shapes-flow)."""
    from autotune.shapes.tasks import shapes_tasks
    from autotune.tasks.sources import shapes_world_of

    return shapes_tasks(category, split, count, seed, version=shapes_world_of(model))


def _grids(args: argparse.Namespace, categories: list[str], state: dict, seed: int, fresh: bool = False):
    """The grid tables of `categories` on tune-split tasks of `seed`; `fresh`: scenes of the chosen-on seed left out."""
    from autotune.bench import _common, efficiency
    from autotune.shapes.scoring import ShapesScorer
    from autotune.tasks.sources import shapes_world_of

    key = ("grids", seed)
    if key not in state:
        editor = _editor(args, state)
        count = _setting(args, "tasks", "efficiency")
        steps = _setting(args, "steps", "efficiency")
        state[key] = {}
        for c in categories:
            if fresh:
                tasks, _ = _common.fresh_shapes_tasks(c, "tune", count, seed, seen_seeds=(args.seed,),
                                                      version=shapes_world_of(args.model))
            else:
                tasks = _tasks(c, "tune", count, seed, args.model)
            state[key][c] = efficiency.cached_grid(editor, tasks, ShapesScorer(), args.cache_dir, points=args.grid,
                                                   steps=steps, progress=True)
    return state[key]


def _run_one(name: str, args: argparse.Namespace, categories: list[str], state: dict):
    from autotune.bench import efficiency, gpu, inversion, memory, overhead, quality, throughput
    from autotune.shapes.scoring import ShapesScorer
    from autotune.tuning.search_space import family_defaults

    def get(setting: str) -> Any:
        return _setting(args, setting, name)

    scorer = ShapesScorer()
    if name == "throughput":
        editor = _editor(args, state)
        tasks = _tasks(args.category, "tune", get("tasks"), args.seed, args.model)
        return throughput.bench_throughput(editor, tasks, scorer, trials=get("trials"), batch=get("batch"),
                                           steps=get("steps"), sampler=args.sampler, seed=args.seed,
                                           naive_trials=args.naive_trials, thread_counts=_thread_counts(args),
                                           runs=get("runs"), factors=args.factors, progress=True), ""
    if name == "overhead":
        editor = _editor(args, state)
        task = _tasks(args.category, "tune", 1, args.seed, args.model)[0]
        params = family_defaults(editor, None).params.with_(steps=get("steps"))  # the model family's default method
        return overhead.bench_overhead(editor, task, params, repeats=args.repeats), ""
    if name == "efficiency":
        grids = _grids(args, categories, state, args.seed)
        tables, labels = list(grids.values()), [f"seed {args.seed} (chosen on)"] * len(grids)
        fresh = get("fresh_seed")
        if fresh is not None and fresh >= 0:
            more = _grids(args, categories, state, fresh, fresh=True)
            tables = [t for c in categories for t in (grids[c], more[c])]
            labels = [label for _ in categories for label in (f"seed {args.seed} (chosen on)", f"seed {fresh} (fresh)")]
        return efficiency.bench_efficiency(tables, seeds=args.seeds, budget=args.budget, batch=get("batch"),
                                           paper_points=args.paper_points, jobs=args.jobs, labels=labels,
                                           progress=True), ""
    if name == "quality":
        editor = _editor(args, state)
        presets, heldout, left_out = {}, {}, {}
        seed = get("heldout_seed")
        folders = [f.strip() for f in args.presets.split(",")] if args.presets else [None]
        for c in categories:
            found = [p for folder in folders if (p := quality.tuned_preset(editor, c, folder)) is not None]
            if not found and editor.family.name == "flow":
                raise InputError(f"no tuned preset for {c} on this model in {args.presets or 'the preset lookup order'}"
                                 f"; tune one (`autotune tune --model {args.model} --tasks shapes:{c}`) or name its "
                                 "folder with --presets")
            if not found:
                found = [quality.grid_preset(editor, c, _grids(args, [c], {"editor": editor}, args.seed)[c])]
            presets[c] = found
            heldout[c], left_out[c] = _heldout(c, get("tasks"), seed, args.model)
        return quality.bench_quality(editor, scorer, heldout, presets, seed=seed, left_out=left_out,
                                     progress=True), ""
    if name == "inversion":
        model = _model_folder(args.model)
        return inversion.bench_inversion(model, args.inversion_samples, get("steps"), args.seed), ""
    if name == "predictor":
        from autotune.bench import predictor

        editor = _editor(args, state)
        presets = predictor.shipped_presets(editor, categories, args.presets)
        heldout = {c: _heldout(c, get("tasks"), get("heldout_seed"), args.model)[0] for c in categories}
        return predictor.bench_predictor(editor, scorer, presets, heldout, grid=args.oracle_grid,
                                         cache_dir=args.cache_dir, seed=args.seed, progress=True), ""
    if name == "memory":
        return memory.bench_memory(args.model, args.device, category=args.category, trials=get("trials"),
                                   batch=get("batch"), tasks=get("tasks"), steps=get("steps"),
                                   repeats=args.repeats), ""
    if name == "gpu":
        models = gpu.available_models() if args.models == "all" else [m.strip() for m in args.models.split(",")]
        return gpu.bench_gpu(models, device=args.device, size=args.size, tasks=args.tasks, trials=args.trials,
                             batch=args.batch, steps=args.steps, naive_trials=args.naive_trials, runs=args.runs,
                             factors=False, category=args.category, progress=True), ""
    raise InputError(f"unknown benchmark {name!r}")


def _heldout(category: str, count: int, seed: int, model: str):
    """Held-out tasks of `seed` in the model's world, scenes that earlier held-out seeds show left out; and how
    many were."""
    from autotune.bench import _common, quality
    from autotune.tasks.sources import shapes_world_of

    return _common.fresh_shapes_tasks(category, "heldout", count, seed, seen_seeds=quality.SEEN_SEEDS,
                                      version=shapes_world_of(model))


def _model_folder(model: str) -> str:
    """The shapes measurement loads a diffusers folder; resolve the short names to one."""
    from autotune.engine.checkpoint import SHORT_NAMES

    folder = SHORT_NAMES.get(model, model)
    if not Path(folder).is_dir():
        raise InputError(f"the inversion benchmark needs a local diffusers folder; {model!r} is not one")
    return str(folder)
