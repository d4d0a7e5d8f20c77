"""The scorer contract, the metric registry, and the small helpers every scorer shares.

A scorer turns K candidate edits of one task into K dicts of metric values, in one batched pass.
The registry says, for each metric, which way is better and how PIE-Bench's tables display it
(structure distance x10^3, LPIPS x10^3, MSE x10^4, SSIM x10^2), so that summaries line up with
published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from autotune.task import EditTask


@runtime_checkable
class Scorer(Protocol):
    """Scores K candidate edits of one task. See module docstring."""

    def metrics(self) -> dict[str, str]:
        """Metric name -> "maximize" | "minimize"."""
        ...

    def score(self, task: EditTask, edited: torch.Tensor) -> list[dict[str, float]]:
        """`edited`: [K, 3, H, W] float in [0, 1], any device. Returns one dict per candidate."""
        ...

    def describe(self) -> dict:
        """Mode, backbones, versions: recorded with every result."""
        ...


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is read: its direction, and the factor and column name of PIE-Bench's tables."""

    name: str
    direction: str  # "maximize" | "minimize"
    scale: float
    column: str


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("structure_distance", "minimize", 1e3, "Structure distance x10^3"),
        MetricInfo("psnr", "maximize", 1.0, "PSNR"),
        MetricInfo("lpips", "minimize", 1e3, "LPIPS x10^3"),
        MetricInfo("mse", "minimize", 1e4, "MSE x10^4"),
        MetricInfo("ssim", "maximize", 1e2, "SSIM x10^2"),
        MetricInfo("clip_whole", "maximize", 1.0, "CLIP whole"),
        MetricInfo("clip_edited", "maximize", 1.0, "CLIP edited"),
    )
}


def register_metric(info: MetricInfo) -> None:
    """Add a metric (e.g. a world's own ground-truth score) so summaries know its direction and scale."""
    if info.direction not in ("maximize", "minimize"):
        raise ValueError(f"metric {info.name}: direction must be 'maximize' or 'minimize', not {info.direction!r}")
    METRICS[info.name] = info


def metric_info(name: str) -> MetricInfo:
    """Registry entry for `name`; unknown metrics display unscaled under their own name."""
    return METRICS.get(name, MetricInfo(name, "maximize", 1.0, name))


def display_value(name: str, value: float) -> float:
    """A raw metric value in the units of PIE-Bench's tables."""
    return float(value) * metric_info(name).scale


def check_edited(edited: torch.Tensor) -> torch.Tensor:
    """Validate the [K, 3, H, W] batch of candidate edits (a single [3, H, W] image is accepted)."""
    if edited.ndim == 3:
        edited = edited[None]
    if edited.ndim != 4 or edited.shape[1] != 3:
        raise ValueError(f"edited images must be [K, 3, H, W], got shape {tuple(edited.shape)}")
    return edited.float()


def image_to_tensor(image, size: tuple[int, int] | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """PIL RGB image -> [3, H, W] float in [0, 1]; resized bicubically to `size` = (H, W) when it differs."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).to(device)
    if size is not None and tuple(tensor.shape[1:]) != tuple(size):
        tensor = F.interpolate(tensor[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        tensor = tensor.clamp(0.0, 1.0)
    return tensor


def mask_to_tensor(
    mask: np.ndarray | None, size: tuple[int, int], device: torch.device | str = "cpu"
) -> torch.Tensor | None:
    """Boolean HxW mask (True = edit) -> bool tensor at `size`, nearest-neighbour when resized."""
    if mask is None:
        return None
    tensor = torch.from_numpy(np.asarray(mask, dtype=bool)).to(device)
    if tuple(tensor.shape) != tuple(size):
        tensor = F.interpolate(tensor[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5
    return tensor


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8-bit levels, as PIE-Bench's evaluation sees edits saved to image files."""
    return torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0
