"""The flow family's samplers: FlowEdit, Euler inversion of the flow ODE, and Euler sampling, each batched over rows.

Plain functions in the k-diffusion manner: the model is a `velocity(x, sigma, prompts, scales)` callable
(`autotune.engine.flow.velocity.GuidedVelocity`), `sigmas` are the N + 1 noise levels of the run in sampling order
(step i moves from `sigmas[i]` to `sigmas[i + 1]`), state lives in the caller. Every step makes one velocity call for
all the rows that step needs.

Rectified flow: x_sigma = (1 - sigma) x_0 + sigma * noise, and the model's velocity points from data to noise
(dx/dsigma = v), so an Euler step is x_next = x + (sigma_next - sigma) v.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

Velocity = Callable[[torch.Tensor, float, list[Any], list[float]], torch.Tensor]
SDEDIT_DRAW = -1  # the draw index of FlowEdit's fresh noise where plain target sampling takes over (n_min > 0)


def noise_draw(seed: int, step: int, draw: int, shape: Sequence[int]) -> torch.Tensor:
    """Standard normal noise for (seed, step, draw), float32 on the CPU: the same on every device, whatever else runs
    in the batch, so candidates that share a seed share their draws (and the source velocities at them)."""
    digest = hashlib.sha256(f"autotune-flowedit:{seed}:{step}:{draw}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


@dataclass
class FlowEditRow:
    """One FlowEdit branch: task `task`'s image under one candidate. Steps [first, switch) edit by the velocity
    difference, averaged over `draws` noise draws of `seed`; steps from `switch` on sample the target alone."""

    task: int
    source: int  # its `SourceVelocities` group
    w_tgt: list[float]  # per step
    first: int  # steps - n_max
    switch: int  # steps - n_min
    draws: int  # n_avg
    seed: int


@dataclass
class SourceVelocities:
    """The source velocities of one task at one source guidance and noise seed, per (step, draw): shared by every
    row of the group, computed when first needed, kept in `known` (which may arrive filled from a record)."""

    task: int
    w_src: list[float]  # per step
    seed: int
    known: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    computed: int = 0  # how many this run added


@torch.no_grad()
def flowedit(velocity: Velocity, sigmas: Sequence[float], x_src: torch.Tensor, source_prompts: Sequence[Any],
             target_prompts: Sequence[Any], rows: Sequence[FlowEditRow], groups: Sequence[SourceVelocities],
             progress: bool = False) -> torch.Tensor:
    """FlowEdit (Kulikov et al., 2025, Algorithm 1), several images and candidates at once.

    `x_src` (T, C, h, w) holds the source latents, `source_prompts[t]` / `target_prompts[t]` task t's prompts. For
    each row, from z = x_src: at each step i of [first, switch), for each draw d, z_src = (1 - sigma_i) x_src +
    sigma_i * noise(seed, i, d) and z_tar = z + z_src - x_src; z moves by (sigma_{i+1} - sigma_i) times the mean over
    the draws of v(z_tar, target prompt, w_tgt) - v(z_src, source prompt, w_src). From `switch` on (FlowEdit's last
    n_min steps) z is noised once to sigma_switch with a fresh draw and sampled under the target prompt alone.
    Returns the rows' final latents (R, C, h, w), float32; new source velocities are left in `groups`.
    """
    steps = len(sigmas) - 1
    x_src = x_src.float()
    state = torch.stack([x_src[r.task] for r in rows]).clone()
    draws: dict[tuple[int, int, int], torch.Tensor] = {}

    def noised(task: int, seed: int, i: int, d: int) -> torch.Tensor:
        if (seed, i, d) not in draws:
            draws[(seed, i, d)] = noise_draw(seed, i, d, x_src.shape[1:]).to(x_src.device)
        return (1.0 - sigmas[i]) * x_src[task] + sigmas[i] * draws[(seed, i, d)]

    first = min((r.first for r in rows), default=steps)
    for i in tqdm(range(first, steps), desc="flowedit", disable=not progress, leave=False):
        inputs: list[torch.Tensor] = []
        prompts: list[Any] = []
        scales: list[float] = []
        slots: list[tuple[str, int, int]] = []
        # 1. The source velocities this step needs that no record holds: one per (group, draw)
        wanted: dict[int, int] = {}
        for r in rows:
            if r.first <= i < r.switch:
                wanted[r.source] = max(wanted.get(r.source, 0), r.draws)
        for g, count in wanted.items():
            group = groups[g]
            for d in range(count):
                if (i, d) not in group.known:
                    inputs.append(noised(group.task, group.seed, i, d))
                    prompts.append(source_prompts[group.task])
                    scales.append(group.w_src[i])
                    slots.append(("source", g, d))
        # 2. The target rows: FlowEdit's coupled z_tar per draw, or plain sampling after the switch
        for k, r in enumerate(rows):
            if r.first <= i < r.switch:
                for d in range(r.draws):
                    inputs.append(state[k] + noised(r.task, r.seed, i, d) - x_src[r.task])
                    prompts.append(target_prompts[r.task])
                    scales.append(r.w_tgt[i])
                    slots.append(("edit", k, d))
            elif r.first <= i:
                if i == r.switch:  # SDEdit-style start of the plain phase, from a fresh draw
                    state[k] = state[k] + noised(r.task, r.seed, i, SDEDIT_DRAW) - x_src[r.task]
                inputs.append(state[k])
                prompts.append(target_prompts[r.task])
                scales.append(r.w_tgt[i])
                slots.append(("plain", k, 0))
        if not inputs:
            continue
        velocities = velocity(torch.stack(inputs), sigmas[i], prompts, scales)
        # 3. Keep the new source velocities, then move every active row by one Euler step
        for (kind, g, d), v in zip(slots, velocities):
            if kind == "source":
                groups[g].known[(i, d)] = v
                groups[g].computed += 1
        moves: dict[int, torch.Tensor] = {}
        for (kind, k, d), v in zip(slots, velocities):
            if kind == "edit":
                difference = (v - groups[rows[k].source].known[(i, d)]) / rows[k].draws
                moves[k] = moves[k] + difference if k in moves else difference
            elif kind == "plain":
                moves[k] = v
        for k, move in moves.items():
            state[k] = state[k] + (sigmas[i + 1] - sigmas[i]) * move
    return state


@torch.no_grad()
def euler_invert(velocity: Velocity, sigmas: Sequence[float], x0: torch.Tensor, prompts: Sequence[Any],
                 scales: Sequence[Sequence[float]], progress: bool = False) -> torch.Tensor:
    """Euler inversion of the flow ODE from the image latents `x0` (G, C, h, w) to noise, row g under `prompts[g]`
    with guidance `scales[g][i]` per step.

    Each inversion step undoes one sampling step: from sigma_{i+1} back to sigma_i it takes the velocity at the
    current latent with that sampling step's noise level and scale (the flow form of DDIM inversion, which reads the
    model at the step's own timestep), so sampling at the same guidance retraces it up to the change of the velocity
    within one step. Returns the trajectories (G, N + 1, C, h, w) in sampling order: [:, 0] is the inverted noise,
    [:, i] enters sampling step i, [:, N] is `x0`.
    """
    steps = len(sigmas) - 1
    x = x0.float().clone()
    trajectory = [x]
    for i in tqdm(range(steps - 1, -1, -1), desc="invert", disable=not progress, leave=False):
        v = velocity(x, sigmas[i], list(prompts), [row[i] for row in scales])
        x = x + (sigmas[i] - sigmas[i + 1]) * v
        trajectory.append(x)
    return torch.stack(trajectory[::-1], dim=1)


@torch.no_grad()
def euler_sample(velocity: Velocity, sigmas: Sequence[float], starts: torch.Tensor, prompts: Sequence[Any],
                 scales: Sequence[Sequence[float]], first: Sequence[int], progress: bool = False) -> torch.Tensor:
    """Euler sampling of the flow ODE, row r from `starts[r]` entering step `first[r]` (its latent at
    `sigmas[first[r]]`) down to sigma 0, under `prompts[r]` with guidance `scales[r][i]`. Rows join the batch at their
    first step. Returns the final latents (R, C, h, w), float32."""
    steps = len(sigmas) - 1
    x = starts.float().clone()
    for i in tqdm(range(min(first, default=steps), steps), desc="sample", disable=not progress, leave=False):
        active = [r for r in range(len(x)) if first[r] <= i]
        v = velocity(x[active], sigmas[i], [prompts[r] for r in active], [scales[r][i] for r in active])
        x[active] = x[active] + (sigmas[i + 1] - sigmas[i]) * v
    return x
