"""The Editor: invert a photo and edit it with separate source and target guidance (SimInversion),
under Prompt-to-Prompt control, for one candidate or a batch of candidates at once.

Example:
    >>> from autotune import Editor
    >>> editor = Editor.from_pretrained("shapes")  # or a hub id, a folder, a .safetensors file
    >>> result = editor.edit("photo.png", "a red circle on a white background",
    ...                      "a blue circle on a white background", blend_words=("red", "blue"))
    >>> result.image.save("edited.png")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from autotune.attention import BlendSpec, EditController
from autotune.cache import TensorCache, cache_key
from autotune.ddim import DDIMGrid, ddim_grid
from autotune.editing import sample_branches
from autotune.errors import InputError
from autotune.guidance import Guidance, GuidanceSchedule, as_schedule
from autotune.images import ImageInput, fit_to_model, image_digest, load_image, to_pil
from autotune.inversion import Inversion, ddim_invert, null_text_optimise
from autotune.models import DEFAULT_MODEL, Components, load_components
from autotune.params import EditParams
from autotune.prompts import (
    TokenizedPrompt,
    refinement_mapper,
    replacement_mapper,
    tokenize_prompt,
    word_token_indices,
)
from autotune.source_record import SourceRecord, SourceRecorder
from autotune.tasks import EditTask

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    """One edited image. `pixels` stays on the editor's device for batched scoring."""

    pixels: torch.Tensor  # (3, H, W) in [0, 1]
    params: EditParams
    source_pixels: torch.Tensor  # the source branch's reconstruction, (3, H, W)
    latent: torch.Tensor
    source_latent: torch.Tensor

    @property
    def image(self) -> Image.Image:
        return to_pil(self.pixels)

    @property
    def source_image(self) -> Image.Image:
        return to_pil(self.source_pixels)


@dataclass
class _Prepared:
    image: Image.Image
    digest: str
    latent: torch.Tensor


@dataclass
class _EditInputs:
    """One image and prompt pair of an edit, checked."""

    prepared: _Prepared
    source: TokenizedPrompt
    target: TokenizedPrompt
    words: tuple[str, str] | None


class Editor:
    """Inversion and editing on one loaded checkpoint. Build it with `Editor.from_pretrained`."""

    def __init__(
        self,
        components: Components,
        *,
        progress: bool = True,
        cache: TensorCache | None = None,
        presets: Any = None,
        max_batch: int = 16,
        record_sources: bool = True,
    ) -> None:
        if max_batch < 1:
            raise InputError(f"max_batch={max_batch} must be >= 1")
        self.components = components
        self.max_batch = max_batch
        self.record_sources = record_sources
        self.progress = progress
        self.cache = cache if cache is not None else TensorCache()
        self.presets = presets
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._grids: dict[int, DDIMGrid] = {}

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
    ) -> "Editor":
        """Load a checkpoint. `device` defaults to CUDA when present, `dtype` to fp16 on CUDA and fp32 on CPU;
        `scheduler="piebench"` uses PIE-Bench's DDIM settings instead of the checkpoint's. `presets` is what
        `edit(category=...)` reads: True for the standard lookup order, a directory, a .json file or a Preset.
        `cache_items` and `cache_bytes` bound the in-memory cache;
        `cache_dir` keeps inversions on disk so that other processes reuse them. `max_batch` caps the target
        branches per UNet call (lower it if a large batch runs out of GPU memory). `record_sources` keeps each
        source branch in the cache (in memory) so that later edits with the same image, source prompt and
        source guidance run only their target branches; it turns itself off when one record would take over a
        quarter of the cache (Stable Diffusion at 512 px), where it would crowd out the inversions."""
        components = load_components(
            model,
            device=device,
            dtype=dtype,
            scheduler=scheduler,
            revision=revision,
            config=config,
            allow_pickle=allow_pickle,
        )
        from autotune.preset_store import open_presets

        cache = TensorCache(cache_items, cache_bytes, directory=cache_dir)
        return cls(components, progress=progress, cache=cache, presets=open_presets(presets), max_batch=max_batch,
                   record_sources=record_sources)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.components.device

    @property
    def dtype(self) -> torch.dtype:
        return self.components.dtype

    @property
    def resolution(self) -> int:
        return self.components.resolution

    def model_info(self) -> dict[str, Any]:
        """Identity of the model and scheduler, for provenance and preset compatibility."""
        return dict(self.components.info)

    # ------------------------------------------------------------------ building blocks
    def prepare_image(self, image: ImageInput) -> Image.Image:
        """The image as the model works on it: RGB, resized by the policy in `autotune.images`."""
        c = self.components
        return fit_to_model(load_image(image), c.resolution, c.size_multiple)

    def _prepare(self, image: ImageInput) -> _Prepared:
        pil = self.prepare_image(image)
        digest = image_digest(pil)
        key = cache_key("latent", digest, self._model_key())
        latent = self.cache.get(key, self.device)
        if latent is None:
            latent = self.encode_image(pil)
            self.cache.put(key, latent)
        return _Prepared(pil, digest, latent.to(self.device, self.dtype))

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """The VAE latent (mean of the posterior, as PIE-Bench) times the scaling factor: (C, h, w)."""
        vae = self.components.vae
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
        pixels = pixels.permute(2, 0, 1)[None].to(self.device, vae.dtype)
        latent = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        return latent[0].to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> pixels (B, 3, H, W) in [0, 1]."""
        vae = self.components.vae
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """CLIP text embedding (1, 77, D), cached per prompt."""
        if text not in self._prompt_cache:
            tok = self.components.tokenizer
            ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
            emb = self.components.text_encoder(ids.input_ids.to(self.device))[0]
            self._prompt_cache[text] = emb.to(self.dtype)
        return self._prompt_cache[text]

    def _grid(self, steps: int) -> DDIMGrid:
        if steps not in self._grids:
            self._grids[steps] = ddim_grid(self.components.scheduler, steps)
        return self._grids[steps]

    def _model_key(self) -> str:
        info = self.components.info
        return f"{info.get('id')}|{info.get('weights')}|{info.get('scheduler')}|{self.dtype}"

    # ------------------------------------------------------------------ inversion
    def invert(self, image: ImageInput, source_prompt: str, w_inv: Guidance = 0.5, steps: int = 50) -> Inversion:
        """DDIM inversion of `image` under `source_prompt` with guidance `w_inv` (a number or schedule)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps={steps!r} must be a whole number >= 1")
        schedule = as_schedule(w_inv, "w_inv")
        prepared = self._prepare(image)
        source = tokenize_prompt(self.components.tokenizer, source_prompt, "source prompt")
        latents = self._trajectory(prepared, source, schedule, steps)
        return Inversion(latents, self._grid(steps).timesteps, str(schedule), source_prompt)

    def invert_tasks(self, tasks: Sequence[EditTask], candidates: Sequence[EditParams]) -> int:
        """Cache the inversion of every task under every candidate's inversion guidance, the missing ones
        inverted together in batches; returns how many were missing. A tuner that edits its tasks in chunks
        calls it before the first chunk: large inversion batches for its batch of trials instead of a small one per
        chunk (tasks whose source branch is already recorded need no inversion and are skipped). At most `2 * max_batch`
        inversions run in one loop: as many rows as the largest edit loop (`max_batch` target and up to `max_batch`
        source branches), which also holds attention maps."""
        items = [self._check_inputs(t.image, t.source_prompt, t.target_prompt, t.blend_words) for t in tasks]
        by_steps: dict[int, dict[str, tuple[_Prepared, TokenizedPrompt, GuidanceSchedule]]] = {}
        for item in items:
            for cand in candidates:
                if not isinstance(cand, EditParams):
                    raise InputError(f"candidates must be EditParams objects, got a {type(cand).__name__}")
                record_key = self._source_key(item.prepared, item.source, cand, cand.steps)
                if self.record_sources and isinstance(self.cache.peek(record_key), SourceRecord):
                    continue
                pair = (item.prepared, item.source, cand.inversion_scale)
                key = self._inversion_key(*pair, cand.steps)
                if self.cache.peek(key) is None:
                    by_steps.setdefault(cand.steps, {})[key] = pair
        missing = 0
        for steps, wanted in by_steps.items():
            todo = list(wanted.values())
            per_loop = 2 * self.max_batch
            for at in range(0, len(todo), per_loop):
                before = self.cache.misses
                self._trajectories(todo[at : at + per_loop], steps)
                missing += self.cache.misses - before
        return missing

    def _inversion_key(self, prepared: _Prepared, source: TokenizedPrompt, schedule: GuidanceSchedule, steps: int
                       ) -> str:
        return cache_key("inversion", prepared.digest, source.text, self._model_key(), steps, schedule.to_dict())

    def _trajectory(
        self, prepared: _Prepared, source: TokenizedPrompt, schedule: GuidanceSchedule, steps: int
    ) -> torch.Tensor:
        return self._trajectories([(prepared, source, schedule)], steps)[0]

    def _trajectories(
        self, wanted: list[tuple[_Prepared, TokenizedPrompt, GuidanceSchedule]], steps: int
    ) -> list[torch.Tensor]:
        """Inversions of (image, source prompt, schedule): cached ones looked up, the missing ones inverted
        together in one batch (per latent size)."""
        keys = [self._inversion_key(prepared, source, schedule, steps) for prepared, source, schedule in wanted]
        found = {key: self.cache.get(key, self.device) for key in dict.fromkeys(keys)}
        missing: dict[tuple[int, ...], list[str]] = {}
        for key, value in found.items():
            if value is None:
                missing.setdefault(tuple(wanted[keys.index(key)][0].latent.shape), []).append(key)
        for same_size in missing.values():
            todo = [wanted[keys.index(key)] for key in same_size]
            computed = ddim_invert(
                self.components.unet,
                self._grid(steps),
                torch.stack([prepared.latent for prepared, _, _ in todo]),
                torch.cat([self.encode_prompt(source.text) for _, source, _ in todo]),
                self.encode_prompt(""),
                [schedule.scales(steps) for _, _, schedule in todo],
                progress=self.progress,
            )
            for key, trajectory in zip(same_size, computed):
                trajectory = trajectory.contiguous()
                self.cache.put(key, trajectory)
                found[key] = trajectory
        return [found[key].to(self.device, self.dtype) for key in keys]

    def _null_text(
        self, prepared: _Prepared, source: TokenizedPrompt, params: EditParams, trajectory: torch.Tensor
    ) -> torch.Tensor:
        key = cache_key(
            "null-text",
            prepared.digest,
            source.text,
            self._model_key(),
            params.steps,
            params.inversion_scale.to_dict(),
            params.source_scale.to_dict(),
            params.null_text_iterations,
        )
        fitted = self.cache.get(key, self.device)
        if fitted is None:
            fitted = null_text_optimise(
                self.components.unet,
                self._grid(params.steps),
                trajectory,
                self.encode_prompt(source.text),
                self.encode_prompt(""),
                params.source_scale.scales(params.steps),
                iterations=params.null_text_iterations,
                progress=self.progress,
            )
            self.cache.put(key, fitted)
        return fitted.to(self.device, self.dtype)

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
        (at `style`: conservative, balanced or aggressive), else the SimInversion defaults; keyword
        `overrides` (e.g. `w_tgt=9`) change single fields."""
        base = params if params is not None else self._preset_params(category, style)
        if overrides:
            base = base.with_(**overrides)
        return self.edit_batch(image, source_prompt, target_prompt, [base], blend_words=blend_words)[0]

    def _preset_params(self, category: str | None, style: str) -> EditParams:
        if category is None:
            return EditParams()
        if self.presets is None:
            raise InputError(
                f"category={category!r} was given but this editor has no presets; "
                "use Editor.from_pretrained(model, presets=...) or pass params=EditParams(...)"
            )
        return self.presets.params_for(category, style, self.model_info())

    def edit_task(self, task: EditTask, candidates: Sequence[EditParams]) -> list[EditResult]:
        """Edit one task under K candidates (see `edit_batch`)."""
        return self.edit_batch(
            task.image, task.source_prompt, task.target_prompt, candidates, blend_words=task.blend_words
        )

    def edit_tasks(self, tasks: Sequence[EditTask], candidates: Sequence[EditParams]) -> list[list[EditResult]]:
        """Edit each task under the same K candidates: `result[t][k]`. Tasks are batched together (up to
        `max_batch` target branches per UNet call), which is what fills a GPU, and on a CPU makes each sample
        cheaper; results equal `edit_task` on each task within float tolerance."""
        items = [self._check_inputs(t.image, t.source_prompt, t.target_prompt, t.blend_words) for t in tasks]
        return self._edit(items, candidates)

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
        return self._edit([self._check_inputs(image, source_prompt, target_prompt, blend_words)], candidates)[0]

    def _check_inputs(
        self, image: ImageInput, source_prompt: str, target_prompt: str, blend_words: Any
    ) -> _EditInputs:
        if not isinstance(target_prompt, str) or not target_prompt.strip():
            raise InputError("target prompt is empty; say what the edited image should show")
        if not isinstance(source_prompt, str):
            raise InputError("source prompt must be a string (it may be empty)")
        if not source_prompt.strip():
            log.warning("source prompt is empty: inverting unconditionally; Prompt-to-Prompt has no words to align")
        tok = self.components.tokenizer
        source = tokenize_prompt(tok, source_prompt, "source prompt")
        target = tokenize_prompt(tok, target_prompt, "target prompt")
        words = _blend_pair(blend_words)
        if words is not None:
            word_token_indices(source, words[0], "source prompt")
            word_token_indices(target, words[1], "target prompt")
        return _EditInputs(self._prepare(image), source, target, words)

    def _edit(self, items: list[_EditInputs], candidates: Sequence[EditParams]) -> list[list[EditResult]]:
        """One run per (steps, p2p mode, latent size) and chunk of at most `max_batch` target branches; results
        go back in the caller's order."""
        candidates = list(candidates)
        for k, cand in enumerate(candidates):
            if not isinstance(cand, EditParams):
                raise InputError(f"candidate {k} is a {type(cand).__name__}; pass EditParams objects")
        results: list[list[EditResult | None]] = [[None] * len(candidates) for _ in items]
        if not candidates:
            return results  # type: ignore[return-value]
        runs: dict[tuple[int, str], list[int]] = {}
        for k, cand in enumerate(candidates):
            runs.setdefault((cand.steps, cand.p2p_mode), []).append(k)
        shapes: dict[tuple[int, ...], list[int]] = {}
        for t, item in enumerate(items):
            shapes.setdefault(tuple(item.prepared.latent.shape), []).append(t)
        for (steps, mode), idx in runs.items():
            for at in range(0, len(idx), self.max_batch):
                chunk = idx[at : at + self.max_batch]
                per_run = max(1, self.max_batch // len(chunk))  # tasks per run
                for same_size in shapes.values():
                    for t_at in range(0, len(same_size), per_run):
                        task_ids = same_size[t_at : t_at + per_run]
                        out = self._run([items[t] for t in task_ids], [candidates[k] for k in chunk], steps, mode)
                        for t, row in zip(task_ids, out):
                            for k, res in zip(chunk, row):
                                results[t][k] = res
        return results  # type: ignore[return-value]

    def _run(
        self, items: list[_EditInputs], candidates: list[EditParams], steps: int, mode: str
    ) -> list[list[EditResult]]:
        """Edit T tasks (same latent size) under K candidates in one denoising loop. Rows: the live source
        branches, then the T x K target branches, task by task."""
        grid = self._grid(steps)
        device, dtype = self.device, self.dtype
        null = self.encode_prompt("")
        k_count = len(candidates)
        shape = items[0].prepared.latent.shape[-2:]

        # 3. Source branches: one per task and distinct (method, inversion guidance, source guidance); the ones
        #    recorded by an earlier run with these windows are read back, the others run live (first).
        group_of = [c.source_group() for c in candidates]
        first_of = {key: group_of.index(key) for key in dict.fromkeys(group_of)}
        groups = [(t, key) for t in range(len(items)) for key in first_of]  # (task, source group)
        windows = self._windows(candidates, steps, any(it.words for it in items), start_shape=shape)
        record_keys, found = [], []
        for t, key in groups:
            item, params = items[t], candidates[first_of[key]]
            record_keys.append(self._source_key(item.prepared, item.source, params, steps))
            task_windows = dict(windows, blend_tokens=windows["blend_tokens"] if item.words else -1)
            found.append(self._source_record(record_keys[-1], task_windows))
        order = [g for g, r in enumerate(found) if r is None] + [g for g, r in enumerate(found) if r is not None]
        position = {g: at for at, g in enumerate(order)}
        index_of = {group: g for g, group in enumerate(groups)}
        src_of = [position[index_of[(t, key)]] for t in range(len(items)) for key in group_of]
        live = [groups[g] for g in order if found[g] is None]
        live_params = [candidates[first_of[key]] for _, key in live]
        recorded = [found[g] for g in order if found[g] is not None]
        trajectories = self._trajectories(
            [(items[t].prepared, items[t].source, p.inversion_scale) for (t, _), p in zip(live, live_params)], steps
        )
        uncond_by_group: list[torch.Tensor] = []
        for (t, _), p, traj in zip(live, live_params, trajectories):
            if p.method == "null_text":
                uncond_by_group.append(self._null_text(items[t].prepared, items[t].source, p, traj))  # (steps, 77, D)
            elif p.method == "negative_prompt":
                uncond_by_group.append(self.encode_prompt(items[t].source.text)[0])
            else:
                uncond_by_group.append(null[0])
        noise_by_group = [traj[0] for traj in trajectories] + [r.noise for r in recorded]
        uncond_by_group += [r.uncond for r in recorded]

        # 4. Per-row inputs: G live source rows, then T x K target rows
        g_count = len(live_params)
        start = torch.stack(noise_by_group[:g_count] + [noise_by_group[g] for g in src_of])
        cond = torch.cat([self.encode_prompt(items[t].source.text) for t, _ in live]
                         + [self.encode_prompt(item.target.text).expand(k_count, -1, -1) for item in items])
        row_uncond = uncond_by_group[:g_count] + [uncond_by_group[g] for g in src_of]
        if any(u.dim() == 3 for u in row_uncond):
            uncond = torch.stack([u if u.dim() == 3 else u.expand(steps, -1, -1) for u in row_uncond], dim=1)
        else:
            uncond = torch.stack(row_uncond)
        scales = (
            torch.tensor(
                [p.source_scale.scales(steps) for p in live_params] + [c.w_tgt.scales(steps) for c in candidates]
                * len(items),
                dtype=dtype,
            )
            .T.contiguous()
            .to(device)
        )
        pinned = [g for g, p in enumerate(live_params) if p.method == "direct"]
        pinned_rows = torch.tensor(pinned, device=device) if pinned else None
        pinned_traj = torch.stack([trajectories[g] for g in pinned], dim=1) if pinned else None

        # 5. Prompt-to-Prompt control
        recorder = SourceRecorder(g_count) if self.record_sources and g_count else None
        group_tasks = [live[at][0] for at in range(g_count)] + [groups[g][0] for g in order[g_count:]]
        controller = self._controller(items, candidates, src_of, group_tasks, g_count, steps, mode, shape,
                                      windows, recorded, recorder)

        # 6. Denoising loop, then decode every row (and the recorded source branches' ends) in one VAE call
        latents = sample_branches(
            self.components.unet,
            grid,
            start,
            cond,
            uncond,
            scales,
            controller,
            pinned_rows,
            pinned_traj,
            progress=self.progress,
        )
        if controller.recorder is not None:
            made = controller.recorder.records(noise_by_group[:g_count], uncond_by_group[:g_count], **windows)
            for g, record in zip(order, made):
                self._keep_source_record(record_keys[g], record)
        source_latents = torch.cat([latents[:g_count]] + [r.latents[-1:] for r in recorded])
        edits = len(src_of)
        pixels = self.decode(torch.cat([latents[g_count:], source_latents]))
        src_pixels = pixels[edits:]
        return [
            [
                EditResult(pixels[r], cand, src_pixels[src_of[r]], latents[g_count + r], source_latents[src_of[r]])
                for k, cand in enumerate(candidates)
                for r in [t * k_count + k]
            ]
            for t in range(len(items))
        ]

    # ------------------------------------------------------------------ recorded source branches
    def _windows(self, candidates: list[EditParams], steps: int, blend: bool, start_shape: torch.Size) -> dict:
        """What a source record must cover for this run (the same rounding as the controller's windows)."""
        h, w = int(start_shape[0]), int(start_shape[1])
        factor = self._blend_factor() if blend else 0
        return {
            "cross_steps": max(int(c.cross_replace * steps) for c in candidates),
            "self_steps": max(int(c.self_replace * steps) for c in candidates),
            "self_max_tokens": h * w // 4,  # P2P: self-attention replaced at <= 32x32 of a 64x64 latent
            "blend_tokens": (h // factor) * (w // factor) if blend else -1,
        }

    def _source_key(self, prepared: _Prepared, source: TokenizedPrompt, params: EditParams, steps: int) -> str:
        return cache_key("source-branch", prepared.digest, source.text, self._model_key(), steps, params.source_group())

    def _source_record(self, key: str, windows: dict) -> SourceRecord | None:
        if not self.record_sources:
            return None
        record = self.cache.get(key, self.device)
        if isinstance(record, SourceRecord) and record.covers(**windows):
            return record
        return None

    def _keep_source_record(self, key: str, record: SourceRecord) -> None:
        if record.nbytes > self.cache.max_bytes // 4:  # would crowd out the inversions: keep recomputing it
            if self.record_sources:
                log.info("a source branch record takes %.0f MB, over a quarter of the cache's %.0f MB; "
                         "source branches are not recorded on this editor", record.nbytes / 2**20,
                         self.cache.max_bytes / 2**20)
            self.record_sources = False
            return
        self.cache.put(key, record, persist=False)

    def _controller(
        self,
        items: list[_EditInputs],
        candidates: list[EditParams],
        src_of: list[int],
        group_tasks: list[int],
        groups: int,
        steps: int,
        mode: str,
        latent_size: torch.Size,
        windows: dict,
        recorded: list[SourceRecord],
        recorder: SourceRecorder | None,
    ) -> EditController:
        """Per target row (task t, candidate k at row t * K + k): windows, token mapping, re-weighting and
        LocalBlend; per source branch (task `group_tasks[g]`): LocalBlend's source words."""
        device, dtype = self.device, self.dtype
        tasks = len(items)
        step_ids = torch.arange(steps)[:, None]

        def window(fractions: list[float]) -> torch.Tensor:
            ends = torch.tensor([int(f * steps) for f in fractions] * tasks)
            return step_ids < ends[None]

        cross_active = window([c.cross_replace for c in candidates])
        self_active = window([c.self_replace for c in candidates])
        refine = swap = equalizer = blend = thresholds = blend_active = None
        per_row = len(candidates)
        if mode == "refine":
            pairs = [refinement_mapper(item.source, item.target) for item in items]
            mapper = torch.stack([m for m, _ in pairs]).repeat_interleave(per_row, dim=0)
            alphas = torch.stack([a for _, a in pairs]).repeat_interleave(per_row, dim=0)
            refine = (mapper.to(device), alphas.to(device, dtype))
        else:
            swap = torch.stack([replacement_mapper(item.source, item.target) for item in items])
            swap = swap.repeat_interleave(per_row, dim=0).to(device, dtype)
        if any(item.words is not None for item in items):
            tgt_tokens = [word_token_indices(item.target, item.words[1], "target prompt") if item.words else []
                          for item in items]
            if any(c.reweight != 1.0 for c in candidates):
                equalizer = torch.ones(tasks * per_row, 77)
                for t, tokens in enumerate(tgt_tokens):
                    for k, c in enumerate(candidates):
                        equalizer[t * per_row + k, tokens] = c.reweight
                equalizer = equalizer.to(device, dtype)
            source_mask = torch.zeros(len(group_tasks), 77)
            for g, t in enumerate(group_tasks):
                if items[t].words is not None:
                    source_mask[g, word_token_indices(items[t].source, items[t].words[0], "source prompt")] = 1
            target_mask = torch.zeros(tasks * per_row, 77)
            for t, tokens in enumerate(tgt_tokens):
                target_mask[t * per_row : (t + 1) * per_row, tokens] = 1
            h, w = int(latent_size[0]), int(latent_size[1])
            factor = self._blend_factor()
            blend = BlendSpec(source_mask.to(device), target_mask.to(device), (h // factor, w // factor), (h, w))
            thresholds = torch.tensor([c.blend_threshold for c in candidates] * tasks, device=device,
                                      dtype=torch.float32)
            starts = torch.tensor([int(c.blend_start * steps) if item.words else steps
                                   for item in items for c in candidates])  # no blend words: never blended
            blend_active = step_ids >= starts[None]
        return EditController(
            groups=groups,
            src_of=torch.tensor(src_of, device=device),
            cross_active=cross_active.to(device),
            self_active=self_active.to(device),
            blend_active=blend_active.to(device) if blend_active is not None else None,
            refine=refine,
            swap=swap,
            equalizer=equalizer,
            blend=blend,
            thresholds=thresholds,
            self_max_tokens=windows["self_max_tokens"],
            recorded=recorded,
            recorder=recorder,
        )

    def _blend_factor(self) -> int:
        """Downsampling of the cross-attention maps LocalBlend reads: 4 (16x16 of SD's 64x64 latent), or the
        nearest level that has cross-attention on a model without one there."""
        types = self.components.unet.config.down_block_types
        levels = [2**i for i, name in enumerate(types) if "CrossAttn" in name]
        if not levels:
            raise InputError("this UNet has no cross-attention layers; Prompt-to-Prompt editing needs them")
        return min(levels, key=lambda f: (abs(f - 4), -f))


def _blend_pair(blend_words: Any) -> tuple[str, str] | None:
    if blend_words is None:
        return None
    if isinstance(blend_words, str):
        parts = blend_words.split()
        if len(parts) != 2:
            raise InputError(f"blend_words {blend_words!r} must be two words: '<source word> <target word>'")
        return parts[0], parts[1]
    pair = tuple(blend_words)
    if len(pair) != 2 or not all(isinstance(w, str) and w.strip() for w in pair):
        raise InputError(f"blend_words must be (source word, target word), got {blend_words!r}")
    return pair[0], pair[1]
