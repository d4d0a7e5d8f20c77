"""Structure distance: the real DINO code path on a tiny random timm ViT of the same class."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision.transforms.functional as TF
from skimage import data

from autotune.errors import WeightsNotFoundError
from autotune.scoring.structure import (
    DINO_MODEL,
    StructureDistance,
    load_dino,
    resize_short_side,
)


def _tiny_vit(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        DINO_MODEL,
        pretrained=False,
        num_classes=0,
        dynamic_img_size=True,
        img_size=32,
        embed_dim=48,
        depth=2,
        num_heads=3,
    ).eval()


def _photo(h: int = 64, w: int = 80) -> torch.Tensor:
    image = data.chelsea()[:h, 100 : 100 + w]
    return torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)


def _keys_by_hand(model, x: torch.Tensor) -> torch.Tensor:
    """The last block's keys, recomputed from the layers themselves (no hooks)."""
    with torch.no_grad():
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for block in model.blocks[:-1]:
            tokens = block(tokens)
        last = model.blocks[-1].attn
        qkv = torch.nn.functional.linear(model.blocks[-1].norm1(tokens), last.qkv.weight, last.qkv.bias)
        b, t, _ = qkv.shape
        k = qkv.reshape(b, t, 3, last.num_heads, -1)[:, :, 1]  # [B, T, heads, head_dim]
        return k.reshape(b, t, -1)  # heads concatenated, as PIE-Bench's transpose(0, 1).reshape(t, h * d)


def test_identical_images_give_zero_and_different_ones_do_not():
    scorer = StructureDistance(_tiny_vit(), short_side=32, max_long=64)
    source = _photo()
    edited = torch.stack([source, source.flip(-1), torch.rand_like(source)])
    values = scorer.distance(source, edited)
    assert values[0].item() == 0.0
    assert values[1].item() > 0 and values[2].item() > 0


def test_self_similarity_matches_a_hand_computation():
    model = _tiny_vit(1)
    scorer = StructureDistance(model, pixel_scale=255.0, short_side=32, max_long=64)
    images = torch.stack([_photo(), _photo().flip(-2)])
    keys = _keys_by_hand(model, scorer.preprocess(images))
    assert keys.shape == (2, 1 + (32 // 8) * (40 // 8), 48)
    want = torch.stack([torch.nn.functional.cosine_similarity(k[:, None, :], k[None, :, :], dim=-1) for k in keys])
    torch.testing.assert_close(scorer.self_similarity(images), want, atol=1e-5, rtol=1e-5)
    # the score is the mean squared difference of the two matrices
    distance = scorer.distance(images[0], images[1:]).item()
    assert distance == pytest.approx((want[1] - want[0]).pow(2).mean().item(), rel=1e-5)


def test_piebench_preprocessing_feeds_0_255_and_clean_mode_0_1():
    model = _tiny_vit()
    image = _photo()[None]
    pie = StructureDistance(model, pixel_scale=255.0, antialias=False, short_side=32).preprocess(image)
    clean = StructureDistance(model, pixel_scale=1.0, antialias=True, short_side=32).preprocess(image)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(pie, (TF.resize(image * 255, 32, max_size=60, antialias=False) - mean) / std)
    torch.testing.assert_close(clean, (TF.resize(image, 32, antialias=True) - mean) / std)


@pytest.mark.parametrize(
    "shape,expected",
    [((512, 512), (224, 224)), ((300, 451), (224, 336)), ((100, 400), (120, 480)), ((600, 200), (480, 160))],
)
def test_resize_rule_equals_torchvision(shape, expected):
    images = torch.rand(1, 3, *shape)
    out = resize_short_side(images, 224, 480, antialias=False)
    assert tuple(out.shape[-2:]) == expected
    torch.testing.assert_close(out, TF.resize(images, 224, max_size=480, antialias=False))


def test_missing_local_file_names_the_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="DINO ViT-B/8"):
        load_dino(tmp_path / "dino.safetensors")


def test_missing_cached_weights_fail_at_once(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # an empty, offline hub cache even on a machine that has the real weights cached
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError, match=r"dino_vitb8_pretrain\.pth.*--dino-weights"):
        load_dino(None, device="cpu", half=False)
