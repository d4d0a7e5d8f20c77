"""autotune's attention processors: the same outputs as diffusers' own, with text keys and values projected once per
loop (and again whenever the caller's text tensor is another one or was changed in place)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from autotune import EditParams
from autotune.attention import attention_control
from tests.conftest import tiny_editor


def _count_text_projections(unet) -> list[int]:
    count = [0]
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k"):
            module.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def test_text_keys_and_values_are_projected_once_and_outputs_match_diffusers(tiny_model_dir):
    unet = tiny_editor(tiny_model_dir).components.unet
    layers = sum(name.endswith("attn2") for name, _ in unet.named_modules())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 16, 16, generator=gen)
    text = torch.randn(3, 77, 32, generator=gen)
    t = torch.tensor(501)
    with torch.no_grad():
        want = unet(x, t, encoder_hidden_states=text).sample  # diffusers' AttnProcessor2_0
        want_doubled = unet(x, t, encoder_hidden_states=2 * text).sample
        count = _count_text_projections(unet)
        with attention_control(unet, None):
            for _ in range(3):
                torch.testing.assert_close(unet(x, t, encoder_hidden_states=text).sample, want)
            assert count[0] == layers  # once per layer for the three calls
            text.mul_(2)  # changed in place: projected again
            torch.testing.assert_close(unet(x, t, encoder_hidden_states=text).sample, want_doubled)
            assert count[0] == 2 * layers
            torch.testing.assert_close(unet(x, t, encoder_hidden_states=text.clone()).sample, want_doubled)
            assert count[0] == 3 * layers  # another tensor with the same values: not trusted, projected
        assert count[0] == 3 * layers
    with attention_control(unet, None), torch.enable_grad():  # under autograd nothing is kept
        unet(x, t, encoder_hidden_states=text)
        unet(x, t, encoder_hidden_states=text)
    assert count[0] == 5 * layers
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in unet.attn_processors.values())  # restored


def test_inversion_and_editing_project_text_once_per_loop(tiny_model_dir):
    editor = tiny_editor(tiny_model_dir)
    unet = editor.components.unet
    layers = sum(name.endswith("attn2") for name, _ in unet.named_modules())
    count = _count_text_projections(unet)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    editor.invert(image, "a photo of a cat", w_inv=0.5, steps=6)
    assert count[0] == layers  # one 6-step loop, not one projection per step
    count[0] = 0
    editor.edit(image, "a photo of a cat", "a photo of a dog", EditParams(w_src=0.5, steps=6))
    assert count[0] == layers  # the inversion came from the cache; the edit loop projected once
