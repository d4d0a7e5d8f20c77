"""Background fidelity: PSNR, MSE, SSIM and LPIPS on the region that should stay unedited.

Two modes, named for what they compute:

- ``piebench``: PIE-Bench's definition, reproduced exactly. The 1-pixel image border is forced into the
  edit mask, then both images are multiplied by (1 - mask): the edited region is *zeroed, not excluded*,
  and each metric runs over the full image, zeros included. Values therefore depend on the mask's size.
  Edits are rounded to 8-bit levels first, as PIE-Bench scores saved image files.
- ``masked``: a clean masked mean. Squared errors, the SSIM map and the spatial LPIPS map are averaged
  over unedited pixels only (no forced border, no 8-bit rounding); SSIM's map is taken on the valid
  interior (away from padding).

All functions take the source as [3, H, W] and K candidate edits as [K, 3, H, W], and return [K] tensors.
A metric is NaN when no pixel is unedited.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

MODES = ("piebench", "masked")
SSIM_KERNEL = 11  # torchmetrics' default Gaussian window: 11 taps, sigma 1.5
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown scoring mode {mode!r}; use 'piebench' (PIE-Bench's exact definition) or 'masked'")
    return mode


def force_border(mask: torch.Tensor) -> torch.Tensor:
    """PIE-Bench's rule: the 1-pixel border of every mask counts as edited."""
    mask = mask.clone()
    mask[0, :] = True
    mask[-1, :] = True
    mask[:, 0] = True
    mask[:, -1] = True
    return mask


def unedited_weights(mask: torch.Tensor | None, size: tuple[int, int], mode: str, device=None) -> torch.Tensor:
    """[H, W] float, 1 where the image should be unchanged.

    `mask` is bool (True = edit) or None (no edit region known). In ``piebench`` mode a missing mask is
    an empty one, so only the forced border is zeroed.
    """
    check_mode(mode)
    if mask is None:
        mask = torch.zeros(size, dtype=torch.bool, device=device)
    if mode == "piebench":
        mask = force_border(mask)
    return (~mask).float()


def _nan(k: int, device) -> torch.Tensor:
    return torch.full((k,), float("nan"), device=device)


def mse(source: torch.Tensor, edited: torch.Tensor, keep: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean squared error; ``piebench``: over the full zeroed images; ``masked``: over unedited pixels."""
    if keep.sum() == 0:
        return _nan(edited.shape[0], edited.device)
    if mode == "piebench":
        diff = (source * keep)[None] - edited * keep
        return diff.pow(2).mean(dim=(1, 2, 3))
    diff2 = (source[None] - edited).pow(2) * keep
    return diff2.sum(dim=(1, 2, 3)) / (keep.sum() * source.shape[0])


def psnr(source: torch.Tensor, edited: torch.Tensor, keep: torch.Tensor, mode: str) -> torch.Tensor:
    """PSNR with data range 1, from the mode's MSE (inf for identical images)."""
    return 10.0 * torch.log10(1.0 / mse(source, edited, keep, mode))


def _gaussian_window(device, dtype) -> torch.Tensor:
    x = torch.arange(SSIM_KERNEL, dtype=torch.float64) - (SSIM_KERNEL - 1) / 2
    window = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return (window / window.sum()).to(device, dtype)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM map of [K, C, H, W] pairs (data range 1) over the valid interior: [K, H-10, W-10], channel mean.

    The Gaussian filter is separable and runs without padding, so only the interior, which no padding
    touches, is produced. Variances are E[x^2] - E[x]^2, which cancels badly in float32 around bright
    pixels; both images are first shifted by their common per-channel mean (variances and covariance do
    not change), which keeps float32 within 3e-7 of scikit-image's float64 on real photos.
    """
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    c = a.shape[1]
    shift = (a.mean(dim=(2, 3), keepdim=True) + b.mean(dim=(2, 3), keepdim=True)) / 2
    a0, b0 = a - shift, b - shift
    window = _gaussian_window(a.device, dtype)
    horizontal = window.view(1, 1, 1, -1).repeat(c * 5, 1, 1, 1)
    vertical = window.view(1, 1, -1, 1).repeat(c * 5, 1, 1, 1)
    stack = torch.cat([a0, b0, a0 * a0, b0 * b0, a0 * b0], dim=1)  # [K, 5C, H, W]
    filtered = F.conv2d(F.conv2d(stack, horizontal, groups=c * 5), vertical, groups=c * 5)
    mu_a0, mu_b0, aa, bb, ab = filtered.split(c, dim=1)
    var_a, var_b, cov = aa - mu_a0**2, bb - mu_b0**2, ab - mu_a0 * mu_b0
    mu_a, mu_b = mu_a0 + shift, mu_b0 + shift
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.mean(dim=1)


def ssim(source: torch.Tensor, edited: torch.Tensor, keep: torch.Tensor, mode: str) -> torch.Tensor:
    """SSIM, data range 1, Gaussian window 11 / sigma 1.5, the map's mean over the valid interior.

    PIE-Bench ran torchmetrics before 1.5, which cropped the 5-pixel padded margin from the SSIM map before
    averaging, as scikit-image does; torchmetrics 1.5+ averages the margin too. The crop is what the
    published tables used, so it is kept here.
    """
    k = edited.shape[0]
    if keep.sum() == 0 or min(keep.shape) < SSIM_KERNEL:  # too small for one window
        return _nan(k, edited.device)
    if mode == "piebench":
        source, edited = source * keep, edited * keep
    values = ssim_map(source[None].expand(k, -1, -1, -1), edited)
    pad = (SSIM_KERNEL - 1) // 2
    if mode == "piebench":
        return values.mean(dim=(1, 2)).float()
    interior = keep[pad:-pad, pad:-pad].to(values.dtype)
    if interior.sum() == 0:
        return _nan(k, edited.device)
    return ((values * interior).sum(dim=(1, 2)) / interior.sum()).float()


LpipsFn = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


def lpips(source: torch.Tensor, edited: torch.Tensor, keep: torch.Tensor, mode: str, lpips_fn: LpipsFn) -> torch.Tensor:
    """LPIPS on inputs in [-1, 1]. `lpips_fn(a, b, spatial)` returns [K] distances, or [K, H, W] maps if spatial."""
    k = edited.shape[0]
    if keep.sum() == 0:
        return _nan(k, edited.device)
    if mode == "piebench":
        target = (source * keep)[None].expand(k, -1, -1, -1)
        return lpips_fn(target * 2 - 1, edited * keep * 2 - 1, False)
    target = source[None].expand(k, -1, -1, -1)
    maps = lpips_fn(target * 2 - 1, edited * 2 - 1, True)
    return (maps * keep).sum(dim=(1, 2)) / keep.sum()


def background_metrics(
    source: torch.Tensor, edited: torch.Tensor, keep: torch.Tensor, mode: str, lpips_fn: LpipsFn | None = None
) -> dict[str, torch.Tensor]:
    """All background metrics for K candidates: {"psnr", "mse", "ssim"[, "lpips"]} -> [K]."""
    check_mode(mode)
    keep = keep.to(edited.device, edited.dtype)
    source = source.to(edited.device, edited.dtype)
    out = {
        "psnr": psnr(source, edited, keep, mode),
        "mse": mse(source, edited, keep, mode),
        "ssim": ssim(source, edited, keep, mode),
    }
    if lpips_fn is not None:
        out["lpips"] = lpips(source, edited, keep, mode, lpips_fn)
    return out
