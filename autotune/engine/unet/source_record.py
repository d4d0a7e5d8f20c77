"""A recorded source branch, so that later candidates on the same task skip it.

The source branch of an edit depends on the image, the source prompt and the source guidance only, not on
the target prompt or w_tgt; in a tuning study many trials share a w_src (it is searched on a grid), so its
source branch is the same UNet work again. A record keeps what the target branches read from it: the
attention queries and keys of the layers Prompt-to-Prompt controls (maps are recomputed from them, which is
several times smaller than keeping the maps), the source latents after each step and LocalBlend's
accumulated cross-attention. A record is valid for runs whose replacement windows it covers.
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

    @property
    def nbytes(self) -> int:
        tensors = [self.noise, self.uncond, self.latents, *self.queries.values(), *self.keys.values()]
        if self.store is not None:
            tensors.append(self.store)
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
            )
            for g in range(self.groups)
        ]
