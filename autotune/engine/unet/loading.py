"""Loading a Stable Diffusion (UNet) checkpoint into the parts the UNet family uses, with its DDIM scheduler."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from autotune.engine.checkpoint import Checkpoint, first_line, hub_offline, weights_fingerprint
from autotune.errors import ModelNotFoundError

log = logging.getLogger(__name__)

# PIE-Bench's reference runs: DDIMScheduler(beta_start=0.00085, beta_end=0.012, "scaled_linear",
# clip_sample=False, set_alpha_to_one=False), other settings at the constructor's defaults.
PIEBENCH_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 0,
    "timestep_spacing": "leading",
    "num_train_timesteps": 1000,
}
_SCHEDULER_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "prediction_type",
    "steps_offset",
    "timestep_spacing",
    "set_alpha_to_one",
    "clip_sample",
)



@dataclass
class Components:
    """The modules of one checkpoint, on one device, in one dtype."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: Any
    tokenizer: Any
    scheduler: DDIMScheduler
    device: torch.device
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def denoiser(self) -> UNet2DConditionModel:
        """The model every sampling step calls (what the benchmarks hook, whatever the family)."""
        return self.unet

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The pixel size the checkpoint was trained at (512 for SD 1.x, 768 for SD 2.x-768)."""
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this so every UNet level has whole latents."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)



def make_scheduler(checkpoint_config: dict[str, Any], mode: str = "checkpoint") -> DDIMScheduler:
    """A DDIM scheduler from the checkpoint's config, or with PIE-Bench's settings (`mode="piebench"`)."""
    prediction_type = checkpoint_config.get("prediction_type", "epsilon")
    if mode == "checkpoint":
        config = {k: checkpoint_config[k] for k in _SCHEDULER_KEYS if k in checkpoint_config}
        config["clip_sample"] = False  # inversion cannot clip; editing must match it
        return DDIMScheduler.from_config(config)
    if mode == "piebench":
        return DDIMScheduler(**PIEBENCH_SCHEDULER, prediction_type=prediction_type)
    raise ValueError(f"unknown scheduler mode {mode!r}; use 'checkpoint' or 'piebench'")


def scheduler_settings(scheduler: DDIMScheduler) -> dict[str, Any]:
    return {k: scheduler.config[k] for k in _SCHEDULER_KEYS if k in scheduler.config}



def load_components(
    checkpoint: Checkpoint,
    *,
    device: torch.device,
    dtype: torch.dtype,
    scheduler: str = "checkpoint",
    config: str | None = None,
    allow_pickle: bool = False,
) -> Components:
    """Load a located Stable Diffusion checkpoint for inversion and editing.

    `config` is, for a single-file checkpoint, the diffusers folder or hub id whose configs describe it.
    """
    from diffusers import StableDiffusionPipeline

    model, kind, path = checkpoint.model, checkpoint.kind, checkpoint.path
    common = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    try:
        if kind == "file":
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=config, local_files_only=hub_offline(), **common
            )
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(path), use_safetensors=not allow_pickle, local_files_only=True, **common
            )
    except (OSError, ValueError, EnvironmentError) as exc:
        hint = (
            " For a single file offline, pass --config with a local diffusers folder of the same architecture."
            if kind == "file"
            else ""
        )
        raise ModelNotFoundError(f"could not load {model!r} from {path}: {first_line(exc)}.{hint}") from None
    ddim = make_scheduler(dict(pipe.scheduler.config), scheduler)
    info = {
        "id": model,
        "source": kind,
        "path": str(path) if kind != "hub" else None,
        "revision": path.name if kind == "hub" else checkpoint.revision,
        "weights": weights_fingerprint(path),
        "scheduler": scheduler_settings(ddim),
        "scheduler_mode": scheduler,
        "dtype": str(dtype).replace("torch.", ""),
    }
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.to(device)
        module.eval()
        module.requires_grad_(False)
    log.info("loaded %s (%s) on %s as %s", model, kind, device, dtype)
    return Components(pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, ddim, device, dtype, info)
