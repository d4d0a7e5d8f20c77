"""The two-branch sampling loop: source branches and target branches denoised together.

Rows of one batch are G source branches then K target branches. Each UNet call evaluates all
rows with their unconditional and conditional embeddings at once; guidance is a per-row, per-step
scale; direct inversion pins its source rows to the inversion trajectory; LocalBlend runs after
each step; SDXL's added conditions (pooled embedding, size ids) go with every row of both halves. Nothing here
leaves the device or waits on it inside the loop.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from autotune.engine.unet.attention import EditController, attention_control
from autotune.engine.unet.ddim import DDIMGrid, ddim_move, to_epsilon


@torch.no_grad()
def sample_branches(
    unet,
    grid: DDIMGrid,
    start: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scales: torch.Tensor,
    controller: EditController | None = None,
    pinned_rows: torch.Tensor | None = None,
    pinned_trajectory: torch.Tensor | None = None,
    progress: bool = True,
    added: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Denoise all rows from `start` (R, C, h, w).

    `cond` is (R, 77, D); `uncond` is (R, 77, D), or (steps, R, 77, D) when it changes per step
    (null-text); `scales` is (steps, R). Rows in `pinned_rows` are set to `pinned_trajectory[i + 1]`
    after step i (direct inversion's correction, equal to adding its recorded offsets). `added` is the UNet's
    `added_cond_kwargs` for the 2R rows [unconditional; conditional] (SDXL), None for SD 1.x/2.x.
    """
    x = start
    per_step_uncond = uncond.dim() == 4
    context = None if per_step_uncond else torch.cat([uncond, cond])  # one tensor: its text K/V are projected once
    with attention_control(unet, controller):
        for i in tqdm(range(grid.steps), desc="edit", disable=not progress, leave=False):
            if controller is not None:
                controller.step = i
            x_in = torch.cat([x, x])
            step_context = torch.cat([uncond[i], cond]) if per_step_uncond else context
            out = unet(x_in, grid.timesteps[i], encoder_hidden_states=step_context, added_cond_kwargs=added).sample
            eps_u, eps_c = to_epsilon(out, x_in, grid.alphas[i], grid.prediction_type).chunk(2)
            eps = eps_u + scales[i][:, None, None, None] * (eps_c - eps_u)
            x = ddim_move(eps, x, grid.alphas[i], grid.alphas_prev[i])
            if pinned_rows is not None:
                x[pinned_rows] = pinned_trajectory[i + 1]
            if controller is not None:
                x = controller.after_step(x, i)
    return x
