"""What several subcommands share: the model options and loading, the editing-parameter options, the output folder
check, and the scorer each task source calls for."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from autotune.errors import InputError
from autotune.params import FLOW_KNOBS, FLOW_METHODS, METHODS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, minus the noise: no "(default: ...)" after a switch, an unset option, or a
    help text that already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.nargs == 0  # --flag / --no-flag: its default is only the opposite of the switch
            or action.default in (None, argparse.SUPPRESS, [], ())
            or "%(default)" in text
            or "default:" in text.lower()
            or "unset:" in text.lower()
        ):
            return action.help
        return super()._get_help_string(action)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every command that loads a checkpoint shares."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        help="hub id, local diffusers folder, single .safetensors file, or a short name "
        "(shapes = the small model shipped with autotune; sd15, sd14, sd21, sd21-base, sdxl; sd3, sd35, sd35-large, "
        "flux-dev, flux-schnell). Default: %(default)s",
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
        "set_alpha_to_one off; Stable Diffusion 1.x/2.x only: SD3 and FLUX.1 use their own). Default: %(default)s",
    )
    group.add_argument("--offload", choices=("model", "sequential"),
                       help="CUDA: keep weights on the CPU and move them in when used (the diffusers pipeline's "
                       "offloading; SD3 / FLUX.1). model: whole models in turn; sequential: layer by layer, least "
                       "memory (FLUX.1-dev on a 24 GB card)")
    group.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin weights (they can run code)")
    add_threads_argument(group)
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_threads_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--threads", type=int, metavar="N",
        help="torch CPU threads. Default: $AUTOTUNE_THREADS, else $OMP_NUM_THREADS, else a fair share of this "
        "process's cores among the autotune processes running on them (docs/tuning.md, CPU threads)",
    )


def add_split_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """--split and --heldout-fraction, the same for every command that reads tasks."""
    parser.add_argument("--split", choices=("tune", "heldout", "all"), default=default,
                        help="which tasks of --tasks: the tuning split, the held-out split, or all. A task's split is "
                        "fixed by a hash of its image file and prompts, the same on every machine (docs/metrics.md, "
                        "Splits); the shapes world draws its own")
    parser.add_argument("--heldout-fraction", type=float, metavar="F",
                        help="share of a PIE-Bench folder's or task file's tasks held out (0-1; default 0.3; "
                        "the shapes world's is fixed at 0.2)")


def task_source(args: argparse.Namespace) -> dict[str, Any]:
    """Where the tasks came from, as studies and evaluations record it."""
    from autotune.tasks.sources import heldout_fraction_of, is_shapes, shapes_world_of

    source = {"spec": args.tasks, "split": args.split,
              "heldout_fraction": heldout_fraction_of(args.tasks, args.heldout_fraction)}
    version = shapes_world_of(getattr(args, "model", None)) if is_shapes(args.tasks) else 1
    if version != 1:
        source["world_version"] = version
    return source


def load_editor(args: argparse.Namespace, presets=None):
    import torch

    from autotune import threads
    from autotune.engine.editor import Editor

    threads.configure(getattr(args, "threads", None))

    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.quiet:
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    editor = Editor.from_pretrained(
        args.model,
        device=args.device,
        dtype=dtype,
        scheduler=args.scheduler,
        revision=args.revision,
        config=args.config,
        allow_pickle=args.allow_pickle,
        progress=not args.quiet,
        presets=presets,
        offload=getattr(args, "offload", None),
    )
    if editor.device.type == "cpu":
        threads.follow(editor.components)  # give cores to, and take them back from, autotune processes beside it
    return editor


def add_param_arguments(parser: argparse.ArgumentParser, title: str | None = None) -> None:
    """Editing parameters; unset ones come from the preset, else from the model's published defaults."""
    group = parser.add_argument_group(title or "editing parameters (default: the model's published setting: "
                                      "SimInversion with PIE-Bench's P2P settings on SD 1.x/2.x, FlowEdit's on SD3 "
                                      "and FLUX.1)")
    group.add_argument("--method", choices=METHODS,
                       help="editing method. Default: siminversion on SD 1.x/2.x, flowedit on SD3 / FLUX.1")
    group.add_argument("--w-src", type=float, help="source (and inversion) guidance. Default: 0.5 (SD 1.x/2.x), "
                       "3.5 (FlowEdit on SD3), 1.5 (FlowEdit on FLUX.1-dev)")
    group.add_argument("--w-tgt", type=float, help="target guidance. Default: 7.5 (SD 1.x/2.x), 13.5 (FlowEdit on "
                       "SD3), 5.5 (FlowEdit on FLUX.1-dev)")
    group.add_argument("--steps", type=int, help="sampling steps. Default: 50 (FLUX.1-dev: 28)")
    group.add_argument(
        "--cross-replace", type=float, help="fraction of steps with cross-attention replaced. Default: 0.4"
    )
    group.add_argument(
        "--self-replace", type=float, help="fraction of steps with self-attention replaced. Default: 0.6"
    )
    group.add_argument("--reweight", type=float, help="re-weighting of the target blend word. Default: 2")
    group.add_argument("--blend-threshold", type=float, help="LocalBlend mask threshold. Default: 0.3")
    group.add_argument("--p2p-mode", choices=("refine", "replace"), help="token alignment. Default: refine")
    group.add_argument("--n-max", type=float, metavar="FRACTION",
                       help="SD3 / FLUX.1: edit over the last FRACTION of the steps (FlowEdit's n_max; the depth of "
                       "flow_siminversion). Default: 0.66 (33 of 50, SD3), 0.857 (24 of 28, FLUX.1-dev)")
    group.add_argument("--n-min", type=float, metavar="FRACTION",
                       help="FlowEdit: sample the last FRACTION of the steps under the target prompt alone. Default: 0")
    group.add_argument("--n-avg", type=int, help="FlowEdit: noise draws averaged per step. Default: 1")
    group.add_argument("--noise-seed", type=int, help="FlowEdit: seed of its noise draws. Default: 0")


PARAM_NAMES = ("method", "w_src", "w_tgt", "steps", "cross_replace", "self_replace", "reweight", "blend_threshold",
               "p2p_mode", "n_max", "n_min", "n_avg", "noise_seed")


def param_overrides(args: argparse.Namespace) -> dict:
    return {n: getattr(args, n) for n in PARAM_NAMES if getattr(args, n, None) is not None}


def check_overrides(overrides: dict) -> None:
    """Check command-line editing parameters before a model loads: with their method, or, when none is given, with
    the family their knobs belong to (the model's own method is known only once it has loaded)."""
    from autotune.params import EditParams

    method = overrides.get("method")
    if method is None and any(name in overrides for name in FLOW_KNOBS):
        method = FLOW_METHODS[0]
    EditParams(**{**overrides, **({"method": method} if method else {})})


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


def make_scorer(args: argparse.Namespace, editor: Any) -> Any:
    """The shapes world's ground-truth scorer for shapes tasks (`--scorer auto`), else PIE-Bench's metrics with the
    scoring options the command has (`evaluate` has them all; `tune` takes PIE-Bench's defaults). Weights load here:
    a missing one fails before any editing."""
    kind = args.scorer
    if kind == "auto":
        kind = "shapes" if args.tasks.startswith("shapes") else "piebench"
    if kind == "shapes":
        from autotune.shapes.scoring import ShapesScorer

        return ShapesScorer()
    from autotune.scoring.clip import CLIP_PRETRAINED
    from autotune.scoring.piebench_scorer import ALL_METRICS, PieBenchScorer

    scorer = PieBenchScorer(
        mode=getattr(args, "mode", "piebench"),
        device=getattr(args, "scorer_device", None) or getattr(editor, "device", None),
        metrics=tuple(getattr(args, "metrics", ALL_METRICS)),
        lpips_net=getattr(args, "lpips_net", "squeeze"),
        lpips_weights=getattr(args, "lpips_weights", None),
        dino_weights=getattr(args, "dino_weights", None),
        clip_pretrained=getattr(args, "clip_weights", None) or CLIP_PRETRAINED,
    )
    return scorer.load()
