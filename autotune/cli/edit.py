"""`autotune edit`: invert one image and edit it, with explicit guidance or a preset."""

from __future__ import annotations

import argparse
from pathlib import Path

from autotune.cli import _common
from autotune.cli._common import (
    HelpFormatter,
    add_model_arguments,
    add_param_arguments,
    check_overrides,
    ensure_output_dir,
    param_overrides,
)
from autotune.errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit",
        help="edit one image",
        description="Invert IMAGE under the source prompt and edit it toward the target prompt.",
        formatter_class=HelpFormatter,
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
        help="a preset: a category (change_color), category:style (change_color:aggressive; change_color:auto "
        "predicts this image's setting with the preset's predictor) or a JSON file[:style]",
    )
    parser.add_argument(
        "--ignore-preset-mismatch",
        action="store_true",
        help="use a preset even if it was made for another model or scheduler",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (editing is deterministic; kept for records; "
                        "FlowEdit's noise draws take --noise-seed)")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--save-source", action="store_true", help="also save the source branch's reconstruction")
    add_param_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from autotune.images import load_image

    # 1. Check everything the command line says before loading a model (seconds for shapes, a minute and
    #    gigabytes for Stable Diffusion).
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise InputError(f"--out {out} must end in .png, .jpg or .webp")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name ending in .png")
    image = load_image(args.image, "--image")
    _check_prompts(args)
    ensure_output_dir(out.parent, "--out")
    torch.manual_seed(args.seed)
    overrides = param_overrides(args)
    check_overrides(overrides)
    # 2. Load the model and edit.
    editor = _common.load_editor(args)  # looked up at call time, so a test may stand in for it
    params = _preset_params(args, editor) if args.preset else editor.default_params(overrides.get("method"))
    if overrides:
        params = params.with_(**overrides)
    _warn_about_the_model(args, editor, image)
    result = editor.edit(image, args.source_prompt, args.target_prompt, params, blend_words=args.blend_words)
    try:
        result.image.save(out)
        if args.save_source:
            result.source_image.save(out.with_name(out.stem + ".source" + out.suffix))
    except OSError as exc:
        raise InputError(f"--out {out}: could not write the edited image ({exc.strerror or exc})") from None
    size = f"{result.image.width}x{result.image.height}"
    window = f", window {params.window[0]}-{params.window[1]}" if "n_max" in params.family_knobs else ""
    print(f"wrote {out} ({size}; {params.method}, w_src={params.w_src}, w_tgt={params.w_tgt}, {params.steps} steps"
          f"{window})")
    return 0


def _check_prompts(args: argparse.Namespace) -> None:
    """The prompts and blend words, checked as the engine will (words matched without the tokenizer)."""
    from autotune.task import contains_words

    # Worded as the engine words the same checks, so a message means one thing wherever it comes from.
    if not args.target_prompt.strip():
        raise InputError("--target-prompt: target prompt is empty; say what the edited image should show")
    if args.blend_words is None:
        return
    words = args.blend_words.split()
    if len(words) != 2:
        raise InputError(f"--blend-words: blend_words {args.blend_words!r} must be two words: "
                         "'<source word> <target word>'")
    for word, prompt, role in ((words[0], args.source_prompt, "source prompt"),
                               (words[1], args.target_prompt, "target prompt")):
        if not contains_words(prompt, word):
            raise InputError(f"--blend-words: blend word {word!r} does not appear in the {role} {prompt!r}; the "
                             "first blend word comes from the source prompt, the second from the target prompt")


def _warn_about_the_model(args: argparse.Namespace, editor, image) -> None:
    """Say what the model will do to this input that a user would not guess: resize it to the model's native size,
    and, for the shapes model, ignore the words it never saw in training."""
    import sys

    from autotune.engine.checkpoint import SHAPES_MODEL_DIR
    from autotune.shapes.world import unknown_words

    if max(image.size) != editor.resolution:
        print(f"note: the image is {image.width}x{image.height}; the model works at {editor.resolution} px on the "
              "long side, so it is resized to that, and the edit comes back at that size", file=sys.stderr)
    if args.model == "shapes" or Path(editor.model_info().get("path") or "") == SHAPES_MODEL_DIR:
        unknown = unknown_words(f"{args.source_prompt} {args.target_prompt}")
        if unknown:
            print(f"note: the shapes model was trained on captions of coloured circles, squares and triangles; it "
                  f"never saw {', '.join(repr(w) for w in unknown)}, so those words steer nothing "
                  "(docs/shapes.md)", file=sys.stderr)


def _preset_params(args: argparse.Namespace, editor):
    from autotune.presets.predictor import AUTO_STYLE
    from autotune.presets.store import PresetStore

    preset, style = PresetStore().resolve(args.preset, editor.model_info())
    preset.check_compatible(editor.model_info(), override=args.ignore_preset_mismatch)
    print(f"preset {preset.label} ({style}, {preset.kind})")
    if style != AUTO_STYLE:
        return preset.params(style)
    choice = editor.predict_params(args.image, args.source_prompt, args.target_prompt, blend_words=args.blend_words,
                                   preset=preset)
    print(choice.describe())
    return choice.params
