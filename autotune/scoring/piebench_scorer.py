"""`PieBenchScorer`: PIE-Bench's seven metrics for K candidate edits of one task, in one batched pass.

    scorer = PieBenchScorer(mode="piebench", device="cuda")
    rows = scorer.score(task, edited)          # edited: [K, 3, H, W] in [0, 1]
    scorer.describe()                          # mode, backbones, versions: store it with the results

Models (DINO, CLIP, LPIPS backbone) load on first use, once per process and configuration; a missing
one raises `WeightsNotFoundError` naming the weights and how to supply them. Pass `metrics=` to compute
a subset (e.g. without CLIP), or `structure=` / `clip=` / `lpips=` to bring your own loaded models.
"""

from __future__ import annotations

import functools
import math
from importlib import metadata

import torch

from autotune.scoring.background import (
    MODES,
    background_metrics,
    check_mode,
    force_border,
    unedited_weights,
)
from autotune.scoring.base import (
    METRICS,
    check_edited,
    image_to_tensor,
    mask_to_tensor,
    quantize_8bit,
)
from autotune.scoring.clip import CLIP_MODEL, CLIP_PRETRAINED, ClipScore, load_clip
from autotune.scoring.lpips_weights import backbone_source, load_lpips, lpips_distance
from autotune.scoring.structure import DINO_MODEL, StructureDistance, load_dino
from autotune.task import EditTask

ALL_METRICS = ("structure_distance", "psnr", "lpips", "mse", "ssim", "clip_whole", "clip_edited")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class PieBenchScorer:
    """Structure distance, background PSNR / LPIPS / MSE / SSIM, CLIP whole / edited, as PIE-Bench defines them.

    Args:
        mode: ``"piebench"`` (PIE-Bench's exact definitions, quirks included) or ``"masked"`` (clean masked means).
        device: where models run and images are scored (default: CUDA if available).
        metrics: which of `ALL_METRICS` to compute.
        lpips_net: LPIPS backbone; PIE-Bench uses ``"squeeze"``.
        lpips_weights / dino_weights: local weight files, else the caches (see `docs/metrics.md`).
        clip_model / clip_pretrained: open_clip model name and pretrained tag or local file.
        half: run CLIP (and DINO in ``masked`` mode) in float16 on CUDA; not measured against float32 here.
    """

    def __init__(
        self,
        mode: str = "piebench",
        device: str | torch.device | None = None,
        metrics: tuple[str, ...] | list[str] = ALL_METRICS,
        lpips_net: str = "squeeze",
        lpips_weights: str | None = None,
        dino_weights: str | None = None,
        clip_model: str = CLIP_MODEL,
        clip_pretrained: str = CLIP_PRETRAINED,
        half: bool = False,
        structure: StructureDistance | None = None,
        clip: ClipScore | None = None,
        lpips: torch.nn.Module | None = None,
    ):
        self.mode = check_mode(mode)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        unknown = sorted(set(metrics) - set(ALL_METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}")
        self.enabled = tuple(m for m in ALL_METRICS if m in metrics)
        self.lpips_net = lpips_net
        self.lpips_weights = lpips_weights
        self.dino_weights = dino_weights
        self.clip_model = clip_model
        self.clip_pretrained = clip_pretrained
        self.half = half
        self._structure = structure
        self._clip = clip
        self._lpips = lpips
        self._custom = {"structure": structure is not None, "clip": clip is not None, "lpips": lpips is not None}

    # -- models, loaded on first use -------------------------------------------------------------
    def load(self) -> PieBenchScorer:
        """Load every model the enabled metrics need now (fail fast on missing weights)."""
        needed = {
            "structure": "structure_distance" in self.enabled,
            "lpips": "lpips" in self.enabled,
            "clip": bool({"clip_whole", "clip_edited"} & set(self.enabled)),
        }
        for name, wanted in needed.items():
            if wanted:
                getattr(self, name)
        return self

    @property
    def structure(self) -> StructureDistance:
        if self._structure is None:
            piebench = self.mode == "piebench"
            # PIE-Bench feeds DINO 0..255 pixels: activations that large may overflow float16, so it stays float32
            half = self.half and self.device.type == "cuda" and not piebench
            model = load_dino(self.dino_weights, self.device, half)
            self._structure = StructureDistance(model, pixel_scale=255.0 if piebench else 1.0, antialias=not piebench)
        return self._structure

    @property
    def clip(self) -> ClipScore:
        if self._clip is None:
            self._clip = load_clip(
                self.clip_model, self.clip_pretrained, self.device, self.half and self.device.type == "cuda"
            )
        return self._clip

    @property
    def lpips(self) -> torch.nn.Module:
        if self._lpips is None:
            self._lpips = load_lpips(self.lpips_net, self.lpips_weights, self.device)
        return self._lpips

    # -- the Scorer contract ---------------------------------------------------------------------
    def metrics(self) -> dict[str, str]:
        return {name: METRICS[name].direction for name in self.enabled}

    def score(self, task: EditTask, edited: torch.Tensor) -> list[dict[str, float]]:
        edited = check_edited(edited).to(self.device)
        size = tuple(edited.shape[-2:])
        source = image_to_tensor(task.image, size, self.device)
        mask = mask_to_tensor(task.mask, size, self.device)
        if self.mode == "piebench":  # PIE-Bench scores 8-bit image files
            edited, source = quantize_8bit(edited), quantize_8bit(source)
        results: dict[str, torch.Tensor] = {}

        background = {"psnr", "mse", "ssim", "lpips"} & set(self.enabled)
        if background:
            keep = unedited_weights(mask, size, self.mode, self.device)
            lpips_fn = None
            if "lpips" in self.enabled:
                lpips_fn = functools.partial(lpips_distance, self.lpips)
            results.update(background_metrics(source, edited, keep, self.mode, lpips_fn))
        if "structure_distance" in self.enabled:
            results["structure_distance"] = self.structure.distance(source, edited)
        if {"clip_whole", "clip_edited"} & set(self.enabled):
            clip_mask = mask
            if self.mode == "piebench" and mask is not None:
                clip_mask = force_border(mask)
            whole, region = self.clip.score_whole_and_edited(edited, task.target_prompt, clip_mask)
            results["clip_whole"], results["clip_edited"] = whole, region

        k = edited.shape[0]
        rows = []
        for i in range(k):
            row = {}
            for name in self.enabled:
                value = float(results[name][i])
                row[name] = value if not math.isnan(value) else float("nan")
            rows.append(row)
        return rows

    def describe(self) -> dict:
        clip_desc = "custom" if self._custom["clip"] else f"open_clip {self.clip_model} / {self.clip_pretrained}"
        dino_desc = (
            "custom"
            if self._custom["structure"]
            else f"timm {DINO_MODEL}" + (f" from {self.dino_weights}" if self.dino_weights else "")
        )
        lpips_desc = (
            "custom"
            if self._custom["lpips"]
            else (
                f"{self.lpips_net} (torchmetrics LPIPS v0.1 heads, "
                f"backbone {backbone_source(self.lpips_net, self.lpips_weights)})"
            )
        )
        return {
            "scorer": "piebench",
            "mode": self.mode,
            "modes_available": list(MODES),
            "metrics": list(self.enabled),
            "backbones": {"structure": dino_desc, "lpips": lpips_desc, "clip": clip_desc},
            "quirks": _QUIRKS[self.mode],
            "half": self.half,
            "device": str(self.device),
            "versions": {
                p: _version(p) for p in ("autotune", "torch", "torchvision", "torchmetrics", "open_clip_torch", "timm")
            },
        }


_QUIRKS = {
    "piebench": [
        "edits rounded to 8-bit levels",
        "mask border forced to edited",
        "background metrics zero the edited region (not excluded), means over the full image",
        "SSIM map cropped by 5 px before the mean (torchmetrics < 1.5)",
        "DINO input in 0..255 before ImageNet normalisation, resize without antialias",
        "CLIP edited on image * mask (border included)",
    ],
    "masked": [
        "background metrics averaged over unedited pixels only",
        "SSIM map mean over unedited pixels of the valid interior",
        "DINO input in 0..1, antialiased resize",
        "CLIP edited on image * mask",
    ],
}
