"""Structure distance: how far an edit moved the image's layout, as PIE-Bench measures it.

DINO ViT-B/8: take the keys of the last block's attention (heads concatenated), build the token-by-token
cosine self-similarity matrix, and report the mean squared difference between the source's and the edit's
matrices (Tumanyan et al.'s "splicing ViT features" structure loss). Whole image, no mask.

Preprocessing follows PIE-Bench's evaluation code: resize so the short side is 224 (long side at most
480), ImageNet normalisation. One quirk is kept in ``piebench`` mode: PIE-Bench feeds pixel values in
0..255 (not 0..1) into that normalisation, and resizes without antialiasing (torchvision < 0.17);
the clean mode feeds 0..1 as DINO was trained, and antialiases.

Weights: timm's ``vit_base_patch8_224.dino`` (the same tensors as torch.hub's ``dino_vitb8``), from the
Hugging Face cache, or a local file (``.safetensors``, or DINO's ``dino_vitb8_pretrain.pth``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from autotune.errors import WeightsNotFoundError

DINO_MODEL = "vit_base_patch8_224.dino"
DINO_HUB_FILE = "dino_vitb8_pretrain.pth"  # torch.hub's facebookresearch/dino checkpoint name
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_short_side(
    images: torch.Tensor, short: int = 224, max_long: int = 480, antialias: bool = True
) -> torch.Tensor:
    """torchvision's Resize(short, max_size=max_long) on tensors: bilinear.

    torchvision before 0.17 (what PIE-Bench ran) did not antialias tensors by default; ``piebench`` mode
    passes antialias=False to match, the clean mode antialiases.
    """
    height, width = images.shape[-2:]
    small, large = min(height, width), max(height, width)
    new_small, new_large = short, int(short * large / small)
    if new_large > max_long:
        new_small, new_large = int(max_long * new_small / new_large), max_long
    size = (new_small, new_large) if height <= width else (new_large, new_small)
    if tuple(size) == (height, width):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=antialias, align_corners=False)


class StructureDistance:
    """DINO key self-similarity distance on any timm VisionTransformer (random tiny ones in tests)."""

    def __init__(
        self,
        model: torch.nn.Module,
        pixel_scale: float = 255.0,
        antialias: bool = False,
        short_side: int = 224,
        max_long: int = 480,
    ):
        self.model = model.eval()
        self.pixel_scale = pixel_scale
        self.antialias = antialias
        self.short_side = short_side
        self.max_long = max_long

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> the network's input."""
        images = resize_short_side(images.float() * self.pixel_scale, self.short_side, self.max_long, self.antialias)
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        # DINO's stride-8 patch convolution drops a remainder row/column of pixels; timm asserts instead.
        patch = self.model.patch_embed.patch_size
        patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch
        height, width = images.shape[-2:]
        images = images[..., : height - height % patch_h, : width - width % patch_w]
        return (images - mean) / std

    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """Keys of the last block, heads concatenated: [B, tokens, dim]."""
        block = self.model.blocks[-1]
        captured: list[torch.Tensor] = []
        handle = block.attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.no_grad():
                self.model.forward_features(self.preprocess(images).to(self.device, self._dtype()))
        finally:
            handle.remove()
        qkv = captured[0].float()
        b, t, three_dim = qkv.shape
        return qkv.reshape(b, t, 3, three_dim // 3)[:, :, 1]

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def self_similarity(self, images: torch.Tensor) -> torch.Tensor:
        """Cosine self-similarity of the keys: [B, tokens, tokens]."""
        keys = self.keys(images)
        norms = keys.norm(dim=2, keepdim=True)
        return (keys @ keys.transpose(1, 2)) / torch.clamp(norms @ norms.transpose(1, 2), min=1e-8)

    def distance(self, source: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
        """[K] mean squared difference between the source's [3, H, W] and each edit's self-similarity."""
        reference = self.self_similarity(source[None].to(self.device))
        candidates = self.self_similarity(edited.to(self.device))
        return (candidates - reference).pow(2).mean(dim=(1, 2))


def _build_vit(**kwargs) -> torch.nn.Module:
    import timm

    return timm.create_model(DINO_MODEL, num_classes=0, dynamic_img_size=True, **kwargs)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state) if isinstance(state, dict) else state


@functools.lru_cache(maxsize=4)
def _load_dino_cached(weights: str | None, device: str, half: bool) -> torch.nn.Module:
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(f"DINO ViT-B/8 weights: no file at {path}")
        model = _build_vit(pretrained=False)
        state = {k: v for k, v in _read_state(path).items() if not k.startswith("head.")}
        model.load_state_dict(state, strict=True)
    else:
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / DINO_HUB_FILE
        try:
            model = _build_vit(pretrained=True)
        except Exception as exc:  # timm raises hub/offline errors of several types
            if not hub_file.is_file():
                raise WeightsNotFoundError(_missing_message()) from exc
            model = _build_vit(pretrained=False)
            model.load_state_dict(_read_state(hub_file), strict=True)
    model.requires_grad_(False)
    return model.to(device, torch.float16 if half else torch.float32).eval()


def _missing_message() -> str:
    return (
        "structure distance needs DINO ViT-B/8 weights and found none: not in the Hugging Face cache "
        f"(timm/{DINO_MODEL}) nor at {Path(torch.hub.get_dir()) / 'checkpoints' / DINO_HUB_FILE}. "
        "On a machine with internet run `python -c \"import timm; timm.create_model('vit_base_patch8_224.dino', "
        'pretrained=True)"` (or copy that cache), or pass a local file with --dino-weights '
        "(.safetensors or dino_vitb8_pretrain.pth)."
    )


def load_dino(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu", half: bool = False
) -> torch.nn.Module:
    """DINO ViT-B/8 from a local file or the caches; `WeightsNotFoundError` at once when absent. Cached per process."""
    return _load_dino_cached(None if weights is None else str(weights), str(torch.device(device)), half)
