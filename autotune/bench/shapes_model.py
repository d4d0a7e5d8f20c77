"""Measure the shapes models and print a markdown report for docs/shapes.md.

    autotune shapes measure [--model shapes] [--samples 200] [--out report.md]
    autotune shapes measure --model shapes-flow   # or a folder written by `autotune shapes train-flow`

The UNet model (`shapes`, world version 1):

1. Text-to-image through diffusers' StableDiffusionPipeline at guidance 7.5 and 1: how often the reader finds
   each caption object's colour, its shape (an object of that colour has that shape), the background colour,
   the right number of objects, and the whole scene exactly.
2. DDIM inversion then reconstruction of rendered images through autotune's Editor (identical source and
   target prompts, so the source branch is the reconstruction): PSNR against the input for
   w_inv = w_src in {0, 0.25, 0.5, 1, 2, 7.5}, next to the VAE's own round-trip PSNR (the ceiling).

The rectified-flow model (`shapes-flow`, a StableDiffusion3Pipeline folder, world version 2): text to image through
diffusers' StableDiffusion3Pipeline at its default guidance (`FLOW_GUIDANCE`) and at 1, the same reader rates on
world-version-2 captions, with the VAE round trip of the captions' own scenes as the ceiling; then full-depth Euler
inversion and reconstruction through autotune's flow engine (`flow_siminversion`, identical prompts) against the
inversion guidance w_src in {0, 0.5, 1, 1.5, 2, 3.5, 7}: the flow analogue of SimInversion's table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from autotune import threads
from autotune.engine.checkpoint import SHAPES_MODEL_DIR, SHORT_NAMES
from autotune.shapes.reader import read_scene
from autotune.shapes.world import Scene, caption, random_scene, render_array

W_INV = (0.0, 0.25, 0.5, 1.0, 2.0, 7.5)
W_INV_FLOW = (0.0, 0.5, 1.0, 1.5, 2.0, 3.5, 7.0)  # issue 24's table: the flow analogue of SimInversion's
FLOW_GUIDANCE = 7.0  # the shapes-flow model's default guidance: SD3's pipeline default (see docs/shapes.md)
FLOW_STEPS = 28  # StableDiffusion3Pipeline's default number of steps


def model_path(model: str | Path) -> Path:
    """A folder, or a short name: `shapes` (the UNet model) or `shapes-flow` (the rectified-flow model)."""
    return Path(SHORT_NAMES.get(str(model), model))


def is_flow_model(model: str | Path) -> bool:
    """True for a StableDiffusion3Pipeline folder (the shapes-flow model)."""
    index = model_path(model) / "model_index.json"
    return index.is_file() and json.loads(index.read_text())["_class_name"] == "StableDiffusion3Pipeline"


def load_pipeline(model: str | Path):
    """The model's own diffusers pipeline: StableDiffusion3Pipeline for shapes-flow, else StableDiffusionPipeline."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

    extra = {}
    if is_flow_model(model):
        cls = StableDiffusion3Pipeline
        index = json.loads((model_path(model) / "model_index.json").read_text())
        if (index.get("text_encoder_3") or [None])[0] is None:  # an SD3 folder saved without T5
            extra = {"text_encoder_3": None, "tokenizer_3": None}
    else:
        cls = StableDiffusionPipeline
    pipe = cls.from_pretrained(str(model_path(model)), local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    threads.follow(pipe)  # share the cores with autotune processes beside it (a no-op unless configured)
    return pipe


def scene_marks(scenes: list[Scene], images: np.ndarray) -> list[dict[str, int]]:
    """Per scene, what the reader agrees with: objects whose colour / colour and shape it finds, and whether the
    background, the object count and the whole scene are right; `images` is [N, H, W, 3] float in [0, 1]."""
    marks = []
    for scene, image in zip(scenes, images):
        read = read_scene(image, version=scene.version)
        found = read.attributes()
        background = read.background == scene.background
        marks.append({
            "objects": len(scene.objects),
            "colour": sum(any(c == obj.color for c, _ in found) for obj in scene.objects),
            "shape": sum(any(c == obj.color and s == obj.shape for c, s in found) for obj in scene.objects),
            "background": int(background),
            "count": int(len(found) == len(scene.objects)),
            "exact": int(background and sorted(found) == sorted((o.color, o.shape) for o in scene.objects)),
        })
    return marks


def rates_of(marks: list[dict[str, int]]) -> dict[str, float]:
    objects, n = sum(m["objects"] for m in marks), len(marks)
    return {"colour": sum(m["colour"] for m in marks) / objects, "shape": sum(m["shape"] for m in marks) / objects,
            **{k: sum(m[k] for m in marks) / n for k in ("background", "count", "exact")}}


def scene_rates(scenes: list[Scene], images: np.ndarray) -> dict[str, float]:
    """Reader agreement with the captions' scenes (read in their world version), as shares."""
    return rates_of(scene_marks(scenes, images))


def paired_gap_interval(a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of mean(a) - mean(b) over the same captions (a caption's two samples share their
    starting noise, so the difference is paired)."""
    draws = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    low, high = np.percentile((a[draws] - b[draws]).mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def generate(pipe, prompts: list[str], guidance: float, steps: int, seed: int, batch: int = 50,
             progress: bool = False) -> np.ndarray:
    """Text-to-image, deterministic from the seed; [N, H, W, 3] in [0, 1]."""
    from tqdm.auto import tqdm

    out = []
    generator = torch.Generator().manual_seed(seed)
    with tqdm(total=len(prompts), desc=f"text to image at guidance {guidance:g}", unit="image",
              disable=not progress) as bar:
        for start in range(0, len(prompts), batch):
            chunk = prompts[start : start + batch]
            result = pipe(chunk, guidance_scale=guidance, num_inference_steps=steps, generator=generator,
                          output_type="np")
            out.append(result.images)
            bar.update(len(chunk))
    return np.concatenate(out)


def text_to_image_table(pipe, samples: int, steps: int, seed: int, guidances=(7.5, 1.0),
                        version: int = 1) -> tuple[str, dict]:
    rng = np.random.default_rng(seed + 1000)
    scenes = [random_scene(rng, version=version) for _ in range(samples)]
    prompts = [caption(s) for s in scenes]
    rows, results = [], {}

    def row(label: str, rates: dict[str, float]) -> str:
        return (f"| {label} | {rates['colour']:.1%} | {rates['shape']:.1%} | {rates['background']:.1%} | "
                f"{rates['count']:.1%} | {rates['exact']:.1%} |")

    exact = {}
    for g in guidances:
        marks = scene_marks(scenes, generate(pipe, prompts, g, steps, seed, progress=True))
        results[g] = rates_of(marks)
        exact[g] = np.asarray([m["exact"] for m in marks], dtype=float)
        rows.append(row(f"{g:g}", results[g]))
    results["exact_by_caption"] = exact
    results["vae"] = vae_round_trip_rates(pipe, scenes)
    rows.append(row("the scenes rendered, through the VAE (ceiling)", results["vae"]))
    header = ("| guidance | colour found | shape of that colour | background | object count | whole scene |\n"
              "|---|---|---|---|---|---|")
    return header + "\n" + "\n".join(rows), results


@torch.no_grad()
def vae_round_trip_rates(pipe, scenes: list[Scene]) -> dict[str, float]:
    """Reader rates on the captions' own scenes rendered, encoded and decoded: what a perfect UNet would reach."""
    x = torch.from_numpy(np.stack([render_array(s) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    decoded = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
    return scene_rates(scenes, ((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return 100.0 if mse == 0 else 10 * float(np.log10(1.0 / mse))


def inversion_table(model: str | Path, samples: int, steps: int, seed: int) -> str:
    """PSNR of reconstruction after inversion at w_inv = w_src, through the engine: DDIM inversion for the UNet
    model (`W_INV`), full-depth Euler inversion of the flow ODE (`flow_siminversion`, n_max = 1) for the flow
    model (`W_INV_FLOW`). The reconstruction is the source branch of an edit with identical prompts."""
    from PIL import Image

    from autotune.bench.quality import paired_bootstrap
    from autotune.engine.editor import Editor
    from autotune.params import EditParams

    flow = is_flow_model(model)
    version = 2 if flow else 1
    editor = Editor.from_pretrained(str(model_path(model)), progress=False)
    rng = np.random.default_rng(seed + 2000)
    scenes = [random_scene(rng, version=version) for _ in range(samples)]
    images = [render_array(s) for s in scenes]
    pipe = load_pipeline(model)
    with torch.no_grad():
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        vae_rt = ((pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1) + 1) / 2)
    vae_psnr = np.mean([psnr(r.permute(1, 2, 0).numpy(), i / 255.0) for r, i in zip(vae_rt, images)])
    rows = [f"| VAE round trip (ceiling) | {vae_psnr:.2f} | - |"]
    for w in W_INV_FLOW if flow else W_INV:
        if flow:
            params = EditParams(method="flow_siminversion", w_src=w, w_tgt=w, steps=steps, n_max=1.0)
            label = f"Euler inversion at w_src = {w:g}"
        else:
            params = EditParams(method="siminversion", w_src=w, w_tgt=w, steps=steps)
            label = f"w_inv = w_src = {w:g}"
        values, read_ok = [], 0
        for scene, image in zip(scenes, images):
            prompt = caption(scene)
            result = editor.edit(Image.fromarray(image), prompt, prompt, params)
            rec = result.source_pixels.detach().float().cpu().permute(1, 2, 0).numpy()
            values.append(psnr(rec, image / 255.0))
            read = read_scene(rec, version=version)
            read_ok += read.background == scene.background and sorted(read.attributes()) == sorted(
                (o.color, o.shape) for o in scene.objects)
        mean = paired_bootstrap(values)  # over the scenes: how far the mean could move on another draw of them
        rows.append(f"| {label} | {np.mean(values):.2f} [{mean.low:.2f}, {mean.high:.2f}] | "
                    f"{read_ok / len(scenes):.0%} |")
    header = ("| reconstruction | PSNR (dB), mean [95% bootstrap interval over the scenes] | reader sees the input "
              "scene |\n|---|---|---|")
    return header + "\n" + "\n".join(rows)


def measure_flow(model: str | Path, samples: int = 200, steps: int = FLOW_STEPS, seed: int = 0,
                 guidance: float = FLOW_GUIDANCE) -> tuple[str, dict]:
    """Text to image of the shapes-flow model through StableDiffusion3Pipeline at `guidance` and at 1, on captions
    of world-version-2 scenes: (markdown table, figures with the gap at guidance 1)."""
    pipe = load_pipeline(model)
    table, results = text_to_image_table(pipe, samples, steps, seed, guidances=(guidance, 1.0), version=2)
    figures = {f"guidance_{g:g}": results[g] for g in (guidance, 1.0)}
    figures["vae_ceiling"] = results["vae"]
    figures["settings"] = {"samples": samples, "steps": steps, "seed": seed, "default_guidance": guidance,
                           "pipeline": type(pipe).__name__}
    figures["whole_scene_gap_points"] = round(100 * (results[guidance]["exact"] - results[1.0]["exact"]), 1)
    exact = results["exact_by_caption"]
    figures["whole_scene_gap_interval_points"] = [round(100 * v, 1)
                                                  for v in paired_gap_interval(exact[guidance], exact[1.0])]
    return table, figures


def flow_grid(model: str | Path, path: str | Path, count: int = 8, steps: int = FLOW_STEPS, seed: int = 3,
              guidance: float = FLOW_GUIDANCE) -> Path:
    """A PNG of the shapes-flow model's samples: captions of random world-version-2 scenes (one to four objects),
    their scenes as rendered, and the model's images at `guidance` and at 1 (same seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    scenes = sorted((random_scene(rng, version=2) for _ in range(count)), key=lambda s: len(s.objects))
    prompts = [caption(s) for s in scenes]
    pipe = load_pipeline(model)
    rows = {"rendered caption": np.stack([render_array(s) / 255.0 for s in scenes])}
    for g in (guidance, 1.0):
        rows[f"guidance {g:g}"] = generate(pipe, prompts, g, steps, seed)
    fig, axes = plt.subplots(len(rows), count, figsize=(1.9 * count, 2.05 * len(rows) + 0.9))
    for r, (label, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(prompts[c].removeprefix("a ").removeprefix("an ").replace(" on a ", "\non a ")
                             .replace(" and ", "\nand "), fontsize=6.5)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(f"shapes-flow, text to image through StableDiffusion3Pipeline ({steps} Euler steps, seed {seed})",
                 fontsize=10)
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHAPES_MODEL_DIR), help="a model folder, or shapes / shapes-flow")
    p.add_argument("--samples", type=int, default=200, help="text-to-image samples per guidance")
    p.add_argument("--steps", type=int, help=f"sampling steps for text-to-image (25 DDIM; shapes-flow: {FLOW_STEPS})")
    p.add_argument("--guidance", type=float, help=f"the default guidance (7.5; shapes-flow: {FLOW_GUIDANCE:g})")
    p.add_argument("--record", action="store_true", help="shapes-flow: also write the figures into its training.json")
    p.add_argument("--grid", metavar="PNG", help="shapes-flow: also draw a picture of samples here")
    p.add_argument("--inversion-samples", type=int, default=20)
    p.add_argument("--inversion-steps", type=int, default=50)
    p.add_argument("--skip-inversion", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the markdown here")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: $AUTOTUNE_THREADS, else $OMP_NUM_THREADS, "
                   "else a fair share of the cores among the autotune processes running)")
    args = p.parse_args(argv)
    threads.configure(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()
    if is_flow_model(args.model):
        return _main_flow(args, start)
    args.steps = args.steps or 25
    pipe = load_pipeline(args.model)
    table, _ = text_to_image_table(pipe, args.samples, args.steps, args.seed, guidances=(args.guidance or 7.5, 1.0))
    parts = [f"### Text-to-image ({args.samples} captions of random scenes, {args.steps} DDIM steps, seed {args.seed})",
             "", table, ""]
    if not args.skip_inversion:
        inv = inversion_table(model_path(args.model), args.inversion_samples, args.inversion_steps, args.seed)
        parts += [(f"### DDIM inversion then reconstruction ({args.inversion_samples} rendered scenes, "
                  f"{args.inversion_steps} steps)"), "", inv, ""]
    parts.append(f"_measured in {time.time() - start:.0f} s by `autotune shapes measure`_")
    _report("\n".join(parts), args.out)
    return 0


def _report(report: str, out: str | None) -> None:
    print(report)
    if out:
        from autotune import atomic

        atomic.write_text(out, report + "\n")


def _main_flow(args: argparse.Namespace, start: float) -> int:
    steps, guidance = args.steps or FLOW_STEPS, args.guidance or FLOW_GUIDANCE
    table, figures = measure_flow(args.model, args.samples, steps, args.seed, guidance)
    parts = [f"### Text-to-image, shapes-flow ({args.samples} captions of random world-version-2 scenes, "
             f"StableDiffusion3Pipeline, {steps} Euler steps, seed {args.seed})", "", table, "",
             f"Whole scene at guidance {guidance:g} minus at 1: {figures['whole_scene_gap_points']:.1f} points "
             "(paired bootstrap 95% interval over the captions: "
             "[{:.1f}, {:.1f}]).".format(*figures["whole_scene_gap_interval_points"]), ""]
    if not args.skip_inversion:
        inv = inversion_table(model_path(args.model), args.inversion_samples, args.inversion_steps, args.seed)
        parts += [(f"### Euler inversion then reconstruction ({args.inversion_samples} rendered world-version-2 "
                   f"scenes, {args.inversion_steps} steps, full depth)"), "", inv, ""]
    parts.append(f"_measured in {time.time() - start:.0f} s by `autotune shapes measure`_")
    _report("\n".join(parts), args.out)
    if args.record:
        from autotune import atomic

        path = model_path(args.model) / "training.json"
        meta = json.loads(path.read_text()) if path.is_file() else {}
        meta["text_to_image"] = figures
        atomic.write_text(path, json.dumps(meta, indent=2) + "\n")
    if args.grid:
        print(f"wrote {flow_grid(args.model, args.grid, steps=steps, guidance=guidance)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
