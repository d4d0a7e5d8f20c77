"""DDIM inversion with classifier-free guidance at any scale, and null-text optimisation.

SimInversion's point is that the inversion should use the guidance the source branch later uses
(w_src); so the scale is a parameter here, and a schedule is read at the denoising step that shares
each inversion step's timestep. SDXL's added conditions (`added`: the UNet's `added_cond_kwargs` for the batch
[unconditional rows; conditional rows]) go with every call, halved when only one half runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from autotune.engine.unet.attention import attention_control
from autotune.engine.unet.ddim import DDIMGrid, ddim_move, to_epsilon


@dataclass
class Inversion:
    """A latent trajectory in denoising order: `latents[0]` is the inverted noise (entering step 0),
    `latents[i]` enters denoising step i, and `latents[-1]` is the image latent itself."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    w_inv: str
    source_prompt: str
    null_embeddings: torch.Tensor | None = None  # (steps, 77, D), for null-text inversion

    @property
    def noise(self) -> torch.Tensor:
        return self.latents[0]

    @property
    def image_latent(self) -> torch.Tensor:
        return self.latents[-1]

    @property
    def steps(self) -> int:
        return self.latents.shape[0] - 1


def half(added: dict[str, torch.Tensor] | None, part: int) -> dict[str, torch.Tensor] | None:
    """The unconditional (`part=0`) or conditional (1) rows of added conditions laid out [uncond; cond]."""
    return None if added is None else {key: value.chunk(2)[part] for key, value in added.items()}


def guided_eps(
    unet,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    alpha: float,
    prediction_type: str,
    both: torch.Tensor | None = None,
    added: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """eps_uncond + scale * (eps_cond - eps_uncond), skipping the branch a scale of 0 or 1 does not need.
    `both` is `torch.cat([uncond, cond])` made once by a caller that loops, so that text K/V are projected once."""
    if scale == 1.0:
        out = unet(x, t, encoder_hidden_states=cond, added_cond_kwargs=half(added, 1)).sample
        return to_epsilon(out, x, alpha, prediction_type)
    if scale == 0.0:
        out = unet(x, t, encoder_hidden_states=uncond, added_cond_kwargs=half(added, 0)).sample
        return to_epsilon(out, x, alpha, prediction_type)
    both = torch.cat([uncond, cond]) if both is None else both
    out = unet(torch.cat([x, x]), t, encoder_hidden_states=both, added_cond_kwargs=added).sample
    eps_u, eps_c = to_epsilon(out, torch.cat([x, x]), alpha, prediction_type).chunk(2)
    return eps_u + scale * (eps_c - eps_u)


@torch.no_grad()
def ddim_invert(
    unet,
    grid: DDIMGrid,
    image_latent: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scales: list[float] | list[list[float]],
    progress: bool = True,
    added: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run DDIM backwards from the image latent to noise, for one guidance schedule (`scales`, one value per
    denoising step) or several at once (a list of them, inverted together in one batch). `image_latent` is
    (C, h, w), or (G, C, h, w) with `cond` (G, 77, D) to invert G images under their own prompts at once; `added`
    holds SDXL's added conditions of the 2 x rows [unconditional; conditional].

    Returns (steps+1, C, h, w), or (G, steps+1, C, h, w) for G schedules, in denoising order.
    """
    many = bool(scales) and isinstance(scales[0], (list, tuple))
    per_row = [list(s) for s in scales] if many else [list(scales)]  # type: ignore[arg-type]
    rows = len(per_row)
    n = grid.steps
    x = (image_latent[None].expand(rows, *image_latent.shape) if image_latent.dim() == 3 else image_latent).clone()
    cond_rows, uncond_rows = cond.expand(rows, -1, -1), uncond.expand(rows, -1, -1)
    both = torch.cat([uncond_rows, cond_rows])  # the same tensors at every step: text K/V projected once
    table = torch.tensor(per_row, dtype=x.dtype, device=x.device).T  # (steps, rows)
    trajectory = [x]
    with attention_control(unet, None):
        for j in tqdm(range(n), desc="invert", disable=not progress, leave=False):
            i = n - 1 - j  # the denoising step with this timestep
            at_step = {row[i] for row in per_row}
            if len(at_step) == 1:  # one scale for every row: guided_eps may skip a branch
                scale = at_step.pop()
                eps = guided_eps(unet, x, grid.timesteps[i], cond_rows, uncond_rows, scale, grid.alphas[i],
                                 grid.prediction_type, both, added)
            else:
                x_in = torch.cat([x, x])
                out = unet(x_in, grid.timesteps[i], encoder_hidden_states=both, added_cond_kwargs=added).sample
                eps_u, eps_c = to_epsilon(out, x_in, grid.alphas[i], grid.prediction_type).chunk(2)
                eps = eps_u + table[i][:, None, None, None] * (eps_c - eps_u)
            x = ddim_move(eps, x, grid.alphas_prev[i], grid.alphas[i])
            trajectory.append(x)
    stacked = torch.stack(trajectory[::-1], dim=1)  # (rows, steps+1, C, h, w)
    return stacked if many else stacked[0]


def null_text_optimise(
    unet,
    grid: DDIMGrid,
    trajectory: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scales: list[float],
    iterations: int = 10,
    progress: bool = True,
    added: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Null-text inversion (Mokady et al., 2023): per step, fit the null embedding so that the guided
    source branch lands on the inversion trajectory. Returns (steps, 77, D). On SDXL (`added`, for the rows
    [unconditional; conditional]) the token embeddings are fitted and the unconditional pooled embedding stays."""
    n = grid.steps
    x = trajectory[0][None]
    current = uncond.detach().clone()
    fitted = []
    for i in tqdm(range(n), desc="null-text", disable=not progress, leave=False):
        t, a, a_prev = grid.timesteps[i], grid.alphas[i], grid.alphas_prev[i]
        goal = trajectory[i + 1][None]
        with torch.no_grad():
            out = unet(x, t, encoder_hidden_states=cond, added_cond_kwargs=half(added, 1)).sample
            eps_c = to_epsilon(out, x, a, grid.prediction_type)
        current = current.detach().float().requires_grad_(True)
        optimiser = torch.optim.Adam([current], lr=1e-2 * (1.0 - i / 100.0))
        for _ in range(iterations):
            out = unet(x, t, encoder_hidden_states=current.to(cond.dtype), added_cond_kwargs=half(added, 0)).sample
            eps_u = to_epsilon(out, x, a, grid.prediction_type)
            eps = eps_u + scales[i] * (eps_c - eps_u)
            loss = F.mse_loss(ddim_move(eps, x, a, a_prev).float(), goal.float())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if loss.item() < 1e-5 + i * 2e-5:  # the paper's early stop
                break
        current = current.detach().to(cond.dtype)
        fitted.append(current[0])
        with torch.no_grad():
            eps = guided_eps(unet, x, t, cond, current, scales[i], a, grid.prediction_type, added=added)
            x = ddim_move(eps, x, a, a_prev)
    return torch.stack(fitted)
