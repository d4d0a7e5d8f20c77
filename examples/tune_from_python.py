"""Tune from Python code: run a study, look at its Pareto front, and edit with the picks it chose.

.venv/bin/python examples/tune_from_python.py
.venv/bin/python examples/tune_from_python.py --trials 8 --tasks 4 --steps 10 --out /tmp/tune-demo
"""

from __future__ import annotations

import argparse
from pathlib import Path

from autotune import Editor, EditParams, load_tasks, tune
from autotune.shapes.scoring import ShapesScorer
from autotune.tuning.search_space import SearchSpace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--category", default="change_color")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--tasks", type=int, help="use only the first N tuning tasks")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="tune-demo", help="directory for the study store, preset and images")
    args = parser.parse_args(argv)
    out = Path(args.out)

    # 1. The engine and the tasks (the tuning split; the held-out split checks the result below).
    editor = Editor.from_pretrained(args.model, progress=False)
    tasks = load_tasks(f"shapes:{args.category}", split="tune")[: args.tasks]
    heldout = load_tasks(f"shapes:{args.category}", split="heldout")[: args.tasks]

    # 2. A two-objective study over (w_src, w_tgt); the paper's points are tried first.
    result = tune(
        editor,
        tasks,
        category=args.category,
        trials=args.trials,
        scorer=ShapesScorer(),
        search_space=SearchSpace.default(base=EditParams(steps=args.steps)),
        presets_dir=out / "presets",
        project_dir=out,
        progress=False,
    )
    print(result.summary())

    # 3. The preset's picks along the front, checked on held-out tasks against the paper's default.
    scorer = ShapesScorer()
    picks = {style: result.preset.params(style) for style in ("conservative", "balanced", "aggressive")}
    picks["paper (0.5, 7.5)"] = EditParams(w_src=0.5, w_tgt=7.5, steps=args.steps)
    for name, params in picks.items():
        scores = [scorer.score(t, editor.edit_task(t, [params])[0].pixels[None])[0] for t in heldout]
        success = sum(s["edit_success"] for s in scores) / len(scores)
        psnr = sum(s["background_psnr"] for s in scores) / len(scores)
        print(
            f"{name:>18}: w_src={params.w_src} w_tgt={params.w_tgt}  held-out success {success:.2f}  "
            f"background PSNR {psnr:.1f} dB"
        )

    # 4. Edit one image with the balanced pick.
    task = heldout[0]
    edited = editor.edit(
        task.image, task.source_prompt, task.target_prompt, picks["balanced"], blend_words=task.blend_words
    )
    out.mkdir(parents=True, exist_ok=True)
    task.image.save(out / "source.png")
    edited.image.save(out / "balanced.png")
    print(f"wrote {out / 'source.png'} and {out / 'balanced.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
