"""Per-image guidance through the real engine (tiny pipelines): the families' features, a predictor fitted from a
tuning study by one command, and style "auto" in Python and on the command line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import optuna
import pytest

from autotune.cli import main
from autotune.engine.features import word_features
from autotune.errors import InputError
from autotune.params import EditParams
from autotune.presets.preset import Preset
from autotune.shapes.tasks import shapes_tasks
from autotune.task import EditTask

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_word_alignment_counts_what_changed():
    same = word_features("a red circle on a white background", "a red circle on a white background")
    assert same["words.replaced"] == same["words.inserted"] == same["words.deleted"] == 0 and same["words.swappable"]
    swap = word_features("a red circle on a white background", "a blue circle on a white background")
    assert (swap["words.replaced"], swap["words.inserted"], swap["words.deleted"]) == (1, 0, 0)
    added = word_features("a red circle on a white background",
                          "a red circle and a blue square on a white background")
    assert (added["words.replaced"], added["words.inserted"], added["words.deleted"]) == (0, 4, 0)
    assert not added["words.swappable"] and added["words.target"] == 11
    gone = word_features("A red circle, and a blue square.", "a red circle")
    assert (gone["words.deleted"], gone["words.inserted"]) == (4, 0)  # case and punctuation as blend words


def test_unet_features_are_named_stable_and_reuse_the_inversion(tiny_model_dir, one_torch_thread):
    from conftest import tiny_editor

    editor = tiny_editor(tiny_model_dir)
    tasks = shapes_tasks("change_color", "tune", 3)
    plain = editor.task_features(tasks)
    assert [list(f) for f in plain] == [list(plain[0])] * 3  # the same names, in the same order
    groups = {name.split(".")[0] for name in plain[0]}
    assert groups == {"text", "words", "latent"}
    width = editor.components.text_encoder.config.hidden_size
    assert sum(name.startswith("text.diff.") for name in plain[0]) == width
    same = EditTask("s", tasks[0].image, tasks[0].source_prompt, tasks[0].source_prompt, "change_color")
    (unchanged,) = editor.task_features([same])
    assert unchanged["text.cosine"] == pytest.approx(1.0) and unchanged["text.diff_norm"] == pytest.approx(0.0)
    probe = EditParams(w_src=0.5, w_tgt=7.5, steps=3)
    with_probe = editor.task_features(tasks, probe)
    assert all(f["inversion.error"] >= 0 and f["inversion.noise_std"] > 0 for f in with_probe)
    assert all({k: v for k, v in w.items() if not k.startswith("inversion.")} == p
               for w, p in zip(with_probe, plain))
    assert editor.invert_tasks(tasks, [probe]) == 0  # the edit at the probe's w_src finds its inversion cached


def test_flow_features_have_no_inversion_group(tiny_sd3_dir, one_torch_thread):
    from autotune import Editor

    editor = Editor.from_pretrained(str(tiny_sd3_dir), device="cpu", progress=False)
    tasks = shapes_tasks("change_color", "tune", 2)
    features = editor.task_features(tasks, editor.default_params())
    assert {name.split(".")[0] for name in features[0]} == {"text", "words", "latent"}


@pytest.fixture(scope="module")
def tuned_with_predictor(tiny_model_dir, tmp_path_factory):
    """`autotune tune --predictor` on the tiny model: 12 tasks, 4 trials of 2 steps, every task measured."""
    import torch

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("tune-predictor")
    code = main(["tune", "--model", str(tiny_model_dir), "--device", "cpu", "--tasks", "shapes:change_color:12",
                 "--trials", "6", "--batch", "3", "--space", "steps=2:2", "--no-prune", "--project-dir",
                 str(tmp / "proj"), "--presets-dir", str(tmp / "presets"), "--study", "s", "--quiet", "--predictor"])
    assert code == 0
    (path,) = (tmp / "presets").glob("*change_color.json")
    return tmp, path


def test_tune_predictor_writes_a_preset_that_carries_it(tuned_with_predictor, capsys):
    tmp, path = tuned_with_predictor
    data = json.loads(path.read_text())
    section = data["predictor"]
    assert section["format"] == "autotune.predictor" and section["trade_off"] == "balanced"
    assert section["fit"]["tasks"] == 12 and section["fit"]["study"]["name"] == "s"
    preset = Preset.load(path, strict=True)
    assert preset.predictor.candidates[preset.predictor.pick_index] == preset.params("balanced")
    assert preset.predictor.probe == preset.params("balanced")  # the inversion features' setting
    assert main(["presets", "show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "predictor" in shown and "study s (12 tasks" in shown and "<- fallback" in shown


def test_fit_predictor_from_the_study_storage_gives_the_same_file(tuned_with_predictor, tmp_path, capsys):
    tmp, path = tuned_with_predictor
    code = main(["presets", "fit-predictor", "--storage", str(tmp / "proj" / "studies.journal"), "--study", "s",
                 "--out", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "cross-validation grouped by image" in out and "wrote" in out
    (again,) = tmp_path.glob("*change_color.json")
    first, second = Preset.load(path), Preset.load(again)
    assert second.with_predictor(None).content_hash == first.with_predictor(None).content_hash
    a, b = first.predictor.to_dict(), second.predictor.to_dict()  # the same fit, up to float rounding of features
    assert a["fit"]["selected"] == b["fit"]["selected"] and a["candidates"] == b["candidates"]
    np.testing.assert_allclose(np.asarray(a["support"]["points"]), np.asarray(b["support"]["points"]), rtol=1e-5,
                               atol=1e-6)
    # writing over the same preset is fine; over another one needs --force
    assert main(["presets", "fit-predictor", "--storage", str(tmp / "proj" / "studies.journal"), "--study", "s",
                 "--out", str(tmp_path), "--device", "cpu"]) == 0
    dataclasses.replace(Preset.load(again), default_style="aggressive").save(again)  # another preset there
    assert main(["presets", "fit-predictor", "--storage", str(tmp / "proj" / "studies.journal"), "--study", "s",
                 "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "--force" in capsys.readouterr().err


def test_style_auto_in_python_records_the_choice(tuned_with_predictor, tiny_model_dir, one_torch_thread):
    from conftest import tiny_editor

    _, path = tuned_with_predictor
    editor = tiny_editor(tiny_model_dir, presets=str(path))
    task = shapes_tasks("change_color", "heldout", 1)[0]
    result = editor.edit(task.image, task.source_prompt, task.target_prompt, blend_words=task.blend_words,
                         category="change_color", style="auto")
    choice = result.choice
    preset = Preset.load(path)
    assert choice is not None and choice.params == result.params
    assert choice.params in preset.predictor.candidates
    if choice.fallback:
        assert choice.params == preset.params("balanced") and choice.reason
    named = editor.edit(task.image, task.source_prompt, task.target_prompt, blend_words=task.blend_words,
                        category="change_color", style="balanced")
    assert named.choice is None and named.params == preset.params("balanced")


def test_style_auto_on_the_command_line(tuned_with_predictor, tiny_model_dir, tmp_path, capsys):
    _, path = tuned_with_predictor
    task = shapes_tasks("change_color", "heldout", 1)[0]
    image = tmp_path / "in.png"
    task.image.save(image)
    code = main(["edit", "--model", str(tiny_model_dir), "--device", "cpu", "--image", str(image),
                 "--source-prompt", task.source_prompt, "--target-prompt", task.target_prompt,
                 "--blend-words", " ".join(task.blend_words), "--preset", f"{path}:auto", "--out",
                 str(tmp_path / "out.png"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "out.png").is_file()
    assert "auto predicted" in out or "auto fell back" in out


def test_preset_category_auto_finds_the_predictor_in_the_presets_directory(tuned_with_predictor, tiny_model_dir,
                                                                          tmp_path, monkeypatch, capsys):
    """`--preset change_color:auto` by category name: the preset is looked up (user directory) like any other."""
    _, path = tuned_with_predictor
    monkeypatch.chdir(tmp_path)  # no ./presets here
    monkeypatch.setenv("AUTOTUNE_PRESETS_DIR", str(path.parent))
    task = shapes_tasks("change_color", "heldout", 2)[1]
    image = tmp_path / "in.png"
    task.image.save(image)
    args = ["edit", "--model", str(tiny_model_dir), "--device", "cpu", "--image", str(image), "--source-prompt",
            task.source_prompt, "--target-prompt", task.target_prompt, "--blend-words", " ".join(task.blend_words),
            "--out", str(tmp_path / "out.png"), "--quiet"]
    assert main([*args, "--preset", "change_color:auto"]) == 0
    out = capsys.readouterr().out
    assert "(auto," in out and ("auto predicted" in out or "auto fell back" in out)
    preset = Preset.load(path)
    written = out.strip().splitlines()[-1]  # "wrote out.png (method, w_src=..., w_tgt=..., ...)"
    assert any(f"w_src={c.w_src}, w_tgt={c.w_tgt}" in written for c in preset.predictor.candidates)
    # a category whose preset is not in the directory: the lookup error, not a silent default
    assert main([*args, "--preset", "change_pose:auto"]) == 2
    assert "change_pose" in capsys.readouterr().err


def test_editor_style_auto_with_a_presets_directory(tuned_with_predictor, tiny_model_dir, one_torch_thread):
    from conftest import tiny_editor

    _, path = tuned_with_predictor
    editor = tiny_editor(tiny_model_dir, presets=str(path.parent))
    task = shapes_tasks("change_color", "heldout", 3)[2]
    result = editor.edit(task.image, task.source_prompt, task.target_prompt, blend_words=task.blend_words,
                         category="change_color", style="auto")
    assert result.choice is not None and result.choice.params == result.params
    assert result.params in Preset.load(path).predictor.candidates
    with pytest.raises(InputError, match="category"):  # not a silent fall to the model's defaults
        editor.edit(task.image, task.source_prompt, task.target_prompt, style="auto")


def test_style_auto_records_the_fallback_when_the_image_is_outside_the_training_data(tuned_with_predictor,
                                                                                     tiny_model_dir,
                                                                                     one_torch_thread):
    """Both outcomes through the engine, forced by the support threshold: 0 puts every new image outside the
    training data (the balanced pick, and the result says so), a huge one puts every image inside (a prediction)."""
    from conftest import tiny_editor

    from autotune.presets.predictor import Predictor

    _, path = tuned_with_predictor
    preset = Preset.load(path)
    task = shapes_tasks("change_color", "heldout", 1)[0]

    def with_threshold(value: float) -> Preset:
        data = preset.predictor.to_dict()
        data["support"]["threshold"] = value
        return Preset.loads(preset.with_predictor(Predictor.from_dict(data)).dumps(), strict=True)

    editor = tiny_editor(tiny_model_dir, presets=with_threshold(0.0))
    result = editor.edit(task.image, task.source_prompt, task.target_prompt, blend_words=task.blend_words,
                         category="change_color", style="auto")
    assert result.choice.fallback and result.params == preset.params("balanced")
    assert "outside the training data" in result.choice.reason and result.choice.distance > 0
    assert "auto fell back to the balanced pick" in result.choice.describe()
    editor.presets = with_threshold(1e9)
    result = editor.edit(task.image, task.source_prompt, task.target_prompt, blend_words=task.blend_words,
                         category="change_color", style="auto")
    assert not result.choice.fallback and result.choice.candidate is not None
    assert result.params == preset.predictor.candidates[result.choice.candidate]
    assert result.choice.describe().startswith("auto predicted")


def test_style_auto_without_a_predictor_says_what_to_do(tiny_model_dir, tmp_path, capsys):
    preset = Preset.paper_default("change_color", {"id": str(tiny_model_dir)}, EditParams(steps=2), "test")
    path = preset.save(tmp_path / "p.json")
    task = shapes_tasks("change_color", "heldout", 1)[0]
    image = tmp_path / "in.png"
    task.image.save(image)
    code = main(["edit", "--model", str(tiny_model_dir), "--device", "cpu", "--image", str(image),
                 "--source-prompt", task.source_prompt, "--target-prompt", task.target_prompt,
                 "--preset", f"{path}:auto", "--out", str(tmp_path / "out.png"), "--quiet"])
    assert code == 2
    assert "fit-predictor" in capsys.readouterr().err


def test_tune_predictor_on_too_few_tasks_keeps_the_preset_and_says_how_to_fit_later(tiny_model_dir, tmp_path,
                                                                                      capsys, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_PRESETS_DIR", str(tmp_path / "presets"))  # no --presets-dir: the user's folder
    code = main(["tune", "--model", str(tiny_model_dir), "--device", "cpu", "--tasks", "shapes:change_color:3",
                 "--trials", "2", "--batch", "2", "--space", "steps=2:2", "--project-dir", str(tmp_path / "proj"),
                 "--study", "few", "--quiet", "--predictor"])
    captured = capsys.readouterr()
    assert code == 1 and "preset written to" in captured.out
    assert "at least 10 tasks" in captured.err and "autotune presets fit-predictor" in captured.err
    assert f"--study few --out {tmp_path / 'presets'}" in captured.err  # a command that runs as printed
    (path,) = (tmp_path / "presets").glob("*change_color.json")
    assert Preset.load(path).predictor is None


def test_evaluate_refuses_style_auto_before_the_model_loads(tmp_path, capsys):
    from autotune.cli import main

    missing = tmp_path / "no-such-model"  # loading it would fail with another message
    code = main(["evaluate", "--model", str(missing), "--tasks", "shapes:change_color:2", "--preset",
                 "change_color:auto", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "style 'auto' chooses one per image" in err and "autotune bench predictor" in err
    assert "no-such-model" not in err and not (tmp_path / "out").exists()


def test_bench_predictor_measures_auto_against_the_pick_and_writes_its_section(tuned_with_predictor, tiny_model_dir,
                                                                              tmp_path, capsys):
    """The benchmark end to end on the tiny model: every policy edits the same held-out tasks, the paired table and
    the verdict are written (grid 0: the oracle is the best of the predictor's candidates)."""
    tmp, path = tuned_with_predictor
    out = tmp_path / "B.md"
    code = main(["bench", "predictor", "--model", str(tiny_model_dir), "--device", "cpu", "--presets",
                 str(path.parent), "--categories", "change_color", "--tasks", "3", "--steps", "2", "--threads", "1",
                 "--out", str(out)])
    assert code == 0
    text = out.read_text()
    assert "## 7. Per-image guidance" in text and "| change_color | 3 |" in text
    policies = ("predicted per image (auto)", "the preset's pick", "(0.5, 7.5)", "oracle: each task's best candidate")
    for policy in policies:
        assert f"| change_color | {policy} |" in text
    assert "| change_color | auto - pick |" in text and "share of the oracle's gain" in text


def test_bench_predictor_oracle_grid_edits_only_the_new_settings_and_reports_its_ceiling(tuned_with_predictor,
                                                                                        tiny_model_dir, tmp_path):
    """`--oracle-grid 2` after a run without it: the cached table gains exactly the grid's settings that were not
    already measured, and the grid oracle's rows are written beside the candidates' oracle."""
    tmp, path = tuned_with_predictor
    cache, out = tmp_path / "cache", tmp_path / "B.md"
    base = ["bench", "predictor", "--model", str(tiny_model_dir), "--device", "cpu", "--presets", str(path.parent),
            "--categories", "change_color", "--tasks", "3", "--steps", "2", "--threads", "1", "--out", str(out),
            "--cache-dir", str(cache)]
    assert main(base) == 0
    (table_file,) = cache.glob("heldout-change_color-*.json")
    before = set(json.loads(table_file.read_text()))
    assert main([*base, "--oracle-grid", "2"]) == 0
    after = set(json.loads(table_file.read_text()))
    preset = Preset.load(path, strict=True)
    space = preset.provenance["search_space"]
    grid = {json.dumps(preset.params("balanced").with_(w_src=round(float(s), 4), w_tgt=round(float(t), 4)).to_dict(),
                       sort_keys=True)
            for s in (space["w_src"]["low"], space["w_src"]["high"]) for t in (space["w_tgt"]["low"],
                                                                                space["w_tgt"]["high"])}
    assert before < after and after - before == grid - before
    text = out.read_text()
    assert "| change_color | oracle: best of every setting measured (candidates, (0.5, 7.5), grid) |" in text
    assert "| change_color | oracle with the grid - pick |" in text and "share of the grid oracle's gain" in text
    assert f"+ {len(grid - before)} grid" in text


def test_share_of_the_oracle_gain_is_blank_where_the_oracle_gains_nothing():
    from autotune.bench.predictor import _gap

    assert _gap(0.05, 0.10) == "50%" and _gap(-0.02, 0.10) == "-20%"
    assert _gap(-0.0, 0.10) == "0%"  # not "-0%"
    assert _gap(0.0, -0.08) == "-" and _gap(0.01, 0.0) == "-"  # the oracle traded the metric away, or gained none
