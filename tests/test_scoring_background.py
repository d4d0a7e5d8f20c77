"""Background PSNR / MSE / SSIM against scikit-image and torchmetrics on real photos, in both modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import (
    mean_squared_error,
    peak_signal_noise_ratio,
    structural_similarity,
)
from sklearn.datasets import load_sample_image
from torchmetrics.image import PeakSignalNoiseRatio
from torchmetrics.regression import MeanSquaredError

from autotune.scoring.background import (
    background_metrics,
    force_border,
    unedited_weights,
)


def _photos():
    yield "astronaut", data.astronaut()
    yield "coffee", data.coffee()
    yield "chelsea", data.chelsea()
    yield "china", load_sample_image("china.jpg")[:256, :320]


def _edit(image: np.ndarray, seed: int) -> np.ndarray:
    """A plausible 8-bit 'edit': noise everywhere plus a brightened block."""
    rng = np.random.default_rng(seed)
    out = image.astype(np.float32) + rng.normal(0, 8, image.shape)
    out[40:120, 60:200] += 40
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _mask(shape) -> np.ndarray:
    mask = np.zeros(shape[:2], dtype=bool)
    mask[30:130, 50:210] = True
    return mask


def _t(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)


SSIM_ARGS = {
    "data_range": 1.0,
    "channel_axis": 2,
    "gaussian_weights": True,
    "sigma": 1.5,
    "use_sample_covariance": False,
}


@pytest.mark.parametrize("name,photo", list(_photos()))
def test_piebench_mode_equals_references_on_zeroed_images(name, photo):
    edited = _edit(photo, 1)
    mask = _mask(photo.shape)
    keep = unedited_weights(torch.from_numpy(mask), mask.shape, "piebench")
    got = {k: v.item() for k, v in background_metrics(_t(photo), _t(edited)[None], keep, "piebench").items()}

    # PIE-Bench: force the border, multiply both float32 images by (1 - mask), score the full images.
    pie_mask = mask.copy()
    pie_mask[0, :] = pie_mask[-1, :] = pie_mask[:, 0] = pie_mask[:, -1] = True
    factor = (1 - pie_mask.astype(np.float32))[..., None]
    a = photo.astype(np.float32) / 255 * factor
    b = edited.astype(np.float32) / 255 * factor
    assert got["mse"] == pytest.approx(mean_squared_error(a, b), abs=1e-5)
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-5)
    assert got["ssim"] == pytest.approx(structural_similarity(a, b, **SSIM_ARGS), abs=1e-6)
    ta, tb = torch.from_numpy(a).permute(2, 0, 1), torch.from_numpy(b).permute(2, 0, 1)
    assert got["mse"] == pytest.approx(MeanSquaredError()(ta.contiguous(), tb.contiguous()).item(), abs=1e-5)
    assert got["psnr"] == pytest.approx(PeakSignalNoiseRatio(data_range=1.0)(ta[None], tb[None]).item(), abs=1e-4)


@pytest.mark.parametrize("name,photo", list(_photos()))
def test_masked_mode_equals_references_on_unedited_pixels(name, photo):
    edited = _edit(photo, 2)
    mask = _mask(photo.shape)
    keep = unedited_weights(torch.from_numpy(mask), mask.shape, "masked")
    got = {k: v.item() for k, v in background_metrics(_t(photo), _t(edited)[None], keep, "masked").items()}

    a, b = photo.astype(np.float64) / 255, edited.astype(np.float64) / 255
    assert got["mse"] == pytest.approx(mean_squared_error(a[~mask], b[~mask]), abs=1e-5)
    assert got["psnr"] == pytest.approx(peak_signal_noise_ratio(a[~mask], b[~mask], data_range=1), abs=1e-4)
    _, full = structural_similarity(a, b, full=True, **SSIM_ARGS)
    interior = (~mask)[5:-5, 5:-5]
    assert got["ssim"] == pytest.approx(full.mean(axis=2)[5:-5, 5:-5][interior].mean(), abs=1e-6)


def test_batch_of_candidates_equals_one_by_one_and_identical_is_perfect():
    photo = data.coffee()[:200, :300]
    candidates = torch.stack([_t(photo), _t(_edit(photo, 3)), _t(_edit(photo, 4))])
    mask = torch.from_numpy(_mask(photo.shape))
    for mode in ("piebench", "masked"):
        keep = unedited_weights(mask, tuple(mask.shape), mode)
        batch = background_metrics(_t(photo), candidates, keep, mode)
        for i in range(3):
            single = background_metrics(_t(photo), candidates[i : i + 1], keep, mode)
            for name in batch:
                assert batch[name][i].item() == pytest.approx(single[name][0].item(), rel=1e-5, abs=1e-6)
        assert batch["mse"][0].item() == 0 and batch["ssim"][0].item() == pytest.approx(1.0)
        assert torch.isinf(batch["psnr"][0])


def test_mask_rules_by_hand():
    mask = torch.zeros(6, 7, dtype=torch.bool)
    mask[2:4, 3:5] = True
    bordered = force_border(mask)
    assert bordered.sum().item() == 6 * 7 - 4 * 5 + 4  # border ring + inner block
    assert not mask[0, 0]  # the input is not modified
    keep = unedited_weights(mask, (6, 7), "piebench")
    assert keep.sum().item() == 4 * 5 - 4
    assert unedited_weights(mask, (6, 7), "masked").sum().item() == 42 - 4
    assert unedited_weights(None, (6, 7), "piebench").sum().item() == 4 * 5
    # hand-computed MSE: source 0, edit 1 everywhere; piebench zeroes the edit region so MSE = kept fraction
    source, edited = torch.zeros(3, 6, 7), torch.ones(1, 3, 6, 7)
    out = background_metrics(source, edited, keep, "piebench")
    assert out["mse"].item() == pytest.approx(16 / 42)
    assert background_metrics(source, edited, unedited_weights(mask, (6, 7), "masked"), "masked")["mse"].item() == 1.0
    assert torch.isnan(out["ssim"]).all()  # smaller than one 11x11 SSIM window


def test_nothing_unedited_gives_nan():
    everything = torch.ones(20, 20, dtype=torch.bool)
    for mode in ("piebench", "masked"):
        out = background_metrics(
            torch.rand(3, 20, 20), torch.rand(2, 3, 20, 20), unedited_weights(everything, (20, 20), mode), mode
        )
        assert all(torch.isnan(v).all() for v in out.values())


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="piebench"):
        unedited_weights(None, (4, 4), "exact")
