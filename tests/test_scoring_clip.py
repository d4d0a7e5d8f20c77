"""CLIP score: the real open_clip code path on a tiny random CLIP, and mask handling by hand."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from PIL import Image
from skimage import data

from autotune.errors import WeightsNotFoundError
from autotune.scoring.clip import ClipScore, load_clip


@pytest.fixture(scope="module")
def tiny_clip() -> ClipScore:
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    )
    return ClipScore(model.eval(), open_clip.get_tokenizer("ViT-L-14"))


def _photo() -> torch.Tensor:
    return torch.from_numpy(data.chelsea().astype(np.float32) / 255).permute(2, 0, 1)


def test_score_is_max_of_100_cosine_and_zero(tiny_clip):
    images = torch.stack([_photo(), torch.rand(3, 300, 451), torch.zeros(3, 300, 451)])
    prompt = "a photo of a cat"
    with torch.no_grad():
        tokens = tiny_clip.tokenizer([prompt])
        text = tiny_clip.model.encode_text(tokens)[0]
        image = tiny_clip.model.encode_image(tiny_clip.preprocess(images))
    cosine = torch.nn.functional.cosine_similarity(image, text[None], dim=-1)
    want = torch.clamp(100 * cosine, min=0)
    torch.testing.assert_close(tiny_clip.score(images, prompt), want, atol=1e-4, rtol=1e-5)
    assert (tiny_clip.score(images, prompt) >= 0).all()


def test_negative_cosine_is_clamped_to_zero():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Module()
            self.visual.image_size = 8
            self.p = torch.nn.Parameter(torch.zeros(1))

        def encode_image(self, x):
            return torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8]]).expand(x.shape[0], -1, -1)[0][: x.shape[0]]

        def encode_text(self, tokens):
            return torch.tensor([[1.0, 0.0]])

    scorer = ClipScore(Fixed(), lambda texts: torch.zeros(len(texts), 77, dtype=torch.long))
    assert scorer.score(torch.rand(3, 3, 8, 8), "x").tolist() == pytest.approx([100.0, 0.0, 60.0])


def test_preprocessing_matches_open_clips_own_transform(tiny_clip):
    """Short side to 32, centre crop: same geometry and nearly the same pixels as open_clip's PIL pipeline."""
    transform = open_clip.transform.image_transform(32, is_train=False)
    photo = data.chelsea()
    theirs = transform(Image.fromarray(photo))
    ours = tiny_clip.preprocess(torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1)[None])[0]
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().mean().item() < 0.02  # PIL resamples in 8 bits, torch in float


def test_edited_equals_whole_when_the_mask_covers_the_image(tiny_clip):
    images = torch.stack([_photo(), _photo().flip(-1)])
    whole, edited = tiny_clip.score_whole_and_edited(images, "a cat", torch.ones(300, 451, dtype=torch.bool))
    torch.testing.assert_close(whole, edited)


def test_edited_region_is_the_image_times_the_mask(tiny_clip):
    image = _photo()
    mask = torch.zeros(300, 451, dtype=torch.bool)
    mask[50:200, 100:300] = True
    by_hand = image.clone()
    by_hand[:, ~mask] = 0  # outside blacked out
    cosines = tiny_clip.cosine(torch.stack([image, by_hand]), "a cat")
    assert not math.isclose(cosines[0].item(), cosines[1].item(), abs_tol=1e-4)
    # a random model may give negative cosines: flip the text side so that both scores are positive
    prompt = "a cat"
    if (cosines <= 0).any():
        tiny_clip._text_cache[prompt] = -tiny_clip.text_features(prompt)
        cosines = -cosines
    assert (cosines > 0).all(), "pick another prompt: this one straddles zero"
    whole, edited = tiny_clip.score_whole_and_edited(image[None], prompt, mask)
    assert whole.item() == pytest.approx(100 * cosines[0].item(), rel=1e-4)
    assert edited.item() == pytest.approx(100 * cosines[1].item(), rel=1e-4)
    tiny_clip._text_cache.clear()


def test_no_or_empty_mask_gives_nan_for_the_edited_region(tiny_clip):
    image = _photo()[None]
    for mask in (None, torch.zeros(300, 451, dtype=torch.bool)):
        whole, edited = tiny_clip.score_whole_and_edited(image, "a cat", mask)
        assert torch.isnan(edited).all() and not torch.isnan(whole).any()


def test_missing_weights_name_them_and_how_to_supply(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError, match="no file"):
        load_clip("ViT-L-14", str(tmp_path / "clip.safetensors"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match=r"ViT-B-32 / openai.*--clip-weights"):
        load_clip("ViT-B-32", "openai", device="cpu")


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_preprocessing_matches_torchmetrics_clip_processor(name):
    """PIE-Bench's CLIPScore runs transformers' CLIPImageProcessor (PIL bicubic, floor-sized short-side resize,
    centre crop); ours runs on tensors in float. Same geometry; pixels differ by PIL's 8-bit rounding."""
    from transformers import CLIPImageProcessor

    photo = getattr(data, name)()
    processor = CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    theirs = processor(images=torch.from_numpy(photo).permute(2, 0, 1), return_tensors="pt")["pixel_values"][0]

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Module()
            self.visual.image_size = 224
            self.p = torch.nn.Parameter(torch.zeros(1))

    ours = ClipScore(Stub(), None).preprocess(torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1)[None])[
        0
    ]
    difference = (ours - theirs).abs()
    assert difference.mean().item() < 0.01 and difference.max().item() < 0.1
