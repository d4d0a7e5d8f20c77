"""Prompt-to-Prompt attention control as diffusers attention processors, batched over candidates.

One UNet call carries, in its conditional half, G source branches followed by the target branches
(target row r follows source branch `src_of[r]`; rows may belong to different images and prompts, so the token
mappings and blend words are per row). While a candidate's replacement window is open,
its target branch takes the source branch's attention maps: cross-attention through the token
mapper (refine or word swap) and re-weighting, self-attention as is at low resolutions. LocalBlend
reads the accumulated cross-attention of the blend words and keeps the source latent outside them.
Layers and steps that need no control run the fused SDPA kernel, and so does the unconditional half
of every call: its maps are never read.

Source branches can also come from records of earlier runs (`autotune.engine.unet.source_record`): their maps
are recomputed from the recorded queries and keys and their latents read back, so the batch holds
only the live source branches and the target branches.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from autotune.engine.unet.source_record import AttentionLayer, SourceRecord, SourceRecorder


@dataclass
class BlendSpec:
    """LocalBlend: which tokens are the blend words, per source branch (source word) and per target row (target
    word), as 0/1 masks over the 77 positions (all 0 for a task without blend words)."""

    source_mask: torch.Tensor  # (source branches, 77)
    target_mask: torch.Tensor  # (target rows, 77)
    map_size: tuple[int, int]  # spatial size of the cross-attention maps that are read
    latent_size: tuple[int, int]


class EditController:
    """State of one batched edit, shared by every processor of the UNet.

    `groups` live source branches lead the batch; `recorded` source branches follow them in the numbering
    that `src_of` uses, and `recorder` (if any) records the live ones."""

    def __init__(
        self,
        *,
        groups: int,
        src_of: torch.Tensor,
        cross_active: torch.Tensor,
        self_active: torch.Tensor,
        blend_active: torch.Tensor | None,
        refine: tuple[torch.Tensor, torch.Tensor] | None,
        swap: torch.Tensor | None,
        equalizer: torch.Tensor | None,
        blend: BlendSpec | None,
        thresholds: torch.Tensor | None,
        self_max_tokens: int,
        recorded: list[SourceRecord] | None = None,
        recorder: SourceRecorder | None = None,
    ) -> None:
        self.groups = groups
        self.recorded = recorded or []
        self.recorder = recorder
        self._recorded_qk: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.src_of = src_of
        # Per step and candidate, on the compute device; the Python copies decide which kernel to run.
        self.cross_active = cross_active
        self.self_active = self_active
        self.blend_active = blend_active
        self._any_cross = any_per_step(cross_active)
        self._any_self = any_per_step(self_active)
        self._any_blend = any_per_step(blend_active) if blend_active is not None else None
        self.refine = refine
        self.swap = swap
        self.equalizer = equalizer
        self.blend = blend
        self.thresholds = thresholds
        self.self_max_tokens = self_max_tokens
        self.blend_tokens = blend.map_size[0] * blend.map_size[1] if blend else -1
        self.store: torch.Tensor | None = None
        self.step = 0

    # -- which layers need explicit attention probabilities at this step
    def needs_probs(self, is_cross: bool, n_query: int, place: str) -> bool:
        if is_cross:
            return self._any_cross[self.step] or self._stores(n_query, place)
        return self._any_self[self.step] and n_query <= self.self_max_tokens

    def _stores(self, n_query: int, place: str) -> bool:
        return self.blend is not None and n_query == self.blend_tokens and place != "mid"

    # -- the control itself
    def control(
        self,
        attn: Attention,
        name: str,
        probs: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        is_cross: bool,
        n_query: int,
        place: str,
    ) -> torch.Tensor:
        """Edit the target rows of `probs` in place. `probs`, `query` and `key` are the conditional half of the
        batch (live source rows, then target rows): the unconditional half needs no control and runs SDPA."""
        g = self.groups
        live_rows = g + len(self.src_of)
        heads = probs.shape[0] // live_rows
        cond = probs.view(live_rows, heads, *probs.shape[1:])
        target = cond[g:]
        step = self.step
        inject_cross = is_cross and self._any_cross[step]
        inject_self = not is_cross and self._any_self[step] and n_query <= self.self_max_tokens
        if inject_cross or inject_self:
            if self.recorder is not None and g:
                self.recorder.attention(name, is_cross, query[:g], key[:g])  # the live source branches
            sources = cond[:g]
            if self.recorded:
                sources = torch.cat([sources, self._recorded_maps(attn, name, is_cross, heads)])
            base = sources.index_select(0, self.src_of)
        if inject_cross:
            if self.refine is not None:  # per target row: (rows, 77) token map and its weights
                mapper, alphas = self.refine
                mapped = torch.gather(base, -1, mapper[:, None, None, :].expand_as(base))
                alphas = alphas[:, None, None, :]
                new = mapped * alphas + target * (1 - alphas)
            else:
                new = torch.einsum("khpw,kwn->khpn", base, self.swap)
            if self.equalizer is not None:
                new = new * self.equalizer[:, None, None, :]
            cond[g:] = torch.where(self.cross_active[step][:, None, None, None], new, target)
        elif inject_self:
            cond[g:] = torch.where(self.self_active[step][:, None, None, None], base, target)
        if is_cross and self._stores(n_query, place):
            maps = cond.sum(dim=1).float()  # (G+K, pixels, tokens), summed over heads
            self.store = maps if self.store is None else self.store + maps
        return probs

    def _recorded_maps(self, attn: Attention, name: str, is_cross: bool, heads: int) -> torch.Tensor:
        """The recorded source branches' maps at this layer and step: (recorded, heads, q, k)."""
        if name not in self._recorded_qk:  # stacked once per run, then read by step
            steps = min(len(r.queries[name]) for r in self.recorded)  # records may cover more steps than this run reads
            self._recorded_qk[name] = (torch.stack([r.queries[name][:steps] for r in self.recorded]),
                                       torch.stack([r.keys[name] if is_cross else r.keys[name][:steps]
                                                    for r in self.recorded]))
        queries, keys = self._recorded_qk[name]
        query, key = queries[:, self.step], keys if is_cross else keys[:, self.step]
        probs = attn.get_attention_scores(attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), None)
        return probs.view(len(self.recorded), heads, *probs.shape[1:])

    def after_step(self, latents: torch.Tensor, step: int) -> torch.Tensor:
        """Record the live source branches' step, then run LocalBlend."""
        if self.recorder is not None and self.groups:
            self.recorder.after_step(latents, self.store)
        return self.blend_latents(latents, step)

    def blend_latents(self, latents: torch.Tensor, step: int) -> torch.Tensor:
        """LocalBlend after a denoising step: keep the source latent outside the blend-word regions."""
        if self.blend is None or self.store is None or not self._any_blend[step]:
            return latents
        g = self.groups
        h, w = self.blend.map_size
        src_store, source_latents = self.store[:g], latents[:g]
        if self.recorded:
            src_store = torch.cat([src_store, torch.stack([r.store[step] for r in self.recorded])])
            source_latents = torch.cat([source_latents, torch.stack([r.latents[step] for r in self.recorded])])
        src_maps = (src_store * self.blend.source_mask[:, None, :]).sum(-1).view(-1, 1, h, w)
        tgt_maps = (self.store[g:] * self.blend.target_mask[:, None, :]).sum(-1).view(-1, 1, h, w)
        src_mask = _normalised_mask(src_maps, self.blend.latent_size).index_select(0, self.src_of)
        tgt_mask = _normalised_mask(tgt_maps, self.blend.latent_size)
        th = self.thresholds[:, None, None, None]
        mask = ((src_mask > th) | (tgt_mask > th)).to(latents.dtype)
        source = source_latents.index_select(0, self.src_of)
        target = latents[g:]
        blended = source + mask * (target - source)
        out = latents.clone()
        out[g:] = torch.where(self.blend_active[step][:, None, None, None], blended, target)
        return out


def any_per_step(active: torch.Tensor) -> list[bool]:
    """Which steps have any candidate active; read once per call so the loop never waits on the device."""
    return active.any(dim=1).tolist()


def _normalised_mask(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    maps = F.max_pool2d(maps, kernel_size=3, stride=1, padding=1)
    maps = F.interpolate(maps, size=size)
    peak = maps.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return maps / peak


class ControlledAttnProcessor:
    """Runs SDPA, or, when the controller asks for maps, explicit softmax attention for the conditional half
    routed through the controller (the unconditional half still runs SDPA).

    A cross-attention layer's keys and values depend on the text embeddings only, and a sampling loop passes the
    same embeddings at every step: they are projected once and reused while the caller passes the very same
    tensor, unmodified (77 text tokens per row against 16-64 image tokens: on a small UNet a large share of a
    batched step). Without a controller it is plain attention with that reuse."""

    def __init__(self, controller: EditController | None, name: str, place: str, is_cross: bool) -> None:
        self.controller = controller
        self.name = name
        self.place = place
        self.is_cross = is_cross
        self.fast = AttnProcessor2_0()
        self._text_kv: tuple[torch.Tensor, int, torch.Tensor, torch.Tensor] | None = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        n_query = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        explicit = self.controller is not None and self.controller.needs_probs(self.is_cross, n_query, self.place)
        if not explicit and (attention_mask is not None or attn.norm_q is not None or attn.norm_k is not None):
            return self.fast(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        key, value = self._key_value(attn, hidden_states, encoder_hidden_states)
        if explicit:  # maps for the conditional half only (the unconditional half's are never read)
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            if attention_mask is not None and attention_mask.dim() == 2:  # from a (batch, keys) mask: one row per query
                attention_mask = attention_mask[:, None]
            half = batch // 2
            uncond_mask, cond_mask = (None, None) if attention_mask is None else attention_mask.chunk(2)
            query_c, key_c = query[half:], key[half:]
            probs = attn.get_attention_scores(attn.head_to_batch_dim(query_c), attn.head_to_batch_dim(key_c),
                                              cond_mask)
            probs = self.controller.control(attn, self.name, probs, query_c, key_c, self.is_cross, n_query,
                                            self.place)
            hidden_states = torch.cat([
                _sdpa(attn, query[:half], key[:half], value[:half], uncond_mask),
                attn.batch_to_head_dim(torch.bmm(probs, attn.head_to_batch_dim(value[half:]))),
            ])
        else:
            hidden_states = _sdpa(attn, query, key, value, None)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _key_value(
        self, attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if context is None:
            return attn.to_k(hidden_states), attn.to_v(hidden_states)
        reusable = self.is_cross and not torch.is_grad_enabled()
        kept = self._text_kv
        # Held by reference, so `is` cannot match a new tensor at a recycled address; `_version` counts in-place edits.
        if reusable and kept is not None and kept[0] is context and kept[1] == context._version:
            return kept[2], kept[3]
        projected = attn.norm_encoder_hidden_states(context) if attn.norm_cross else context
        key, value = attn.to_k(projected), attn.to_v(projected)
        self._text_kv = (context, context._version, key, value) if reusable else None
        return key, value


def _sdpa(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          mask: torch.Tensor | None) -> torch.Tensor:
    """What AttnProcessor2_0 does with the projections given; `mask` as `Attention.prepare_attention_mask` makes
    it, (batch * heads, 1 or queries, keys)."""
    batch, head_dim = query.shape[0], key.shape[-1] // attn.heads
    q, k, v = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if mask is not None:
        mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)


def attention_layers(unet, latent_size: tuple[int, int]) -> list[AttentionLayer]:
    """Every attention layer of a `UNet2DConditionModel` with its image tokens at this latent size: a layer of down
    block i works at 1/2^i of the latent side, the middle block at the lowest level, up block j at level n-1-j."""
    levels = len(unet.config.block_out_channels)
    h, w = latent_size
    layers = []
    for name in unet.attn_processors:
        parts = name.split(".")
        level = int(parts[1]) if parts[0] == "down_blocks" else levels - 1 - int(parts[1]) if parts[0] == "up_blocks" \
            else levels - 1
        attn = unet.get_submodule(name.removesuffix(".processor"))
        side = 2**level  # the UNet's strided convolutions round up
        layers.append(AttentionLayer(name, name.endswith("attn2.processor"), -(-h // side) * -(-w // side),
                                     attn.to_q.out_features, attn.to_k.out_features))
    return layers


@contextlib.contextmanager
def attention_control(unet, controller: EditController | None) -> Iterator[None]:
    """Install autotune's processors on every attention layer for the duration of a call: Prompt-to-Prompt
    control when `controller` is given, and in any case text keys and values projected once per call."""
    if not hasattr(unet, "set_attn_processor"):
        yield
        return
    original = unet.attn_processors
    processors = {}
    for name in original:
        place = "down" if name.startswith("down_blocks") else "up" if name.startswith("up_blocks") else "mid"
        processors[name] = ControlledAttnProcessor(controller, name, place, is_cross=name.endswith("attn2.processor"))
    unet.set_attn_processor(processors)
    try:
        yield
    finally:
        unet.set_attn_processor(original)
