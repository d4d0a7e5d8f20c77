"""Preset lookup order, spec resolution, the shipped SD 1.x presets, and never-silent overwrites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.errors import PresetError
from autotune.params import EditParams
from autotune.presets.preset import FrontPoint, Preset, PresetWarning
from autotune.presets.store import (
    PresetStore,
    model_slug,
    open_presets,
    parse_spec,
    preset_filename,
    search_dirs,
    shipped_presets_dir,
    user_presets_dir,
)
from autotune.task import CATEGORIES

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
OBJ = [
    {"name": "fidelity", "direction": "maximize", "metrics": {"preservation": 1.0}},
    {"name": "edit_strength", "direction": "maximize", "metrics": {"edit_success": 1.0}},
]


def tuned(model_id: str, w_tgt: float, fingerprint: str = "T", values=((0.9, 0.5),), category="change_color") -> Preset:
    points = [FrontPoint(EditParams(w_tgt=w_tgt + i), {"fidelity": f, "edit_strength": e}, {}, i)
              for i, (f, e) in enumerate(values)]
    return Preset.from_front(points, category=category, model={"id": model_id}, objectives=OBJ,
                             provenance={"kind": "tuned", "task_fingerprint": fingerprint})


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    project, user = tmp_path / "project", tmp_path / "user"
    (project / "presets").mkdir(parents=True)
    user.mkdir()
    monkeypatch.setenv("AUTOTUNE_PRESETS_DIR", str(user))
    monkeypatch.chdir(project)
    return project / "presets", user


@pytest.mark.parametrize("name", ["sd15", "sd14", "CompVis/stable-diffusion-v1-4"])
def test_shipped_sd1_presets_are_found_for_the_short_names_and_aliases(name):
    """A model loaded as `--model sd15` is named 'sd15' (its model_info id): the shipped presets must answer to it."""
    store = PresetStore([("shipped", shipped_presets_dir())])
    entry = store.find("change_color", {"id": name})
    assert entry.preset.model["id"] == SD15 and entry.origin == "shipped"


def test_shipped_sd1_presets_are_the_paper_defaults_for_every_category():
    shipped = shipped_presets_dir()
    assert shipped is not None and shipped.name == "presets"
    files = sorted(shipped.glob("stable-diffusion-v1-5*.json"))
    assert len(files) == len(CATEGORIES)
    for file in files:
        raw = json.loads(file.read_text())
        preset = Preset.load(file, strict=True)
        assert raw["provenance"]["kind"] == "paper_default" and "SimInversion" in raw["provenance"]["citation"]
        assert "CompVis/stable-diffusion-v1-4" in raw["model"]["applies_to"]
        assert "v1.4" in raw["model"]["notes"]
        assert raw["front"] == [] and file.name == preset_filename(SD15, preset.category)
        for style in ("conservative", "balanced", "aggressive"):
            p = raw["picks"][style]["params"]
            assert (p["method"], p["w_src"], p["w_tgt"], p["steps"]) == ("siminversion", 0.5, 7.5, 50)
            assert (p["cross_replace"], p["self_replace"], p["reweight"], p["blend_threshold"]) == (0.4, 0.6, 2.0, 0.3)
        sched = raw["model"]["scheduler"]
        assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
        assert sched["clip_sample"] is False and sched["set_alpha_to_one"] is False


def test_lookup_order_local_then_user_then_shipped(dirs):
    local, user = dirs
    order = [origin for origin, _ in search_dirs()]
    assert order == ["local", "user", "shipped"]
    store = PresetStore()
    # Nothing local or user: the shipped paper default, also found under SD 1.4's id.
    entry = store.find("change_color", {"id": "CompVis/stable-diffusion-v1-4"})
    assert entry.origin == "shipped" and entry.preset.kind == "paper_default"
    tuned(SD15, 8.0).save(user / preset_filename(SD15, "change_color"))
    assert store.find("change_color", SD15).origin == "user"
    tuned(SD15, 9.0).save(local / preset_filename(SD15, "change_color"))
    entry = store.find("change_color", SD15)
    assert entry.origin == "local" and entry.preset.params().w_tgt.start == 9.0
    # Another category still falls through to the shipped one.
    assert store.find("change_style", SD15).origin == "shipped"
    # ... also for an editor loaded by a short name (`Editor.from_pretrained("sd15", presets=True)`: its id is "sd15").
    for short in ("sd15", "sd14"):
        assert store.params_for("change_pose", None, {"id": short, "scheduler": {}}).w_tgt.start == 7.5


def test_resolve_specs(dirs):
    local, _ = dirs
    tuned(SD15, 9.0, values=((1.0, 0.1), (0.8, 0.7), (0.1, 0.9))).save(local / preset_filename(SD15, "change_color"))
    store = PresetStore()
    preset, style = store.resolve("change_color", SD15)
    assert style == "balanced" and preset.params(style).w_tgt.start == 10.0
    preset, style = store.resolve("change_color:aggressive", SD15)
    assert style == "aggressive" and preset.params(style).w_tgt.start == 11.0
    preset, style = store.resolve("6:conservative", SD15)  # PIE-Bench id works too
    assert preset.params(style).w_tgt.start == 9.0
    path = local / preset_filename(SD15, "change_color")
    preset, style = store.resolve(f"{path}:aggressive")
    assert preset.source == str(path) and style == "aggressive"
    with pytest.raises(PresetError, match="not a category"):
        store.resolve("make_it_pop")
    with pytest.raises(PresetError, match="does not exist"):
        store.resolve("missing/file.json")
    assert parse_spec("a/b.json:balanced") == ("a/b.json", "balanced", True)
    assert parse_spec("change_color") == ("change_color", None, False)


def test_not_found_says_where_it_looked(dirs):
    with pytest.raises(PresetError, match=r"no change_color preset for model 'my/model'; looked in: local .*shipped"):
        PresetStore().find("change_color", "my/model")


def test_several_models_need_a_model(dirs):
    local, _ = dirs
    tuned("a/one", 8.0).save(local / preset_filename("a/one", "change_color"))
    tuned("b/two", 8.0).save(local / preset_filename("b/two", "change_color"))
    with pytest.raises(PresetError, match="several models"):
        PresetStore().find("change_color")
    assert PresetStore().find("change_color", "b/two").preset.model["id"] == "b/two"


def test_broken_file_is_skipped_with_a_warning(dirs):
    local, _ = dirs
    (local / preset_filename(SD15, "change_color")).write_text("{broken")
    with pytest.warns(PresetWarning, match="skipping broken preset"):
        entry = PresetStore().find("change_color", SD15)
    assert entry.origin == "shipped"


def test_params_for_checks_compatibility(dirs):
    store = PresetStore()
    info = {"id": SD15, "scheduler": {"beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 0}}
    assert store.params_for("change_color", "balanced", info) == EditParams(w_src=0.5, w_tgt=7.5)
    with pytest.raises(PresetError, match="beta_end"):
        store.params_for("change_color", "balanced", {**info, "scheduler": {"beta_end": 0.02}})
    # Checkpoint scheduler of SD 1.5 (steps_offset 1): usable, with a warning.
    with pytest.warns(PresetWarning, match="steps_offset"):
        store.params_for("change_color", None, {**info, "scheduler": {"steps_offset": 1}})
    explicit = open_presets(str(shipped_presets_dir() / preset_filename(SD15, "change_pose")))
    assert isinstance(explicit, Preset)
    with pytest.raises(PresetError, match="is a change_pose preset, not change_color"):
        explicit.params_for("change_color", "balanced", info)
    assert isinstance(open_presets(True), PresetStore) and open_presets(None) is None


def test_add_never_overwrites_silently(tmp_path):
    store = PresetStore([])
    first = tuned("m", 8.0, values=((0.8, 0.5),))
    assert store.add(first, tmp_path).action == "added"
    assert store.add(first, tmp_path).action == "unchanged"
    worse = tuned("m", 6.0, values=((0.7, 0.4),))
    result = store.add(worse, tmp_path)
    assert result.action == "kept" and "--force" in result.reason
    assert Preset.load(result.path).params().w_tgt.start == 8.0
    other_tasks = tuned("m", 9.0, fingerprint="U", values=((0.99, 0.99),))
    result = store.add(other_tasks, tmp_path)
    assert result.action == "kept" and "task" in result.reason
    better = tuned("m", 9.0, values=((0.9, 0.6),))
    result = store.add(better, tmp_path)
    assert result.action == "replaced" and "hypervolume" in result.reason
    assert store.add(worse, tmp_path, force=True).action == "replaced"
    assert Preset.load(result.path).params().w_tgt.start == 6.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [preset_filename("m", "change_color")]


def test_user_dir_and_slugs(monkeypatch, tmp_path):
    monkeypatch.delenv("AUTOTUNE_PRESETS_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert user_presets_dir() == tmp_path / "autotune" / "presets"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_presets_dir() == tmp_path / ".config" / "autotune" / "presets"
    assert model_slug("org/name") == "org--name"
    assert model_slug("/data/models/my sd") != model_slug("/other/models/my sd")  # paths get a hash
    assert "/" not in model_slug("../../etc/passwd") and not model_slug("../../etc/passwd").startswith(".")
    assert Path(preset_filename("../../x", 6)).name == preset_filename("../../x", 6)
