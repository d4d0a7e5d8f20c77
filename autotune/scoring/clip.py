"""Edit strength: CLIP score of (edited image, target prompt), whole image and edited region.

PIE-Bench uses torchmetrics' CLIPScore with ``openai/clip-vit-large-patch14``: max(100 * cosine, 0) between
the image and text embeddings. open_clip's ``ViT-L-14`` / ``openai`` is the same network and weights, and
its tokenizer gives the same ids. The "edited" score multiplies the image by the edit mask first (the
outside blacked out); it is NaN when the mask is empty or absent.

Images are preprocessed on their device, batched: bicubic resize of the short side to the model's input
size (antialiased, as PIL does), centre crop, CLIP normalisation.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from autotune.errors import WeightsNotFoundError

CLIP_MODEL = "ViT-L-14"
CLIP_PRETRAINED = "openai"


class ClipScore:
    """CLIP score on any open_clip model (random tiny ones in tests)."""

    def __init__(self, model: torch.nn.Module, tokenizer, image_size: int | None = None, mean=None, std=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        visual = model.visual
        size = image_size or visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.mean = tuple(mean or getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
        self.std = tuple(std or getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[K, 3, H, W] in [0, 1] -> normalised [K, 3, S, S]."""
        size = self.image_size
        height, width = images.shape[-2:]
        scale = size / min(height, width)
        new_h, new_w = max(size, int(height * scale)), max(size, int(width * scale))  # floor, as torchvision and HF
        images = images.float()
        if (new_h, new_w) != (height, width):
            images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        images = images[..., top : top + size, left : left + size].clamp(0.0, 1.0)
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def text_features(self, prompt: str) -> torch.Tensor:
        """Unit-norm text embedding, cached per prompt."""
        if prompt not in self._text_cache:
            tokens = self.tokenizer([prompt]).to(self.device)
            with torch.no_grad():
                features = self.model.encode_text(tokens).float()
            self._text_cache[prompt] = F.normalize(features, dim=-1)[0]
        return self._text_cache[prompt]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device)).to(self._dtype())
        with torch.no_grad():
            features = self.model.encode_image(pixels).float()
        return F.normalize(features, dim=-1)

    def cosine(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        """[K] cosine similarity between each image and the prompt."""
        return self.image_features(images) @ self.text_features(prompt)

    def score(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        """[K] max(100 * cosine(image, prompt), 0)."""
        return torch.clamp(100.0 * self.cosine(images, prompt), min=0.0)

    def score_whole_and_edited(
        self, images: torch.Tensor, prompt: str, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-image and edited-region scores in one batched pass of 2K (or K) images."""
        k = images.shape[0]
        if mask is None or not bool(mask.any()):
            return self.score(images, prompt), torch.full((k,), float("nan"), device=self.device)
        masked = images * mask.to(images.device, images.dtype)
        both = self.score(torch.cat([images, masked]), prompt)
        return both[:k], both[k:]


@functools.lru_cache(maxsize=4)
def _load_clip_cached(model_name: str, pretrained: str, device: str, half: bool):
    import open_clip

    looks_like_file = os.path.sep in pretrained or pretrained.endswith((".safetensors", ".bin", ".pt", ".pth"))
    if looks_like_file and not Path(pretrained).is_file():
        raise WeightsNotFoundError(f"CLIP {model_name} weights: no file at {pretrained}")
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, device=device, require_pretrained=True)
    except WeightsNotFoundError:
        raise
    except Exception as exc:  # open_clip wraps hub and offline errors in RuntimeError
        raise WeightsNotFoundError(_missing_message(model_name, pretrained)) from exc
    model.requires_grad_(False)
    if half:
        model = model.half()
    return model.eval(), open_clip.get_tokenizer(model_name)


def _missing_message(model_name: str, pretrained: str) -> str:
    return (
        f"CLIP score needs open_clip {model_name} / {pretrained} weights (PIE-Bench uses ViT-L-14 / openai, "
        "cached as timm/vit_large_patch14_clip_224.openai) and could not load them. On a machine with "
        'internet run `python -c "import open_clip; '
        f"open_clip.create_model('{model_name}', pretrained='{pretrained}')\"` "
        "(or copy ~/.cache/huggingface), or pass a local checkpoint file with --clip-weights."
    )


def load_clip(
    model_name: str = CLIP_MODEL,
    pretrained: str = CLIP_PRETRAINED,
    device: str | torch.device = "cpu",
    half: bool = False,
) -> ClipScore:
    """OpenAI CLIP ViT-L/14 via open_clip, from the cache or a local file; cached per process."""
    model, tokenizer = _load_clip_cached(model_name, str(pretrained), str(torch.device(device)), half)
    return ClipScore(model, tokenizer)
