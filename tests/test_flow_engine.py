"""The flow family on tiny random SD3 and FLUX.1 pipelines: FlowEdit against a reference written from the published
algorithm, its invariants, batching, Euler inversion, FLUX.1's guidance embedding, and bad input refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from autotune import EditParams
from autotune.engine.flow.sampling import SDEDIT_DRAW, noise_draw
from autotune.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SRC, TGT = "a red circle on a white background", "a blue square on a white background"


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((16, 16))


@pytest.fixture(scope="module")
def sd3(tiny_sd3_dir):
    from autotune import Editor

    return Editor.from_pretrained(str(tiny_sd3_dir), device="cpu", progress=False)


@pytest.fixture(scope="module")
def flux(tiny_flux_dir):
    from autotune import Editor

    return Editor.from_pretrained(str(tiny_flux_dir), device="cpu", progress=False)


def fresh(editor):
    """The editor with an empty cache and nothing recorded: every velocity computed in this call."""
    from autotune.engine.cache import TensorCache

    editor.cache = TensorCache()
    editor.engine.settings.record_sources = True
    return editor


# ---------------------------------------------------------------------------------------------------------------------
# FlowEdit against a reference: the official code's loop, written out on the diffusers pipeline


@torch.no_grad()
def reference_flowedit_sd3(pipe, x_src, src, tar, *, steps, w_src, w_tgt, n_max, n_min, n_avg, seed):
    """FlowEdit for SD3 as the official `FlowEditSD3` runs it: timesteps from the scheduler, sigma = t / 1000, four
    CFG rows per draw (source uncond/cond, target uncond/cond, the empty prompt as negative), the last n_min steps as
    plain target sampling. Integer window (n_max, n_min in steps)."""
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    s_emb, s_neg, s_pool, s_neg_pool = pipe.encode_prompt(prompt=src, prompt_2=None, prompt_3=None,
                                                          negative_prompt="", do_classifier_free_guidance=True)
    t_emb, t_neg, t_pool, t_neg_pool = pipe.encode_prompt(prompt=tar, prompt_2=None, prompt_3=None,
                                                          negative_prompt="", do_classifier_free_guidance=True)
    embeds = torch.cat([s_neg, s_emb, t_neg, t_emb])
    pooled = torch.cat([s_neg_pool, s_pool, t_neg_pool, t_pool])

    def velocities(rows, t):
        out = pipe.transformer(hidden_states=torch.cat(rows), timestep=t.expand(4), encoder_hidden_states=embeds,
                               pooled_projections=pooled, return_dict=False)[0]
        su, sc, tu, tc = out.chunk(4)
        return su + w_src * (sc - su), tu + w_tgt * (tc - tu)

    z_edit, x_tar = x_src.clone(), None
    for i, t in enumerate(timesteps):
        if steps - i > n_max:
            continue
        t_i = t / 1000
        t_next = timesteps[i + 1] / 1000 if i + 1 < len(timesteps) else torch.zeros_like(t_i)
        if steps - i > n_min:
            delta = torch.zeros_like(x_src)
            for k in range(n_avg):
                z_src = (1 - t_i) * x_src + t_i * noise_draw(seed, i, k, x_src.shape[1:])[None]
                z_tar = z_edit + z_src - x_src
                v_src, v_tar = velocities([z_src, z_src, z_tar, z_tar], t)
                delta += (v_tar - v_src) / n_avg
            z_edit = z_edit + (t_next - t_i) * delta
        else:
            if i == steps - n_min:
                x_noisy = (1 - t_i) * x_src + t_i * noise_draw(seed, i, SDEDIT_DRAW, x_src.shape[1:])[None]
                x_tar = z_edit + x_noisy - x_src
            _, v_tar = velocities([x_tar] * 4, t)
            x_tar = x_tar + (t_next - t_i) * v_tar
    return z_edit if n_min == 0 else x_tar


@torch.no_grad()
def reference_flowedit_flux(pipe, x_src, src, tar, *, steps, w_src, w_tgt, n_max, n_min, n_avg, seed):
    """FlowEdit for FLUX.1 as the official `FlowEditFLUX` runs it: packed latents, sigmas linspace(1, 1/N) with the
    resolution shift mu, the guidance embedding for each branch in its own transformer call."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    _, channels, h, w = x_src.shape
    packed = pipe._pack_latents(x_src, 1, channels, h, w)
    ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, x_src.device, x_src.dtype)
    scheduler = copy.deepcopy(pipe.scheduler)
    config = scheduler.config
    mu = calculate_shift(packed.shape[1], config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                         config.max_shift)
    timesteps, _ = retrieve_timesteps(scheduler, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    src_emb, src_pool, src_ids = pipe.encode_prompt(prompt=src, prompt_2=None, max_sequence_length=512)
    tar_emb, tar_pool, tar_ids = pipe.encode_prompt(prompt=tar, prompt_2=None, max_sequence_length=512)

    def velocity(latents, emb, pool, text_ids, scale, t):
        return pipe.transformer(hidden_states=latents, timestep=t.expand(1) / 1000, guidance=torch.tensor([scale]),
                                encoder_hidden_states=emb, txt_ids=text_ids, img_ids=ids, pooled_projections=pool,
                                return_dict=False)[0]

    def noise(i, k):
        return pipe._pack_latents(noise_draw(seed, i, k, x_src.shape[1:])[None], 1, channels, h, w)

    z_edit, x_tar = packed.clone(), None
    for i, t in enumerate(timesteps):
        if steps - i > n_max:
            continue
        t_i, t_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
        if steps - i > n_min:
            delta = torch.zeros_like(packed)
            for k in range(n_avg):
                z_src = (1 - t_i) * packed + t_i * noise(i, k)
                z_tar = z_edit + z_src - packed
                v_src = velocity(z_src, src_emb, src_pool, src_ids, w_src, t)
                v_tar = velocity(z_tar, tar_emb, tar_pool, tar_ids, w_tgt, t)
                delta += (v_tar - v_src) / n_avg
            z_edit = z_edit + (t_next - t_i) * delta
        else:
            if i == steps - n_min:
                x_tar = z_edit + (1 - t_i) * packed + t_i * noise(i, SDEDIT_DRAW) - packed
            x_tar = x_tar + (t_next - t_i) * velocity(x_tar, tar_emb, tar_pool, tar_ids, w_tgt, t)
    out = z_edit if n_min == 0 else x_tar
    return pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)


@pytest.mark.parametrize("model", ["sd3", "flux"])
@pytest.mark.parametrize("window", [(7, 0, 1), (5, 2, 2)], ids=["n_max7", "n_max5_n_min2_n_avg2"])
def test_flowedit_equals_the_published_algorithm(model, window, request, photo):
    editor = fresh(request.getfixturevalue(model))
    steps, (n_max, n_min, n_avg) = 8, window
    w_src, w_tgt = (3.5, 13.5) if model == "sd3" else (1.5, 5.5)
    params = editor.default_params("flowedit").with_(w_src=w_src, w_tgt=w_tgt, steps=steps, n_max=n_max / steps,
                                                     n_min=n_min / steps, n_avg=n_avg, noise_seed=7)
    result = editor.edit(photo, SRC, TGT, params)
    x_src = editor.engine._prepare(photo).latent[None]
    reference = reference_flowedit_sd3 if model == "sd3" else reference_flowedit_flux
    expected = reference(editor.components.pipe, x_src, SRC, TGT, steps=steps, w_src=w_src, w_tgt=w_tgt,
                         n_max=n_max, n_min=n_min, n_avg=n_avg, seed=7)[0]
    moved = (expected - x_src[0]).abs().mean()
    assert moved > 1e-3  # the reference edit does something...
    assert (result.latent - expected).abs().max() < 1e-4 * max(1.0, float(expected.abs().max()))  # ...and so do we
    assert torch.equal(result.source_latent, x_src[0])  # FlowEdit has no source branch: the source is the image


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_flowedit_with_an_empty_window_returns_the_source_latent(model, request, photo):
    editor = fresh(request.getfixturevalue(model))
    result = editor.edit(photo, SRC, TGT, n_max=0.0, steps=6)
    assert torch.equal(result.latent, editor.engine._prepare(photo).latent)


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_flowedit_with_the_source_as_target_is_the_identity(model, request, photo):
    editor = fresh(request.getfixturevalue(model))
    x_src = editor.engine._prepare(photo).latent
    same = editor.edit(photo, SRC, SRC, steps=8, n_max=1.0, w_src=4.0, w_tgt=4.0)
    assert (same.latent - x_src).abs().max() < 1e-5  # float noise only
    edited = editor.edit(photo, SRC, TGT, steps=8, n_max=1.0, w_src=4.0, w_tgt=4.0)
    assert (edited.latent - x_src).abs().mean() > 1e-3  # another target prompt does move it


# ---------------------------------------------------------------------------------------------------------------------
# Batching and shared source work


def candidates_for(editor):
    base = editor.default_params("flowedit").with_(steps=6)
    return [base, base.with_(w_tgt=9.0), base.with_(w_src=2.0, n_max=0.5), base.with_(n_avg=2, noise_seed=3),
            base.with_(n_min=0.34), editor.default_params("flow_siminversion").with_(steps=6, n_max=0.8)]


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_batched_candidates_and_tasks_equal_separate_calls(model, request, photo):
    from autotune.task import EditTask

    editor = fresh(request.getfixturevalue(model))
    cands = candidates_for(editor)
    other = Image.fromarray(np.asarray(photo)[:, ::-1].copy())
    tasks = [EditTask("a", photo, SRC, TGT, "change_color"),
             EditTask("b", other, "a green circle", "a green square", "change_object")]
    together = editor.edit_tasks(tasks, cands)
    for task, row in zip(tasks, together):
        for cand, res in zip(cands, row):
            alone = fresh(editor).edit(task.image, task.source_prompt, task.target_prompt, cand)
            assert res.params == cand
            assert (res.latent - alone.latent).abs().max() < 1e-4
            assert (res.source_latent - alone.source_latent).abs().max() < 1e-4


def test_source_velocities_are_computed_once_per_draw_and_recorded(sd3, photo):
    editor = fresh(sd3)
    rows: list[int] = []
    hook = editor.components.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        base = editor.default_params().with_(steps=5, n_max=1.0)
        cands = [base.with_(w_tgt=w) for w in (6.0, 9.0, 12.0)]  # one source guidance and seed
        editor.edit_batch(photo, SRC, TGT, cands)
        # each step: one source branch (2 CFG rows) shared by the three candidates (2 rows each)
        assert rows == [2 + 3 * 2] * 5
        rows.clear()
        editor.edit_batch(photo, SRC, TGT, [base.with_(w_tgt=7.0)])  # same w_src: its source velocities are recorded
        assert rows == [2] * 5
        rows.clear()
        editor.edit_batch(photo, SRC, TGT, [base.with_(w_src=2.0), base.with_(w_tgt=7.0, noise_seed=1)])
        assert rows == [2 * 2 + 2 * 2] * 5  # a new w_src and a new seed: two new source branches
    finally:
        hook.remove()


# ---------------------------------------------------------------------------------------------------------------------
# Euler inversion


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_euler_inversion_then_reconstruction_returns_the_input(model, request, photo):
    """At the same guidance the source branch retraces the inversion: the error of a first-order method, about halved
    when the steps double, under 2% of the latent's scale at 40 steps."""
    editor = fresh(request.getfixturevalue(model))
    x0 = editor.engine._prepare(photo).latent
    proj = editor.components.transformer.proj_out
    saved = proj.weight.detach().clone(), proj.bias.detach().clone()
    with torch.no_grad():  # a stronger velocity field than the calmed tiny model, so the error is measurable
        proj.weight.mul_(5)
        proj.bias.mul_(5)
    try:
        errors = {}
        for steps in (10, 40):
            params = EditParams(method="flow_siminversion", w_src=2.0, w_tgt=2.0, steps=steps, n_max=1.0)
            result = fresh(editor).edit(photo, SRC, SRC, params)
            errors[steps] = float((result.source_latent - x0).abs().mean())
            assert (result.latent - result.source_latent).abs().max() < 1e-5  # same prompt and guidance
        inversion = editor.invert(photo, SRC, 2.0, steps=40)
        assert inversion.latents.shape == (41, *x0.shape) and torch.equal(inversion.latents[-1], x0)
        assert (inversion.noise - x0).abs().mean() > 0.1  # it did go somewhere: the noise end is not the image
    finally:
        with torch.no_grad():
            proj.weight.copy_(saved[0])
            proj.bias.copy_(saved[1])
    scale = float(x0.abs().mean())
    assert errors[40] < 0.02 * scale, errors
    assert errors[40] < errors[10] / 3, errors


def test_flow_siminversion_target_branch_uses_its_own_guidance(sd3, photo):
    editor = fresh(sd3)
    base = editor.default_params("flow_siminversion").with_(steps=6)
    low, high = editor.edit_batch(photo, SRC, TGT, [base.with_(w_tgt=1.0), base.with_(w_tgt=9.0)])
    assert torch.equal(low.source_latent, high.source_latent)  # one source branch, at w_src
    assert (low.latent - high.latent).abs().mean() > 1e-4
    shallow = editor.edit(photo, SRC, TGT, base.with_(n_max=0.0))
    assert torch.equal(shallow.latent, editor.engine._prepare(photo).latent)  # depth 0: nothing inverted, nothing done


# ---------------------------------------------------------------------------------------------------------------------
# FLUX.1's guidance embedding; SD3's classifier-free guidance


def test_flux_guidance_embedding_reaches_the_transformer(flux, photo):
    editor = fresh(flux)
    seen: list[tuple[int, list[float]]] = []

    def spy(module, args, kwargs):
        seen.append((kwargs["hidden_states"].shape[0], kwargs["guidance"].tolist()))

    hook = editor.components.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        editor.edit(photo, SRC, TGT, w_src=1.5, w_tgt=5.5, steps=4, n_max=1.0)
    finally:
        hook.remove()
    assert seen and all(rows == 2 and sorted(g) == [1.5, 5.5] for rows, g in seen)  # one pass per branch


def test_sd3_guidance_is_classifier_free(sd3, photo):
    editor = fresh(sd3)
    seen: list[tuple[int, object]] = []
    hook = editor.components.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["hidden_states"].shape[0], kwargs.get("guidance"))),
        with_kwargs=True)
    try:
        editor.edit(photo, SRC, TGT, w_src=1.0, w_tgt=5.0, steps=3, n_max=1.0)
    finally:
        hook.remove()
    # w_src = 1 needs only the conditional pass; w_tgt = 5 the conditional and the unconditional
    assert seen == [(3, None)] * 3


# ---------------------------------------------------------------------------------------------------------------------
# Defaults and bad input


def test_defaults_are_the_published_settings_of_the_loaded_model(sd3, flux):
    p = sd3.default_params()
    assert (p.method, p.w_src.start, p.w_tgt.start, p.steps, p.window, p.n_avg) == ("flowedit", 3.5, 13.5, 50,
                                                                                    (17, 50), 1)
    p = flux.default_params()
    assert (p.method, p.w_src.start, p.w_tgt.start, p.steps, p.window, p.n_avg) == ("flowedit", 1.5, 5.5, 28,
                                                                                    (4, 28), 1)
    assert sd3.defaults().paper_points["flowedit"]["n_max"] * 50 == pytest.approx(33)
    assert set(flux.defaults("flow_siminversion").paper_points) == {"rf_solver"}
    info = flux.model_info()
    assert (info["family"], info["architecture"], info["guidance"]) == ("flow", "flux", "embedded")
    assert sd3.model_info()["scheduler"]["shift"] == 3.0


def test_methods_of_another_family_are_refused(flux, tiny_model_dir, photo):
    from autotune import Editor

    with pytest.raises(InputError, match="method 'null_text' does not run on flow models"):
        flux.edit(photo, SRC, TGT, EditParams(method="null_text"))
    unet = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)
    with pytest.raises(InputError, match="method 'flowedit' does not run on unet models"):
        unet.edit(photo, SRC, TGT, EditParams(method="flowedit"))
    with pytest.raises(InputError, match="flow_siminversion.*does not run on unet"):
        unet.default_params("flow_siminversion")


def test_bad_flow_input_is_refused_with_a_clear_message(sd3, tiny_sd3_dir, photo):
    from autotune import Editor

    with pytest.raises(InputError, match=r"n_min=0.5 > n_max=0.3.*n_min <= n_max"):
        EditParams(method="flowedit", n_max=0.3, n_min=0.5)
    with pytest.raises(InputError, match="cross_replace: Prompt-to-Prompt knobs of the UNet methods"):
        EditParams(method="flowedit", cross_replace=0.2)
    with pytest.raises(InputError, match="n_avg: knobs of the rectified-flow methods"):
        EditParams(method="siminversion", n_avg=2)
    with pytest.raises(InputError, match="n_avg=0 must be a whole number >= 1"):
        EditParams(method="flowedit", n_avg=0)
    with pytest.raises(InputError, match="n_max=1.5 must be a fraction"):
        EditParams(method="flowedit", n_max=1.5)
    with pytest.raises(InputError, match="CLIP tokens, past the 77"):  # no T5 here: CLIP is the longest reader
        sd3.edit(photo, SRC, " ".join(["red"] * 90))
    with pytest.raises(InputError, match="PIE-Bench|DDIM setting"):
        Editor.from_pretrained(str(tiny_sd3_dir), device="cpu", scheduler="piebench")
    with pytest.raises(InputError, match="nothing to offload to"):
        Editor.from_pretrained(str(tiny_sd3_dir), device="cpu", offload="model")


def test_t5_prompt_limit_and_loading_with_t5(tmp_path, photo):
    from flow_pipelines import build_tiny_sd3

    from autotune import Editor

    editor = Editor.from_pretrained(str(build_tiny_sd3(tmp_path / "sd3-t5", t5=True)), device="cpu", progress=False)
    assert editor.model_info()["text_encoders"] == "CLIP x2 + T5"
    long = " ".join(["red"] * 120)  # past CLIP's 77, within T5's 256: the pipeline reads it (CLIP truncated)
    assert editor.edit(photo, SRC, long, steps=2).latent.shape == editor.engine._prepare(photo).latent.shape
    with pytest.raises(InputError, match="T5 tokens, past the 256"):
        editor.edit(photo, SRC, " ".join(["red"] * 300), steps=2)


def test_flux_schnell_has_no_guidance_embedding_and_uses_classifier_free_guidance(tmp_path, photo):
    from flow_pipelines import build_tiny_flux

    from autotune import Editor

    editor = Editor.from_pretrained(str(build_tiny_flux(tmp_path / "schnell", guidance_embeds=False)), device="cpu",
                                    progress=False)
    p = editor.default_params()
    assert (editor.model_info()["guidance"], p.steps, p.w_src.start, p.w_tgt.start) == ("cfg", 4, 1.0, 1.0)
    assert editor.defaults().paper_points == {}  # nothing is published for schnell
    seen: list[tuple[int, object]] = []
    hook = editor.components.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["hidden_states"].shape[0], kwargs.get("guidance"))),
        with_kwargs=True)
    try:
        editor.edit(photo, SRC, TGT)  # scale 1: one pass per branch, 3 of the 4 steps
        editor.edit(photo, SRC, TGT, w_tgt=3.0, n_max=1.0)  # the target needs its unconditional pass too
    finally:
        hook.remove()
    # the second edit's source velocities at steps 1-3 were recorded by the first: only step 0 computes one
    assert seen == [(2, None)] * 3 + [(3, None)] + [(2, None)] * 3
