"""Each script in examples/ runs end to end (few trials, few tasks, few steps).

They run on the bundled shapes model when it is installed, else on the tiny test pipeline.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from autotune.engine.checkpoint import SHAPES_MODEL_DIR

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
QUICK = ["--trials", "3", "--tasks", "2", "--steps", "4"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def model(tiny_model_dir) -> str:
    return "shapes" if (SHAPES_MODEL_DIR / "model_index.json").is_file() else str(tiny_model_dir)


def test_generate_presets(model, tmp_path, capsys):
    presets = tmp_path / "presets"
    code = _load("generate_presets").main(
        [
            "--model",
            model,
            "--categories",
            "add_object",
            "--presets-dir",
            str(presets),
            "--project-dir",
            str(tmp_path / "store"),
            *QUICK,
        ]
    )
    assert code == 0
    files = sorted(presets.glob("*.json"))
    assert [json.loads(f.read_text())["category"] for f in files] == ["add_object"]


def test_tune_from_python(model, tmp_path, capsys):
    code = _load("tune_from_python").main(["--model", model, "--out", str(tmp_path), *QUICK])
    assert code == 0
    out = capsys.readouterr().out
    assert "balanced" in out and "paper (0.5, 7.5)" in out
    assert (tmp_path / "balanced.png").is_file()


def test_share_presets_in_a_team(model, tmp_path, capsys):
    code = _load("share_presets_in_a_team").main(["--model", model, "--out", str(tmp_path), *QUICK])
    assert code == 0
    assert list((tmp_path / "bob-presets").glob("*.json"))
    assert list((tmp_path / "alice-presets").glob("*.json"))


def test_shapes_gallery(tmp_path, capsys):
    from PIL import Image

    code = _load("shapes_gallery").main(["--out", str(tmp_path), "--steps", "3", "--count", "2"])
    assert code == 0
    t2i, edits = Image.open(tmp_path / "shapes_text_to_image.png"), Image.open(tmp_path / "shapes_edits.png")
    assert t2i.size[0] > 200 and edits.size[1] > edits.size[0]  # one row per category
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes_edits.png", "shapes_text_to_image.png"]


def test_shapes_gallery_of_a_flow_model(tiny_sd3_dir, tmp_path, capsys):
    from PIL import Image

    code = _load("shapes_gallery").main(["--model", str(tiny_sd3_dir), "--out", str(tmp_path), "--steps", "2",
                                         "--count", "2"])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes_flow_edits.png", "shapes_flow_samples.png"]
    edits = Image.open(tmp_path / "shapes_flow_edits.png")
    assert edits.size[1] > edits.size[0]  # one row per category


def test_shapes_gallery_of_a_flow_model_adds_a_second_methods_columns(tiny_sd3_dir, tmp_path, capsys):
    """A second presets folder (flow inversion's) adds its published setting and its balanced pick as columns."""
    from PIL import Image

    from autotune import Editor, EditParams
    from autotune.presets.preset import FrontPoint, Preset
    from autotune.presets.store import preset_filename

    info = Editor.from_pretrained(str(tiny_sd3_dir), device="cpu", progress=False).model_info()
    objectives = [{"name": "fidelity", "direction": "maximize", "metrics": {}},
                  {"name": "edit_strength", "direction": "maximize", "metrics": {}}]
    points = [FrontPoint(EditParams(method="flow_siminversion", w_src=s, w_tgt=t, steps=2, n_max=1.0),
                         {"fidelity": f, "edit_strength": e}) for s, t, f, e in [(0.0, 2.0, 30.0, 0.2),
                                                                                (0.5, 3.0, 25.0, 0.6)]]
    inversion = tmp_path / "inversion"
    preset = Preset.from_front(points, category="change_color", model=info, objectives=objectives)
    preset.save(inversion / preset_filename(info["id"], "change_color"))
    (tmp_path / "flowedit").mkdir()
    widths = []
    for presets in (str(tmp_path / "flowedit"), f"{tmp_path / 'flowedit'},{inversion}"):
        out = tmp_path / str(len(widths))
        args = ["--model", str(tiny_sd3_dir), "--out", str(out), "--steps", "2", "--only", "edits",
                "--presets", presets]
        assert _load("shapes_gallery").main(args) == 0
        widths.append(Image.open(out / "shapes_flow_edits.png").size[0])
    assert widths[1] / widths[0] == pytest.approx(7 / 5, rel=0.05)  # source, published, 3 picks; + 2 columns


def test_replay_pruning(tmp_path, capsys):
    from autotune.tuning.tuner import tune
    from tests.test_tuner_fakes import FakeEditor, FakeScorer, make_tasks

    journal = tmp_path / "s.journal"
    tune(FakeEditor(), make_tasks(6), category="change_color", trials=16, batch=4, sampler="random", seed=3,
         scorer=FakeScorer(), storage=str(journal), prune=False, progress=False, save_preset=False,
         project_dir=tmp_path)
    code = _load("replay_pruning").main(["--storage", str(journal), "--shuffles", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "shuffled task orders: 3 replays" in out
    row = next(line for line in out.splitlines() if line.startswith("| fake"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["16", "6"] and int(cells[3]) > 0 and float(cells[4]) < 1.0 and cells[6] == "none"
    # In the tuner's default groups (4 tasks at batch 4 under max_batch 16) the pruner is asked less often.
    assert _load("replay_pruning").main(["--storage", str(journal), "--task-batch", "0"]) == 0
    grouped = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| fake"))
    assert int(grouped.strip("|").split("|")[3]) <= int(cells[3])


def test_examples_say_how_to_run_them_from_the_readme_install():
    """The README installs into .venv without activating it: `python examples/x.py` would not find autotune."""
    import re

    readme = (EXAMPLES.parent / "README.md").read_text()
    for script in sorted(EXAMPLES.glob("*.py")):
        doc = script.read_text().split('"""')[1]
        runs = re.findall(r"^\s*(\S+) examples/" + script.name, doc, flags=re.M)
        assert runs and set(runs) == {".venv/bin/python"}, (script.name, runs)
        assert f"examples/{script.name}" in readme, f"README does not mention {script.name}"
