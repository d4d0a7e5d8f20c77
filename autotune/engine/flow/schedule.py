"""The noise levels of an N-step run, as each pipeline sets them up, from the checkpoint's scheduler.

SD3 asks its `FlowMatchEulerDiscreteScheduler` for N steps (its `shift` applied); FLUX.1 passes sigmas evenly spaced
from 1 to 1/N and a resolution-dependent shift `mu` (its scheduler uses dynamic shifting). Both are what FlowEdit's
official code does. The result is N + 1 sigmas in sampling order, ending at 0: step i moves from `sigmas[i]` to
`sigmas[i + 1]`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def resolution_shift(image_seq_len: int, config: Any) -> float:
    """`mu` for dynamic shifting: linear in the number of image tokens, from `base_shift` at `base_image_seq_len`
    to `max_shift` at `max_image_seq_len` (the defaults are FLUX.1's)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return base_shift + slope * (image_seq_len - base_len)


def sigma_schedule(scheduler: Any, architecture: str, steps: int, image_seq_len: int) -> list[float]:
    """The N + 1 noise levels of an N-step run (a fresh copy of `scheduler` is set up; the loaded one is not
    touched)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    fresh = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    kwargs: dict[str, Any] = {}
    if fresh.config.get("use_dynamic_shifting"):
        kwargs["mu"] = resolution_shift(image_seq_len, fresh.config)
    if architecture == "flux":
        fresh.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), **kwargs)
    else:
        fresh.set_timesteps(steps, **kwargs)
    return [float(s) for s in fresh.sigmas]
