"""autotune's attention processors: the same outputs as diffusers' own, with text keys and values projected once per
loop (and again whenever the caller's text tensor is another one or was changed in place), and explicit maps only
where Prompt-to-Prompt reads them."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from autotune import EditParams
from autotune.engine.unet.attention import attention_control
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


class _ScalingController:
    """Asks for maps at every layer and scales the conditional half's by `factor` (1: no change)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.seen: list[int] = []

    def needs_probs(self, is_cross: bool, n_query: int, place: str) -> bool:
        return True

    def control(self, attn, name, probs, query, key, is_cross, n_query, place):
        self.seen.append(query.shape[0])
        return probs * self.factor


def test_controlled_layers_compute_maps_for_the_conditional_half_only(tiny_model_dir):
    unet = tiny_editor(tiny_model_dir).components.unet
    layers = len(unet.attn_processors)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 16, 16, generator=gen)
    uncond, cond = torch.randn(3, 77, 32, generator=gen), torch.randn(3, 77, 32, generator=gen)
    x_in, text = torch.cat([x, x]), torch.cat([uncond, cond])
    t = torch.tensor(301)
    with torch.no_grad():
        want = unet(x_in, t, encoder_hidden_states=text).sample  # diffusers' AttnProcessor2_0
        identity = _ScalingController(1.0)
        with attention_control(unet, identity):
            same = unet(x_in, t, encoder_hidden_states=text).sample
        scaling = _ScalingController(0.5)
        with attention_control(unet, scaling):
            scaled = unet(x_in, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(same, want)  # explicit maps for one half, SDPA for the other: the same outputs
    assert identity.seen == [3] * layers  # every layer, and only the 3 conditional rows reach the controller
    torch.testing.assert_close(scaled[:3], want[:3])  # the unconditional half is never controlled
    assert (scaled[3:] - want[3:]).abs().max() > 1e-3  # the conditional half is


def test_masked_attention_matches_diffusers_with_and_without_control():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from autotune.engine.unet.attention import ControlledAttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=16, heads=4, dim_head=8).eval()
    hidden, text = torch.randn(4, 10, 32), torch.randn(4, 7, 16)
    mask = torch.ones(4, 7)
    mask[:, 5:] = 0  # the last two text tokens of every row masked out
    mask[1, 3] = 0
    additive = (1 - mask) * -10000.0  # diffusers' form; the UNet passes it as (batch, 1, keys)
    for given in (additive[:, None], additive):
        with torch.no_grad():
            want = AttnProcessor2_0()(attn, hidden, text, given)
            plain = ControlledAttnProcessor(None, "x.attn2.processor", "down", is_cross=True)(attn, hidden, text, given)
            identity = _ScalingController(1.0)
            controlled = ControlledAttnProcessor(identity, "x.attn2.processor", "down", is_cross=True)(
                attn, hidden, text, given)
        torch.testing.assert_close(plain, want)
        torch.testing.assert_close(controlled, want)  # explicit maps for the conditional half, masked the same way
        assert identity.seen == [2]
    unmasked = AttnProcessor2_0()(attn, hidden, text)
    assert (unmasked - want).abs().max() > 1e-3  # the mask mattered
