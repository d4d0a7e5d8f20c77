"""Preset file format: round trip, validation, migration, content hash, picks, compatibility."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest

from autotune.errors import PresetError
from autotune.params import EditParams
from autotune.presets.preset import (
    MAX_PRESET_BYTES,
    SCHEMA_VERSION,
    FrontPoint,
    Preset,
    PresetWarning,
    pick_indices,
)
from autotune.redact import redact_url

OBJ_MAX = [
    {"name": "fidelity", "direction": "maximize", "metrics": {"preservation": 1.0}},
    {"name": "edit_strength", "direction": "maximize", "metrics": {"edit_success": 1.0}},
]
OBJ_PIE = [
    {"name": "fidelity", "direction": "minimize", "metrics": {"structure_distance": 1.0, "background_lpips": 1.0}},
    {"name": "edit_strength", "direction": "maximize", "metrics": {"clip_edited": 1.0}},
]
MODEL = {
    "id": "org/model",
    "revision": "abc123",
    "weights": "f00d",
    "scheduler": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1},
}


def point(w_src: float, w_tgt: float, fidelity: float, strength: float, trial: int = 0) -> FrontPoint:
    return FrontPoint(EditParams(w_src=w_src, w_tgt=w_tgt), {"fidelity": fidelity, "edit_strength": strength},
                      {"m": fidelity}, trial)


def make_preset(points=None, objectives=OBJ_MAX, **prov) -> Preset:
    points = points or [point(0.5, 7.5, 0.9, 0.6, 0), point(0.0, 3.0, 1.0, 0.0, 1), point(1.0, 9.0, 0.5, 0.9, 2),
                        point(2.0, 12.0, 0.0, 1.0, 3), point(1.0, 2.0, 0.4, 0.4, 4)]
    provenance = {"kind": "tuned", "task_fingerprint": "tasks-A", "n_trials": len(points), **prov}
    return Preset.from_front(points, category="change_color", model=MODEL, objectives=objectives,
                             scorer={"mode": "shapes"}, provenance=provenance)


def test_round_trip_is_exact_and_hash_is_sha256_of_canonical_json(tmp_path):
    preset = make_preset()
    path = preset.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    body = {k: v for k, v in data.items() if k != "content_hash"}
    expected = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert data["content_hash"] == "sha256:" + expected
    assert data["schema_version"] == SCHEMA_VERSION
    loaded = Preset.load(path, strict=True)
    assert loaded == preset
    assert loaded.content_hash == preset.content_hash
    assert loaded.params("aggressive") == preset.params("aggressive")


def test_front_drops_dominated_points_and_picks_the_knee():
    preset = make_preset()
    # (0.4, 0.4) is dominated by (0.9, 0.6); the front is sorted by fidelity, best first.
    assert [p.values["fidelity"] for p in preset.front] == [1.0, 0.9, 0.5, 0.0]
    assert preset.params("conservative").w_tgt.start == 3.0
    assert preset.params("aggressive").w_tgt.start == 12.0
    # Normalised, the point nearest the ideal (1, 1) is (0.9, 0.6), the knee (also the largest x + y: 1.5).
    assert preset.params().w_tgt.start == 7.5
    assert preset.params("balanced") == preset.params()


def test_picks_respect_minimised_fidelity():
    # Fidelity as a distance (lower is better): the conservative pick is the smallest distance.
    values = [{"fidelity": d, "edit_strength": s} for d, s in [(0.30, 25.0), (0.05, 20.0), (0.10, 24.0), (0.02, 10.0)]]
    picks = pick_indices(values, ("minimize", "maximize"))
    assert picks["conservative"] == 3
    assert picks["aggressive"] == 0
    # normalised fid = (0.3-d)/0.28, str = (s-10)/15: sums 1.0, 1.23, 1.648, 1.0 -> index 2
    assert picks["balanced"] == 2


def test_two_point_front_ties_go_to_fidelity_and_collinear_to_the_middle():
    two = [{"fidelity": 1.0, "edit_strength": 0.0}, {"fidelity": 0.0, "edit_strength": 1.0}]
    assert pick_indices(two, ("maximize", "maximize"))["balanced"] == 0
    line = [{"fidelity": 1 - x, "edit_strength": x} for x in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert pick_indices(line, ("maximize", "maximize"))["balanced"] == 2


def test_a_slightly_sagging_front_is_balanced_in_the_middle_not_at_an_end():
    # An earlier shipped shapes add_object front: scaled (1, 0), (0.498, 0.5), (0, 1). The middle lies a hair below
    # the chord x + y = 1, but it is the point nearest the ideal (distance 0.71 against 1 for both ends).
    front = [{"fidelity": f, "edit_strength": e} for f, e in [(19.70, 0.35), (17.56, 0.40), (15.44, 0.45)]]
    assert pick_indices(front, ("maximize", "maximize")) == {"conservative": 0, "balanced": 1, "aggressive": 2}


def test_preset_is_frozen():
    preset = make_preset()
    with pytest.raises(AttributeError):
        preset.category = "change_style"  # type: ignore[misc]


def _valid_dict() -> dict:
    return make_preset().to_dict()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(category="paint_it_black"), "category"),
        (lambda d: d["model"].pop("id"), "model.id"),
        (lambda d: d["picks"]["balanced"]["params"].update(w_src=-1.0), "picks.balanced.params"),
        (lambda d: d["picks"]["balanced"]["params"].update(steps=0), "steps"),
        (lambda d: d["picks"]["balanced"]["params"].update(cross_replace=1.5), "cross_replace"),
        (lambda d: d["picks"]["balanced"]["params"].update(w_tgt="7.5"), "w_tgt"),
        (lambda d: d["picks"].pop("aggressive"), "missing pick"),
        (lambda d: d["picks"]["balanced"].update(front_index=99), "front_index"),
        (lambda d: d["front"][0]["values"].update(fidelity="high"), r"front\[0\]\.values\.fidelity"),
        (lambda d: d["objectives"][0].update(direction="up"), "direction"),
        (lambda d: d["provenance"].update(kind="magic"), "provenance.kind"),
        (lambda d: d["provenance"].update(n_trials=-3), "n_trials"),
        (lambda d: d["provenance"].update(task_source={"spec": "shapes:change_color", "world_version": "2"}),
         "task_source.world_version"),
        (lambda d: d.update(steps=10), "steps"),
        (lambda d: d.update(default_style="wild"), "default_style"),
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "newer autotune"),
        (lambda d: d.update(schema_version="1"), "schema_version"),
        (lambda d: d.update(schema_version=-5), "cannot be migrated"),
    ],
)
def test_validation_names_the_field(mutate, message):
    data = _valid_dict()
    mutate(data)
    data.pop("content_hash")
    with pytest.raises(PresetError, match=message):
        Preset.loads(json.dumps(data), source="bad.json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON at line 1"),
        ('{"schema_version": NaN}', "NaN is not allowed"),
        ('{"a": 1, "a": 2}', "appears twice"),
        ("[1, 2]", "must be an object"),
        ("[" * 100000 + "]" * 100000, "nested too deeply|not valid JSON"),
    ],
)
def test_malformed_json_is_refused_clearly(text, message):
    with pytest.raises(PresetError, match=message):
        Preset.loads(text, source="x.json")


def test_unknown_keys_warn_and_are_dropped():
    data = _valid_dict()
    data["colour_scheme"] = "dark"
    data["model"]["favourite"] = True
    data.pop("content_hash")
    with pytest.warns(PresetWarning, match="unknown key") as record:
        preset = Preset.loads(json.dumps(data))
    assert any("colour_scheme" in str(w.message) for w in record)
    assert any("model: unknown key(s) favourite" in str(w.message) for w in record)
    assert "colour_scheme" not in preset.to_dict()


def test_stale_content_hash_warns_or_fails_when_strict():
    data = _valid_dict()
    data["provenance"]["author"] = "mallory"
    text = json.dumps(data)
    with pytest.warns(PresetWarning, match="content_hash does not match"):
        Preset.loads(text)
    with pytest.raises(PresetError, match="content_hash does not match"):
        Preset.loads(text, strict=True)


def test_hand_edited_pick_is_honoured_with_a_warning():
    data = _valid_dict()
    data["picks"]["balanced"]["params"]["w_tgt"] = 8.0
    data.pop("content_hash")
    with pytest.warns(PresetWarning, match="edited by hand"):
        preset = Preset.loads(json.dumps(data))
    assert preset.params().w_tgt.start == 8.0


def test_huge_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as fh:
        fh.truncate(MAX_PRESET_BYTES + 1)  # sparse: size says huge, nothing to parse
    with pytest.raises(PresetError, match="refused unread"):
        Preset.load(path)
    with pytest.raises(PresetError, match="limit"):
        Preset.loads(" " * (MAX_PRESET_BYTES + 1))


def test_not_a_regular_file_or_missing(tmp_path):
    with pytest.raises(PresetError, match="not a regular file"):
        Preset.load(tmp_path)
    with pytest.raises(PresetError, match="does not exist"):
        Preset.load(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PresetError, match="not UTF-8"):
        Preset.load(tmp_path / "bin.json")


def test_a_preset_cannot_name_code_to_run():
    # Anything that looks like a hook is just an unknown key (ignored) or an invalid value (refused).
    data = _valid_dict()
    data["picks"]["balanced"]["params"]["method"] = "os.system"
    data.pop("content_hash")
    with pytest.raises(PresetError, match="unknown method"):
        Preset.loads(json.dumps(data))
    data = _valid_dict()
    data["picks"]["balanced"]["params"]["__reduce__"] = "os.system"
    data.pop("content_hash")
    with pytest.raises(PresetError, match="unknown edit parameter"):
        Preset.loads(json.dumps(data))


def test_migration_from_schema_0():
    v0 = {"schema_version": 0, "category": "6", "model_id": "org/model", "method": "siminversion",
          "w_src": 0.7, "w_tgt": 6.0, "steps": 30}
    preset = Preset.loads(json.dumps(v0), source="old.json")
    assert preset.category == "change_color"
    assert preset.model["id"] == "org/model"
    assert preset.provenance["migrated_from"] == 0
    assert preset.provenance["kind"] == "hand_made"
    for style in ("conservative", "balanced", "aggressive"):
        assert preset.params(style) == EditParams(w_src=0.7, w_tgt=6.0, steps=30)
    assert Preset.loads(preset.dumps(), strict=True) == preset  # saved as the current version


def test_unknown_style_is_a_clear_error():
    with pytest.raises(PresetError, match="no pick named 'wild'"):
        make_preset().params("wild")


def test_compatibility_refuses_other_model_unless_overridden():
    preset = make_preset()
    assert preset.check_compatible({**MODEL}) == []
    with pytest.raises(PresetError, match="made for model 'org/model', not 'other/model'.*override"):
        preset.check_compatible({"id": "other/model", "scheduler": MODEL["scheduler"]})
    with pytest.warns(PresetWarning, match="overridden"):
        notes = preset.check_compatible({"id": "other/model"}, override=True)
    assert notes and "overridden" in notes[0]


def test_compatibility_by_weights_hash_and_scheduler():
    preset = make_preset()
    # Same weights at another path: compatible.
    assert preset.check_compatible({"id": "/data/my-copy", "weights": "f00d"}) == []
    # Same id, different weights: refused.
    with pytest.raises(PresetError, match="weights"):
        preset.check_compatible({"id": "org/model", "weights": "beef"})
    # Another noise schedule: refused; a different steps_offset or revision: a warning only.
    with pytest.raises(PresetError, match="beta_end"):
        preset.check_compatible({"id": "org/model", "scheduler": {**MODEL["scheduler"], "beta_end": 0.02}})
    with pytest.warns(PresetWarning):
        notes = preset.check_compatible({"id": "org/model", "revision": "zzz",
                                         "scheduler": {**MODEL["scheduler"], "steps_offset": 0}})
    assert len(notes) == 2


def test_improves_on_uses_hypervolume_on_the_same_tasks():
    base = make_preset()
    better = make_preset([point(0.5, 7.5, 0.95, 0.7, 0), point(0.0, 3.0, 1.0, 0.1, 1), point(2.0, 12.0, 0.1, 1.0, 3)])
    worse = make_preset([point(0.5, 7.5, 0.5, 0.5, 0)])
    ok, why = better.improves_on(base)
    assert ok, why
    assert not worse.improves_on(base)[0]
    assert not base.improves_on(base)[0]
    other_tasks = make_preset(better.front, task_fingerprint="tasks-B")
    ok, why = other_tasks.improves_on(base)
    assert not ok and "task" in why


def test_storage_passwords_never_reach_the_file():
    preset = make_preset(study={"name": "s", "storage": "postgresql://bob:hunter2@db:5432/autotune"})
    assert "hunter2" not in preset.dumps()
    assert preset.provenance["study"]["storage"] == "postgresql://bob:***@db:5432/autotune"
    data = preset.to_dict()
    data["provenance"]["study"]["storage"] = "postgresql://bob:hunter2@db:5432/autotune"  # a hand-made file
    data.pop("content_hash")
    with pytest.warns(PresetWarning, match="password"):
        loaded = Preset.loads(json.dumps(data))
    assert "hunter2" not in loaded.dumps()
    assert redact_url("postgresql://bob:hunter2@db/x") == "postgresql://bob:***@db/x"


def test_paper_default_has_no_front_and_loads():
    preset = Preset.paper_default(6, {"id": "m"}, EditParams(), citation="paper")
    assert preset.kind == "paper_default" and preset.front == ()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Preset.loads(preset.dumps(), strict=True) == preset


def test_a_world_version_in_the_task_source_round_trips():
    data = _valid_dict()
    data["provenance"]["task_source"] = {"spec": "shapes:change_color", "split": "tune", "world_version": 2}
    data.pop("content_hash")
    preset = Preset.loads(json.dumps(data), source="flow.json")
    assert preset.provenance["task_source"]["world_version"] == 2
    assert Preset.loads(preset.dumps(), source="again.json").provenance == preset.provenance
