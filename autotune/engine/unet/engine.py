"""The UNet family's engine: DDIM inversion at any guidance, two-branch editing under Prompt-to-Prompt control,
batched over candidates and tasks, with cached inversions and recorded source branches (Stable Diffusion 1.x/2.x
and SDXL).

The `Editor` (autotune.engine.editor) is its public face; this module is the machinery behind it, one object per
loaded checkpoint. The denoising loop itself is `sampling.sample_branches`; the attention control,
`attention.EditController`; inversion, `inversion.ddim_invert`; the prompts (and SDXL's added conditions),
`conditioning.PromptEncoder`.

Which layers Prompt-to-Prompt controls is set relative to the UNet's levels, so that SD and SDXL get the same
treatment: cross-attention everywhere; self-attention at every attention level below the highest-resolution one
(SD 1.x/2.x: 32x32 and lower of a 64x64 latent, as P2P; SDXL, whose attention starts one level down: its 32x32 level
of a 128x128 latent, where 60 of its 70 transformer blocks are, and not its 64x64 level, whose 4096-token maps
P2P skips on SD too); LocalBlend reads the level nearest a quarter of the latent side (SD: 16x16 of 64x64, as P2P;
SDXL: 32x32 of 128x128).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from autotune.engine import features
from autotune.engine.cache import cache_key
from autotune.engine.family import EditResult, EngineSettings
from autotune.engine.unet import sampling
from autotune.engine.unet.attention import BlendSpec, EditController, attention_layers
from autotune.engine.unet.conditioning import PromptEncoder
from autotune.engine.unet.ddim import DDIMGrid, ddim_grid
from autotune.engine.unet.inversion import Inversion, ddim_invert, null_text_optimise
from autotune.engine.unet.loading import Components
from autotune.engine.unet.prompts import (
    TokenizedPrompt,
    refinement_mapper,
    replacement_mapper,
    tokenize_prompt,
    word_token_indices,
)
from autotune.engine.unet.source_record import SourceRecord, SourceRecorder, record_nbytes
from autotune.errors import InputError
from autotune.guidance import Guidance, GuidanceSchedule, as_schedule
from autotune.images import ImageInput, fit_to_model, image_digest, load_image
from autotune.params import EditParams

log = logging.getLogger(__name__)

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


@dataclass
class _SourcePlan:
    """The source branches of one run, in batch order: the live ones (run in this loop, first in the batch), then the
    recorded ones (read back). Indices in `src_of` and `group_tasks` count in that order; `order[i]` is branch i's
    (task, source group) index, under which `record_keys` stores it."""

    live: list[tuple[int, Any]]  # (task, source group) of each live branch
    live_params: list[EditParams]  # the parameters that define each live branch
    recorded: list[SourceRecord]
    order: list[int]
    record_keys: list[str]
    src_of: list[int]  # per target row (task t, candidate k at t * K + k): its source branch
    group_tasks: list[int]  # per source branch: its task
    trajectories: list[torch.Tensor]  # the live branches' inversions
    noise: list[torch.Tensor]  # per source branch: the inverted noise it (and its target rows) start from
    uncond: list[torch.Tensor]  # per source branch: the unconditional embedding of its rows
    uncond_pooled: list[torch.Tensor | None]  # per source branch: its unconditional pooled embedding (SDXL)
    windows: dict  # what a source record of this run covers


class UNetEngine:
    """Inversion and editing on one loaded Stable Diffusion or SDXL checkpoint (see the module docstring)."""

    def __init__(self, components: Components, settings: EngineSettings) -> None:
        self.components = components
        self.settings = settings
        self.prompts = PromptEncoder(components)
        self._pooled_cache: dict[str, torch.Tensor] = {}
        self._grids: dict[int, DDIMGrid] = {}

    # ------------------------------------------------------------------ identity
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

    @property
    def size_multiple(self) -> int:
        return self.components.size_multiple

    # ------------------------------------------------------------------ building blocks
    def prepare_image(self, image: ImageInput) -> Image.Image:
        """The image as the model works on it: RGB, resized by the policy in `autotune.images`."""
        c = self.components
        return fit_to_model(load_image(image), c.resolution, c.size_multiple)

    def _prepare(self, image: ImageInput) -> _Prepared:
        pil = self.prepare_image(image)
        digest = image_digest(pil)
        key = cache_key("latent", digest, self._model_key())
        latent = self.settings.cache.get(key, self.device)
        if latent is None:
            latent = self.encode_image(pil)
            self.settings.cache.put(key, latent)
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

    def encode_prompt(self, text: str) -> torch.Tensor:
        """The text embedding the UNet cross-attends to, (1, 77, D), cached per prompt (SDXL: both encoders')."""
        return self.prompts.embed(text).tokens

    def _pixel_size(self, latent_shape: torch.Size) -> tuple[int, int]:
        """(height, width) in pixels of a latent (C, h, w) or its spatial size (h, w): SDXL's size ids."""
        factor = self.components.vae_scale_factor
        return int(latent_shape[-2]) * factor, int(latent_shape[-1]) * factor

    @torch.no_grad()
    def pooled_prompt(self, text: str) -> torch.Tensor:
        """The prompt's pooled text vector, (D,), cached per prompt: on SD 1.x/2.x CLIP's (its end-of-text token after
        the final norm), on SDXL the second encoder's projected one, which the UNet reads as `text_embeds`."""
        if self.prompts.sdxl:
            return self.prompts.embed(text).pooled[0].float()  # type: ignore[index]
        if text not in self._pooled_cache:
            tok = self.components.tokenizer
            ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
            self._pooled_cache[text] = self.components.text_encoder(ids.input_ids.to(self.device))[1][0].float()
        return self._pooled_cache[text]

    def _grid(self, steps: int) -> DDIMGrid:
        if steps not in self._grids:
            self._grids[steps] = ddim_grid(self.components.scheduler, steps)
        return self._grids[steps]

    def _model_key(self) -> str:
        info = self.components.info
        return f"{info.get('id')}|{info.get('weights')}|{info.get('scheduler')}|{self.dtype}"

    def check_prompt(self, text: str, role: str) -> None:
        """Refuse a prompt CLIP cannot read (past 77 tokens) before any work."""
        self._tokenize(text, role)

    def _tokenize(self, text: str, role: str) -> TokenizedPrompt:
        """The prompt's tokens, on which Prompt-to-Prompt aligns words. SDXL's second tokenizer must split it into
        the same tokens, or word positions would point at other words in half of the embedding."""
        prompt = tokenize_prompt(self.components.tokenizer, text, role)
        second = self.components.tokenizer_2
        if second is not None and second is not self.components.tokenizer:
            if tokenize_prompt(second, text, role).ids[1:-1] != prompt.ids[1:-1]:
                raise InputError(f"{role}: this checkpoint's two tokenizers split {text[:80]!r} differently, so "
                                 "Prompt-to-Prompt cannot align its words; rephrase it (plain words, no rare symbols)")
        return prompt

    def check_inputs(
        self, image: ImageInput, source_prompt: str, target_prompt: str, blend_words: Any
    ) -> _EditInputs:
        """One image and prompt pair, checked: prompts tokenized, blend words found, the image encoded."""
        if not isinstance(target_prompt, str) or not target_prompt.strip():
            raise InputError("target prompt is empty; say what the edited image should show")
        if not isinstance(source_prompt, str):
            raise InputError("source prompt must be a string (it may be empty)")
        if not source_prompt.strip():
            log.warning("source prompt is empty: inverting unconditionally; Prompt-to-Prompt has no words to align")
        source = self._tokenize(source_prompt, "source prompt")
        target = self._tokenize(target_prompt, "target prompt")
        words = _blend_pair(blend_words)
        if words is not None:
            word_token_indices(source, words[0], "source prompt")
            word_token_indices(target, words[1], "target prompt")
        return _EditInputs(self._prepare(image), source, target, words)

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def task_features(self, items: Sequence[_EditInputs], probe: EditParams | None = None) -> list[dict[str, float]]:
        """Cheap features of each input (`autotune.engine.features`): text, word alignment and latent statistics;
        with `probe`, also the inversion at its guidance (cached, so an edit at the probe's w_src reuses it) and the
        reconstruction from it at its source guidance, the inputs of one latent size in one batch."""
        out = []
        for item in items:
            row = features.text_features(self.pooled_prompt(item.source.text), self.pooled_prompt(item.target.text))
            row.update(features.word_features(item.source.text, item.target.text))
            row.update(features.latent_features(item.prepared.latent))
            out.append(row)
        if probe is None:
            return out
        steps, grid = probe.steps, self._grid(probe.steps)
        # Each inverted alone and afresh, as at inference (one image): a cached inversion, computed in another
        # study's batch, differs in float rounding, and the features must not depend on what ran before.
        trajectories = [self._trajectories([(i.prepared, i.source, probe.inversion_scale)], steps, fresh=True)[0]
                        for i in items]
        shapes: dict[tuple[int, ...], list[int]] = {}
        for t, item in enumerate(items):
            shapes.setdefault(tuple(item.prepared.latent.shape), []).append(t)
        scales = torch.tensor(probe.source_scale.scales(steps), device=self.device, dtype=torch.float32)
        for same_size in shapes.values():
            for at in range(0, len(same_size), 2 * self.settings.max_batch):
                rows = same_size[at : at + 2 * self.settings.max_batch]
                noise = torch.stack([trajectories[t][0] for t in rows])
                sources = [self.prompts.embed(items[t].source.text) for t in rows]
                null = self.prompts.null()
                added = self.prompts.added([null.pooled] * len(rows), [source.pooled for source in sources],
                                           self._pixel_size(noise.shape))  # SDXL's added conditions; None otherwise
                rebuilt = sampling.sample_branches(self.components.unet, grid, noise,
                                                   torch.cat([source.tokens for source in sources]),
                                                   null.tokens.expand(len(rows), -1, -1),
                                                   scales[:, None].expand(steps, len(rows)).to(self.dtype),
                                                   progress=self.settings.progress, added=added)
                for t, latent in zip(rows, rebuilt):
                    out[t].update(features.inversion_features(items[t].prepared.latent, trajectories[t][0], latent))
        return out

    # ------------------------------------------------------------------ inversion
    def invert(self, image: ImageInput, source_prompt: str, w_inv: Guidance = 0.5, steps: int = 50) -> Inversion:
        """DDIM inversion of `image` under `source_prompt` with guidance `w_inv` (a number or schedule)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps={steps!r} must be a whole number >= 1")
        schedule = as_schedule(w_inv, "w_inv")
        prepared = self._prepare(image)
        source = self._tokenize(source_prompt, "source prompt")
        latents = self._trajectory(prepared, source, schedule, steps)
        return Inversion(latents, self._grid(steps).timesteps, str(schedule), source_prompt)

    def invert_tasks(self, items: Sequence[_EditInputs], candidates: Sequence[EditParams]) -> int:
        """Cache the inversion of every input under every candidate's inversion guidance (see
        `Editor.invert_tasks`); returns how many were missing."""
        by_steps: dict[int, dict[str, tuple[_Prepared, TokenizedPrompt, GuidanceSchedule]]] = {}
        for item in items:
            for cand in candidates:
                record_key = self._source_key(item.prepared, item.source, cand, cand.steps)
                if self.settings.record_sources and isinstance(self.settings.cache.peek(record_key), SourceRecord):
                    continue
                pair = (item.prepared, item.source, cand.inversion_scale)
                key = self._inversion_key(*pair, cand.steps)
                if self.settings.cache.peek(key) is None:
                    by_steps.setdefault(cand.steps, {})[key] = pair
        missing = 0
        for steps, wanted in by_steps.items():
            todo = list(wanted.values())
            per_loop = 2 * self.settings.max_batch
            for at in range(0, len(todo), per_loop):
                before = self.settings.cache.misses
                self._trajectories(todo[at : at + per_loop], steps)
                missing += self.settings.cache.misses - before
        return missing

    def _inversion_key(self, prepared: _Prepared, source: TokenizedPrompt, schedule: GuidanceSchedule, steps: int
                       ) -> str:
        return cache_key("inversion", prepared.digest, source.text, self._model_key(), steps, schedule.to_dict())

    def _trajectory(
        self, prepared: _Prepared, source: TokenizedPrompt, schedule: GuidanceSchedule, steps: int
    ) -> torch.Tensor:
        return self._trajectories([(prepared, source, schedule)], steps)[0]

    def _trajectories(
        self, wanted: list[tuple[_Prepared, TokenizedPrompt, GuidanceSchedule]], steps: int, fresh: bool = False
    ) -> list[torch.Tensor]:
        """Inversions of (image, source prompt, schedule): cached ones looked up (unless `fresh`), the missing ones
        inverted together in one batch (per latent size) and cached."""
        keys = [self._inversion_key(prepared, source, schedule, steps) for prepared, source, schedule in wanted]
        found = {key: None if fresh else self.settings.cache.get(key, self.device) for key in dict.fromkeys(keys)}
        missing: dict[tuple[int, ...], list[str]] = {}
        for key, value in found.items():
            if value is None:
                missing.setdefault(tuple(wanted[keys.index(key)][0].latent.shape), []).append(key)
        null = self.prompts.null()
        for shape, same_size in missing.items():
            todo = [wanted[keys.index(key)] for key in same_size]
            sources = [self.prompts.embed(source.text) for _, source, _ in todo]
            computed = ddim_invert(
                self.components.unet,
                self._grid(steps),
                torch.stack([prepared.latent for prepared, _, _ in todo]),
                torch.cat([source.tokens for source in sources]),
                null.tokens,
                [schedule.scales(steps) for _, _, schedule in todo],
                progress=self.settings.progress,
                added=self.prompts.added([null.pooled] * len(todo), [source.pooled for source in sources],
                                         self._pixel_size(torch.Size(shape))),
            )
            for key, trajectory in zip(same_size, computed):
                trajectory = trajectory.contiguous()
                self.settings.cache.put(key, trajectory)
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
        fitted = self.settings.cache.get(key, self.device)
        if fitted is None:
            cond, null = self.prompts.embed(source.text), self.prompts.null()
            fitted = null_text_optimise(
                self.components.unet,
                self._grid(params.steps),
                trajectory,
                cond.tokens,
                null.tokens,
                params.source_scale.scales(params.steps),
                iterations=params.null_text_iterations,
                progress=self.settings.progress,
                added=self.prompts.added([null.pooled], [cond.pooled], self._pixel_size(prepared.latent.shape)),
            )
            self.settings.cache.put(key, fitted)
        return fitted.to(self.device, self.dtype)

    # ------------------------------------------------------------------ editing
    def edit(self, items: list[_EditInputs], candidates: Sequence[EditParams]) -> list[list[EditResult]]:
        """One run per (steps, p2p mode, latent size) and chunk of at most `max_batch` target branches; results
        go back in the caller's order."""
        candidates = list(candidates)
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
            for at in range(0, len(idx), self.settings.max_batch):
                chunk = idx[at : at + self.settings.max_batch]
                per_run = max(1, self.settings.max_batch // len(chunk))  # tasks per run
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
        """Edit T tasks (same latent size) under K candidates in one denoising loop: plan the source branches, lay
        out the rows (the live source branches, then the T x K target branches, task by task), run, decode."""
        device, dtype = self.device, self.dtype
        k_count = len(candidates)
        shape = items[0].prepared.latent.shape[-2:]
        plan = self._plan_sources(items, candidates, steps, shape)
        g_count, src_of = len(plan.live), plan.src_of

        # 1. Per-row inputs: G live source rows, then T x K target rows
        start = torch.stack(plan.noise[:g_count] + [plan.noise[g] for g in src_of])
        cond = torch.cat([self.encode_prompt(items[t].source.text) for t, _ in plan.live]
                         + [self.encode_prompt(item.target.text).expand(k_count, -1, -1) for item in items])
        row_uncond = plan.uncond[:g_count] + [plan.uncond[g] for g in src_of]
        added = self.prompts.added(  # SDXL: every row's pooled embeddings and size ids, in both halves
            plan.uncond_pooled[:g_count] + [plan.uncond_pooled[g] for g in src_of],
            [self.prompts.embed(items[t].source.text).pooled for t, _ in plan.live]
            + [self.prompts.embed(item.target.text).pooled for item in items for _ in range(k_count)],
            self._pixel_size(shape),
        )
        if any(u.dim() == 3 for u in row_uncond):
            uncond = torch.stack([u if u.dim() == 3 else u.expand(steps, -1, -1) for u in row_uncond], dim=1)
        else:
            uncond = torch.stack(row_uncond)
        scales = (
            torch.tensor(
                [p.source_scale.scales(steps) for p in plan.live_params]
                + [c.w_tgt.scales(steps) for c in candidates] * len(items),
                dtype=dtype,
            )
            .T.contiguous()
            .to(device)
        )
        pinned = [g for g, p in enumerate(plan.live_params) if p.method == "direct"]
        pinned_rows = torch.tensor(pinned, device=device) if pinned else None
        pinned_traj = torch.stack([plan.trajectories[g] for g in pinned], dim=1) if pinned else None

        # 2. Prompt-to-Prompt control (the live source branches recorded when a record fits the cache's budget)
        recording = self.settings.record_sources and g_count and self._record_fits(plan, steps, shape)
        recorder = SourceRecorder(g_count) if recording else None
        controller = self._controller(items, candidates, src_of, plan.group_tasks, g_count, steps, mode, shape,
                                      plan.windows, plan.recorded, recorder)

        # 3. Denoising loop, then decode every row (and the recorded source branches' ends) in one VAE call
        latents = sampling.sample_branches(
            self.components.unet,
            self._grid(steps),
            start,
            cond,
            uncond,
            scales,
            controller,
            pinned_rows,
            pinned_traj,
            progress=self.settings.progress,
            added=added,
        )
        if controller.recorder is not None:
            made = controller.recorder.records(plan.noise[:g_count], plan.uncond[:g_count],
                                               plan.uncond_pooled[:g_count], **plan.windows)
            for g, record in zip(plan.order, made):
                self._keep_source_record(plan.record_keys[g], record)
        source_latents = torch.cat([latents[:g_count]] + [r.latents[-1:] for r in plan.recorded])
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

    def _plan_sources(
        self, items: list[_EditInputs], candidates: list[EditParams], steps: int, shape: torch.Size
    ) -> _SourcePlan:
        """One source branch per task and distinct (method, inversion guidance, source guidance): the ones recorded
        by an earlier run with these windows are read back, the others run live, first in the batch; the live
        ones' inversions (and null-text embeddings) are looked up or computed here."""
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
        null = self.prompts.null()
        uncond: list[torch.Tensor] = []
        uncond_pooled: list[torch.Tensor | None] = []
        for (t, _), p, traj in zip(live, live_params, trajectories):
            if p.method == "null_text":
                uncond.append(self._null_text(items[t].prepared, items[t].source, p, traj))  # (steps, 77, D)
                uncond_pooled.append(null.pooled)
            elif p.method == "negative_prompt":
                negative = self.prompts.embed(items[t].source.text)
                uncond.append(negative.tokens[0])
                uncond_pooled.append(negative.pooled)
            else:
                uncond.append(null.tokens[0])
                uncond_pooled.append(null.pooled)
        group_tasks = [t for t, _ in live] + [groups[g][0] for g in order[len(live):]]
        return _SourcePlan(
            live=live,
            live_params=live_params,
            recorded=recorded,
            order=order,
            record_keys=record_keys,
            src_of=src_of,
            group_tasks=group_tasks,
            trajectories=trajectories,
            noise=[traj[0] for traj in trajectories] + [r.noise for r in recorded],
            uncond=uncond + [r.uncond for r in recorded],
            uncond_pooled=uncond_pooled + [r.uncond_pooled for r in recorded],
            windows=windows,
        )

    # ------------------------------------------------------------------ recorded source branches
    def _windows(self, candidates: list[EditParams], steps: int, blend: bool, start_shape: torch.Size) -> dict:
        """What a source record must cover for this run (the same rounding as the controller's windows)."""
        h, w = int(start_shape[0]), int(start_shape[1])
        factor = self._blend_factor() if blend else 0
        self_factor = self._self_attention_factor()
        return {
            "cross_steps": max(int(c.cross_replace * steps) for c in candidates),
            "self_steps": max(int(c.self_replace * steps) for c in candidates),
            "self_max_tokens": h * w // self_factor**2,  # SD: <= 32x32 of a 64x64 latent, as P2P; SDXL: 32x32 of 128
            "blend_tokens": (h // factor) * (w // factor) if blend else -1,
        }

    def _source_key(self, prepared: _Prepared, source: TokenizedPrompt, params: EditParams, steps: int) -> str:
        return cache_key("source-branch", prepared.digest, source.text, self._model_key(), steps, params.source_group())

    def _source_record(self, key: str, windows: dict) -> SourceRecord | None:
        if not self.settings.record_sources:
            return None
        record = self.settings.cache.get(key, self.device)
        if isinstance(record, SourceRecord) and record.covers(**windows):
            return record
        return None

    def _record_bytes(self, plan: _SourcePlan, steps: int, latent_size: torch.Size) -> int:
        """The bytes of the largest record this run's live source branches would leave (known before the run)."""
        layers = attention_layers(self.components.unet, (int(latent_size[0]), int(latent_size[1])))
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        sizes = []
        for g in range(len(plan.live)):
            fixed = [t for t in (plan.noise[g], plan.uncond[g], plan.uncond_pooled[g]) if t is not None]
            sizes.append(record_nbytes(layers, steps=steps, fixed=fixed, itemsize=itemsize, **plan.windows))
        return max(sizes)

    def _record_fits(self, plan: _SourcePlan, steps: int, latent_size: torch.Size) -> bool:
        """The budget rule: a record is kept when it takes at most a quarter of the cache, so that records never crowd
        out the inversions. One that does not fit turns recording off on this editor (logged once), decided before the
        run so that a record too large (SDXL at 1024 px: 12.7 GiB in half precision) costs no memory at all."""
        nbytes = self._record_bytes(plan, steps, latent_size)
        budget = self.settings.cache.max_bytes // 4
        if nbytes <= budget:
            return True
        log.info("source branches are not recorded on this editor: a record of this model at %dx%d latents takes "
                 "%.0f MB, over a quarter of the cache's %.0f MB; each edit runs its source branch live (give "
                 "cache_bytes >= %.0f MB to record them)", int(latent_size[0]), int(latent_size[1]), nbytes / 2**20,
                 self.settings.cache.max_bytes / 2**20, 4 * nbytes / 2**20)
        self.settings.record_sources = False
        return False

    def _keep_source_record(self, key: str, record: SourceRecord) -> None:
        self.settings.cache.put(key, record, persist=False)

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

    def _attention_levels(self) -> list[int]:
        """The downsampling factor of every UNet level with attention (SD: 1, 2, 4; SDXL: 2, 4)."""
        types = self.components.unet.config.down_block_types
        levels = [2**i for i, name in enumerate(types) if "CrossAttn" in name]
        if not levels:
            raise InputError("this UNet has no cross-attention layers; Prompt-to-Prompt editing needs them")
        return levels

    def _blend_factor(self) -> int:
        """Downsampling of the cross-attention maps LocalBlend reads: 4 (16x16 of SD's 64x64 latent, 32x32 of SDXL's
        128x128), or the nearest level that has cross-attention on a model without one there."""
        return min(self._attention_levels(), key=lambda f: (abs(f - 4), -f))

    def _self_attention_factor(self) -> int:
        """Self-attention is replaced from this downsampling factor on: every attention level below the
        highest-resolution one (SD: 2, P2P's 32x32 of a 64x64 latent; SDXL: 4, 32x32 of 128x128; see the module
        docstring)."""
        return 2 * min(self._attention_levels())


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
