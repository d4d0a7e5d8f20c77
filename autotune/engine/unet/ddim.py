"""Deterministic DDIM (eta = 0) in epsilon space, both directions.

Written out rather than borrowed from `DDIMScheduler.step` because inversion needs the reverse move,
and both directions must share one convention for v-prediction models: the model output is turned
into epsilon with the alpha of the timestep the model was told, then the same move is used either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler


@dataclass(frozen=True)
class DDIMGrid:
    """The timesteps of an N-step run and the cumulative alphas on either side of each step.

    Step i denoises from `alphas[i]` (timestep `timesteps[i]`) to `alphas_prev[i]`; inversion walks the
    same steps backwards.
    """

    timesteps: torch.Tensor
    alphas: list[float]
    alphas_prev: list[float]
    prediction_type: str

    @property
    def steps(self) -> int:
        return len(self.alphas)


def ddim_grid(scheduler: DDIMScheduler, steps: int) -> DDIMGrid:
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.clone()
    cumprod = scheduler.alphas_cumprod
    ratio = scheduler.config.num_train_timesteps // steps
    final = float(scheduler.final_alpha_cumprod)
    alphas = [float(cumprod[int(t)]) for t in timesteps]
    alphas_prev = [float(cumprod[int(t) - ratio]) if int(t) - ratio >= 0 else final for t in timesteps]
    return DDIMGrid(timesteps, alphas, alphas_prev, scheduler.config.prediction_type)


def to_epsilon(model_output: torch.Tensor, sample: torch.Tensor, alpha: float, prediction_type: str) -> torch.Tensor:
    """The noise estimate implied by a model output at cumulative alpha `alpha`."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha**0.5 * model_output + (1 - alpha) ** 0.5 * sample
    if prediction_type == "sample":
        return (sample - alpha**0.5 * model_output) / (1 - alpha) ** 0.5
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def ddim_move(eps: torch.Tensor, sample: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Move `sample` from noise level `alpha_from` to `alpha_to` along the DDIM ODE, given `eps`."""
    x0 = (sample - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps
