"""`autotune evaluate`: edit every task with fixed parameters or a preset, score it, write a summary table."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from autotune.errors import InputError
from autotune.params import EditParams


def register(subparsers) -> None:
    from autotune.cli._common import HelpFormatter, add_model_arguments, add_param_arguments, add_split_arguments
    from autotune.scoring.piebench_scorer import ALL_METRICS

    parser = subparsers.add_parser(
        "evaluate",
        help="edit and score a task set (PIE-Bench's metrics and table)",
        description="Edit every task of --tasks with the given parameters (or a preset), write the images, a "
        "per-task CSV with every metric and a per-category summary in PIE-Bench's columns and scales. "
        "Resumable: run the same command again and finished tasks are skipped.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--tasks", required=True,
        help="shapes:<category>[:<count>], a PIE-Bench directory (mapping_file.json), or a .jsonl/.csv"
    )
    parser.add_argument("--category", help="only tasks of this category (id 0-9 or name, e.g. change_color)")
    add_split_arguments(parser, default="heldout")
    parser.add_argument(
        "--preset",
        help="a preset: a style (balanced, conservative, aggressive: each task uses its category's preset), "
        "CATEGORY[:STYLE], or PATH.json[:STYLE]; --w-src etc. override its values",
    )
    parser.add_argument("--out", required=True, help="output directory (reused to resume)")
    parser.add_argument("--task-batch", type=int, metavar="N",
                        help="tasks with the same parameters edited in one engine call; unset: the editor's "
                        "max_batch (16); 1: one at a time, the least memory")
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--scorer",
        choices=("auto", "piebench", "shapes"),
        default="auto",
        help="auto: the shapes world's ground-truth scorer for shapes tasks, else PIE-Bench's metrics",
    )
    scoring.add_argument(
        "--mode",
        choices=("piebench", "masked"),
        default="piebench",
        help="piebench: PIE-Bench's exact definitions (edited region zeroed, forced border); "
        "masked: clean masked means",
    )
    scoring.add_argument("--metrics", nargs="+", choices=ALL_METRICS, default=list(ALL_METRICS), help="what to compute")
    scoring.add_argument("--lpips-net", choices=("squeeze", "alex", "vgg"), default="squeeze", help="LPIPS backbone")
    scoring.add_argument("--lpips-weights", help="LPIPS backbone .safetensors (default: autotune/torchvision caches)")
    scoring.add_argument("--dino-weights", help="DINO ViT-B/8 weights file (default: Hugging Face / torch.hub cache)")
    scoring.add_argument("--clip-weights", help="open_clip ViT-L-14 checkpoint (default: cached openai weights)")
    scoring.add_argument("--scorer-device", help="device for the scorers. Default: the editor's device")
    add_param_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(handler=run)


class _Overridden:
    """A preset (or store) whose picks get the command line's explicit values on top."""

    def __init__(self, base: Any, overrides: dict[str, Any], label: str):
        self.base, self.overrides, self.label = base, overrides, label

    def params_for(self, category, style, model_info) -> EditParams:
        return self.base.params_for(category, style, model_info).with_(**self.overrides)

    def find_preset(self, category, model_info):
        return self.base.find_preset(category, model_info)


def _params_source(args: argparse.Namespace, editor) -> tuple[Any, str | None]:
    from autotune.cli._common import param_overrides

    overrides = param_overrides(args)
    if not args.preset:
        return editor.default_params(overrides.get("method")).with_(**overrides), None
    if args.method:
        raise InputError("give either --method or --preset: a preset fixes the method")
    from autotune.presets.schema import STYLES
    from autotune.presets.store import PresetStore

    store = PresetStore()
    if args.preset in STYLES:
        source, style, label = store, args.preset, f"presets ({args.preset}) per category"
    else:
        preset, style = store.resolve(args.preset, editor.model_info())
        source, label = preset, f"{preset.label} ({style})"
    if overrides:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
        return _Overridden(source, overrides, f"{label} with {shown}"), style
    return source, style


def _refuse_auto(spec: str | None) -> None:
    """Style auto picks a setting per image, so it has no parameters to evaluate as one setting: said before the
    model loads."""
    from autotune.presets.predictor import AUTO_STYLE
    from autotune.presets.store import parse_spec

    if spec and (spec == AUTO_STYLE or parse_spec(spec)[1] == AUTO_STYLE):
        raise InputError(f"--preset {spec}: evaluate scores one setting per category, and style 'auto' chooses one "
                         "per image; evaluate a named pick (conservative, balanced, aggressive), or measure auto "
                         "with `autotune bench predictor`")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autotune.cli._common import (
        check_overrides,
        ensure_output_dir,
        load_editor,
        make_scorer,
        param_overrides,
        task_source,
    )
    from autotune.evaluation.evaluate import evaluate
    from autotune.evaluation.overlap import TuningOverlapWarning
    from autotune.tasks.sources import load_tasks, shapes_world_of

    if args.task_batch is not None and args.task_batch < 1:
        raise InputError(f"--task-batch {args.task_batch}: give the tasks per engine call, at least 1")
    check_overrides(param_overrides(args))  # before a model loads
    _refuse_auto(args.preset)
    tasks = load_tasks(args.tasks, args.category, args.split, args.heldout_fraction, shapes_world_of(args.model))
    ensure_output_dir(Path(args.out), "--out")
    editor = load_editor(args)
    try:
        source, style = _params_source(args, editor)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    scorer = make_scorer(args, editor)
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, *rest, **kwargs):  # the overlap warning as one line, when it is found
            if issubclass(category, TuningOverlapWarning):
                print(f"autotune evaluate: warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, *rest, **kwargs)

        warnings.showwarning = show
        warnings.simplefilter("always", TuningOverlapWarning)
        result = evaluate(editor, tasks, source, scorer, args.out, progress=not args.quiet, style=style,
                          task_batch=args.task_batch, task_source=task_source(args))
    print((result.out_dir / "summary.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {result.out_dir} ({len(result.rows)} tasks, {result.skipped} already done)")
    return 0
