"""What every benchmark shares: the machine it ran on, the categories, the default search space."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

import torch

from autotune.errors import InputError
from autotune.params import EditParams
from autotune.task import EditTask, task_digest
from autotune.tuning.search_space import SearchSpace, family_defaults

BENCHMARKS = ("throughput", "overhead", "efficiency", "quality", "inversion", "memory", "predictor", "gpu")
SHAPES_CATEGORIES = ("change_color", "change_object", "change_background", "add_object", "delete_object")


SEEN_COUNT = 200  # of a seed's tasks, as many as any benchmark or tuning run can have read


def scene_key(task: EditTask) -> str:
    """The scene a task shows and the edit it asks, whatever its seed and id: its task digest
    (`autotune.task.task_digest`, the image and the two prompts), the identity that `--split` and `autotune
    evaluate`'s overlap check use, so "left out as seen" here and "tuned on" there mean the same task."""
    return task_digest(task)


def fresh_shapes_tasks(category: str, split: str, count: int, seed: int, seen_seeds: Sequence[int] = (0,),
                       seen_count: int = SEEN_COUNT, version: int = 1) -> tuple[list[EditTask], int]:
    """`count` shapes tasks of `split` drawn with `seed`, leaving out any whose scene and edit appear among the first
    `seen_count` tasks of the same split drawn with `seen_seeds` (two seeds may draw the same scene); returns the
    tasks and how many were left out."""
    from autotune.shapes.tasks import shapes_tasks

    seen = {scene_key(t) for s in seen_seeds if s != seed
            for t in shapes_tasks(category, split, seen_count, s, version=version)}
    asked = count
    while True:
        drawn = shapes_tasks(category, split, asked, seed, version=version)  # the same seed: the same first tasks
        kept = [t for t in drawn if scene_key(t) not in seen]
        if len(kept) >= count:
            return kept[:count], len(drawn) - len(kept)
        asked += count - len(kept)


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """What the figures were measured on; the load average says whether the machine was busy."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device or "cpu"),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if str(device or "cpu").startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def other_load(machine: dict[str, Any]) -> float | None:
    """The 1-minute load beyond the benchmark's own: its torch threads on a CPU (a run at 2 threads on 2 CPUs makes
    a load of about 2 by itself), one Python thread driving a GPU."""
    load, cpus = machine.get("load_average_1min"), machine.get("cpu_count")
    if load is None or not cpus:
        return None
    own = (machine.get("torch_threads") or 1) if str(machine.get("device", "cpu")).startswith("cpu") else 1
    return max(0.0, load - own)


def denoiser(editor: Any) -> torch.nn.Module:
    """The module an engine calls once per step (a UNet, or a transformer for the flow families): what the benchmarks
    count and time their work in."""
    components = editor.components
    for name in ("unet", "transformer"):
        module = getattr(components, name, None)
        if module is not None:
            return module
    raise InputError(f"no denoiser (unet or transformer) among the components of {editor.model_info().get('id')}")


# The models each benchmark applies to, by diffusers pipeline class, and what they are called in a refusal.
MODEL_KINDS = {
    "StableDiffusionPipeline": "SD 1.x/2.x (UNet family)",
    "StableDiffusionXLPipeline": "SDXL (UNet family)",
    "StableDiffusion3Pipeline": "SD3 (rectified-flow family)",
    "FluxPipeline": "FLUX.1 (rectified-flow family)",
}
_UNET = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
# benchmark -> (the pipeline classes it applies to, why not the others); a benchmark not here applies to every model
# the engine loads (throughput, overhead and memory run the family's default method and count its denoiser's calls;
# gpu runs them on each configs folder)
APPLIES_TO: dict[str, tuple[tuple[str, ...], str]] = {
    "efficiency": (_UNET, "its dense grid is SimInversion's w_src x w_tgt with Prompt-to-Prompt (UNet-family "
                          "methods), and the sampler settings it grades were chosen on the shapes UNet model's tables; "
                          "a flow model's version comes with the flow shapes model (issue 24)"),
    "inversion": (("StableDiffusionPipeline", "StableDiffusion3Pipeline"), "it replicates SimInversion's inversion "
                  "table on the shapes models (the SD 1.x UNet one and the SD3-format flow one): it reads the VAE "
                  "through the model's own diffusers pipeline and compares reconstructions with the rendered scenes "
                  "pixel for pixel"),
    "predictor": (_UNET, "it compares style auto with the preset's pick and with SimInversion's (0.5, 7.5), a "
                         "UNet-family method a rectified-flow model does not run; a flow model's version comes with "
                         "the flow shapes model (issue 24)"),
}


def pipeline_class(editor: Any) -> str:
    """The diffusers pipeline class of a loaded editor's checkpoint (the UNet family's components name theirs)."""
    components = editor.components
    name = getattr(components, "pipeline", None)
    if isinstance(name, str):
        return name
    pipe = getattr(components, "pipe", None)
    return type(pipe).__name__ if pipe is not None else "StableDiffusionPipeline"


def not_applicable(benchmark: str, pipeline: str) -> str | None:
    """Why `benchmark` does not apply to a model of this pipeline class, in words that name both and say what to run
    instead; None when it applies."""
    if benchmark not in APPLIES_TO:
        return None
    classes, why = APPLIES_TO[benchmark]
    if pipeline in classes:
        return None
    kind = MODEL_KINDS.get(pipeline, pipeline)
    fits = [n for n in BENCHMARKS if n != "gpu" and (n not in APPLIES_TO or pipeline in APPLIES_TO[n][0])]
    return (f"`autotune bench {benchmark}` does not apply to {kind}: {why}. It applies to "
            f"{', '.join(MODEL_KINDS[c] for c in classes)}; on this model run `autotune bench "
            f"{'|'.join(fits)}`.")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_space(steps: int, editor: Any = None) -> SearchSpace:
    """The tuner's default search space with `steps` sampling steps: the editor's family's (`SearchSpace.for_editor`),
    else the UNet family's (w_src in [0, 2] step 0.1, w_tgt in [1, 12])."""
    if editor is None:
        return SearchSpace.default(base=EditParams(steps=steps))
    return SearchSpace.for_editor(editor, family_defaults(editor, None).params.with_(steps=steps))
