"""`autotune edit`: invert one image and edit it, with explicit guidance or a preset."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from autotune.errors import InputError
from autotune.params import METHODS


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every command that loads a checkpoint shares."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        help="hub id, local diffusers folder, single .safetensors file, or a short name "
        "(shapes = the small model shipped with autotune; sd15, sd14, sd21). Default: %(default)s",
    )
    group.add_argument("--revision", help="hub revision (branch, tag or commit) of --model")
    group.add_argument("--config", help="for a single-file checkpoint: a diffusers folder or hub id with its configs")
    group.add_argument("--device", help="cuda, cuda:1, cpu... Default: cuda when available, else cpu")
    group.add_argument(
        "--dtype", choices=("float16", "bfloat16", "float32"), help="Default: float16 on CUDA, float32 on CPU"
    )
    group.add_argument(
        "--scheduler",
        choices=("checkpoint", "piebench"),
        default="checkpoint",
        help="DDIM settings from the checkpoint, or PIE-Bench's (beta 0.00085-0.012 scaled_linear, no clipping, "
        "set_alpha_to_one off). Default: %(default)s",
    )
    group.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin weights (they can run code)")
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def load_editor(args: argparse.Namespace, presets=None):
    import torch

    from autotune.editor import Editor

    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.quiet:
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    return Editor.from_pretrained(
        args.model,
        device=args.device,
        dtype=dtype,
        scheduler=args.scheduler,
        revision=args.revision,
        config=args.config,
        allow_pickle=args.allow_pickle,
        progress=not args.quiet,
        presets=presets,
    )


def add_param_arguments(parser: argparse.ArgumentParser) -> None:
    """Editing parameters; unset ones come from the preset, else from the SimInversion defaults."""
    group = parser.add_argument_group("editing parameters (default: SimInversion with PIE-Bench's P2P settings)")
    group.add_argument("--method", choices=METHODS, help="inversion/editing method. Default: siminversion")
    group.add_argument("--w-src", type=float, help="source (and inversion) guidance. Default: 0.5")
    group.add_argument("--w-tgt", type=float, help="target guidance. Default: 7.5")
    group.add_argument("--steps", type=int, help="DDIM steps. Default: 50")
    group.add_argument(
        "--cross-replace", type=float, help="fraction of steps with cross-attention replaced. Default: 0.4"
    )
    group.add_argument(
        "--self-replace", type=float, help="fraction of steps with self-attention replaced. Default: 0.6"
    )
    group.add_argument("--reweight", type=float, help="re-weighting of the target blend word. Default: 2")
    group.add_argument("--blend-threshold", type=float, help="LocalBlend mask threshold. Default: 0.3")
    group.add_argument("--p2p-mode", choices=("refine", "replace"), help="token alignment. Default: refine")


def param_overrides(args: argparse.Namespace) -> dict:
    names = (
        "method",
        "w_src",
        "w_tgt",
        "steps",
        "cross_replace",
        "self_replace",
        "reweight",
        "blend_threshold",
        "p2p_mode",
    )
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def ensure_output_dir(folder: Path, option: str) -> None:
    """Create `folder` (an output directory) or fail now, before hours of work are spent on results that
    could not be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{option}: {folder} exists and is not a directory") from None
    except OSError as exc:
        raise InputError(f"{option}: cannot create the folder {folder} ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option}: the folder {folder} is not writable")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit",
        help="edit one image",
        description="Invert IMAGE under the source prompt and edit it toward the target prompt.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--image", required=True, help="input image (any size and mode; resized to the model's size)")
    parser.add_argument("--source-prompt", required=True, help="what the image shows")
    parser.add_argument("--target-prompt", required=True, help="what the edited image should show")
    parser.add_argument(
        "--blend-words",
        help='"<source word> <target word>": LocalBlend keeps the image outside these words\' regions '
        "and the target word's attention is re-weighted",
    )
    parser.add_argument(
        "--preset",
        help="a preset: a category (change_color), category:style (change_color:aggressive) or a JSON file",
    )
    parser.add_argument(
        "--ignore-preset-mismatch",
        action="store_true",
        help="use a preset even if it was made for another model or scheduler",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (editing is deterministic; kept for records)")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--save-source", action="store_true", help="also save the source branch's reconstruction")
    add_param_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from autotune.params import EditParams

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise InputError(f"--out {out} must end in .png, .jpg or .webp")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name ending in .png")
    ensure_output_dir(out.parent, "--out")
    torch.manual_seed(args.seed)
    overrides = param_overrides(args)
    EditParams(**overrides)  # check the parameters before loading a model
    editor = load_editor(args)
    params = _preset_params(args, editor) if args.preset else EditParams()
    if overrides:
        params = params.with_(**overrides)
    result = editor.edit(args.image, args.source_prompt, args.target_prompt, params, blend_words=args.blend_words)
    try:
        result.image.save(out)
        if args.save_source:
            result.source_image.save(out.with_name(out.stem + ".source" + out.suffix))
    except OSError as exc:
        raise InputError(f"--out {out}: could not write the edited image ({exc.strerror or exc})") from None
    print(f"wrote {out} ({params.method}, w_src={params.w_src}, w_tgt={params.w_tgt}, {params.steps} steps)")
    return 0


def _preset_params(args: argparse.Namespace, editor):
    from autotune.preset_store import PresetStore

    preset, style = PresetStore().resolve(args.preset, editor.model_info())
    preset.check_compatible(editor.model_info(), override=args.ignore_preset_mismatch)
    print(f"preset {preset.label} ({style}, {preset.kind})")
    return preset.params(style)
