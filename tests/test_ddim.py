"""Our DDIM moves against diffusers' DDIMScheduler.step, an independent implementation."""

import pytest
import torch
from diffusers import DDIMScheduler

from autotune.engine.unet.ddim import ddim_grid, ddim_move, to_epsilon
from autotune.engine.unet.loading import PIEBENCH_SCHEDULER, make_scheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_denoising_step_matches_diffusers(prediction_type, steps_offset):
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=steps_offset,
        prediction_type=prediction_type,
    )
    grid = ddim_grid(scheduler, 20)
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 8, 8)
    for i in (0, 7, 19):
        output = torch.randn(2, 4, 8, 8)
        expected = scheduler.step(output, grid.timesteps[i], sample, eta=0.0).prev_sample
        eps = to_epsilon(output, sample, grid.alphas[i], prediction_type)
        ours = ddim_move(eps, sample, grid.alphas[i], grid.alphas_prev[i])
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_inverse_move_undoes_the_forward_move_for_a_fixed_eps():
    torch.manual_seed(1)
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    up = ddim_move(eps, x, 0.9, 0.3)
    torch.testing.assert_close(ddim_move(eps, up, 0.3, 0.9), x, rtol=1e-5, atol=1e-5)


def test_final_step_lands_on_alpha_zero_of_the_piebench_scheduler():
    scheduler = make_scheduler({"prediction_type": "epsilon"}, "piebench")
    assert scheduler.config.steps_offset == 0 and not scheduler.config.set_alpha_to_one
    grid = ddim_grid(scheduler, 50)
    assert grid.timesteps[0] == 980 and grid.timesteps[-1] == 0
    assert grid.alphas_prev[-1] == pytest.approx(float(scheduler.alphas_cumprod[0]))
    assert PIEBENCH_SCHEDULER["beta_schedule"] == "scaled_linear"
