"""A model family: what the `Editor` needs from one kind of checkpoint, behind one small protocol.

The `Editor` is the one public face (`edit`, `edit_batch`, `edit_tasks`, `invert_tasks`); behind it, each model
family is a folder of its own (`engine/unet/`: the Stable Diffusion UNets; `engine/flow/`: the rectified-flow
transformers SD3 and FLUX.1) with an entry in `FAMILIES`. Adding a family adds files and an entry here; no other part
of the engine changes.

A family module exposes `FAMILY`, with:

- `name`, and `pipelines`: the diffusers pipeline classes (`model_index.json`'s `_class_name`) whose checkpoints it
  loads; a single-file checkpoint is read by the family that `SINGLE_FILE_FAMILY` names unless its config says
  otherwise;
- `methods`: the `EditParams.method` values it runs (others are refused before any work);
- `search_ranges` and `paper_points`: the knobs a tuning study searches by default, and the published settings
  enqueued first so every study reports how far tuning moved from them (for the family's default model);
- `defaults_for(model_info, method=None)`: those three for one loaded model and method (`FamilyDefaults`: the
  parameters an edit uses when given none, the search ranges, the paper points), since a family's models may
  publish different settings (FlowEdit's SD3 and FLUX.1 settings differ);
- `offload_modes`: the CPU-offload modes its loader accepts (`EngineSettings.offload`; empty: none);
- `load(checkpoint, *, device, dtype, scheduler, config, allow_pickle, settings)`: the family's engine for a
  located checkpoint (`autotune.engine.checkpoint.Checkpoint`).

The engine (one object per loaded checkpoint) provides:

- `model_info()`, `device`, `dtype`, `resolution`, `size_multiple`, `components`: identity and working size;
- `prepare_image(image)`: the image as the model works on it;
- `check_prompt(text, role)`: refuse, before any work, a prompt its text encoders cannot read;
- `check_inputs(image, source_prompt, target_prompt, blend_words)`: one checked edit input (image encoded, prompts
  encoded and aligned), an opaque object the engine's other methods take;
- `invert(image, source_prompt, w_inv, steps)` and `invert_tasks(inputs, candidates)`: the inversion of one image,
  and the inversions a set of candidates needs computed ahead in large batches (a family that does not invert
  refuses the first and returns 0 from the second);
- `edit(inputs, candidates)`: every input under every candidate, `results[t][k]`, batched as the family can, each
  an `EditResult`;
- `task_features(inputs, probe=None)`: cheap named features of each input, for predicting its setting
  (`autotune.engine.features`: the prompts through the model's own text encoder, the word alignment, the latent's
  statistics, and, for a family that inverts and a `probe` setting, the inversion's reconstruction error). A model's
  feature names are the same for every input, in the same order.

It reads the mutable run settings (`EngineSettings`: cache, batch bound, source recording, progress bars) that the
`Editor` shares with it, so a caller may swap the cache or silence the bars between calls.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image

from autotune.engine.cache import TensorCache
from autotune.images import to_pil
from autotune.params import EditParams

# family name -> module exposing FAMILY (imported on first use: a family's imports stay out of the others' way)
FAMILIES: dict[str, str] = {
    "unet": "autotune.engine.unet.family",
    "flow": "autotune.engine.flow.family",
}
SINGLE_FILE_FAMILY = "unet"


@dataclass
class EditResult:
    """One edited image. `pixels` stays on the editor's device for batched scoring."""

    pixels: torch.Tensor  # (3, H, W) in [0, 1]
    params: EditParams
    source_pixels: torch.Tensor  # the source branch's reconstruction, (3, H, W)
    latent: torch.Tensor
    source_latent: torch.Tensor
    choice: Any = None  # for a style="auto" edit: how its setting was chosen (`autotune.presets.predictor.AutoChoice`)

    @property
    def image(self) -> Image.Image:
        return to_pil(self.pixels)

    @property
    def source_image(self) -> Image.Image:
        return to_pil(self.source_pixels)


@dataclass
class EngineSettings:
    """What an engine's runs may vary by, owned by the `Editor` and read by its engine at every call."""

    cache: TensorCache = field(default_factory=TensorCache)
    max_batch: int = 16  # target branches per denoising loop
    record_sources: bool = True  # keep source branches in the cache (turned off when one record is too large)
    progress: bool = True
    offload: str | None = None  # the loader's CPU offloading (a family's `offload_modes`), None: all on the device


@dataclass(frozen=True)
class FamilyDefaults:
    """What a family publishes for one model and method: the parameters an edit uses when given none, the knobs a
    study searches by default (knob -> range spec, `autotune.tuning.search_space`) and the published settings a
    study enqueues first (name -> knob values; a point naming a `method` applies to that method only)."""

    params: EditParams
    search_ranges: dict[str, dict[str, float]]
    paper_points: dict[str, dict[str, Any]]


class FamilyEngine(Protocol):
    """A loaded checkpoint of one family (see the module docstring)."""

    settings: EngineSettings
    components: Any
    device: torch.device
    dtype: torch.dtype
    resolution: int
    size_multiple: int

    def model_info(self) -> dict[str, Any]: ...
    def prepare_image(self, image: Any) -> Image.Image: ...
    def check_prompt(self, text: str, role: str) -> None: ...
    def check_inputs(self, image: Any, source_prompt: str, target_prompt: str, blend_words: Any) -> Any: ...
    def invert(self, image: Any, source_prompt: str, w_inv: Any, steps: int) -> Any: ...
    def invert_tasks(self, inputs: list[Any], candidates: list[EditParams]) -> int: ...
    def edit(self, inputs: list[Any], candidates: list[EditParams]) -> list[list[EditResult]]: ...
    def task_features(self, inputs: list[Any], probe: EditParams | None = None) -> list[dict[str, float]]: ...


class ModelFamily(Protocol):
    """One kind of checkpoint (see the module docstring)."""

    name: str
    pipelines: tuple[str, ...]
    methods: tuple[str, ...]
    search_ranges: dict[str, dict[str, float]]
    paper_points: dict[str, dict[str, float]]
    offload_modes: tuple[str, ...]

    def defaults_for(self, model_info: dict[str, Any], method: str | None = None) -> FamilyDefaults: ...

    def load(self, checkpoint: Any, *, device: torch.device, dtype: torch.dtype, scheduler: str, config: str | None,
             allow_pickle: bool, settings: EngineSettings) -> FamilyEngine: ...


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY


def family_for_pipeline(pipeline_class: str) -> ModelFamily | None:
    """The family that loads checkpoints of this diffusers pipeline class, or None."""
    for name in FAMILIES:
        family = get_family(name)
        if pipeline_class in family.pipelines:
            return family
    return None


def family_for_method(method: str) -> ModelFamily:
    """The family that runs this `EditParams.method`."""
    for name in FAMILIES:
        family = get_family(name)
        if method in family.methods:
            return family
    raise KeyError(f"no model family runs method {method!r}")


def supported_pipelines() -> list[str]:
    return [p for name in FAMILIES for p in get_family(name).pipelines]
