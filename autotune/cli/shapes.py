"""`autotune shapes`: render scenes of the shapes world, write its edit tasks, train or measure its model."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from autotune.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("shapes", help="the shapes world: render scenes, write edit tasks, train or measure "
                                                  "its small text-to-image model")
    sub = parser.add_subparsers(dest="shapes_command", metavar="ACTION", required=True)

    render = sub.add_parser("render", help="render random scenes to PNG files and print their captions")
    render.add_argument("--out", required=True, help="output folder")
    render.add_argument("--count", type=int, default=8, help="scenes to render (default: 8)")
    render.add_argument("--seed", type=int, default=0, help="random seed of the scenes (default: 0)")
    render.set_defaults(handler=_render)

    tasks = sub.add_parser("tasks", help="write edit tasks (source PNG, mask PNG, tasks.json) of one category")
    tasks.add_argument("category", help="change_color, change_object, change_background, add_object, delete_object")
    tasks.add_argument("--split", default="tune", choices=("tune", "heldout", "all"),
                       help="the world's split: tune, the tasks tuning uses; heldout, others, for evaluation (one "
                       "scene in five held out, by its hash); all: both, each task's id naming its own (default: tune)")
    tasks.add_argument("--count", type=int, default=20, help="tasks to write (default: 20)")
    tasks.add_argument("--seed", type=int, default=0, help="random seed of the tasks (default: 0)")
    tasks.add_argument("--out", required=True, help="output folder")
    tasks.set_defaults(handler=_tasks)

    # train, train-flow and measure hand every option to their module's own parser (`autotune.cli.main` passes them
    # on as `forwarded`, since argparse's REMAINDER drops options that start with "-").
    train = sub.add_parser("train", help="train the model (forwards its arguments to python -m autotune.shapes.train; "
                           "--help for the options)", add_help=False)
    train.set_defaults(handler=lambda args: _forward("autotune.shapes.train", args.forwarded), forwards=True)

    train_flow = sub.add_parser("train-flow", help="train the rectified-flow (SD3-format) shapes-flow model, then "
                                "measure it (forwards its arguments to autotune.shapes.train_flow; --help for them)",
                                add_help=False)
    train_flow.set_defaults(handler=lambda args: _train_flow(args.forwarded), forwards=True)

    measure = sub.add_parser("measure", help="measure the model: text to image at two guidance scales, inversion "
                             "error against w_inv (--help for the options)",
                             add_help=False)
    measure.set_defaults(handler=lambda args: _forward("autotune.bench.shapes_model", args.forwarded), forwards=True)


def _forward(module: str, rest: list[str]) -> int:
    import importlib

    return int(importlib.import_module(module).main(rest) or 0)


def _train_flow(rest: list[str]) -> int:
    """Training lives with the world (autotune.shapes), measuring with the benchmarks: composed here, above both."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (autotune.shapes.train_flow says why)
    from autotune.bench.shapes_model import measure_flow
    from autotune.shapes.train_flow import main

    return int(main(rest, measure=measure_flow) or 0)


def _render(args: argparse.Namespace) -> int:
    from autotune.shapes.world import caption, random_scene, render

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for i in range(args.count):
        scene = random_scene(rng)
        render(scene).save(out / f"scene_{i:03d}.png")
        print(f"scene_{i:03d}.png\t{caption(scene)}")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from PIL import Image

    from autotune.shapes.tasks import shapes_tasks

    try:
        tasks = shapes_tasks(args.category, args.split, args.count, args.seed)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for task in tasks:
        task.image.save(out / f"{task.id}.png")
        Image.fromarray(task.mask.astype(np.uint8) * 255).save(out / f"{task.id}_mask.png")
        entries.append({"id": task.id, "image": f"{task.id}.png", "mask": f"{task.id}_mask.png",
                        "source_prompt": task.source_prompt, "target_prompt": task.target_prompt,
                        "category": task.category, "blend_words": list(task.blend_words), "expected": task.expected})
    tmp = out / "tasks.json.tmp"
    tmp.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "tasks.json")
    print(f"wrote {len(entries)} {tasks[0].category} tasks ({args.split} split) to {out}")
    return 0
