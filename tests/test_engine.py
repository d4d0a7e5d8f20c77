"""The engine on tiny pipelines built in code: inversion, two-branch editing, baselines, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from autotune import Editor, EditParams, GuidanceSchedule
from autotune.errors import InputError

SRC = "a woman in a space suit"
TGT = "a man in a space suit"
WORDS = ("woman", "man")


@pytest.fixture(scope="module")
def editor(tiny_model_dir) -> Editor:
    torch.set_num_threads(1)
    return Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)


@pytest.fixture(scope="module")
def vpred_editor(tiny_vpred_model_dir) -> Editor:
    return Editor.from_pretrained(str(tiny_vpred_model_dir), device="cpu", progress=False)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((32, 32), Image.LANCZOS)


def _relative_error(editor: Editor, photo, w: float, steps: int) -> float:
    z0 = editor.engine._prepare(photo).latent
    result = editor.edit(photo, SRC, SRC, EditParams(w_src=w, w_tgt=w, steps=steps))
    return ((result.source_latent - z0).norm() / z0.norm()).item()


def test_defaults_follow_the_device(editor):
    assert editor.device.type == "cpu" and editor.dtype == torch.float32
    assert editor.resolution == 32


def test_invert_returns_the_whole_trajectory(editor, photo):
    inv = editor.invert(photo, SRC, w_inv=0.5, steps=6)
    assert inv.latents.shape == (7, 4, 16, 16)
    torch.testing.assert_close(inv.image_latent, editor.engine._prepare(photo).latent)
    assert not torch.allclose(inv.noise, inv.image_latent)


@pytest.mark.parametrize("w", [0.0, 1.0, 0.5])
def test_reconstruction_with_matched_guidance_converges_with_steps(editor, photo, w):
    errors = [_relative_error(editor, photo, w, steps) for steps in (5, 10, 40)]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.15


def test_zero_noise_model_inverts_exactly(tiny_model_dir, photo):
    # With eps == 0, DDIM moves are x_t = sqrt(alpha_t) x_0: inversion and reconstruction are exact.
    editor = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)
    with torch.no_grad():
        editor.components.unet.conv_out.weight.zero_()
        editor.components.unet.conv_out.bias.zero_()
    inv = editor.invert(photo, SRC, w_inv=7.5, steps=10)
    alpha_0 = editor.engine._grid(10).alphas[0]
    torch.testing.assert_close(inv.noise, alpha_0**0.5 * inv.image_latent, rtol=1e-4, atol=1e-5)
    assert _relative_error(editor, photo, 7.5, 10) < 1e-5


def test_vprediction_reconstructs_as_well_as_epsilon(editor, vpred_editor, photo):
    eps_error = _relative_error(editor, photo, 0.5, 20)
    v_error = _relative_error(vpred_editor, photo, 0.5, 20)
    assert v_error < 0.15
    assert v_error < 1.5 * eps_error + 0.02


def test_direct_inversion_reconstructs_exactly_at_any_guidance(editor, photo):
    z0 = editor.engine._prepare(photo).latent
    for w in (1.0, 7.5):
        result = editor.edit(photo, SRC, TGT, EditParams(method="direct", w_src=w, steps=8), blend_words=WORDS)
        torch.testing.assert_close(result.source_latent, z0, rtol=0, atol=1e-5)
    ddim = editor.edit(photo, SRC, TGT, EditParams(method="ddim", steps=8), blend_words=WORDS)
    assert (ddim.source_latent - z0).abs().max() > 1e-2  # plain DDIM at 7.5 does drift


def test_identical_prompts_and_guidance_give_target_equal_source(editor, photo):
    for method in ("siminversion", "ddim", "negative_prompt"):
        result = editor.edit(photo, SRC, SRC, EditParams(method=method, w_src=3.0, w_tgt=3.0, steps=6))
        torch.testing.assert_close(result.latent, result.source_latent, rtol=1e-5, atol=1e-5)


def test_batched_candidates_equal_separate_calls(editor, photo):
    candidates = [
        EditParams(w_src=0.5, w_tgt=7.5, steps=6),
        EditParams(w_src=0.5, w_tgt=4.0, steps=6, cross_replace=0.2, reweight=1.0),
        EditParams(w_src=1.0, w_tgt=7.5, steps=6, self_replace=0.0, blend_threshold=0.5),
        EditParams(method="ddim", steps=6),
        EditParams(method="direct", w_src=2.0, steps=6),
        EditParams(method="negative_prompt", steps=6),
        EditParams(w_src=GuidanceSchedule.linear(0.0, 1.0), w_tgt=GuidanceSchedule.interval(7.5, 0.0, 0.5), steps=6),
        EditParams(w_src=0.5, steps=4),
    ]
    batched = editor.edit_batch(photo, SRC, TGT, candidates, blend_words=WORDS)
    assert [r.params for r in batched] == candidates
    for cand, together in zip(candidates, batched):
        alone = editor.edit(photo, SRC, TGT, cand, blend_words=WORDS)
        torch.testing.assert_close(together.latent, alone.latent, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(together.pixels, alone.pixels, rtol=1e-4, atol=1e-4)
    # The parameters matter: different candidates give different images.
    assert (batched[0].pixels - batched[1].pixels).abs().max() > 1e-3


def test_source_branch_is_shared_across_candidates_with_the_same_source_guidance(editor, photo, monkeypatch):
    import autotune.engine.unet.sampling as sampling

    seen = {}
    real = sampling.sample_branches

    def spy(unet, grid, start, *args, **kwargs):
        seen["rows"] = start.shape[0]
        return real(unet, grid, start, *args, **kwargs)

    monkeypatch.setattr(sampling, "sample_branches", spy)
    cands = [EditParams(w_src=0.5, w_tgt=w, steps=4) for w in (3.0, 5.0, 7.5)] + [EditParams(w_src=1.0, steps=4)]
    editor.cache.clear()  # no source branch recorded by an earlier test
    editor.edit_batch(photo, SRC, TGT, cands, blend_words=WORDS)
    assert seen["rows"] == 2 + 4  # two distinct source branches, four targets


def test_constant_schedule_equals_a_number(editor, photo):
    a = editor.edit(photo, SRC, TGT, EditParams(w_src=0.5, w_tgt=6.0, steps=5), blend_words=WORDS)
    b = editor.edit(
        photo,
        SRC,
        TGT,
        EditParams(w_src=GuidanceSchedule.constant(0.5), w_tgt=GuidanceSchedule.linear(6.0, 6.0), steps=5),
        blend_words=WORDS,
    )
    torch.testing.assert_close(a.latent, b.latent)


def test_local_blend_threshold_one_keeps_the_source_latent(editor, photo):
    # No attention value exceeds its own maximum, so the blend mask is empty and the target is the source.
    result = editor.edit(photo, SRC, TGT, EditParams(blend_threshold=1.0, steps=6), blend_words=WORDS)
    torch.testing.assert_close(result.latent, result.source_latent)
    unblended = editor.edit(photo, SRC, TGT, EditParams(steps=6))
    assert (unblended.latent - unblended.source_latent).abs().max() > 1e-3


def test_inversions_are_cached(editor, photo):
    editor.cache.clear()
    editor.invert(photo, SRC, w_inv=0.25, steps=4)
    misses = editor.cache.misses
    editor.invert(photo, SRC, w_inv=0.25, steps=4)
    assert editor.cache.misses == misses


def test_disk_cache_round_trip(tiny_model_dir, photo, tmp_path):
    first = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False, cache_dir=str(tmp_path))
    a = first.invert(photo, SRC, w_inv=0.5, steps=4)
    assert list(tmp_path.glob("*.safetensors"))
    second = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False, cache_dir=str(tmp_path))
    b = second.invert(photo, SRC, w_inv=0.5, steps=4)
    assert second.cache.misses == 0
    torch.testing.assert_close(a.latents, b.latents)


def test_null_text_fits_the_trajectory_better_than_the_plain_null(editor, photo):
    z0 = editor.engine._prepare(photo).latent
    plain = editor.edit(photo, SRC, TGT, EditParams(method="null_text", steps=5, w_src=7.5, null_text_iterations=0))
    fitted = editor.edit(photo, SRC, TGT, EditParams(method="null_text", steps=5, w_src=7.5, null_text_iterations=10))
    assert (fitted.source_latent - z0).norm() < 0.85 * (plain.source_latent - z0).norm()


def test_non_square_images_keep_their_aspect(editor):
    image = Image.fromarray((np.random.default_rng(0).random((40, 80, 3)) * 255).astype(np.uint8))
    prepared = editor.prepare_image(image)
    assert prepared.size == (32, 16)
    result = editor.edit(image, SRC, TGT, EditParams(steps=3), blend_words=WORDS)
    assert result.pixels.shape == (3, 16, 32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_prompt": ""}, "target prompt is empty"),
        ({"target_prompt": "word " * 80}, "CLIP reads at most 75"),
        ({"blend_words": ("cat", "man")}, "does not appear in the source prompt"),
        ({"blend_words": "woman"}, "must be two words"),
    ],
)
def test_bad_prompts_get_clear_errors(editor, photo, kwargs, message):
    args = {"image": photo, "source_prompt": SRC, "target_prompt": TGT, "blend_words": WORDS} | kwargs
    with pytest.raises(InputError, match=message):
        editor.edit(
            args.pop("image"), args.pop("source_prompt"), args.pop("target_prompt"), EditParams(steps=2), **args
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps=0 must be a whole number >= 1"),
        ({"w_src": -1.0}, "not a valid guidance scale"),
        ({"w_tgt": float("nan")}, "not a valid guidance scale"),
        ({"method": "magic"}, "unknown method"),
        ({"cross_replace": 1.5}, "fraction of the steps"),
    ],
)
def test_bad_parameters_get_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EditParams(**kwargs)


def test_max_batch_splits_candidates_without_changing_results(tiny_model_dir, photo):
    small = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False, max_batch=2)
    big = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)
    cands = [EditParams(w_src=0.5, w_tgt=t, steps=4) for t in (2.0, 4.0, 6.0, 8.0, 10.0)]
    for a, b in zip(
        small.edit_batch(photo, SRC, TGT, cands, blend_words=WORDS),
        big.edit_batch(photo, SRC, TGT, cands, blend_words=WORDS),
    ):
        torch.testing.assert_close(a.latent, b.latent, rtol=1e-4, atol=1e-4)


def test_inversions_under_several_guidances_are_batched_and_equal_single_ones(tiny_model_dir, photo, monkeypatch):
    fresh = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)
    calls = []
    unet = fresh.components.unet
    real_forward = unet.forward
    monkeypatch.setattr(unet, "forward", lambda *a, **k: calls.append(a[0].shape[0]) or real_forward(*a, **k))
    cands = [EditParams(w_src=w, steps=5) for w in (0.25, 0.5, 1.5)]
    fresh.edit_batch(photo, SRC, TGT, cands, blend_words=WORDS)
    assert calls[:5] == [6] * 5  # 3 inversions x (uncond + cond) in one batch per step
    single = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)
    for cand in cands:
        together = fresh.invert(photo, SRC, w_inv=cand.w_src, steps=5)  # from the cache of the batched run
        alone = single.invert(photo, SRC, w_inv=cand.w_src, steps=5)
        torch.testing.assert_close(together.latents, alone.latents, rtol=1e-4, atol=1e-5)
