"""Pictures of the shapes models for the docs: what they draw, and how tuned presets edit.

    .venv/bin/python examples/shapes_gallery.py --out docs/images
    .venv/bin/python examples/shapes_gallery.py --model shapes-flow --out docs/images

Writes two PNGs:
- `shapes_text_to_image.png`: captions of random scenes drawn at guidance 7.5 and at guidance 1
  (`shapes_flow_samples.png` for the flow model: `autotune.bench.shapes_model.flow_grid`);
- `shapes_edits.png`: one held-out task per category: source | SimInversion default (0.5, 7.5) | the shipped
  preset's conservative, balanced and aggressive picks (skipped for a category without a preset);
  `shapes_flow_edits.png` for the flow model: source | FlowEdit's published setting | the picks, on tasks of the
  flow model's world, and with `--presets presets,presets/flow_siminversion` flow inversion's published setting
  and its balanced pick beside them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from autotune import Editor, EditParams
from autotune.bench.quality import tuned_preset
from autotune.bench.shapes_model import flow_grid, generate, is_flow_model, load_pipeline
from autotune.engine.checkpoint import SHAPES_MODEL_DIR
from autotune.errors import PresetError
from autotune.params import window_steps
from autotune.shapes.tasks import SHAPES_CATEGORIES, shapes_tasks
from autotune.shapes.world import caption, random_scene
from autotune.tasks.sources import shapes_world_of

STYLES = ("conservative", "balanced", "aggressive")


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)


def text_to_image_figure(model: str, out: Path, count: int = 6, steps: int = 25, seed: int = 3) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if is_flow_model(model):
        return flow_grid(model, out / "shapes_flow_samples.png", count=count, steps=steps, seed=seed)
    rng = np.random.default_rng(seed)
    prompts = [caption(random_scene(rng)) for _ in range(count)]
    pipe = load_pipeline(SHAPES_MODEL_DIR if model == "shapes" else model)
    rows = {g: generate(pipe, prompts, g, steps, seed) for g in (7.5, 1.0)}
    fig, axes = plt.subplots(2, count, figsize=(2.0 * count, 4.6))
    for r, (g, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(prompts[c].removeprefix("a ").replace(" on a ", "\non a ").replace(" and ", "\nand "),
                             fontsize=7)
            if c == 0:
                ax.set_ylabel(f"guidance {g:g}")
    fig.suptitle(f"shapes model, text to image ({steps} DDIM steps)", fontsize=10)
    path = out / "shapes_text_to_image.png"
    _save(fig, path)
    plt.close(fig)
    return path


def edits_figure(model: str, out: Path, presets: str | None = None, index: int = 0, steps: int | None = None
                 ) -> Path:
    """`presets`: a folder, or several comma-separated; on a flow model each further folder's balanced pick (another
    method's presets, as flow inversion's) gets a column beside that method's published setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folders = presets.split(",") if presets else []
    editor = Editor.from_pretrained(model, device="cpu", progress=False, presets=folders[0] if folders else True)
    flow = editor.family.name == "flow"
    default_name, default = (("published FlowEdit", editor.default_params()) if flow
                             else ("default (0.5, 7.5)", EditParams()))
    rows: dict[str, list[tuple[str, EditParams | None]]] = {}
    for category in SHAPES_CATEGORIES:
        candidates: list[tuple[str, EditParams | None]] = [(default_name, default)]
        for style in STYLES:
            try:
                candidates.append((style, editor.presets.params_for(category, style, editor.model_info())))
            except PresetError:  # no preset for this model and category: the default only
                candidates.append((style, None))
        for folder in folders[1:] if flow else []:
            found = tuned_preset(editor, category, folder)
            if found is not None:
                pick = found[0].params("balanced")
                candidates += [(f"published\n{pick.method}", editor.default_params(pick.method)),
                               (f"{pick.method}\nbalanced", pick)]
        if steps is not None:  # quick runs
            candidates = [(name, p.with_(steps=steps) if p is not None else None) for name, p in candidates]
        rows[category] = candidates
    columns = ["source", *dict.fromkeys(name for candidates in rows.values() for name, _ in candidates)]
    fig, axes = plt.subplots(len(SHAPES_CATEGORIES), len(columns), figsize=(2.0 * len(columns),
                                                                              2.3 * len(SHAPES_CATEGORIES)))
    for r, (category, candidates) in enumerate(rows.items()):
        task = shapes_tasks(category, "heldout", count=index + 1, version=shapes_world_of(model))[index]
        run = [p for _, p in candidates if p is not None]
        results = iter(editor.edit_task(task, run))
        images = {"source": np.asarray(task.image)}
        for name, p in candidates:
            if p is not None:
                images[name] = next(results).pixels.detach().float().cpu().permute(1, 2, 0).numpy()
        for c, name in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if name in images:
                ax.imshow(images[name], interpolation="nearest")
                p = dict(candidates).get(name)
                if p is not None:
                    window = f", {window_steps(p.n_max, p.steps)}/{p.steps}" if flow else ""
                    ax.set_xlabel(f"({p.w_src.start:.3g}, {p.w_tgt.start:.3g}{window})", fontsize=8)
            else:
                ax.axis("off")
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(category, fontsize=9)
        axes[r, 0].text(0.0, -0.3, f"{task.source_prompt} -> {task.target_prompt}", fontsize=7,
                        transform=axes[r, 0].transAxes)
    under = "(w_src, w_tgt, n_max steps / steps)" if flow else "(w_src, w_tgt)"
    fig.suptitle(f"{'shapes-flow' if flow else 'shapes'} model: held-out edits, {under} under each image", fontsize=10)
    fig.subplots_adjust(hspace=0.55, wspace=0.1, top=0.93)
    path = out / ("shapes_flow_edits.png" if flow else "shapes_edits.png")
    _save(fig, path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--presets", help="presets directory (default: the lookup order of docs/presets.md); on a "
                        "flow model several, comma-separated: each further one's balanced pick gets a column")
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--only", choices=("text_to_image", "edits"))
    parser.add_argument("--count", type=int, default=6, help="captions in the text-to-image figure")
    parser.add_argument("--steps", type=int, help="DDIM steps of every image (default: 25 for text to image, the "
                        "presets' own for edits)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "text_to_image"):
        default_steps = 28 if is_flow_model(args.model) else 25
        print(text_to_image_figure(args.model, out, count=args.count, steps=args.steps or default_steps))
    if args.only in (None, "edits"):
        print(edits_figure(args.model, out, args.presets, steps=args.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
