"""A recorded source branch, so that later candidates on the same task skip it.

The source branch of an edit depends on the image, the source prompt and the source guidance only, not on
the target prompt or w_tgt; in a tuning study many trials share a w_src (it is searched on a grid), so its
source branch is the same UNet work again. A record keeps what the target branches read from it: the
attention queries and keys of the layers Prompt-to-Prompt controls (maps are recomputed from them, which is
several times smaller than keeping the maps), the source latents after each step and LocalBlend's
accumulated cross-attention. A record is valid for runs whose replacement windows it covers.

Its size is known before the run (`record_nbytes`): the queries and keys dominate, and grow with the square of the
latent side and with the windows. The engine records a run's source branches only when one record fits in a quarter
of its cache, decided before any step, so that a record too large (SDXL at 1024 px) never costs memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SourceRecord:
    """One source branch. Step-indexed tensors start at step 0; attention ones stop at the window recorded."""

    noise: torch.Tensor  # (C, h, w): the inverted noise the branch starts from (the target rows start there too)
    uncond: torch.Tensor  # (77, D), or (steps, 77, D) for null-text: the target rows' unconditional embedding
    latents: torch.Tensor  # (steps, C, h, w): the branch's latent after each step
    cross_steps: int  # cross-attention recorded for steps [0, cross_steps)
    self_steps: int  # self-attention recorded for steps [0, self_steps)
    self_max_tokens: int
    blend_tokens: int  # size of LocalBlend's maps, -1 when not recorded
    queries: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (steps recorded, q, inner)
    keys: dict[str, torch.Tensor] = field(default_factory=dict)  # cross: (77, inner); self: (steps, q, inner)
    store: torch.Tensor | None = None  # (steps, pixels, 77): LocalBlend's accumulated maps after each step
    uncond_pooled: torch.Tensor | None = None  # (1, P): SDXL's pooled embedding of the unconditional prompt

    @property
    def nbytes(self) -> int:
        tensors = [self.noise, self.uncond, self.latents, *self.queries.values(), *self.keys.values()]
        tensors += [t for t in (self.store, self.uncond_pooled) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def covers(self, cross_steps: int, self_steps: int, self_max_tokens: int, blend_tokens: int) -> bool:
        """Whether a run with these windows (and LocalBlend maps of this size, -1 for none) can use it."""
        return (
            self.cross_steps >= cross_steps
            and self.self_steps >= self_steps
            and self.self_max_tokens == self_max_tokens
            and (blend_tokens < 0 or self.blend_tokens == blend_tokens)
        )


class SourceRecorder:
    """Collects, step by step, what the live source branches of one run produce (rows 0..groups-1)."""

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.queries: dict[str, list[torch.Tensor]] = {}
        self.cross_keys: dict[str, torch.Tensor] = {}
        self.self_keys: dict[str, list[torch.Tensor]] = {}
        self.latents: list[torch.Tensor] = []
        self.store: list[torch.Tensor] = []

    def attention(self, name: str, is_cross: bool, query: torch.Tensor, key: torch.Tensor) -> None:
        """`query` and `key`: the source rows' projections, (groups, tokens, inner)."""
        self.queries.setdefault(name, []).append(query.clone())
        if is_cross:
            self.cross_keys.setdefault(name, key.clone())  # the source prompt's keys: the same at every step
        else:
            self.self_keys.setdefault(name, []).append(key.clone())

    def after_step(self, latents: torch.Tensor, store: torch.Tensor | None) -> None:
        self.latents.append(latents[: self.groups].clone())
        if store is not None:
            self.store.append(store[: self.groups].clone())

    def records(
        self,
        noise: list[torch.Tensor],
        uncond: list[torch.Tensor],
        uncond_pooled: list[torch.Tensor | None],
        *,
        cross_steps: int,
        self_steps: int,
        self_max_tokens: int,
        blend_tokens: int,
    ) -> list[SourceRecord]:
        """One record per live group, after the run (copies, so that each can be evicted on its own)."""
        steps = len(self.latents)
        latents = torch.stack(self.latents, dim=1)  # (groups, steps, C, h, w)
        store = torch.stack(self.store, dim=1) if len(self.store) == steps and steps else None
        queries = {name: torch.stack(qs, dim=1) for name, qs in self.queries.items()}
        keys = dict(self.cross_keys)
        keys.update({name: torch.stack(ks, dim=1) for name, ks in self.self_keys.items()})
        return [
            SourceRecord(
                noise=noise[g],
                uncond=uncond[g],
                latents=latents[g].clone(),
                cross_steps=cross_steps,
                self_steps=self_steps,
                self_max_tokens=self_max_tokens,
                blend_tokens=blend_tokens if store is not None else -1,
                queries={name: q[g].clone() for name, q in queries.items()},
                keys={name: k[g].clone() for name, k in keys.items()},
                store=store[g].clone() if store is not None else None,
                uncond_pooled=uncond_pooled[g],
            )
            for g in range(self.groups)
        ]


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of the UNet as a record sees it, at one latent size."""

    name: str
    is_cross: bool
    queries: int  # image tokens at this layer
    query_dim: int  # width of its query (and, for self-attention, key) projection
    key_dim: int


def record_nbytes(
    layers: list[AttentionLayer],
    *,
    steps: int,
    cross_steps: int,
    self_steps: int,
    self_max_tokens: int,
    blend_tokens: int,
    fixed: list[torch.Tensor],
    itemsize: int,
    text_tokens: int = 77,
) -> int:
    """The bytes a `SourceRecord` of a run with these windows will take, before the run: what `SourceRecorder`
    keeps of each layer (cross-attention: every layer's queries for `cross_steps` steps and its text keys once;
    self-attention: queries and keys for `self_steps` steps at layers of at most `self_max_tokens` tokens), the latent
    after each step (the size of `fixed[0]`, the inverted noise), LocalBlend's maps (float32) and the `fixed` tensors
    (noise and unconditional embeddings). `itemsize` is the bytes per value of the model's dtype."""
    values = 0
    for layer in layers:
        if layer.is_cross and cross_steps:
            values += cross_steps * layer.queries * layer.query_dim + text_tokens * layer.key_dim
        elif not layer.is_cross and self_steps and layer.queries <= self_max_tokens:
            values += self_steps * layer.queries * (layer.query_dim + layer.key_dim)
    values += steps * fixed[0].numel()  # the latents after each step
    total = values * itemsize + sum(t.numel() * t.element_size() for t in fixed)
    if blend_tokens > 0:
        total += steps * blend_tokens * text_tokens * 4
    return total
