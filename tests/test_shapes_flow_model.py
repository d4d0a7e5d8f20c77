"""The shipped shapes-flow model (a Stable Diffusion 3 pipeline folder), checked on small samples; the full
measurement is `autotune shapes measure --model shapes-flow`, its figures are in docs/shapes.md.

The weights ship with the package (trained by `autotune shapes train-flow`, then fine-tuned from that with
under-described captions, about 3 hours in all; the training itself is tested on a tiny configuration in
test_shapes_train_flow.py), so these tests never skip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autotune.bench.shapes_model import FLOW_GUIDANCE, is_flow_model
from autotune.engine.checkpoint import SHAPES_FLOW_MODEL_DIR as FLOW_MODEL
from autotune.shapes.world import caption

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(FLOW_MODEL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_folder_is_an_sd3_pipeline_of_safetensors_under_30_mb_and_packaged():
    files = [p for p in FLOW_MODEL.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth")]
    assert {p.parent.name for p in weights} == {"transformer", "vae", "text_encoder", "text_encoder_2",
                                                "text_encoder_3"}
    assert all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) < 30 * 2**20
    index = json.loads((FLOW_MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline" and is_flow_model("shapes-flow")
    assert index["transformer"] == ["diffusers", "SD3Transformer2DModel"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["text_encoder"] == index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    meta = json.loads((FLOW_MODEL / "training.json").read_text())
    assert meta["world_version"] == 2 and "text_to_image" in meta
    tomllib = pytest.importorskip("tomllib")
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "weights/**/*" in package_data["autotune.shapes"]


def test_the_pipeline_has_16x16_latents_8x8_attention_maps_and_the_clip_tokenizer(pipe):
    from autotune.shapes.tokenizer import clip_tokenizer

    assert pipe.default_sample_size * pipe.vae_scale_factor == 64
    assert pipe.transformer.config.sample_size == 16  # latents of 16 x 16
    assert pipe.transformer.config.sample_size // pipe.transformer.config.patch_size >= 8  # image tokens per side
    prompt = "a red circle and a blue square on a white background"
    assert pipe.tokenizer(prompt).input_ids == pipe.tokenizer_2(prompt).input_ids == clip_tokenizer()(prompt).input_ids


def _simple_scene_rates(pipe) -> dict[str, float]:
    from autotune.bench.shapes_model import generate, scene_rates
    from autotune.shapes.world import random_scene

    rng = np.random.default_rng(5)
    scenes = [random_scene(rng, n_objects=1 + k % 2, version=2) for k in range(12)]
    images = generate(pipe, [caption(s) for s in scenes], FLOW_GUIDANCE, 28, seed=0)
    assert images.shape == (12, 64, 64, 3)
    return scene_rates(scenes, images)


def test_scenes_are_drawn_right_at_the_default_guidance(pipe):
    """Twelve captions of one- and two-object scenes, read back by the shapes reader: the model's measured rates on
    1000 captions of up to four objects are 93% of colours and 59% of whole scenes (docs/shapes.md), so these
    simpler scenes must clear 75% and 40% (margins for another CPU's kernels)."""
    rates = _simple_scene_rates(pipe)
    assert rates["background"] == 1.0 and rates["colour"] >= 0.75 and rates["exact"] >= 0.4, rates


def test_the_shipped_model_is_the_fine_tune_with_under_described_captions():
    """docs/shapes.md's rule chose the fine-tune: its record says where it started and how it was trained, and no
    path of the training machine."""
    meta = json.loads((FLOW_MODEL / "training.json").read_text())
    assert meta["model"] == "shapes-flow" and meta["args"]["partial_captions"] == 0.5
    start = meta["init_from"]
    assert start["model"] == "shapes-flow" and len(start["transformer_sha256"]) == 64 and start["steps_done"] > 0
    assert "/work/" not in json.dumps(meta) and "/home/" not in json.dumps(meta)


def test_dropping_t5_the_diffusers_way_draws_the_same_image(pipe):
    from diffusers import StableDiffusion3Pipeline

    no_t5 = StableDiffusion3Pipeline.from_pretrained(FLOW_MODEL, local_files_only=True, text_encoder_3=None,
                                                     tokenizer_3=None)
    no_t5.set_progress_bar_config(disable=True)
    prompt = "a green triangle on a black background"
    a, b = (p(prompt, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(1)).images
            for p in (pipe, no_t5))
    assert np.array_equal(a, b)


def test_measure_runs_on_the_short_name(capsys):
    from autotune.bench.shapes_model import main

    assert main(["--model", "shapes-flow", "--samples", "2", "--steps", "2", "--inversion-samples", "2",
                 "--inversion-steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "shapes-flow" in out and f"| {FLOW_GUIDANCE:g} |" in out and "| 1 |" in out
    assert "| VAE round trip (ceiling) |" in out
    assert all(f"| Euler inversion at w_src = {w:g} |" in out for w in (0, 0.5, 1, 1.5, 2, 3.5, 7))
    import re

    row = r"\| Euler inversion at w_src = [\d.]+ \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \|"
    for mean, low, high in re.findall(row, out):
        assert float(low) <= float(mean) <= float(high)  # the mean inside its bootstrap interval over the scenes
    assert len(re.findall(row, out)) == 7


def test_tuning_flowedit_on_the_flow_model_reads_its_own_world_and_writes_a_preset(tmp_path, capsys):
    """The issue's command, smaller (2 tasks, 2 trials, 4 steps): `shapes:` tasks are drawn in world version 2, and
    the preset is written for shapes-flow."""
    from autotune.cli import main

    assert main(["tune", "--model", "shapes-flow", "--device", "cpu", "--tasks", "shapes:change_color:2",
                 "--method", "flowedit", "--trials", "2", "--batch", "2", "--steps", "4", "-q",
                 "--project-dir", str(tmp_path / "proj"), "--presets-dir", str(tmp_path / "presets")]) == 0
    assert "preset written to" in capsys.readouterr().out
    path = next((tmp_path / "presets").glob("*change_color*.json"))
    preset = json.loads(path.read_text())
    assert path.name.startswith("shapes-flow__") and preset["method"] == "flowedit"
    assert preset["provenance"]["task_source"]["world_version"] == 2


@pytest.mark.parametrize(("folder", "method"), [("presets", "flowedit"),
                                                ("presets/flow_siminversion", "flow_siminversion")])
def test_the_shipped_shapes_flow_presets_fit_the_shipped_model(folder, method):
    """FlowEdit's tuned presets are found by category in the default lookup; flow inversion's sit in a folder of
    their own (one preset per model and category per folder), found when that folder is named. Each verifies (a
    strict content hash), fits the shipped weights and scheduler, and was tuned on world-version-2 tasks."""
    from autotune import Editor
    from autotune.presets.preset import Preset
    from autotune.presets.store import PresetStore, shipped_presets_dir
    from autotune.shapes.tasks import SHAPES_CATEGORIES

    editor = Editor.from_pretrained("shapes-flow", device="cpu", progress=False)
    store = PresetStore([shipped_presets_dir() / Path(folder).relative_to("presets")]) if folder != "presets" \
        else PresetStore()
    for category in SHAPES_CATEGORIES:
        entry = store.find(category, editor.model_info())
        assert entry.preset.kind == "tuned" and entry.path.name == f"shapes-flow__{category}.json"
        assert entry.path.parent.resolve() == (ROOT / folder).resolve()
        Preset.load(entry.path, strict=True)  # a preset edited since it was written fails here
        entry.preset.check_compatible(editor.model_info())  # same weights fingerprint, same scheduler
        balanced = entry.preset.params("balanced")
        assert balanced.method == method and balanced.steps == 50
        assert entry.preset.provenance["task_source"]["world_version"] == 2
