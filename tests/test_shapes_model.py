"""The shipped shapes model, checked on small samples (the full measurement is `python -m autotune.bench.shapes_model`,
its figures are in docs/shapes.md)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from autotune.bench.shapes_model import load_pipeline, text_to_image_table
from autotune.engine.checkpoint import SHAPES_MODEL_DIR
from autotune.shapes.reader import read_scene
from autotune.shapes.world import caption, random_scene, render_array


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(SHAPES_MODEL_DIR)


def test_the_shapes_model_is_a_standard_pipeline_folder_of_safetensors():
    from diffusers import DDIMScheduler

    files = [p for p in SHAPES_MODEL_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth")]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder"}
    assert all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) < 30 * 2**20
    assert DDIMScheduler.from_pretrained(SHAPES_MODEL_DIR / "scheduler").config.prediction_type == "epsilon"


def test_text_to_image_follows_captions_and_the_unconditional_model_does_not(pipe):
    # 24 captions (the 200-sample figures in docs/shapes.md: colour 97%, shape 96%, whole scene 94% at 7.5;
    # 95%, 90%, 85% at 1). Bounds leave room for sampling noise on a small sample.
    from autotune.bench.shapes_model import generate, scene_rates

    _, rates = text_to_image_table(pipe, samples=24, steps=20, seed=0)
    at_7_5 = rates[7.5]
    assert at_7_5["colour"] >= 0.85 and at_7_5["shape"] >= 0.8 and at_7_5["background"] >= 0.95
    assert at_7_5["exact"] >= 0.75
    # Classifier-free guidance needs an unconditional model that ignores the caption (caption dropout taught
    # it one): from the empty prompt, the captions' scenes come out only by chance.
    rng = np.random.default_rng(1000)  # the same scenes as text_to_image_table(seed=0)
    scenes = [random_scene(rng) for _ in range(24)]
    unconditional = scene_rates(scenes, generate(pipe, [""] * 24, 1.0, 20, 0))
    assert unconditional["background"] <= 0.7 and unconditional["exact"] <= 0.2
    assert at_7_5["exact"] >= unconditional["exact"] + 0.5


def test_edit_from_the_cli_changes_the_colour_and_keeps_the_scene(tmp_path, capsys):
    from autotune.cli import main
    from autotune.shapes.world import Obj, Scene

    scene = Scene("white", (Obj("square", "red", 4, 8, 14),))
    source = tmp_path / "red_square.png"
    Image.fromarray(render_array(scene)).save(source)
    out = tmp_path / "blue_square.png"
    code = main(["edit", "--model", "shapes", "--device", "cpu", "--image", str(source),
                 "--source-prompt", caption(scene), "--target-prompt", "a blue square on a white background",
                 "--blend-words", "red blue", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    read = read_scene(np.asarray(Image.open(out).convert("RGB")))
    assert read.background == "white"
    assert [(o.color, o.shape) for o in read.objects] == [("blue", "square")]


def test_reconstruction_is_close_at_low_guidance_and_worse_at_7_5():
    from autotune import Editor, EditParams

    editor = Editor.from_pretrained("shapes", device="cpu", progress=False)
    rng = np.random.default_rng(7)
    scene = random_scene(rng)
    image = render_array(scene)
    prompt = caption(scene)

    def psnr(w: float) -> float:
        result = editor.edit(Image.fromarray(image), prompt, prompt, EditParams(w_src=w, w_tgt=w, steps=20))
        rec = result.source_pixels.float().cpu().permute(1, 2, 0).numpy()
        return float(10 * np.log10(1.0 / ((rec - image / 255.0) ** 2).mean()))

    low, high = psnr(0.5), psnr(7.5)
    assert low > 20.0 and low > high + 3.0


def test_the_shipped_shapes_presets_fit_the_shipped_model():
    from autotune import Editor
    from autotune.shapes.tasks import SHAPES_CATEGORIES

    editor = Editor.from_pretrained("shapes", device="cpu", progress=False, presets=True)
    for category in SHAPES_CATEGORIES:
        entry = editor.presets.find(category, editor.model_info())
        assert entry.preset.kind == "tuned" and entry.path.name == f"shapes__{category}.json"
        entry.preset.check_compatible(editor.model_info())  # same weights fingerprint, same scheduler
        assert editor.presets.params_for(category, "balanced", editor.model_info()).steps == 50


def test_the_shipped_shapes_presets_choose_per_image_out_of_the_box():
    """Style auto works from the shipped files: each carries a predictor that verifies, and an edit with it uses one
    of the predictor's candidates (or the balanced pick, saying why) and records the choice."""
    from autotune import Editor
    from autotune.shapes.tasks import SHAPES_CATEGORIES, shapes_tasks

    editor = Editor.from_pretrained("shapes", device="cpu", progress=False, presets=True)
    for category in SHAPES_CATEGORIES:
        preset = editor.presets.preset_for(category, editor.model_info())
        predictor = preset.check_auto()
        assert preset.params(predictor.trade_off) in predictor.candidates
    task = shapes_tasks("change_color", split="heldout", count=1)[0]
    result = editor.edit(task.image, task.source_prompt, task.target_prompt, blend_words=task.blend_words,
                         category="change_color", style="auto")
    preset = editor.presets.preset_for("change_color", editor.model_info())
    assert result.choice is not None and result.params == result.choice.params
    assert result.choice.params in preset.predictor.candidates
    if result.choice.fallback:
        assert result.params == preset.params("balanced") and result.choice.reason
