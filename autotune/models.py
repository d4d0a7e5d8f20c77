"""Loading a Stable Diffusion checkpoint into the parts the engine uses.

Accepts a hub id, a local diffusers folder, a single `.safetensors` file, or a short name such as
`shapes` (the small model trained and shipped with autotune). Weights load from safetensors only,
unless the caller opts in to pickle-based files; remote code is never run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from autotune.errors import ModelNotFoundError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SHAPES_MODEL_DIR = Path(__file__).parent / "models" / "shapes"
SHORT_NAMES = {
    "shapes": str(SHAPES_MODEL_DIR),
    "sd15": DEFAULT_MODEL,
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
}
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


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return default_device()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelNotFoundError(f"device {device} was asked for but CUDA is not available here; use --device cpu")
    return device


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


FINGERPRINT_FULL_BYTES = 256 * 2**20  # files up to this size are hashed whole
FINGERPRINT_BLOCKS, FINGERPRINT_BLOCK = 256, 64 * 2**10  # larger ones: 256 evenly spaced 64 KiB blocks


def weights_fingerprint(root: Path) -> str:
    """An identity for local weights that changes when the weights do: each safetensors file's path, size and
    header, and its tensor data (whole up to 256 MB; beyond, 16 MB sampled evenly, a fraction of a second for a
    4 GB UNet). Names and shapes alone are not enough: a retrained model keeps them, and presets, cached
    inversions and benchmark grids are keyed by this value."""
    digest = hashlib.sha256()
    files = [root] if root.is_file() else sorted(root.rglob("*.safetensors"))
    for path in files:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode())
            digest.update(str(size).encode())
            digest.update(fh.read(min(header_len, 10_000_000)))
            start = 8 + header_len
            data = max(size - start, 0)
            if data <= FINGERPRINT_FULL_BYTES:
                fh.seek(start)
                for chunk in iter(lambda: fh.read(2**20), b""):
                    digest.update(chunk)
            else:
                stride = (data - FINGERPRINT_BLOCK) // (FINGERPRINT_BLOCKS - 1)
                for i in range(FINGERPRINT_BLOCKS):
                    fh.seek(start + i * stride)
                    digest.update(fh.read(FINGERPRINT_BLOCK))
    return digest.hexdigest()[:16]


def _resolve_source(model: str, revision: str | None, allow_pickle: bool) -> tuple[str, Path, list[str]]:
    """Find where `model` lives: ('folder'|'file'|'hub', local path, what was tried)."""
    tried: list[str] = []
    name = SHORT_NAMES.get(model, model)
    if name != model:
        tried.append(f"short name {model!r} -> {name}")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a directory but not a diffusers pipeline folder (no model_index.json). "
                "Give a folder saved with `save_pretrained`, a single .safetensors file, or a hub id."
            )
        return "folder", path, tried
    tried.append(f"local folder {path}: not found")
    if path.suffix in (".safetensors", ".ckpt", ".bin", ".pt"):
        if not path.is_file():
            raise ModelNotFoundError(f"checkpoint file {path} does not exist; tried: {'; '.join(tried)}")
        if path.suffix != ".safetensors" and not allow_pickle:
            raise ModelNotFoundError(
                f"{path} is a pickle-based checkpoint, which can run code when loaded. Convert it to .safetensors, "
                "or pass allow_pickle=True (--allow-pickle) if you trust its source."
            )
        return "file", path, tried
    if model == "shapes" or name == str(SHAPES_MODEL_DIR):
        raise ModelNotFoundError(
            f"the built-in shapes model is missing at {SHAPES_MODEL_DIR}; reinstall autotune or train it with "
            "`python -m autotune.shapes.train --out autotune/models/shapes`"
        )
    from diffusers import DiffusionPipeline

    try:
        folder = DiffusionPipeline.download(
            name, revision=revision, use_safetensors=not allow_pickle, local_files_only=_hub_offline()
        )
    except Exception as exc:  # hub errors come in many classes; all mean "not available"
        tried.append(f"hub id {name!r}{' @ ' + revision if revision else ''}: {type(exc).__name__}: {_first_line(exc)}")
        raise ModelNotFoundError(
            f"could not load model {model!r}. Tried: " + "; ".join(tried) + ". "
            "If the model is not reachable from here, download it elsewhere (e.g. `huggingface-cli download "
            f"{name}`) and pass the local folder, or a single .safetensors file, with --model PATH."
        ) from None
    return "hub", Path(folder), tried


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def load_components(
    model: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    scheduler: str = "checkpoint",
    revision: str | None = None,
    config: str | None = None,
    allow_pickle: bool = False,
) -> Components:
    """Load `model` (hub id, folder, .safetensors file or short name) for inversion and editing.

    `config` is, for a single-file checkpoint, the diffusers folder or hub id whose configs describe it.
    """
    from diffusers import StableDiffusionPipeline

    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    kind, path, _ = _resolve_source(model, revision, allow_pickle)
    common = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    try:
        if kind == "file":
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=config, local_files_only=_hub_offline(), **common
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
        raise ModelNotFoundError(f"could not load {model!r} from {path}: {_first_line(exc)}.{hint}") from None
    ddim = make_scheduler(dict(pipe.scheduler.config), scheduler)
    info = {
        "id": model,
        "source": kind,
        "path": str(path) if kind != "hub" else None,
        "revision": path.name if kind == "hub" else revision,
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


def model_info_json(info: dict[str, Any]) -> str:
    return json.dumps(info, sort_keys=True)
