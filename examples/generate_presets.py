"""Generate a preset for every edit category (here: the shapes world, offline on the CPU).

    .venv/bin/python examples/generate_presets.py           # 32 trials per category into your presets directory
    .venv/bin/python examples/generate_presets.py --trials 8 --tasks 4 --steps 10 --presets-dir /tmp/presets

For Stable Diffusion on PIE-Bench, the same loop reads `load_tasks("~/PIE-Bench", category=...)` and uses
`PieBenchScorer()`; see docs/tuning.md.
"""

from __future__ import annotations

import argparse

from autotune import Editor, EditParams, load_tasks, tune
from autotune.shapes.scoring import ShapesScorer
from autotune.tuning.search_space import SearchSpace

CATEGORIES = ("change_color", "change_object", "change_background", "add_object", "delete_object")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--tasks", type=int, help="use only the first N tuning tasks per category (quick runs)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of every candidate")
    parser.add_argument("--presets-dir", help="where the presets go (default: your presets directory, "
                        "~/.config/autotune/presets or $AUTOTUNE_PRESETS_DIR)")
    parser.add_argument("--project-dir", default=".autotune", help="where the embedded study store lives")
    args = parser.parse_args(argv)

    editor = Editor.from_pretrained(args.model, progress=False)
    space = SearchSpace.default(base=EditParams(steps=args.steps))
    for category in args.categories:
        tasks = load_tasks(f"shapes:{category}", split="tune")[: args.tasks]
        result = tune(
            editor,
            tasks,
            category=category,
            trials=args.trials,
            scorer=ShapesScorer(),
            search_space=space,
            presets_dir=args.presets_dir,
            project_dir=args.project_dir,
            progress=False,
        )
        print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
