"""`autotune presets ...` end to end through the CLI entry point."""

from __future__ import annotations

import json

import pytest

from autotune.cli import main
from autotune.params import EditParams
from autotune.presets.preset import FrontPoint, Preset
from autotune.presets.store import preset_filename

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
OBJ = [
    {"name": "fidelity", "direction": "maximize", "metrics": {"preservation": 1.0}},
    {"name": "edit_strength", "direction": "maximize", "metrics": {"edit_success": 1.0}},
]


def tuned(w_tgt: float, fidelity: float = 0.8) -> Preset:
    points = [FrontPoint(EditParams(w_tgt=w_tgt), {"fidelity": fidelity, "edit_strength": 0.4}, {}, 0),
              FrontPoint(EditParams(w_tgt=w_tgt + 2), {"fidelity": fidelity - 0.3, "edit_strength": 0.9}, {}, 1)]
    return Preset.from_front(points, category="change_color", model={"id": "shapes"}, objectives=OBJ,
                             provenance={"kind": "tuned", "task_fingerprint": "T",
                                         "study": {"name": "s", "storage": "postgresql://a:secret@h/db"}})


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOTUNE_PRESETS_DIR", str(tmp_path / "user"))
    (tmp_path / "presets").mkdir()
    return tmp_path


def test_list_and_show(env, capsys):
    tuned(6.0).save(env / "presets" / preset_filename("shapes", "change_color"))
    assert main(["presets", "list"]) == 0
    out = capsys.readouterr().out
    assert "local   change_color      shapes  [tuned]" in out and "shipped" in out
    assert main(["presets", "list", "--category", "6", "--model", "CompVis/stable-diffusion-v1-4"]) == 0
    out = capsys.readouterr().out
    assert "paper_default" in out and "change_style" not in out and "shapes" not in out.split("\n", 1)[1]
    assert main(["presets", "show", "change_color:aggressive", "--model", "shapes"]) == 0
    out = capsys.readouterr().out
    assert "* aggressive    siminversion w_src=0.5 w_tgt=8" in out and "<- conservative, balanced" in out
    assert "secret" not in out
    assert main(["presets", "show", "change_color", "--model", "shapes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["category"] == "change_color"


def test_show_errors_are_clear(env, capsys):
    assert main(["presets", "show", "change_color", "--model", "unknown/model"]) == 2
    assert "no change_color preset for model 'unknown/model'" in capsys.readouterr().err
    (env / "bad.json").write_text('{"schema_version": 1, "category": "change_color"')
    assert main(["presets", "show", "bad.json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_diff(env, capsys):
    a, b = env / "a.json", env / "b.json"
    tuned(6.0).save(a)
    tuned(7.0).save(b)
    assert main(["presets", "diff", str(a), str(a)]) == 0
    assert "no differences" in capsys.readouterr().out
    assert main(["presets", "diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "picks.balanced.params.w_tgt: 6.0 -> 7.0" in out and "content_hash" not in out


def test_show_and_diff_summarise_the_tuning_tasks(env, capsys):
    def listing(digests):
        preset = tuned(6.0)
        preset.provenance.update(task_source={"spec": "tasks.jsonl", "split": "tune", "heldout_fraction": 0.3},
                                 task_digests=digests)
        return preset

    a, b = env / "a.json", env / "b.json"
    listing([f"{i:016x}" for i in range(300)]).save(a)
    listing([f"{i:016x}" for i in range(100, 350)]).save(b)
    assert main(["presets", "show", str(a)]) == 0
    out = capsys.readouterr().out
    assert "tuned on    spec tasks.jsonl, split tune, heldout_fraction 0.3; 300 task digests listed" in out
    assert f"{7:016x}" not in out  # the list itself stays out of the way
    assert main(["presets", "diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "provenance.task_digests: 300 tasks -> 250 tasks (200 in common)" in out
    assert "task_digests[" not in out


def test_export_import_verify(env, capsys):
    tuned(6.0).save(env / "presets" / preset_filename("shapes", "change_color"))
    assert main(["presets", "export", "--out", "team.zip"]) == 0
    assert "wrote team.zip: 1 preset(s)" in capsys.readouterr().out
    assert main(["presets", "verify", "team.zip", "presets"]) == 0
    assert main(["presets", "import", "team.zip"]) == 0
    out = capsys.readouterr().out
    assert "imported into" in out and "1 added" in out
    assert (env / "user" / preset_filename("shapes", "change_color")).is_file()
    assert main(["presets", "import", "team.zip"]) == 0
    assert "1 unchanged" in capsys.readouterr().out
    # A tampered preset file fails verification with exit code 1.
    target = env / "presets" / preset_filename("shapes", "change_color")
    target.write_text(target.read_text().replace('"w_tgt": 6.0', '"w_tgt": 60.0', 1))
    assert main(["presets", "verify", "presets"]) == 1
    assert "content_hash does not match" in capsys.readouterr().out


def test_no_action_prints_help(capsys):
    assert main(["presets"]) == 2
    assert "from-study" in capsys.readouterr().out


def test_verify_without_a_path_checks_the_lookup_order(env, capsys):
    from autotune.presets.store import shipped_presets_dir

    (env / "user").mkdir()
    tuned(6.0).save(env / "user" / preset_filename("shapes", "change_color"))
    local = env / "presets" / preset_filename("shapes", "change_object")
    tuned(6.0).save(local)
    local.write_text(local.read_text().replace('"w_tgt": 6.0', '"w_tgt": 60.0', 1))  # edited by hand
    assert main(["presets", "verify"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("lookup order: local=")
    assert f"ok        user    {env / 'user' / preset_filename('shapes', 'change_color')}" in out
    assert f"rejected  local   {local}" in out and "content_hash does not match" in out
    shipped = sorted(shipped_presets_dir().glob("*.json"))
    assert all(f"ok        shipped {p}" in out for p in shipped)
    assert f"{len(shipped) + 2} preset file(s) checked, 1 rejected" in out
    assert main(["presets", "verify", str(env / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err


def test_list_says_how_many_trials_completed(env, capsys):
    preset = tuned(6.0)
    data = preset.to_dict(with_hash=False)
    data["provenance"].update(n_trials=32, n_complete=15)
    Preset.from_dict(data).save(env / "presets" / preset_filename("shapes", "change_color"))
    assert main(["presets", "list", "--model", "shapes"]) == 0
    assert "[tuned, 15 of 32 trials complete]" in capsys.readouterr().out


def test_show_with_presets_of_several_models_names_the_option(env, capsys):
    tuned(6.0).save(env / "presets" / preset_filename("shapes", "change_color"))
    other = tuned(7.0).to_dict(with_hash=False)
    other["model"]["id"] = "my/model"
    Preset.from_dict(other).save(env / "presets" / preset_filename("my/model", "change_color"))
    assert main(["presets", "show", "change_color"]) == 2
    err = capsys.readouterr().err
    assert "several models (my/model, shapes)" in err and "--model ID" in err


def test_show_prints_a_flow_settings_window(tmp_path, capsys):
    objectives = [{"name": "fidelity", "direction": "maximize", "metrics": {}},
                  {"name": "edit_strength", "direction": "maximize", "metrics": {}}]
    points = [FrontPoint(EditParams(method="flowedit", w_src=s, w_tgt=t, steps=50, n_max=n, n_min=0.04),
                         {"fidelity": f, "edit_strength": e})
              for s, t, n, f, e in ((2.5, 3.0, 0.34, 35.0, 0.2), (3.5, 5.0, 0.46, 33.0, 0.5),
                                    (4.0, 8.0, 0.66, 30.0, 0.8))]
    preset = Preset.from_front(points, category="change_color", model={"id": "shapes-flow"}, objectives=objectives)
    path = tmp_path / "p.json"
    path.write_text(preset.dumps())
    assert main(["presets", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "balanced      flowedit w_src=3.5 w_tgt=5 steps=50 n_max=23/50 n_min=2/50 n_avg=1" in out  # 0.46, 0.04 of 50
