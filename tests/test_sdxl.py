"""SDXL in the UNet family, on a tiny random SDXL pipeline built in code (`conftest.build_tiny_sdxl_pipeline`):
loading, the added conditions of every row, inversion and reconstruction, Prompt-to-Prompt's layers, batching, source
records and their budget, single files, and refusing checkpoints of other families."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image

from autotune import Editor, EditParams, GuidanceSchedule
from autotune.engine.unet.attention import EditController, attention_layers
from autotune.engine.unet.source_record import SourceRecord, record_nbytes
from autotune.errors import ModelNotFoundError
from autotune.task import EditTask

SRC = "a woman in a space suit"
TGT = "a man in a space suit"
WORDS = ("woman", "man")


@pytest.fixture(scope="module")
def editor(tiny_sdxl_dir, one_torch_thread) -> Editor:
    return Editor.from_pretrained(str(tiny_sdxl_dir), device="cpu", progress=False)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((32, 32), Image.LANCZOS)


@pytest.fixture(scope="module")
def reference(tiny_sdxl_dir):
    """diffusers' own SDXL pipeline on the same folder: its prompt embeddings and size ids are the reference."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir), local_files_only=True)
    prompts = {}
    for text in (SRC, TGT):
        tokens, negative, pooled, negative_pooled = pipe.encode_prompt(text, device=torch.device("cpu"),
                                                                       do_classifier_free_guidance=True)
        prompts[text] = (tokens[0], pooled[0])
        prompts["unconditional"] = (negative[0], negative_pooled[0])  # zeros: force_zeros_for_empty_prompt
    time_ids = pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), dtype=torch.float32, text_encoder_projection_dim=32)
    return prompts, time_ids[0]


def _unet_calls(editor) -> tuple[list[dict], object]:
    calls: list[dict] = []

    def spy(module, args, kwargs):
        calls.append({"rows": args[0].shape[0], "context": kwargs["encoder_hidden_states"],
                      "added": kwargs.get("added_cond_kwargs")})

    return calls, editor.components.unet.register_forward_pre_hook(spy, with_kwargs=True)


def _prompt_of(tokens: torch.Tensor, pooled: torch.Tensor, prompts: dict) -> str:
    """Which prompt a row carries, by its token embedding and, separately, by its pooled embedding: both must agree."""
    by_tokens = [name for name, (t, _) in prompts.items() if torch.allclose(tokens, t, atol=1e-5)]
    by_pooled = [name for name, (_, p) in prompts.items() if torch.allclose(pooled, p, atol=1e-5)]
    assert len(by_tokens) == 1 and by_tokens == by_pooled, (by_tokens, by_pooled)
    return by_tokens[0]


def test_an_sdxl_folder_loads_as_sdxl(editor):
    c = editor.components
    assert c.pipeline == "StableDiffusionXLPipeline" and c.force_zeros_for_empty_prompt is True
    assert editor.resolution == 32 and editor.engine.size_multiple == 8  # sample_size x VAE factor; 3 UNet levels
    assert c.vae.config.scaling_factor == 0.13025
    info = editor.model_info()
    assert info["scheduler"]["steps_offset"] == 1 and info["scheduler"]["beta_schedule"] == "scaled_linear"


def test_images_follow_the_same_resize_rules_as_sd(editor):
    wide = editor.prepare_image(Image.new("RGB", (300, 100), "white"))
    assert wide.size == (32, 8)  # long side at the native size, sides multiples of 8, nothing cropped
    assert editor.prepare_image(Image.new("RGB", (32, 32))).size == (32, 32)


def test_the_added_conditions_reach_the_unet_for_every_row(editor, photo, reference):
    prompts, time_ids = reference
    editor.cache.clear()
    calls, hook = _unet_calls(editor)
    try:
        editor.edit_batch(photo, SRC, TGT, [EditParams(steps=3), EditParams(method="negative_prompt", steps=3)],
                          blend_words=WORDS)
        editor.invert(photo, SRC, w_inv=1.0, steps=2)  # the conditional half alone
        editor.invert(photo, SRC, w_inv=0.0, steps=2)  # the unconditional half alone
    finally:
        hook.remove()
    for call in calls:
        added = call["added"]
        assert added["text_embeds"].shape[0] == added["time_ids"].shape[0] == call["rows"]
        torch.testing.assert_close(added["time_ids"], time_ids.expand(call["rows"], -1))
        call["prompts"] = [_prompt_of(tokens, pooled, prompts)
                           for tokens, pooled in zip(call["context"], added["text_embeds"], strict=True)]
    seen = [c["prompts"] for c in calls]
    unc = "unconditional"
    # the two inversions together (at 0.5 and 1): both halves, unconditional first
    assert seen[0] == [unc, unc, SRC, SRC]
    # the editing loop: two source branches (SimInversion, negative prompt: the source prompt is its unconditional
    # prompt), then their target rows
    assert seen[3] == [unc, SRC, unc, SRC] + [SRC, SRC, TGT, TGT]
    assert seen[-4:] == [[SRC], [SRC], [unc], [unc]]
    assert len(calls) == 3 + 3 + 2 + 2


def test_without_force_zeros_the_unconditional_prompt_is_the_encoded_empty_prompt(tmp_path, photo):
    from tests.conftest import build_tiny_sdxl_pipeline

    folder = build_tiny_sdxl_pipeline(tmp_path / "sdxl", force_zeros_for_empty_prompt=False)
    editor = Editor.from_pretrained(str(folder), device="cpu", progress=False)
    null, empty = editor.engine.prompts.null(), editor.engine.prompts.embed("")
    assert null.tokens.abs().sum() > 0 and torch.equal(null.tokens, empty.tokens)
    assert torch.equal(null.pooled, empty.pooled)


def _relative_error(editor, photo, w: float, steps: int) -> float:
    z0 = editor.engine._prepare(photo).latent
    result = editor.edit(photo, SRC, SRC, EditParams(w_src=w, w_tgt=w, steps=steps))
    return ((result.source_latent - z0).norm() / z0.norm()).item()


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_inversion_then_reconstruction_at_the_same_guidance_returns_the_input(editor, photo, w):
    # The tolerance: DDIM's discretisation error shrinks with the steps; a random model's noise estimate changes fast,
    # so 40 steps leave under 25% of the latent's norm (a trained model leaves far less; the zero-noise test below
    # shows the inversion and the reconstruction themselves are exact inverses).
    errors = [_relative_error(editor, photo, w, steps) for steps in (5, 10, 40)]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.25


def test_a_zero_noise_model_inverts_and_reconstructs_exactly(tiny_sdxl_dir, photo):
    editor = Editor.from_pretrained(str(tiny_sdxl_dir), device="cpu", progress=False)
    with torch.no_grad():
        editor.components.unet.conv_out.weight.zero_()
        editor.components.unet.conv_out.bias.zero_()
    inv = editor.invert(photo, SRC, w_inv=7.5, steps=6)
    alpha_0 = editor.engine._grid(6).alphas[0]
    torch.testing.assert_close(inv.noise, alpha_0**0.5 * inv.image_latent, rtol=1e-4, atol=1e-5)
    assert _relative_error(editor, photo, 7.5, 6) < 1e-5


def test_direct_inversion_reconstructs_exactly(editor, photo):
    z0 = editor.engine._prepare(photo).latent
    result = editor.edit(photo, SRC, TGT, EditParams(method="direct", w_src=7.5, steps=5), blend_words=WORDS)
    torch.testing.assert_close(result.source_latent, z0, rtol=0, atol=1e-5)


def test_p2p_refine_with_the_same_prompt_leaves_the_source_unchanged(editor, photo):
    for method in ("siminversion", "ddim", "negative_prompt"):
        params = EditParams(method=method, w_src=3.0, w_tgt=3.0, steps=5, reweight=1.0, p2p_mode="refine")
        result = editor.edit(photo, SRC, SRC, params, blend_words=("woman", "woman"))
        torch.testing.assert_close(result.latent, result.source_latent, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result.pixels, result.source_pixels, rtol=1e-5, atol=1e-5)
    # ... and whatever the target, the source branch is the same: the target rows never reach it.
    a, b = editor.edit_batch(photo, SRC, TGT, [EditParams(steps=5), EditParams(w_tgt=12.0, steps=5)], blend_words=WORDS)
    alone = editor.edit(photo, SRC, "a dog in a space suit", EditParams(steps=5), blend_words=("woman", "dog"))
    torch.testing.assert_close(a.source_latent, b.source_latent)
    torch.testing.assert_close(a.source_latent, alone.source_latent, rtol=1e-5, atol=1e-5)
    assert (a.latent - a.source_latent).abs().max() > 1e-3  # the edit itself does change the image


def test_p2p_controls_sdxl_at_its_lower_attention_level(editor, photo, monkeypatch):
    """SDXL has attention at 1/2 and 1/4 of the latent side (64x64 and 32x32 of 128x128; here 8x8 and 4x4 of 16x16):
    self-attention is replaced at the lower level only, cross-attention everywhere, LocalBlend reads the lower
    level outside the middle block."""
    controlled = []
    real = EditController.control

    def spy(self, attn, name, probs, query, key, is_cross, n_query, place):
        controlled.append((name, is_cross, n_query))
        return real(self, attn, name, probs, query, key, is_cross, n_query, place)

    monkeypatch.setattr(EditController, "control", spy)
    editor.cache.clear()
    editor.edit(photo, SRC, TGT, EditParams(steps=4, cross_replace=1.0, self_replace=1.0), blend_words=WORDS)
    names = list(editor.components.unet.attn_processors)
    lower = {n for n in names if n.startswith(("down_blocks.2.", "mid_block.", "up_blocks.0."))}
    assert {n for n, cross, _ in controlled if not cross} == {n for n in lower if n.endswith("attn1.processor")}
    assert {n for n, cross, _ in controlled if cross} == {n for n in names if n.endswith("attn2.processor")}
    assert {q for n, cross, q in controlled if not cross} == {16}  # 4x4, never the 8x8 level's 64 tokens
    windows = editor.engine._windows([EditParams()], 50, True, torch.Size((16, 16)))
    assert windows["self_max_tokens"] == 16 and windows["blend_tokens"] == 16


@pytest.mark.parametrize("down_blocks, latent, self_side, blend_side", [
    (("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), 64, 32, 16),  # SD 1.x/2.x at 512 px: P2P's own levels
    (("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), 128, 32, 32),  # SDXL at 1024 px
])
def test_the_levels_p2p_controls_on_sd_and_sdxl(down_blocks, latent, self_side, blend_side):
    from types import SimpleNamespace

    from autotune.engine.family import EngineSettings
    from autotune.engine.unet.engine import UNetEngine

    unet = SimpleNamespace(config=SimpleNamespace(down_block_types=down_blocks))
    engine = UNetEngine(SimpleNamespace(unet=unet), EngineSettings())
    windows = engine._windows([EditParams()], 50, True, torch.Size((latent, latent)))
    assert windows["self_max_tokens"] == self_side**2 and windows["blend_tokens"] == blend_side**2


def test_batched_candidates_equal_separate_calls(editor, photo):
    candidates = [
        EditParams(w_src=0.5, w_tgt=7.5, steps=4),
        EditParams(w_src=0.5, w_tgt=4.0, steps=4, cross_replace=0.2, reweight=1.0),
        EditParams(w_src=1.0, steps=4, p2p_mode="refine", self_replace=0.0, blend_threshold=0.5),
        EditParams(method="ddim", steps=4),
        EditParams(method="negative_prompt", steps=4),
        EditParams(method="direct", w_src=2.0, steps=4),
        EditParams(method="null_text", w_src=1.5, steps=3, null_text_iterations=2),
        EditParams(w_src=GuidanceSchedule.linear(0.0, 1.0), steps=4),
        EditParams(w_src=0.5, steps=4, p2p_mode="replace"),
    ]
    batched = editor.edit_batch(photo, SRC, TGT, candidates, blend_words=WORDS)
    for cand, together in zip(candidates, batched, strict=True):
        alone = editor.edit(photo, SRC, TGT, cand, blend_words=WORDS)
        torch.testing.assert_close(together.latent, alone.latent, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(together.pixels, alone.pixels, rtol=1e-4, atol=1e-4)
    assert (batched[0].pixels - batched[1].pixels).abs().max() > 1e-3


def test_several_tasks_in_one_loop_equal_each_task_alone(editor, photo):
    from PIL import ImageOps

    tasks = [EditTask("a", photo, SRC, TGT, "change_object", blend_words=WORDS),
             EditTask("b", ImageOps.mirror(photo), "a cat on a sofa", "a dog on a red sofa", "change_object",
                      blend_words=("cat", "dog")),
             EditTask("c", photo.resize((32, 16)), "a photo", "a painting", "change_style")]
    candidates = [EditParams(w_src=0.5, steps=4), EditParams(method="negative_prompt", w_tgt=5.0, steps=4)]
    rows = editor.edit_tasks(tasks, candidates)
    for task, row in zip(tasks, rows, strict=True):
        for together, alone in zip(row, editor.edit_task(task, candidates), strict=True):
            torch.testing.assert_close(together.latent, alone.latent, rtol=1e-4, atol=1e-4)
    assert rows[2][0].pixels.shape == (3, 16, 32)


def test_recorded_source_branches_give_the_live_edits(tiny_sdxl_dir, photo, rows_seen):
    recording = Editor.from_pretrained(str(tiny_sdxl_dir), device="cpu", progress=False)
    live = Editor.from_pretrained(str(tiny_sdxl_dir), device="cpu", progress=False, record_sources=False)
    candidates = [EditParams(steps=4), EditParams(method="negative_prompt", steps=4),
                  EditParams(method="null_text", steps=3, null_text_iterations=1)]
    recording.edit_batch(photo, SRC, TGT, candidates, blend_words=WORDS)
    assert sum(isinstance(v, SourceRecord) for v in recording.cache._items.values()) == 3
    got = recording.edit_batch(photo, SRC, "a robot in a space suit", candidates, blend_words=("woman", "robot"))
    assert rows_seen[-2:] == [2, 1]  # target rows only (the 3-step candidate runs in a loop of its own)
    want = live.edit_batch(photo, SRC, "a robot in a space suit", candidates, blend_words=("woman", "robot"))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.latent, b.latent, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", ["sd", "sdxl"])
def test_a_record_s_size_is_known_before_the_run(tiny_model_dir, tiny_sdxl_dir, photo, model):
    editor = Editor.from_pretrained(str(tiny_model_dir if model == "sd" else tiny_sdxl_dir), device="cpu",
                                    progress=False)
    candidates = [EditParams(steps=5), EditParams(method="negative_prompt", steps=5, cross_replace=0.8),
                  EditParams(method="null_text", steps=5, null_text_iterations=1)]
    editor.edit_batch(photo, SRC, TGT, candidates, blend_words=WORDS)
    editor.edit_batch(photo, SRC, TGT, [EditParams(w_src=0.7, steps=5)])  # no blend words: no LocalBlend maps
    records = [v for v in editor.cache._items.values() if isinstance(v, SourceRecord)]
    assert len(records) == 4
    layers = attention_layers(editor.components.unet, tuple(records[0].noise.shape[-2:]))
    for r in records:
        fixed = [r.noise, r.uncond] + ([r.uncond_pooled] if r.uncond_pooled is not None else [])
        assert record_nbytes(layers, steps=5, cross_steps=r.cross_steps, self_steps=r.self_steps,
                             self_max_tokens=r.self_max_tokens, blend_tokens=r.blend_tokens, fixed=fixed,
                             itemsize=4) == r.nbytes


def test_a_record_over_a_quarter_of_the_cache_is_never_made(tiny_sdxl_dir, photo, rows_seen, monkeypatch, caplog):
    import autotune.engine.unet.engine as engine_module

    made = []
    monkeypatch.setattr(engine_module, "SourceRecorder", lambda g: made.append(g))
    small = Editor.from_pretrained(str(tiny_sdxl_dir), device="cpu", progress=False, cache_bytes=64 << 10)
    with caplog.at_level(logging.INFO, logger="autotune.engine.unet.engine"):
        small.edit(photo, SRC, TGT, EditParams(steps=4), blend_words=WORDS)
    assert made == [] and small.record_sources is False  # decided before the run: nothing was recorded
    assert "source branches are not recorded" in caplog.text and "cache_bytes >=" in caplog.text


def test_float16_keeps_the_sdxl_vae_in_float32(tiny_sdxl_dir, photo):
    half = Editor.from_pretrained(str(tiny_sdxl_dir), device="cpu", dtype=torch.float16, progress=False)
    assert half.components.unet.dtype == torch.float16 and half.components.vae.dtype == torch.float32
    result = half.edit(photo, SRC, TGT, EditParams(steps=2))
    assert result.latent.dtype == torch.float16 and torch.isfinite(result.pixels).all()


def test_the_sd_vae_is_not_upcast(tiny_model_dir):
    half = Editor.from_pretrained(str(tiny_model_dir), device="cpu", dtype=torch.float16, progress=False)
    assert half.components.vae.dtype == torch.float16  # as diffusers' SD pipeline: only SDXL's VAE needs it


def _safetensors_with(path, keys):
    from safetensors.torch import save_file

    save_file({key: torch.zeros(1) for key in keys}, str(path))
    return path


def test_a_single_file_is_read_as_sdxl_by_its_keys_or_its_config(tmp_path, tiny_sdxl_dir, tiny_model_dir):
    from autotune.engine.unet.loading import SDXL_FILE_KEY, single_file_pipeline

    xl = _safetensors_with(tmp_path / "xl.safetensors", [SDXL_FILE_KEY, "model.diffusion_model.out.0.weight"])
    sd = _safetensors_with(tmp_path / "sd.safetensors", ["model.diffusion_model.out.0.weight"])
    assert single_file_pipeline(xl, None) == "StableDiffusionXLPipeline"
    assert single_file_pipeline(sd, None) == "StableDiffusionPipeline"
    assert single_file_pipeline(sd, str(tiny_sdxl_dir)) == "StableDiffusionXLPipeline"  # the config folder says
    assert single_file_pipeline(xl, str(tiny_model_dir)) == "StableDiffusionPipeline"
    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(ModelNotFoundError, match="StableDiffusion3Pipeline checkpoint"):
        single_file_pipeline(sd, str(sd3))


def test_a_single_sdxl_file_loads_through_the_sdxl_pipeline(tmp_path, tiny_sdxl_dir, monkeypatch, photo):
    from diffusers import StableDiffusionXLPipeline

    from autotune.engine.unet.loading import SDXL_FILE_KEY

    seen = {}

    def from_single_file(path, **kwargs):  # stands in for diffusers' conversion of an original-format file
        seen.update(path=path, **kwargs)
        return StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_dir), dtype=kwargs["dtype"])

    monkeypatch.setattr(StableDiffusionXLPipeline, "from_single_file", from_single_file)
    file = _safetensors_with(tmp_path / "finetune.safetensors", [SDXL_FILE_KEY])
    editor = Editor.from_pretrained(str(file), device="cpu", progress=False)
    assert seen["path"] == str(file) and seen["config"] is None and seen["local_files_only"] is True
    assert editor.components.pipeline == "StableDiffusionXLPipeline" and editor.model_info()["source"] == "file"
    assert editor.edit(photo, SRC, TGT, EditParams(steps=2)).pixels.shape == (3, 32, 32)


def test_a_single_sdxl_file_offline_without_config_explains_the_fix(tmp_path):
    from autotune.engine.unet.loading import SDXL_FILE_KEY

    file = _safetensors_with(tmp_path / "finetune.safetensors", [SDXL_FILE_KEY])
    with pytest.raises(ModelNotFoundError, match="--config"):
        Editor.from_pretrained(str(file), device="cpu")


@pytest.mark.parametrize("pipeline", ["KandinskyV22Pipeline", "StableDiffusionXLImg2ImgPipeline"])
def test_a_checkpoint_of_another_family_is_refused_when_it_loads(tmp_path, pipeline):
    folder = tmp_path / pipeline
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "transformer": ["diffusers", "X"]}))
    with pytest.raises(ModelNotFoundError) as info:
        Editor.from_pretrained(str(folder), device="cpu")
    message = str(info.value)
    assert f"is a {pipeline} checkpoint" in message and "does not edit" in message
    assert "StableDiffusionPipeline" in message and "StableDiffusionXLPipeline" in message and "unet" in message


def test_an_sdxl_class_checkpoint_on_another_noise_schedule_is_refused(tmp_path):
    from tests.conftest import build_tiny_sdxl_pipeline

    folder = build_tiny_sdxl_pipeline(tmp_path / "edm")
    config = json.loads((folder / "vae" / "config.json").read_text())
    config["latents_mean"], config["latents_std"] = [0.0] * 4, [1.0] * 4  # as Playground v2.5
    (folder / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match="own noise schedule .* or latent normalisation"):
        Editor.from_pretrained(str(folder), device="cpu")


# ---------------------------------------------------------------------------------------------------------------------
# presets and the command line

SDXL_ID = "stabilityai/stable-diffusion-xl-base-1.0"


def test_shipped_sdxl_presets_are_the_paper_defaults_for_every_category():
    from autotune.presets.preset import Preset
    from autotune.presets.store import paper_default_presets, preset_filename, shipped_presets_dir
    from autotune.task import CATEGORIES

    files = sorted(shipped_presets_dir().glob("stabilityai--stable-diffusion-xl-base-1.0__*.json"))
    assert len(files) == len(CATEGORIES)
    made = {p.category: p.to_dict() for p in paper_default_presets(SDXL_ID)}  # what write_paper_defaults writes
    for file in files:
        preset = Preset.load(file, strict=True)
        raw = json.loads(file.read_text())
        assert file.name == preset_filename(SDXL_ID, preset.category) and preset.kind == "paper_default"
        assert raw["model"] == made[preset.category]["model"] and raw["picks"] == made[preset.category]["picks"]
        assert {"sdxl", "SG161222/RealVisXL_V4.0"} <= set(raw["model"]["applies_to"]) and raw["front"] == []
        assert "SDXL" in raw["provenance"]["citation"] and "LEDITS++" in raw["provenance"]["notes"]
        for style in ("conservative", "balanced", "aggressive"):
            p = raw["picks"][style]["params"]
            assert (p["method"], p["w_src"], p["w_tgt"], p["steps"]) == ("siminversion", 0.5, 7.5, 50)


def test_sdxl_presets_load_by_category_and_fit_the_sdxl_schedule(tiny_sdxl_dir, photo, recwarn):
    # The tiny pipeline's scheduler is SDXL base's; named `sdxl` (as `Editor.from_pretrained("sdxl")` names it).
    editor = Editor.from_pretrained(str(tiny_sdxl_dir), device="cpu", progress=False, presets=True)
    editor.engine.components.info.update(id="sdxl", weights=None)
    params = editor.presets.params_for("change_background", "aggressive", editor.model_info())
    assert (params.w_src.start, params.w_tgt.start, params.steps) == (0.5, 7.5, 50)
    assert not [w for w in recwarn if "scheduler" in str(w.message)]  # not even a loose scheduler difference
    result = editor.edit(photo, SRC, TGT, blend_words=WORDS, category="change_color", steps=2)
    assert result.params.w_tgt.start == 7.5 and result.params.steps == 2
    for other in (SDXL_ID, "SG161222/RealVisXL_V4.0"):
        assert editor.presets.find("change_color", other).preset.model["id"] == SDXL_ID
    sd1 = editor.presets.find("change_color", "stable-diffusion-v1-5/stable-diffusion-v1-5").preset
    assert sd1.model["id"] != SDXL_ID  # each model its own


def test_sdxl_short_name():
    from autotune.engine.checkpoint import SHORT_NAMES

    assert SHORT_NAMES["sdxl"] == SDXL_ID


def test_cli_edit_tune_and_evaluate_on_sdxl(tiny_sdxl_dir, tmp_path, capsys, monkeypatch):
    import csv

    from autotune.cli import main
    from autotune.tasks import sources as task_sources

    photo_path = tmp_path / "photo.png"
    Image.new("RGB", (48, 40), "white").save(photo_path)
    model = ["--model", str(tiny_sdxl_dir), "--device", "cpu"]
    assert main(["edit", *model, "--image", str(photo_path), "--source-prompt", SRC, "--target-prompt", TGT,
                 "--blend-words", "woman man", "--steps", "3", "--out", str(tmp_path / "out.png"), "--quiet"]) == 0
    assert Image.open(tmp_path / "out.png").size == (32, 24)  # long side 32, sides multiples of 8

    load = task_sources.load_tasks
    monkeypatch.setattr(task_sources, "load_tasks", lambda *a, **k: load(*a, **k)[:2])
    assert main(["tune", *model, "--tasks", "shapes:change_color", "--trials", "2", "--batch", "2",
                 "--space", "steps=2:2", "--project-dir", str(tmp_path / "proj"),
                 "--presets-dir", str(tmp_path / "presets"), "--quiet"]) == 0
    preset_file = next((tmp_path / "presets").glob("*change_color.json"))
    assert "preset written to" in capsys.readouterr().out

    (tmp_path / "tasks.jsonl").write_text(json.dumps({"id": "p", "image": "photo.png", "source_prompt": SRC,
                                                      "target_prompt": TGT, "category": "change_color",
                                                      "blend_words": "woman man"}))
    assert main(["evaluate", *model, "--tasks", str(tmp_path / "tasks.jsonl"), "--preset", str(preset_file),
                 "--out", str(tmp_path / "run"), "--metrics", "psnr", "mse", "--split", "all", "-q"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    assert [r["task_id"] for r in rows] == ["p"] and 0 <= float(rows[0]["mse"]) < 1


def test_cli_refuses_a_checkpoint_of_another_family_with_exit_2(tmp_path, capsys):
    from autotune.cli import main

    folder = tmp_path / "kandinsky"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    assert main(["edit", "--model", str(folder), "--device", "cpu", "--image", str(tmp_path / "p.png"),
                 "--source-prompt", "a", "--target-prompt", "b", "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "is a KandinskyV22Pipeline checkpoint, a model family autotune does not edit" in err
    assert "Traceback" not in err


def test_a_prompt_the_two_tokenizers_split_differently_is_refused(tiny_sdxl_dir, monkeypatch):
    from types import SimpleNamespace

    from autotune.errors import InputError

    editor = Editor.from_pretrained(str(tiny_sdxl_dir), device="cpu", progress=False)
    real = editor.components.tokenizer

    def other(text, **kwargs):  # a second tokenizer that splits "suit" in two
        ids = real(text, **kwargs).input_ids
        return SimpleNamespace(input_ids=[i for t in ids for i in ([t, t] if t == real.convert_tokens_to_ids("suit</w>")
                                                                     else [t])])

    editor.engine.check_prompt("a woman in a dress", "source prompt")  # the same split: accepted
    monkeypatch.setattr(editor.components, "tokenizer_2", other)
    editor.engine.check_prompt("a woman in a dress", "source prompt")
    with pytest.raises(InputError, match="source prompt: this checkpoint's two tokenizers split 'a woman in a space "
                                         "suit' differently"):
        editor.engine.check_prompt(SRC, "source prompt")


def test_task_features_read_sdxl_pooled_prompt_and_reconstruct_with_its_added_conditions(editor, photo, reference):
    """Per-image features on SDXL (style 'auto'): the text group is the pooled embedding the UNet reads as
    `text_embeds` (diffusers' own, here), and the probe's reconstruction carries the added conditions: it is the
    source branch an edit at the probe's setting computes."""
    prompts, _ = reference
    probe = EditParams(w_src=0.5, w_tgt=7.5, steps=4)
    item = editor.engine.check_inputs(photo, SRC, TGT, WORDS)
    (row,) = editor.engine.task_features([item], probe)
    src, tgt = prompts[SRC][1].detach().float(), prompts[TGT][1].detach().float()
    assert row["text.cosine"] == pytest.approx(float(torch.nn.functional.cosine_similarity(src, tgt, dim=0)), abs=1e-5)
    assert row["text.diff_norm"] == pytest.approx(float((tgt - src).norm() / src.norm()), rel=1e-4)
    assert sum(name.startswith("text.diff.") for name in row) == src.numel()
    assert row["words.replaced"] == 1 and row["words.swappable"] == 1
    z0 = editor.engine._prepare(photo).latent.float()
    rebuilt = editor.edit(photo, SRC, TGT, probe, blend_words=WORDS).source_latent.float()
    expected = float(((rebuilt - z0) ** 2).mean() / z0.var(unbiased=False))
    assert expected > 0 and row["inversion.error"] == pytest.approx(expected, rel=1e-3)
