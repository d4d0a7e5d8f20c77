"""Finding a checkpoint, and which model family reads it.

Accepts a hub id, a local diffusers folder, a single `.safetensors` file, or a short name such as `shapes` (the
small model trained and shipped with autotune). Weights load from safetensors only, unless the caller opts in to
pickle-based files; remote code is never run. The family is read from the folder's `model_index.json`
(`_class_name`, the diffusers pipeline class) and the family's own loader builds its engine
(`autotune.engine.family`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autotune.errors import ModelNotFoundError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SHAPES_WEIGHTS = Path(__file__).resolve().parent.parent / "shapes" / "weights"  # models trained by autotune
SHAPES_MODEL_DIR = SHAPES_WEIGHTS / "shapes"
SHAPES_FLOW_MODEL_DIR = SHAPES_WEIGHTS / "shapes-flow"  # the rectified-flow (SD3-format) shapes model
SHORT_NAMES = {
    "shapes": str(SHAPES_MODEL_DIR),
    "shapes-flow": str(SHAPES_FLOW_MODEL_DIR),
    "sd15": DEFAULT_MODEL,
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    # rectified-flow transformers (the flow family)
    "sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
    "sd35": "stabilityai/stable-diffusion-3.5-medium",
    "sd35-large": "stabilityai/stable-diffusion-3.5-large",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
}


@dataclass(frozen=True)
class Checkpoint:
    """A located checkpoint: `kind` is 'folder', 'file' or 'hub' (a hub id, downloaded or cached to `path`)."""

    model: str  # as the user named it
    kind: str
    path: Path
    revision: str | None = None
    tried: tuple[str, ...] = field(default=(), compare=False)

    @property
    def pipeline_class(self) -> str | None:
        """The diffusers pipeline class its `model_index.json` names (None for a single file)."""
        if self.kind == "file":
            return None
        try:
            return json.loads((self.path / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError):
            return None


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



def locate(model: str, revision: str | None = None, allow_pickle: bool = False) -> Checkpoint:
    """Find where `model` lives (a short name, folder, file or hub id), with what was tried on the way."""
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
        return Checkpoint(model, "folder", path, revision, tuple(tried))
    tried.append(f"local folder {path}: not found")
    if path.suffix in (".safetensors", ".ckpt", ".bin", ".pt"):
        if not path.is_file():
            raise ModelNotFoundError(f"checkpoint file {path} does not exist; tried: {'; '.join(tried)}")
        if path.suffix != ".safetensors" and not allow_pickle:
            raise ModelNotFoundError(
                f"{path} is a pickle-based checkpoint, which can run code when loaded. Convert it to .safetensors, "
                "or pass allow_pickle=True (--allow-pickle) if you trust its source."
            )
        return Checkpoint(model, "file", path, revision, tuple(tried))
    if model == "shapes" or name == str(SHAPES_MODEL_DIR):
        raise ModelNotFoundError(
            f"the built-in shapes model is missing at {SHAPES_MODEL_DIR}; reinstall autotune or train it with "
            "`python -m autotune.shapes.train --out autotune/shapes/weights/shapes`"
        )
    if model == "shapes-flow" or name == str(SHAPES_FLOW_MODEL_DIR):
        raise ModelNotFoundError(
            f"the shapes-flow model is missing at {SHAPES_FLOW_MODEL_DIR}; reinstall autotune, train it with "
            f"`autotune shapes train-flow --out {SHAPES_FLOW_MODEL_DIR}` (about 2 hours on an idle 2-core CPU; "
            "docs/shapes.md), or pass a folder it wrote with --model PATH"
        )
    from diffusers import DiffusionPipeline

    try:
        folder = DiffusionPipeline.download(
            name, revision=revision, use_safetensors=not allow_pickle, local_files_only=hub_offline()
        )
    except Exception as exc:  # hub errors come in many classes; all mean "not available"
        if hub_offline() and type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            why = "not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 keeps the hub off"
        else:
            why = f"{type(exc).__name__}: {first_line(exc)}"
        tried.append(f"hub id {name!r}{' @ ' + revision if revision else ''}: {why}")
        raise ModelNotFoundError(
            f"could not load model {model!r}. Tried: " + "; ".join(tried) + ". "
            "If the model is not reachable from here, download it where it is (`hf download "
            f"{name} --local-dir DIR`, the Hugging Face CLI) and pass the folder, or a single .safetensors file, "
            "with --model PATH."
        ) from None
    return Checkpoint(model, "hub", Path(folder), revision, tuple(tried))



def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The first line of an error, without its final full stop (the caller punctuates); a long one is cut after its
    last whole sentence that fits, never mid-word."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if len(text) > limit:
        cut = text.rfind(". ", 0, limit)
        text = text[:cut] if cut > 0 else text[:limit].rsplit(" ", 1)[0] + " ..."
    return text.rstrip(".")

