"""The flow family through the rest of autotune: parameters and their serialisation, the search space and paper
points per family, the cost-aware TPE's key, the shipped presets, `tune`, `evaluate`, `edit` and the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
from PIL import Image

from autotune import EditParams
from autotune.cli import main
from autotune.errors import InputError
from autotune.tuning.search_space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

UNET_KEYS = ["method", "w_src", "w_tgt", "steps", "cross_replace", "self_replace", "reweight", "blend_threshold",
             "blend_start", "p2p_mode", "null_text_iterations"]


@pytest.fixture(scope="module")
def sd3(tiny_sd3_dir):
    from autotune import Editor

    return Editor.from_pretrained(str(tiny_sd3_dir), device="cpu", progress=False)


@pytest.fixture()
def tasks_file(tmp_path):
    from skimage import data

    Image.fromarray(data.coffee()).resize((24, 16)).save(tmp_path / "coffee.png")
    Image.fromarray(data.chelsea()).resize((24, 16)).save(tmp_path / "cat.png")
    rows = [{"id": "cup", "image": "coffee.png", "source_prompt": "a cup of coffee", "target_prompt": "a cup of tea",
             "category": "change_object", "blend_words": "coffee tea"},
            {"id": "cat", "image": "cat.png", "source_prompt": "a cat", "target_prompt": "a dog",
             "category": "change_object"}]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Parameters


def test_unet_parameters_serialise_exactly_as_before():
    assert list(EditParams().to_dict()) == UNET_KEYS
    assert list(EditParams(method="null_text", w_src=7.5).to_dict()) == UNET_KEYS
    shipped = json.loads(Path("presets/stable-diffusion-v1-5--stable-diffusion-v1-5__change_color.json").read_text())
    assert EditParams.from_dict(shipped["picks"]["balanced"]["params"]).to_dict() == \
        shipped["picks"]["balanced"]["params"]


def test_flow_parameters_serialise_their_own_knobs_only():
    p = EditParams(method="flowedit", w_src=1.5, w_tgt=5.5, steps=28, n_max=24 / 28, n_avg=2, noise_seed=5)
    data = p.to_dict()
    assert list(data) == ["method", "w_src", "w_tgt", "steps", "n_max", "n_min", "n_avg", "noise_seed"]
    assert EditParams.from_dict(data) == p
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(("fraction", "steps", "expected"), [(33 / 50, 50, 33), (24 / 28, 28, 24), (0.66, 50, 33),
                                                              (0.5, 7, 4), (1.0, 28, 28), (0.0, 50, 0)])
def test_window_fractions_become_the_published_step_counts(fraction, steps, expected):
    p = EditParams(method="flowedit", steps=steps, n_max=fraction)
    assert p.window == (steps - expected, steps)


def test_source_group_keys_the_source_work_of_each_flow_method():
    fe = EditParams(method="flowedit", w_src=3.5)
    # FlowEdit's source velocities depend on w_src and the noise seed, not on the target, the window or n_avg
    assert fe.source_group() == fe.with_(w_tgt=9.0, n_max=0.9, n_min=0.1, n_avg=3).source_group()
    assert fe.source_group() != fe.with_(w_src=4.0).source_group()
    assert fe.source_group() != fe.with_(noise_seed=1).source_group()
    inv = EditParams(method="flow_siminversion", w_src=0.5, n_max=1.0)
    # flow inversion's source branch: its guidance and its depth
    assert inv.source_group() == inv.with_(w_tgt=3.0, n_min=0.2, n_avg=4).source_group()
    assert inv.source_group() != inv.with_(n_max=0.5).source_group()
    assert fe.source_group() != EditParams(method="flow_siminversion", w_src=3.5).source_group()


def test_cost_aware_tpe_counts_a_known_flowedit_source_as_free(sd3):
    from autotune.tuning.cost_aware_tpe import CostAwareTPESampler

    space = SearchSpace.for_editor(sd3)
    sampler = CostAwareTPESampler(space, seed=0)
    a = sampler.source_key({"w_src": 3.5, "w_tgt": 13.5, "n_max": 0.66, "n_min": 0.0})
    b = sampler.source_key({"w_src": 3.5, "w_tgt": 6.0, "n_max": 0.9, "n_min": 0.1})
    c = sampler.source_key({"w_src": 4.0, "w_tgt": 13.5, "n_max": 0.66, "n_min": 0.0})
    assert a == b != c


# ---------------------------------------------------------------------------------------------------------------------
# The search space per family


def test_search_space_and_paper_points_come_from_the_editors_family(sd3, tiny_flux_dir):
    from autotune import Editor

    space = SearchSpace.for_editor(sd3)
    assert set(space.knobs) == {"w_src", "w_tgt", "n_max", "n_min"}
    assert space.base == sd3.default_params()
    (name, values), = space.paper_points()
    assert name == "flowedit"
    assert values == {"w_src": 3.5, "w_tgt": 13.5, "n_max": 0.66, "n_min": 0.0}
    assert space.to_params(values) == sd3.default_params()  # the enqueued point is the published setting

    flux = Editor.from_pretrained(str(tiny_flux_dir), device="cpu", progress=False)
    (name, values), = SearchSpace.for_editor(flux).paper_points()
    point = SearchSpace.for_editor(flux).to_params(values)
    assert (name, point.w_src.start, point.w_tgt.start, point.steps, point.window) == ("flowedit", 1.5, 5.5, 28,
                                                                                     (4, 28))
    inversion = SearchSpace.for_editor(sd3, sd3.default_params("flow_siminversion"))
    assert set(inversion.knobs) == {"w_src", "w_tgt", "n_max"}
    assert [n for n, _ in inversion.paper_points()] == ["siminversion"]
    both = SearchSpace.for_editor(sd3, method={"choices": ["flowedit", "flow_siminversion"]})
    assert [n for n, _ in both.paper_points()] == ["flowedit"]  # flow inversion's w_src 0.5 lies outside FlowEdit's
    both = SearchSpace.for_editor(sd3, method={"choices": ["flowedit", "flow_siminversion"]},
                                  w_src={"low": 0.0, "high": 8.0, "step": 0.5})
    assert sorted(n for n, _ in both.paper_points()) == ["flowedit", "siminversion"]
    assert SearchSpace.for_editor(sd3, n_avg={"low": 1, "high": 4}).knobs["n_avg"].high == 4


def test_search_space_refuses_knobs_the_method_does_not_use(sd3):
    with pytest.raises(InputError, match="cross_replace is a knob of the UNet methods"):
        SearchSpace.for_editor(sd3, cross_replace={"low": 0.2, "high": 0.8})
    with pytest.raises(InputError, match="n_max is a knob of the rectified-flow methods"):
        SearchSpace.default(n_max={"low": 0.3, "high": 1.0})
    with pytest.raises(InputError, match="does not run on flow models"):
        SearchSpace.for_editor(sd3, EditParams(method="siminversion"))


def test_a_sampled_window_keeps_n_min_within_n_max(sd3):
    space = SearchSpace.for_editor(sd3, n_min={"low": 0.0, "high": 1.0})
    p = space.to_params({"w_src": 3.5, "w_tgt": 10.0, "n_max": 0.4, "n_min": 0.7})
    assert (p.n_max, p.n_min) == (0.4, 0.4)


# ---------------------------------------------------------------------------------------------------------------------
# Shipped presets


@pytest.mark.parametrize(("model", "published"), [
    ("stabilityai/stable-diffusion-3-medium-diffusers", (3.5, 13.5, 50, 33)),
    ("sd3", (3.5, 13.5, 50, 33)),
    ("stabilityai/stable-diffusion-3.5-large", (3.5, 13.5, 50, 33)),
    ("sd35", (3.5, 13.5, 50, 33)),
    ("flux-dev", (1.5, 5.5, 28, 24)),
])
def test_shipped_flow_presets_are_the_published_settings_per_category(model, published, tmp_path, monkeypatch):
    from autotune.presets.store import PresetStore
    from autotune.task import CATEGORIES

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOTUNE_PRESETS_DIR", str(tmp_path / "user"))
    store = PresetStore()
    for category in CATEGORIES.values():
        entry = store.find(category, {"id": model})
        preset = entry.preset
        assert entry.origin == "shipped" and preset.kind == "paper_default" and preset.front == ()
        assert "FlowEdit" in preset.provenance["citation"] and "Untuned" in preset.provenance["notes"]
        for style in ("conservative", "balanced", "aggressive"):
            p = preset.params(style)
            w_src, w_tgt, steps, n_max = published
            assert (p.method, p.w_src.start, p.w_tgt.start, p.steps, p.window) == ("flowedit", w_src, w_tgt, steps,
                                                                                   (steps - n_max, steps))


def test_editor_edits_with_a_preset_of_its_model(sd3, tiny_sd3_dir, tmp_path):
    from autotune import Editor, Preset
    from autotune.presets.store import preset_filename

    info = sd3.model_info()
    preset = Preset.paper_default("change_color", info, sd3.default_params().with_(steps=3, w_tgt=9.0), "test")
    preset.save(tmp_path / preset_filename(info["id"], "change_color"))
    editor = Editor.from_pretrained(str(tiny_sd3_dir), device="cpu", progress=False, presets=tmp_path)
    result = editor.edit(Image.new("RGB", (16, 16), "red"), "a red square", "a blue square", category="change_color")
    assert (result.params.method, result.params.w_tgt.start, result.params.steps) == ("flowedit", 9.0, 3)
    with pytest.raises(Exception, match="does not fit this model"):
        Preset.load(next(Path("presets").glob("black-forest-labs--FLUX.1-dev__change_color.json"))) \
            .check_compatible(info)


# ---------------------------------------------------------------------------------------------------------------------
# tune, evaluate, edit, report


def test_tune_flowedit_on_the_tiny_sd3(sd3, tmp_path):
    from optuna.trial import TrialState

    from autotune.shapes.scoring import ShapesScorer
    from autotune.shapes.tasks import shapes_tasks
    from autotune.tuning.tuner import tune

    tasks = shapes_tasks("change_color", "tune", count=2)
    space = SearchSpace.for_editor(sd3, sd3.default_params().with_(steps=4))
    result = tune(sd3, tasks, category="change_color", trials=4, batch=2, storage=str(tmp_path / "s.journal"),
                  scorer=ShapesScorer(), search_space=space, progress=False, prune=False,
                  presets_dir=tmp_path / "presets", project_dir=tmp_path, artifacts=False)
    trials = result.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert trials[0].user_attrs["paper_point"] == "flowedit"
    first = EditParams.from_dict(trials[0].user_attrs["params"])
    assert (first.method, first.w_src.start, first.w_tgt.start, first.window) == ("flowedit", 3.5, 13.5, (1, 4))
    for t in trials:
        p = EditParams.from_dict(t.user_attrs["params"])
        assert p.method == "flowedit" and 0.3 <= p.n_max <= 1.0 and p.n_min <= p.n_max
    preset = json.loads(result.preset_path.read_text())
    assert preset["method"] == "flowedit" and "n_max" in preset["picks"]["balanced"]["params"]
    assert "cross_replace" not in preset["picks"]["balanced"]["params"]
    assert result.study.user_attrs["autotune.search_space"].keys() == {"w_src", "w_tgt", "n_max", "n_min"}


def test_cli_edit_tune_and_evaluate_on_flow_models(tiny_sd3_dir, tiny_flux_dir, tasks_file, tmp_path, capsys,
                                                    monkeypatch):
    from autotune.tasks import sources as task_sources

    image = tmp_path / "coffee.png"
    out = tmp_path / "edited.png"
    common = ["--device", "cpu", "--quiet"]
    assert main(["edit", "--model", str(tiny_flux_dir), "--image", str(image), "--source-prompt", "a cup of coffee",
                 "--target-prompt", "a cup of tea", "--steps", "4", "--n-max", "0.5", "--noise-seed", "3",
                 "--out", str(out), "--save-source", *common]) == 0
    printed = capsys.readouterr().out
    assert "flowedit, w_src=1.5, w_tgt=5.5, 4 steps, window 2-4" in printed
    assert Image.open(out).size == (16, 10)  # the model's 16 px on the long side, sides whole 2x2 packs
    assert out.with_name("edited.source.png").is_file()
    assert main(["edit", "--model", str(tiny_flux_dir), "--image", str(image), "--source-prompt", "a cup",
                 "--target-prompt", "a mug", "--method", "null_text", "--out", str(out), *common]) == 2
    assert "method 'null_text' does not run on flow models" in capsys.readouterr().err
    assert main(["edit", "--model", str(tiny_sd3_dir), "--image", str(image), "--source-prompt", "a cup",
                 "--target-prompt", "a mug", "--n-max", "0.2", "--n-min", "0.5", "--out", str(out), *common]) == 2
    assert "n_min=0.5 > n_max=0.2" in capsys.readouterr().err

    load = task_sources.load_tasks
    monkeypatch.setattr(task_sources, "load_tasks", lambda *a, **k: load(*a, **k)[:2])
    assert main(["tune", "--model", str(tiny_sd3_dir), "--tasks", "shapes:change_color", "--trials", "3",
                 "--batch", "3", "--method", "flowedit", "--steps", "3", "--space", "n_avg=1:2",
                 "--project-dir", str(tmp_path / "proj"), "--presets-dir", str(tmp_path / "presets"), *common]) == 0
    printed = capsys.readouterr().out
    assert "preset written to" in printed
    preset = json.loads(next((tmp_path / "presets").glob("*change_color*.json")).read_text())
    assert preset["method"] == "flowedit" and preset["steps"] == 3
    assert preset["provenance"]["search_space"].keys() == {"w_src", "w_tgt", "n_max", "n_min", "n_avg"}

    run = tmp_path / "run"
    argv = ["evaluate", "--model", str(tiny_sd3_dir), "--tasks", str(tasks_file), "--out", str(run), "--metrics",
            "psnr", "mse", "--method", "flow_siminversion", "--steps", "3", "--w-tgt", "4", "--split", "all", *common]
    assert main(argv) == 0
    assert "2 tasks, 0 already done" in capsys.readouterr().out
    rows = list(csv.DictReader(open(run / "results.csv")))
    params = [json.loads(r["params"]) for r in rows]
    assert [(p["method"], p["w_tgt"], p["steps"], p["n_max"]) for p in params] == [("flow_siminversion", 4.0, 3,
                                                                                    1.0)] * 2


def test_report_of_a_flow_study_compares_with_flowedits_setting(sd3, tmp_path):
    from autotune.report import write_report
    from autotune.report.read import paper_default_params, study_picks
    from autotune.shapes.scoring import ShapesScorer
    from autotune.shapes.tasks import shapes_tasks
    from autotune.tuning.tuner import tune

    tasks = shapes_tasks("change_color", "tune", count=1)
    space = SearchSpace.for_editor(sd3, sd3.default_params().with_(steps=2))
    result = tune(sd3, tasks, category="change_color", trials=2, batch=2, storage=str(tmp_path / "s.journal"),
                  scorer=ShapesScorer(), search_space=space, progress=False, prune=False, save_preset=False,
                  project_dir=tmp_path, artifacts=False)
    picks = study_picks(result.study)
    default = paper_default_params(result.study, picks)
    assert (default.method, default.w_src.start, default.w_tgt.start) == ("flowedit", 3.5, 13.5)
    index = write_report(result.study, tmp_path / "report", editor=sd3, tasks=tasks)
    assert (index.parent / "edits.png").is_file() and "flowedit" in index.read_text()
