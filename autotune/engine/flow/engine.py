"""The flow family's engine: FlowEdit and flow inversion with separate source and target guidance on SD3 / SD3.5 and
FLUX.1, batched over candidates and tasks, with cached inversions and recorded source work.

The `Editor` (autotune.engine.editor) is its public face; this module is the machinery behind it, one object per
loaded checkpoint. The samplers are `sampling.flowedit`, `sampling.euler_invert` and `sampling.euler_sample`; the
model, `velocity.GuidedVelocity`.

What is shared and kept, so that a tuning study pays for each piece of source work once:
- FlowEdit: the source velocity of a task at a step and noise draw depends on the source guidance and the noise seed
  only, so candidates sharing (w_src, noise_seed) share it within a run, and it is recorded (in memory) for later
  runs: a trial whose w_src an earlier trial drew computes only its target rows.
- flow_siminversion: the inversion at w_src (cached, and on disk with `cache_dir`), and the source branch's
  reconstruction from each depth.
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
from autotune.engine.flow import sampling
from autotune.engine.flow.loading import FlowComponents
from autotune.engine.flow.schedule import sigma_schedule
from autotune.engine.flow.velocity import GuidedVelocity
from autotune.errors import InputError
from autotune.guidance import Guidance, GuidanceSchedule, as_schedule
from autotune.images import ImageInput, fit_to_model, image_digest, load_image
from autotune.params import EditParams

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    image: Image.Image
    digest: str
    latent: torch.Tensor  # (C, h, w), float32


@dataclass
class _EditInputs:
    """One image and prompt pair of an edit, checked."""

    prepared: _Prepared
    source: str
    target: str


@dataclass
class FlowInversion:
    """An Euler inversion: `latents[0]` is the inverted noise, `latents[i]` enters sampling step i, `latents[-1]` is
    the image latent; `sigmas` are the run's noise levels."""

    latents: torch.Tensor
    sigmas: list[float]
    w_inv: str
    source_prompt: str

    @property
    def noise(self) -> torch.Tensor:
        return self.latents[0]

    @property
    def steps(self) -> int:
        return self.latents.shape[0] - 1


class VelocityRecord:
    """FlowEdit's source velocities of one (task, w_src, noise seed, steps), per (step, draw): kept in the cache (in
    memory) so that later runs with the same source guidance compute only their target rows."""

    def __init__(self, velocities: dict[tuple[int, int], torch.Tensor]) -> None:
        self.velocities = velocities

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.velocities.values())


class FlowEngine:
    """FlowEdit and flow inversion on one loaded SD3 or FLUX.1 checkpoint (see the module docstring)."""

    def __init__(self, components: FlowComponents, settings: EngineSettings) -> None:
        self.components = components
        self.settings = settings
        self.velocity = GuidedVelocity(components)
        self._sigmas: dict[tuple[int, int], list[float]] = {}
        self._blend_noted = False

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

    @property
    def size_multiple(self) -> int:
        return self.components.size_multiple

    def model_info(self) -> dict[str, Any]:
        """Identity of the model and scheduler, for provenance and preset compatibility."""
        return dict(self.components.info)

    def _model_key(self) -> str:
        info = self.components.info
        return f"{info.get('id')}|{info.get('weights')}|{info.get('scheduler')}|{self.dtype}"

    # ------------------------------------------------------------------ building blocks
    def prepare_image(self, image: ImageInput) -> Image.Image:
        """The image as the model works on it: RGB, resized by the policy in `autotune.images`."""
        return fit_to_model(load_image(image), self.resolution, self.size_multiple)

    def _prepare(self, image: ImageInput) -> _Prepared:
        pil = self.prepare_image(image)
        digest = image_digest(pil)
        key = cache_key("flow-latent", digest, self._model_key())
        latent = self.settings.cache.get(key, self.device)
        if latent is None:
            latent = self.encode_image(pil)
            self.settings.cache.put(key, latent)
        return _Prepared(pil, digest, latent.to(self.device, torch.float32))

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """The VAE latent (the posterior's mode, as FlowEdit), shifted and scaled as the transformer reads it:
        (C, h, w), float32."""
        vae = self.components.vae
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
        pixels = pixels.permute(2, 0, 1)[None].to(self.device, vae.dtype)
        latent = vae.encode(pixels).latent_dist.mode()
        shift = vae.config.shift_factor or 0.0
        return ((latent.float() - shift) * vae.config.scaling_factor)[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> pixels (B, 3, H, W) in [0, 1]."""
        vae = self.components.vae
        shift = vae.config.shift_factor or 0.0
        latents = latents.float() / vae.config.scaling_factor + shift
        images = vae.decode(latents.to(self.device, vae.dtype)).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def sigmas(self, steps: int, latent_shape: Sequence[int]) -> list[float]:
        """The run's N + 1 noise levels (FLUX.1's depend on the number of image tokens)."""
        h, w = int(latent_shape[-2]), int(latent_shape[-1])
        patch = 2 if self.components.architecture == "flux" else int(self.components.transformer.config.patch_size)
        tokens = (h // patch) * (w // patch)
        if (steps, tokens) not in self._sigmas:
            self._sigmas[(steps, tokens)] = sigma_schedule(self.components.scheduler, self.components.architecture,
                                                           steps, tokens)
        return self._sigmas[(steps, tokens)]

    def check_prompt(self, text: str, role: str) -> None:
        """Refuse, before any work, a prompt longer than the longest of this model's text encoders reads (T5's 256 or
        512 tokens; CLIP's 77 when the model has no T5). CLIP reads the first 77 tokens of a longer prompt, as in the
        pipelines."""
        if not isinstance(text, str):
            raise InputError(f"{role} must be a string")
        pipe = self.components.pipe
        t5 = getattr(pipe, "tokenizer_3", None) if self.components.architecture == "sd3" else pipe.tokenizer_2
        if t5 is not None:
            count, limit, name = len(t5(text).input_ids), self.components.max_sequence_length, "T5"
        else:
            count, limit, name = len(pipe.tokenizer(text).input_ids), pipe.tokenizer.model_max_length, "CLIP"
        if count > limit:
            raise InputError(f"{role} is {count} {name} tokens, past the {limit} this model's {name} encoder reads; "
                             "shorten it")

    def check_inputs(self, image: ImageInput, source_prompt: str, target_prompt: str, blend_words: Any
                     ) -> _EditInputs:
        """One image and prompt pair, checked: prompts within the encoders' lengths, the image encoded. Blend words
        are accepted (task files carry them) and not used: the flow methods have no LocalBlend."""
        if not isinstance(target_prompt, str) or not target_prompt.strip():
            raise InputError("target prompt is empty; say what the edited image should show")
        if not isinstance(source_prompt, str):
            raise InputError("source prompt must be a string (it may be empty)")
        self.check_prompt(source_prompt, "source prompt")
        self.check_prompt(target_prompt, "target prompt")
        if blend_words and not self._blend_noted:
            log.info("blend words are not used by the flow methods (no Prompt-to-Prompt or LocalBlend)")
            self._blend_noted = True
        return _EditInputs(self._prepare(image), source_prompt, target_prompt)

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def task_features(self, items: Sequence[_EditInputs], probe: EditParams | None = None) -> list[dict[str, float]]:
        """Cheap features of each input (`autotune.engine.features`): the pipelines' pooled prompt vectors, the word
        alignment and the latent's statistics. `probe` is accepted and not used: FlowEdit does not invert, and no
        inversion features are computed for this family."""
        out = []
        for item in items:
            row = features.text_features(self.velocity.encode(item.source).pooled[0],
                                         self.velocity.encode(item.target).pooled[0])
            row.update(features.word_features(item.source, item.target))
            row.update(features.latent_features(item.prepared.latent))
            out.append(row)
        return out

    # ------------------------------------------------------------------ inversion
    def invert(self, image: ImageInput, source_prompt: str, w_inv: Guidance = 0.5, steps: int = 50
               ) -> FlowInversion:
        """Euler inversion of `image` under `source_prompt` with guidance `w_inv` (a number or schedule)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps={steps!r} must be a whole number >= 1")
        schedule = as_schedule(w_inv, "w_inv")
        self.check_prompt(source_prompt, "source prompt")
        prepared = self._prepare(image)
        latents = self._trajectories([(prepared, source_prompt, schedule)], steps)[0]
        return FlowInversion(latents, self.sigmas(steps, prepared.latent.shape), str(schedule), source_prompt)

    def invert_tasks(self, items: Sequence[_EditInputs], candidates: Sequence[EditParams]) -> int:
        """Cache the inversions the `flow_siminversion` candidates need, in loops of up to `2 * max_batch` rows;
        returns how many were missing (FlowEdit inverts nothing)."""
        wanted: dict[int, dict[str, tuple[_Prepared, str, GuidanceSchedule]]] = {}
        for item in items:
            for cand in candidates:
                if cand.method != "flow_siminversion":
                    continue
                key = self._inversion_key(item.prepared, item.source, cand.inversion_scale, cand.steps)
                if self.settings.cache.peek(key) is None:
                    wanted.setdefault(cand.steps, {})[key] = (item.prepared, item.source, cand.inversion_scale)
        missing = 0
        for steps, todo in wanted.items():
            pending = list(todo.values())
            per_loop = 2 * self.settings.max_batch
            for at in range(0, len(pending), per_loop):
                before = self.settings.cache.misses
                self._trajectories(pending[at : at + per_loop], steps)
                missing += self.settings.cache.misses - before
        return missing

    def _inversion_key(self, prepared: _Prepared, source: str, schedule: GuidanceSchedule, steps: int) -> str:
        return cache_key("flow-inversion", prepared.digest, source, self._model_key(), steps, schedule.to_dict())

    def _trajectories(self, wanted: list[tuple[_Prepared, str, GuidanceSchedule]], steps: int) -> list[torch.Tensor]:
        """Inversions of (image, source prompt, schedule): cached ones looked up, the missing ones inverted together
        in one batch per latent size."""
        keys = [self._inversion_key(prepared, source, schedule, steps) for prepared, source, schedule in wanted]
        found = {key: self.settings.cache.get(key, self.device) for key in dict.fromkeys(keys)}
        missing: dict[tuple[int, ...], list[str]] = {}
        for key, value in found.items():
            if value is None:
                missing.setdefault(tuple(wanted[keys.index(key)][0].latent.shape), []).append(key)
        for shape, same_size in missing.items():
            todo = [wanted[keys.index(key)] for key in same_size]
            computed = sampling.euler_invert(
                self.velocity,
                self.sigmas(steps, shape),
                torch.stack([prepared.latent for prepared, _, _ in todo]),
                [self.velocity.encode(source) for _, source, _ in todo],
                [schedule.scales(steps) for _, _, schedule in todo],
                progress=self.settings.progress,
            )
            for key, trajectory in zip(same_size, computed):
                trajectory = trajectory.to(self.dtype).contiguous()  # kept in the model's dtype, as the UNet family's
                self.settings.cache.put(key, trajectory)
                found[key] = trajectory
        return [found[key].to(self.device, torch.float32) for key in keys]

    # ------------------------------------------------------------------ editing
    def edit(self, items: list[_EditInputs], candidates: Sequence[EditParams]) -> list[list[EditResult]]:
        """One run per (method, steps, latent size) and chunk of candidates holding at most `max_batch` target rows
        (a FlowEdit candidate has `n_avg` of them); results go back in the caller's order."""
        candidates = list(candidates)
        results: list[list[EditResult | None]] = [[None] * len(candidates) for _ in items]
        runs: dict[tuple[str, int], list[int]] = {}
        for k, cand in enumerate(candidates):
            runs.setdefault((cand.method, cand.steps), []).append(k)
        shapes: dict[tuple[int, ...], list[int]] = {}
        for t, item in enumerate(items):
            shapes.setdefault(tuple(item.prepared.latent.shape), []).append(t)
        for (method, steps), idx in runs.items():
            for chunk in self._chunks(idx, candidates):
                weight = sum(_target_rows(candidates[k]) for k in chunk)
                per_run = max(1, self.settings.max_batch // weight)  # tasks per run
                for same_size in shapes.values():
                    for t_at in range(0, len(same_size), per_run):
                        task_ids = same_size[t_at : t_at + per_run]
                        run = self._run_flowedit if method == "flowedit" else self._run_inversion
                        out = run([items[t] for t in task_ids], [candidates[k] for k in chunk], steps)
                        for t, row in zip(task_ids, out):
                            for k, res in zip(chunk, row):
                                results[t][k] = res
        return results  # type: ignore[return-value]

    def _chunks(self, idx: list[int], candidates: list[EditParams]) -> list[list[int]]:
        """Consecutive candidates whose target rows fit `max_batch` (a candidate larger than that alone)."""
        chunks: list[list[int]] = []
        weight = 0
        for k in idx:
            rows = _target_rows(candidates[k])
            if chunks and weight + rows <= self.settings.max_batch:
                chunks[-1].append(k)
                weight += rows
            else:
                chunks.append([k])
                weight = rows
        return chunks

    def _run_flowedit(self, items: list[_EditInputs], candidates: list[EditParams], steps: int
                      ) -> list[list[EditResult]]:
        """FlowEdit of T tasks (same latent size) under K candidates in one loop: source velocities shared per
        (task, source group) and read back from records, T x K target rows."""
        x_src = torch.stack([item.prepared.latent for item in items])
        group_of = [c.source_group() for c in candidates]
        firsts = {key: group_of.index(key) for key in dict.fromkeys(group_of)}
        groups, record_keys, index = [], [], {}
        for t, item in enumerate(items):
            for key, k in firsts.items():
                params = candidates[k]
                record_key = self._source_key(item, params, steps)
                record = self.settings.cache.get(record_key, self.device) if self.settings.record_sources else None
                known = dict(record.velocities) if isinstance(record, VelocityRecord) else {}
                index[(t, key)] = len(groups)
                groups.append(sampling.SourceVelocities(t, params.w_src.scales(steps), params.noise_seed, known))
                record_keys.append(record_key)
        rows = [sampling.FlowEditRow(t, index[(t, group_of[k])], c.w_tgt.scales(steps), *c.window, c.n_avg,
                                     c.noise_seed)
                for t in range(len(items)) for k, c in enumerate(candidates)]
        latents = sampling.flowedit(
            self.velocity,
            self.sigmas(steps, x_src.shape),
            x_src,
            [self.velocity.encode(item.source) for item in items],
            [self.velocity.encode(item.target) for item in items],
            rows,
            groups,
            progress=self.settings.progress,
        )
        for group, key in zip(groups, record_keys):
            if group.computed and self.settings.record_sources:
                self._keep_record(key, VelocityRecord(group.known))
        return self._results(items, candidates, latents, x_src)

    def _run_inversion(self, items: list[_EditInputs], candidates: list[EditParams], steps: int
                       ) -> list[list[EditResult]]:
        """flow_siminversion of T tasks under K candidates in one loop: the live source branches (one per task and
        source group, unless recorded) and the T x K target branches, each from its inversion at its depth."""
        group_of = [c.source_group() for c in candidates]
        firsts = {key: group_of.index(key) for key in dict.fromkeys(group_of)}
        trajectories = self._trajectories([(item.prepared, item.source, candidates[k].inversion_scale)
                                           for item in items for k in firsts.values()], steps)
        start_of = {(t, key): trajectories[t * len(firsts) + at]
                    for t in range(len(items)) for at, key in enumerate(firsts)}
        sources: dict[tuple[int, Any], torch.Tensor] = {}
        live: list[tuple[int, Any]] = []
        for t, item in enumerate(items):
            for key, k in firsts.items():
                recorded = self.settings.cache.get(self._source_key(item, candidates[k], steps), self.device) \
                    if self.settings.record_sources else None
                if recorded is not None:
                    sources[(t, key)] = recorded.to(self.device, torch.float32)
                else:
                    live.append((t, key))
        starts, prompts, scales, first = [], [], [], []
        for t, key in live:
            params = candidates[firsts[key]]
            starts.append(start_of[(t, key)][params.window[0]])
            prompts.append(self.velocity.encode(items[t].source))
            scales.append(params.w_src.scales(steps))
            first.append(params.window[0])
        for t, item in enumerate(items):
            for k, c in enumerate(candidates):
                starts.append(start_of[(t, group_of[k])][c.window[0]])
                prompts.append(self.velocity.encode(item.target))
                scales.append(c.w_tgt.scales(steps))
                first.append(c.window[0])
        shape = items[0].prepared.latent.shape
        latents = sampling.euler_sample(self.velocity, self.sigmas(steps, shape), torch.stack(starts), prompts,
                                        scales, first, progress=self.settings.progress)
        for (t, key), latent in zip(live, latents[: len(live)]):
            sources[(t, key)] = latent
            if self.settings.record_sources:
                self.settings.cache.put(self._source_key(items[t], candidates[firsts[key]], steps),
                                        latent.contiguous())
        source_latents = torch.stack([sources[(t, key)] for t in range(len(items)) for key in firsts])
        results = self._results(items, candidates, latents[len(live):], source_latents, per_group=list(firsts))
        return results

    def _results(self, items: list[_EditInputs], candidates: list[EditParams], latents: torch.Tensor,
                 source_latents: torch.Tensor, per_group: list[Any] | None = None) -> list[list[EditResult]]:
        """Decode the T x K edits and the source latents in one VAE call. `source_latents` holds one latent per task
        (FlowEdit: the source image itself) or, with `per_group`, one per (task, source group)."""
        edits = len(latents)
        pixels = self.decode(torch.cat([latents, source_latents]))
        src_pixels = pixels[edits:]
        k_count = len(candidates)
        out = []
        for t in range(len(items)):
            row = []
            for k, cand in enumerate(candidates):
                s = t if per_group is None else t * len(per_group) + per_group.index(cand.source_group())
                r = t * k_count + k
                row.append(EditResult(pixels[r], cand, src_pixels[s], latents[r], source_latents[s]))
            out.append(row)
        return out

    # ------------------------------------------------------------------ recorded source work
    def _source_key(self, item: _EditInputs, params: EditParams, steps: int) -> str:
        return cache_key("flow-source", item.prepared.digest, item.source, self._model_key(), steps,
                         params.source_group())

    def _keep_record(self, key: str, record: VelocityRecord) -> None:
        if record.nbytes > self.settings.cache.max_bytes // 4:  # would crowd out the inversions: keep recomputing
            log.info("a record of source velocities takes %.0f MB, over a quarter of the cache's %.0f MB; source "
                     "velocities are not recorded on this editor", record.nbytes / 2**20,
                     self.settings.cache.max_bytes / 2**20)
            self.settings.record_sources = False
            return
        self.settings.cache.put(key, record, persist=False)


def _target_rows(params: EditParams) -> int:
    """Target rows a candidate adds to each step of a run: FlowEdit's `n_avg` draws, one branch otherwise."""
    return params.n_avg if params.method == "flowedit" else 1
