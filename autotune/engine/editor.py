"""The Editor: edit a photo with separate source and target guidance, for one candidate or a batch of candidates at
once: SimInversion under Prompt-to-Prompt control on Stable Diffusion 1.x/2.x, FlowEdit and flow inversion on SD3 /
SD3.5 and FLUX.1.

The Editor is the one public face of the engine. It finds the checkpoint, picks its model family
(`autotune.engine.family`), reads presets, and checks what it is given; the family's engine does the work.

Example:
    >>> from autotune import Editor
    >>> editor = Editor.from_pretrained("shapes")  # or a hub id, a folder, a .safetensors file
    >>> result = editor.edit("photo.png", "a red circle on a white background",
    ...                      "a blue circle on a white background", blend_words=("red", "blue"))
    >>> result.image.save("edited.png")
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from autotune.engine.cache import TensorCache
from autotune.engine.checkpoint import DEFAULT_MODEL, Checkpoint, default_dtype, locate, resolve_device
from autotune.engine.family import (
    FAMILIES,
    SINGLE_FILE_FAMILY,
    EditResult,
    EngineSettings,
    FamilyDefaults,
    FamilyEngine,
    ModelFamily,
    family_for_pipeline,
    get_family,
    supported_pipelines,
)
from autotune.errors import InputError, ModelNotFoundError
from autotune.guidance import Guidance
from autotune.images import ImageInput
from autotune.params import EditParams
from autotune.presets.predictor import AUTO_STYLE, AutoChoice
from autotune.task import EditTask

__all__ = ["EditResult", "Editor"]


class Editor:
    """Inversion and editing on one loaded checkpoint. Build it with `Editor.from_pretrained`."""

    def __init__(self, engine: FamilyEngine, family: ModelFamily, *, presets: Any = None) -> None:
        self.engine = engine
        self.family = family
        self.presets = presets

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        scheduler: str = "checkpoint",
        revision: str | None = None,
        config: str | None = None,
        allow_pickle: bool = False,
        progress: bool = True,
        cache_items: int = 4096,
        cache_bytes: int = 2 << 30,
        cache_dir: str | None = None,
        presets: Any = None,
        max_batch: int = 16,
        record_sources: bool = True,
        offload: str | None = None,
    ) -> Editor:
        """Load a checkpoint. `device` defaults to CUDA when present, `dtype` to fp16 on CUDA and fp32 on CPU;
        `scheduler="piebench"` uses PIE-Bench's DDIM settings instead of the checkpoint's. `presets` is what
        `edit(category=...)` reads: True for the standard lookup order, a directory, a .json file or a Preset.
        `cache_items` and `cache_bytes` bound the in-memory cache;
        `cache_dir` keeps inversions on disk so that other processes reuse them. `max_batch` caps the target
        branches per UNet call (lower it if a large batch runs out of GPU memory). `record_sources` keeps each
        source branch in the cache (in memory) so that later edits with the same image, source prompt and
        source guidance run only their target branches; it turns itself off, before recording anything, when one
        record would take over a quarter of the cache (Stable Diffusion at 512 px: 1 GiB; SDXL at 1024 px: 12.7 GiB
        in half precision), where it would crowd out the inversions. `offload` ("model" or "sequential", on CUDA)
        uses the diffusers pipeline's CPU offloading, for models larger than the GPU's memory (the flow family:
        FLUX.1-dev on a 24 GB card needs "sequential")."""
        if max_batch < 1:
            raise InputError(f"max_batch={max_batch} must be >= 1")
        device = resolve_device(device)
        dtype = dtype or default_dtype(device)
        checkpoint = locate(model, revision, allow_pickle)
        family = _family_of(checkpoint)
        if offload is not None and offload not in family.offload_modes:
            modes = ", ".join(family.offload_modes) or "none"
            raise InputError(f"offload={offload!r} is not available for {family.name} models (modes: {modes})")
        settings = EngineSettings(TensorCache(cache_items, cache_bytes, directory=cache_dir), max_batch,
                                  record_sources, progress, offload)
        engine = family.load(checkpoint, device=device, dtype=dtype, scheduler=scheduler, config=config,
                             allow_pickle=allow_pickle, settings=settings)
        from autotune.presets.store import open_presets

        return cls(engine, family, presets=open_presets(presets))

    # ------------------------------------------------------------------ what the engine runs with
    @property
    def components(self) -> Any:
        """The loaded modules (the family's own record: UNet, VAE, text encoder, tokenizer, scheduler...)."""
        return self.engine.components

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.dtype

    @property
    def resolution(self) -> int:
        return self.engine.resolution

    @property
    def cache(self) -> TensorCache:
        """Inversions, encoded images and recorded source branches; may be swapped between calls."""
        return self.engine.settings.cache

    @cache.setter
    def cache(self, cache: TensorCache) -> None:
        self.engine.settings.cache = cache

    @property
    def progress(self) -> bool:
        return self.engine.settings.progress

    @progress.setter
    def progress(self, on: bool) -> None:
        self.engine.settings.progress = bool(on)

    @property
    def max_batch(self) -> int:
        return self.engine.settings.max_batch

    @property
    def record_sources(self) -> bool:
        return self.engine.settings.record_sources

    def model_info(self) -> dict[str, Any]:
        """Identity of the model and scheduler, for provenance and preset compatibility."""
        return self.engine.model_info()

    def defaults(self, method: str | None = None) -> FamilyDefaults:
        """What this model's family publishes for `method` (default: the family's own, e.g. SimInversion on
        Stable Diffusion 1.x/2.x, FlowEdit on SD3 and FLUX.1): the parameters, the search ranges, the paper points."""
        if method is not None and method not in self.family.methods:
            raise InputError(f"method {method!r} does not run on {self.family.name} models "
                             f"({self.model_info().get('id')}); choose one of {', '.join(self.family.methods)}")
        return self.family.defaults_for(self.model_info(), method)

    def default_params(self, method: str | None = None) -> EditParams:
        """The parameters an edit uses when given none: the published setting of `method` for this model."""
        return self.defaults(method).params

    def prepare_image(self, image: ImageInput) -> Image.Image:
        """The image as the model works on it: RGB, resized by the policy in `autotune.images`."""
        return self.engine.prepare_image(image)

    def check_prompts(self, tasks: Sequence[EditTask]) -> None:
        """Refuse, before any work, a task whose prompt the model cannot read (e.g. past CLIP's 77 tokens); the
        error names the task (and its file and line when it came from a task file)."""
        for task in tasks:
            where = f"task {task.id!r}"
            if "source" in task.metadata and "line" in task.metadata:
                where += f" ({task.metadata['source']}, line {task.metadata['line']})"
            for role, text in (("source prompt", task.source_prompt), ("target prompt", task.target_prompt)):
                self.engine.check_prompt(text, f"{where}: {role}")

    # ------------------------------------------------------------------ inversion
    def invert(self, image: ImageInput, source_prompt: str, w_inv: Guidance = 0.5, steps: int = 50) -> Any:
        """The inversion of `image` under `source_prompt` with guidance `w_inv` (a number or schedule)."""
        return self.engine.invert(image, source_prompt, w_inv, steps)

    def invert_tasks(self, tasks: Sequence[EditTask], candidates: Sequence[EditParams]) -> int:
        """Cache the inversion of every task under every candidate's inversion guidance, the missing ones
        inverted together in batches; returns how many were missing. A tuner that edits its tasks in chunks
        calls it before the first chunk: large inversion batches for its batch of trials instead of a small one per
        chunk (tasks whose source branch is already recorded need no inversion and are skipped). At most `2 * max_batch`
        inversions run in one loop: as many rows as the largest edit loop (`max_batch` target and up to `max_batch`
        source branches), which also holds attention maps."""
        return self.engine.invert_tasks(self._task_inputs(tasks, candidates), list(candidates))

    # ------------------------------------------------------------------ features
    def task_features(self, tasks: Sequence[EditTask], probe: EditParams | None = None) -> list[dict[str, float]]:
        """Cheap named features of each task, for predicting its setting (`autotune.engine.features`): the prompts
        through this model's text encoder, their word alignment, the image latent's statistics and, with `probe` on a
        family that inverts, the inversion's reconstruction error at the probe's guidance (one inversion and one
        source pass per task, cached for an edit at the same w_src). No weights beyond the model's own."""
        if probe is not None:
            self._check_methods([probe])
        inputs = [self.engine.check_inputs(t.image, t.source_prompt, t.target_prompt, t.blend_words) for t in tasks]
        return self.engine.task_features(inputs, probe)

    # ------------------------------------------------------------------ editing
    def edit(
        self,
        image: ImageInput,
        source_prompt: str,
        target_prompt: str,
        params: EditParams | None = None,
        *,
        blend_words: tuple[str, str] | Sequence[str] | str | None = None,
        category: str | None = None,
        style: str = "balanced",
        **overrides: Any,
    ) -> EditResult:
        """Edit one image. Parameters come from `params`, else from this editor's preset for `category`
        (at `style`: conservative, balanced or aggressive; or "auto", this image's setting from the preset's
        predictor, recorded on the result as `result.choice`), else the model's published defaults
        (`default_params`: SimInversion's on Stable Diffusion 1.x/2.x, FlowEdit's on SD3 and FLUX.1); keyword
        `overrides` (e.g. `w_tgt=9`, or `method="flow_siminversion"` for that method's defaults) change single
        fields."""
        choice = None
        if params is None and category is None and style == AUTO_STYLE:
            raise InputError("style='auto' needs category= (the preset whose predictor picks this image's setting), "
                             "e.g. edit(..., category='change_color', style='auto')")
        if params is None and category is not None and style == AUTO_STYLE:
            choice = self.predict_params(image, source_prompt, target_prompt, blend_words=blend_words,
                                         category=category)
            params = choice.params
        if params is not None or category is not None:
            base = params if params is not None else self._preset_params(category, style)
            if overrides:
                base = base.with_(**overrides)
        else:
            base = self.default_params(overrides.get("method")).with_(**overrides)
        result = self.edit_batch(image, source_prompt, target_prompt, [base], blend_words=blend_words)[0]
        result.choice = choice
        return result

    def predict_params(
        self,
        image: ImageInput,
        source_prompt: str,
        target_prompt: str,
        *,
        blend_words: tuple[str, str] | Sequence[str] | str | None = None,
        category: str | None = None,
        preset: Any = None,
    ) -> AutoChoice:
        """Style "auto": this image's setting from the predictor of `preset` (default: this editor's preset for
        `category`), computed from the image's and prompts' features (`task_features`), or the preset's pick when the
        image lies outside what the predictor was fitted on. The returned `AutoChoice` says which, and why."""
        if preset is None:
            if category is None:
                raise InputError("style 'auto' needs a category (or a preset) to find its predictor")
            preset = self._preset(category)
        predictor = preset.check_auto()
        if predictor.probe is not None:
            self._check_methods([predictor.probe])
        item = self.engine.check_inputs(image, source_prompt, target_prompt, blend_words)
        return preset.choose(self.engine.task_features([item], predictor.probe)[0])

    def _preset(self, category: str) -> Any:
        self._check_presets(category)
        return self.presets.preset_for(category, self.model_info())

    def _preset_params(self, category: str, style: str) -> EditParams:
        self._check_presets(category)
        return self.presets.params_for(category, style, self.model_info())

    def _check_presets(self, category: str) -> None:
        if self.presets is None:
            raise InputError(
                f"category={category!r} was given but this editor has no presets; "
                "use Editor.from_pretrained(model, presets=...) or pass params=EditParams(...)"
            )

    def edit_task(self, task: EditTask, candidates: Sequence[EditParams]) -> list[EditResult]:
        """Edit one task under K candidates (see `edit_batch`)."""
        return self.edit_batch(
            task.image, task.source_prompt, task.target_prompt, candidates, blend_words=task.blend_words
        )

    def edit_tasks(self, tasks: Sequence[EditTask], candidates: Sequence[EditParams]) -> list[list[EditResult]]:
        """Edit each task under the same K candidates: `result[t][k]`. Tasks are batched together (up to
        `max_batch` target branches per UNet call), which is what fills a GPU, and on a CPU makes each sample
        cheaper; results equal `edit_task` on each task within float tolerance."""
        return self.engine.edit(self._task_inputs(tasks, candidates), list(candidates))

    def edit_batch(
        self,
        image: ImageInput,
        source_prompt: str,
        target_prompt: str,
        candidates: Sequence[EditParams],
        *,
        blend_words: tuple[str, str] | Sequence[str] | str | None = None,
    ) -> list[EditResult]:
        """Edit the same image under K parameter sets in one batched pass per step.

        Candidates that share a source branch (same method and source/inversion guidance) share it;
        inversions come from the cache. Results equal K separate `edit` calls within float tolerance.
        """
        candidates = list(candidates)
        if not candidates:
            return []
        self._check_methods(candidates)
        item = self.engine.check_inputs(image, source_prompt, target_prompt, blend_words)
        return self.engine.edit([item], candidates)[0]

    def _task_inputs(self, tasks: Sequence[EditTask], candidates: Sequence[EditParams]) -> list[Any]:
        self._check_methods(candidates)
        return [self.engine.check_inputs(t.image, t.source_prompt, t.target_prompt, t.blend_words) for t in tasks]

    def _check_methods(self, candidates: Sequence[EditParams]) -> None:
        for k, cand in enumerate(candidates):
            if not isinstance(cand, EditParams):
                raise InputError(f"candidate {k} is a {type(cand).__name__}; pass EditParams objects")
            if cand.method not in self.family.methods:
                raise InputError(f"method {cand.method!r} does not run on {self.family.name} models "
                                 f"({self.model_info().get('id')}); choose one of {', '.join(self.family.methods)}")


def _family_of(checkpoint: Checkpoint) -> ModelFamily:
    """The family that reads this checkpoint: by its pipeline class, a single file by `SINGLE_FILE_FAMILY`."""
    pipeline = checkpoint.pipeline_class
    if pipeline is None:
        return get_family(SINGLE_FILE_FAMILY)
    family = family_for_pipeline(pipeline)
    if family is None:
        raise ModelNotFoundError(
            f"{checkpoint.model!r} is a {pipeline} checkpoint, a model family autotune does not edit; it edits "
            f"{', '.join(supported_pipelines())} checkpoints (families: {', '.join(FAMILIES)})"
        )
    return family
