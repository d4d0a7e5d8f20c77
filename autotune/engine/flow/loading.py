"""Loading an SD3 / SD3.5 or FLUX.1 checkpoint into the parts the flow family uses.

The diffusers pipeline is kept whole: its `encode_prompt` is how SD3 (two CLIP encoders with projection, and T5 when
the folder has it) and FLUX.1 (CLIP for the pooled vector, T5 for the tokens) read a prompt, and its CPU offloading
(`offload="model"` or `"sequential"`) is what lets FLUX.1-dev run on a 24 GB card. The scheduler is the checkpoint's
own `FlowMatchEulerDiscreteScheduler`, with its shift.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from autotune.engine.checkpoint import Checkpoint, first_line, weights_fingerprint
from autotune.errors import InputError, ModelNotFoundError

log = logging.getLogger(__name__)

ARCHITECTURES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
OFFLOAD_MODES = ("model", "sequential")
# The scheduler settings a preset and the caches are keyed by (those the checkpoint's config has).
SCHEDULER_KEYS = ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
                  "base_image_seq_len", "max_image_seq_len", "shift_terminal", "time_shift_type", "invert_sigmas",
                  "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling")


@dataclass
class FlowComponents:
    """One loaded SD3 or FLUX.1 checkpoint: the pipeline (modules, text encoding, offloading) and what it implies."""

    pipe: Any
    architecture: str  # "sd3" | "flux"
    device: torch.device
    dtype: torch.dtype
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vae(self) -> Any:
        return self.pipe.vae

    @property
    def transformer(self) -> Any:
        return self.pipe.transformer

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @property
    def denoiser(self) -> Any:
        """The model every sampling step calls (what the benchmarks hook, whatever the family)."""
        return self.transformer

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def guidance_embedded(self) -> bool:
        """FLUX.1-dev: the guidance scale is an input of the transformer (one pass); SD3 and FLUX.1-schnell use
        classifier-free guidance (a conditional and an unconditional pass)."""
        return self.architecture == "flux" and bool(self.transformer.config.guidance_embeds)

    @property
    def resolution(self) -> int:
        """The native pixel size: SD3's `sample_size` latents (1024 px); for FLUX.1 the side whose packed 2x2 tokens
        are the scheduler's `max_image_seq_len` (4096 tokens: 1024 px), as its pipeline's default."""
        if self.architecture == "sd3":
            return int(self.transformer.config.sample_size) * self.vae_scale_factor
        tokens = int(self.scheduler.config.get("max_image_seq_len") or 4096)
        return 2 * math.isqrt(tokens) * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: whole transformer patches (SD3) or whole 2x2 packs (FLUX.1)."""
        patch = int(self.transformer.config.patch_size) if self.architecture == "sd3" else 2
        return self.vae_scale_factor * patch

    @property
    def max_sequence_length(self) -> int:
        """T5 tokens per prompt, as the pipelines use them: SD3 256, FLUX.1-dev 512, FLUX.1-schnell 256."""
        return 512 if self.guidance_embedded else 256


def scheduler_settings(scheduler: Any) -> dict[str, Any]:
    config = dict(scheduler.config)
    out: dict[str, Any] = {"_class_name": type(scheduler).__name__}
    out.update({k: config[k] for k in SCHEDULER_KEYS if k in config})
    return out


def load_components(
    checkpoint: Checkpoint,
    *,
    device: torch.device,
    dtype: torch.dtype,
    scheduler: str = "checkpoint",
    allow_pickle: bool = False,
    offload: str | None = None,
) -> FlowComponents:
    """Load a located SD3 or FLUX.1 checkpoint (a diffusers folder or a downloaded hub id)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    model, kind, path = checkpoint.model, checkpoint.kind, checkpoint.path
    if scheduler != "checkpoint":
        raise InputError(f"scheduler={scheduler!r} is a DDIM setting of the Stable Diffusion 1.x/2.x family; SD3 and "
                         "FLUX.1 sample with their own FlowMatchEulerDiscreteScheduler (use --scheduler checkpoint)")
    if offload is not None and offload not in OFFLOAD_MODES:
        raise InputError(f"offload={offload!r}: use 'model' (whole models moved to the GPU in turn) or 'sequential' "
                         "(layer by layer: least memory, slowest), or None")
    if offload is not None and device.type != "cuda":
        raise InputError(f"offload={offload!r} moves weights between the CPU and a GPU; on {device} there is nothing "
                         "to offload to (drop --offload)")
    if kind == "file":
        raise ModelNotFoundError(f"{model!r}: single-file SD3 / FLUX.1 checkpoints are not supported; give the "
                                 "diffusers folder or the hub id")
    architecture = ARCHITECTURES[checkpoint.pipeline_class or ""]
    pipeline_class = StableDiffusion3Pipeline if architecture == "sd3" else FluxPipeline
    missing = {}
    if architecture == "sd3" and _component(path, "text_encoder_3") is None:  # SD3 without T5, as users often save it
        missing = {"text_encoder_3": None, "tokenizer_3": None}
    try:
        pipe = pipeline_class.from_pretrained(str(path), dtype=dtype, use_safetensors=not allow_pickle,
                                              local_files_only=True, **missing)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelNotFoundError(f"could not load {model!r} from {path}: {first_line(exc)}") from None
    pipe.set_progress_bar_config(disable=True)
    for name in ("vae", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval()
            module.requires_grad_(False)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if architecture == "sd3":
        text_encoders = "CLIP x2 + T5" if getattr(pipe, "text_encoder_3", None) is not None else "CLIP x2"
    else:
        text_encoders = "CLIP + T5"
    components = FlowComponents(pipe, architecture, device, dtype)
    components.info = {
        "id": model,
        "source": kind,
        "path": str(path) if kind != "hub" else None,
        "revision": path.name if kind == "hub" else checkpoint.revision,
        "weights": weights_fingerprint(path),
        "scheduler": scheduler_settings(pipe.scheduler),
        "scheduler_mode": scheduler,
        "dtype": str(dtype).replace("torch.", ""),
        "family": "flow",
        "architecture": architecture,
        "guidance": "embedded" if components.guidance_embedded else "cfg",
        "text_encoders": text_encoders,
    }
    log.info("loaded %s (%s, %s) on %s as %s%s", model, architecture, kind, device, dtype,
             f", {offload} offload" if offload else "")
    return components


def _component(path: Any, name: str) -> Any:
    """A component's entry in the folder's model_index.json (None when absent or saved as null)."""
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = index.get(name)
    if not entry or (isinstance(entry, list) and all(part is None for part in entry)):
        return None
    return entry
