"""Loading a Stable Diffusion (UNet) checkpoint into the parts the UNet family uses, with its DDIM scheduler.

Two pipeline classes: `StableDiffusionPipeline` (SD 1.x/2.x: one text encoder) and `StableDiffusionXLPipeline` (SDXL
and its fine-tunes: two text encoders, a pooled embedding and size ids as added conditions, a VAE that overflows in
float16 and is kept in float32 where its config says so). A folder says which it is in `model_index.json`; a single
file is recognised by its keys (SDXL's second text encoder), or by the pipeline class of the `config` folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
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
SD_PIPELINE = "StableDiffusionPipeline"
SDXL_PIPELINE = "StableDiffusionXLPipeline"
PIPELINES = (SD_PIPELINE, SDXL_PIPELINE)
# A key only SDXL base-style single files have: the second text encoder (OpenCLIP ViT-bigG), as diffusers tells them.
SDXL_FILE_KEY = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"


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
    # SDXL only: the second text encoder (with the projection that gives the pooled embedding) and its tokenizer,
    # and whether its unconditional prompt is zeros rather than the encoded empty prompt.
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    force_zeros_for_empty_prompt: bool = False

    @property
    def denoiser(self) -> UNet2DConditionModel:
        """The model every sampling step calls (what the benchmarks hook, whatever the family)."""
        return self.unet

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The pixel size the checkpoint was trained at (512 for SD 1.x, 768 for SD 2.x-768, 1024 for SDXL)."""
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this so every UNet level has whole latents."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def pipeline(self) -> str:
        return SDXL_PIPELINE if self.text_encoder_2 is not None else SD_PIPELINE



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
    """Load a located Stable Diffusion or SDXL checkpoint for inversion and editing.

    `config` is, for a single-file checkpoint, the diffusers folder or hub id whose configs describe it.
    """
    model, kind, path = checkpoint.model, checkpoint.kind, checkpoint.path
    pipeline_class = single_file_pipeline(path, config) if kind == "file" else checkpoint.pipeline_class or SD_PIPELINE
    pipe = _load_pipeline(pipeline_class, checkpoint, dtype, config, allow_pickle)
    xl = pipeline_class == SDXL_PIPELINE
    if xl:
        _check_sdxl(pipe, model)
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
    encoders = [pipe.text_encoder, pipe.text_encoder_2] if xl else [pipe.text_encoder]
    for module in (pipe.unet, pipe.vae, *[e for e in encoders if e is not None]):
        module.to(device)
        module.eval()
        module.requires_grad_(False)
    if xl and dtype == torch.float16 and pipe.vae.config.get("force_upcast", False):
        pipe.vae.float()  # SDXL's VAE overflows in float16 (diffusers upcasts it too, to decode)
    log.info("loaded %s (%s, %s) on %s as %s", model, kind, pipeline_class, device, dtype)
    if not xl:
        return Components(pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, ddim, device, dtype, info)
    tokenizer = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2  # P2P aligns words on it
    return Components(pipe.vae, pipe.unet, pipe.text_encoder, tokenizer, ddim, device, dtype, info,
                      text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2,
                      force_zeros_for_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt", True)))


def single_file_pipeline(path: Path, config: str | None) -> str:
    """The pipeline class of a single-file checkpoint: the `config` folder's, when it is a local diffusers folder;
    else SDXL when the file holds SDXL's second text encoder, else Stable Diffusion 1.x/2.x."""
    if config and (Path(config) / "model_index.json").is_file():
        try:
            named = json.loads((Path(config) / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError):
            named = None
        if named not in PIPELINES:
            raise ModelNotFoundError(
                f"--config {config} describes a {named} checkpoint; a single file here must be Stable Diffusion "
                f"1.x/2.x or SDXL: give a config folder of one of {', '.join(PIPELINES)}"
            )
        return named
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:  # the header only: no tensor is read
                if SDXL_FILE_KEY in handle.keys():
                    return SDXL_PIPELINE
        except Exception as exc:  # safetensors raises its own error classes for a torn or foreign file
            raise ModelNotFoundError(f"could not read {path} as a safetensors checkpoint: {first_line(exc)}") \
                from None
    return SD_PIPELINE


def _load_pipeline(pipeline_class: str, checkpoint: Checkpoint, dtype: torch.dtype, config: str | None,
                   allow_pickle: bool) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    model, kind, path = checkpoint.model, checkpoint.kind, checkpoint.path
    if pipeline_class == SDXL_PIPELINE:
        cls: Any = StableDiffusionXLPipeline
        common: dict[str, Any] = {"dtype": dtype, "add_watermarker": False}
    else:
        cls = StableDiffusionPipeline
        common = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    try:
        if kind == "file":
            return cls.from_single_file(str(path), config=config, local_files_only=hub_offline(), **common)
        return cls.from_pretrained(str(path), use_safetensors=not allow_pickle, local_files_only=True, **common)
    except (OSError, ValueError, EnvironmentError) as exc:
        hint = (
            " For a single file offline, pass --config with a local diffusers folder of the same architecture."
            if kind == "file"
            else ""
        )
        reason = first_line(exc).rstrip(".")
        raise ModelNotFoundError(f"could not load {model!r} from {path}: {reason}.{hint}") from None


def _check_sdxl(pipe: Any, model: str) -> None:
    """Refuse, at load, the SDXL-class checkpoints the DDIM engine would edit wrongly without a word."""
    scheduler = type(pipe.scheduler).__name__
    if scheduler.startswith(("EDM", "FlowMatch")) or pipe.vae.config.get("latents_mean") is not None:
        raise ModelNotFoundError(
            f"{model!r} is an SDXL-architecture checkpoint with its own noise schedule ({scheduler}) or latent "
            "normalisation (e.g. Playground v2.5); autotune inverts with DDIM on the SDXL base schedule only"
        )
    if pipe.text_encoder_2 is None or not hasattr(pipe.text_encoder_2, "text_projection"):
        raise ModelNotFoundError(
            f"{model!r} has no second text encoder with a projection (CLIPTextModelWithProjection); SDXL reads its "
            "pooled embedding. Is it a complete StableDiffusionXLPipeline folder?"
        )
    unet = pipe.unet
    wanted = unet.add_embedding.linear_1.in_features if getattr(unet, "add_embedding", None) is not None else None
    given = 6 * (unet.config.get("addition_time_embed_dim") or 0) + pipe.text_encoder_2.config.projection_dim
    if unet.config.get("addition_embed_type") != "text_time" or wanted != given:
        raise ModelNotFoundError(
            f"{model!r}: its UNet does not take SDXL base's added conditions (pooled text embedding and six size "
            f"ids: {given} values; the UNet expects {wanted}). SDXL refiner and other variants are not supported"
        )
