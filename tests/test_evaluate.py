"""`evaluate` and `autotune evaluate`: images, per-task CSV, PIE-Bench summary, resuming."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from autotune.cli import main
from autotune.errors import InputError
from autotune.evaluation.evaluate import evaluate, summarize
from autotune.params import EditParams
from autotune.scoring import PieBenchScorer
from autotune.task import EditTask


class FakeResult:
    def __init__(self, pixels, params):
        self.pixels, self.params = pixels, params

    @property
    def image(self):
        return Image.fromarray((self.pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


class FakeEditor:
    """Same API shape as `Editor`: darkens the image by w_tgt / 100. Can be told to fail on one task."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[str] = []
        self.fail_on = fail_on

    def model_info(self):
        return {"id": "fake", "scheduler": "ddim"}

    def edit_task(self, task, candidates):
        if task.id == self.fail_on:
            raise KeyboardInterrupt
        self.calls.append(task.id)
        src = torch.from_numpy(np.asarray(task.image, dtype=np.float32) / 255).permute(2, 0, 1)
        return [FakeResult((src * (1 - p.w_tgt.start / 100)).clamp(0, 1), p) for p in candidates]


def _tasks():
    photos = {"astro": data.astronaut()[::8, ::8], "coffee": data.coffee()[::8, ::8], "cat": data.chelsea()[::6, ::6]}
    cats = {"astro": "change_color", "coffee": "change_object", "cat": "change_color"}
    tasks = []
    for name, photo in photos.items():
        mask = np.zeros(photo.shape[:2], dtype=bool)
        mask[10:30, 10:40] = True
        tasks.append(EditTask(name, Image.fromarray(photo), "a photo", "a red photo", cats[name], None, mask))
    return tasks


SCORER = PieBenchScorer(mode="piebench", device="cpu", metrics=("psnr", "mse", "ssim"))


def test_writes_images_rows_and_piebench_summary(tmp_path):
    result = evaluate(FakeEditor(), _tasks(), EditParams(w_tgt=10.0), SCORER, tmp_path / "run", progress=False)
    out = tmp_path / "run"
    assert sorted(p.name for p in (out / "images" / "change_color").iterdir()) == ["astro.png", "cat.png"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["task_id"] for r in rows] == ["astro", "coffee", "cat"]
    assert rows[0]["method"] == "siminversion" and float(rows[0]["w_tgt"]) == 10.0
    assert json.loads(rows[0]["params"])["w_src"] == 0.5
    # the scorer saw the edit: darkening by 10% gives a finite PSNR matching the row
    assert 10 < float(rows[0]["psnr"]) < 40 and float(rows[0]["mse"]) > 0
    by_cat = {s["category"]: s for s in result.summary}
    color = [float(r["mse"]) for r in rows if r["category"] == "change_color"]
    assert by_cat["change_color"]["n"] == 2
    assert by_cat["change_color"]["mse"] == pytest.approx(1e4 * sum(color) / 2, rel=1e-6)  # MSE x10^4
    assert by_cat["all"]["ssim"] == pytest.approx(100 * np.mean([float(r["ssim"]) for r in rows]), rel=1e-6)
    table = (out / "summary.md").read_text()
    assert "| category | n | PSNR | MSE x10^4 | SSIM x10^2 |" in table and "| change_color | 2 |" in table
    assert json.loads((out / "run.json").read_text())["scorer"]["mode"] == "piebench"


def test_resumes_after_an_interruption_without_redoing_tasks(tmp_path):
    editor = FakeEditor(fail_on="cat")
    with pytest.raises(KeyboardInterrupt):
        evaluate(editor, _tasks(), EditParams(), SCORER, tmp_path, progress=False)
    assert editor.calls == ["astro", "coffee"]
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 2
    editor = FakeEditor()
    result = evaluate(editor, _tasks(), EditParams(), SCORER, tmp_path, progress=False)
    assert editor.calls == ["cat"] and result.skipped == 2 and len(result.rows) == 3
    assert evaluate(FakeEditor(), _tasks(), EditParams(), SCORER, tmp_path, progress=False).skipped == 3


def test_refuses_to_mix_runs(tmp_path):
    evaluate(FakeEditor(), _tasks()[:1], EditParams(), SCORER, tmp_path, progress=False)
    with pytest.raises(InputError, match="different params_source"):
        evaluate(FakeEditor(), _tasks()[:1], EditParams(w_tgt=5.0), SCORER, tmp_path, progress=False)
    masked = PieBenchScorer(mode="masked", device="cpu", metrics=("psnr", "mse", "ssim"))
    with pytest.raises(InputError, match="scorer mode"):
        evaluate(FakeEditor(), _tasks()[:1], EditParams(), masked, tmp_path, progress=False)


def test_per_category_params_from_a_preset_like_source(tmp_path):
    class ByCategory:
        label = "test presets"

        def params_for(self, category, style, model_info):
            return EditParams(w_tgt=20.0 if category == "change_object" else 5.0)

    result = evaluate(FakeEditor(), _tasks(), ByCategory(), SCORER, tmp_path, progress=False)
    assert {r["task_id"]: float(r["w_tgt"]) for r in result.rows} == {"astro": 5.0, "coffee": 20.0, "cat": 5.0}


def test_summary_skips_nan():
    rows = [{"category": "a", "psnr": "20"}, {"category": "a", "psnr": "nan"}, {"category": "a", "psnr": ""}]
    assert summarize(rows, ["psnr"]) == [{"category": "a", "n": 3, "psnr": 20.0}]
    assert math.isnan(summarize([{"category": "a", "psnr": "nan"}], ["psnr"])[0]["psnr"])


def test_cli_end_to_end_on_the_tiny_pipeline(tiny_model_dir, tmp_path, capsys):
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    rows = [
        {
            "id": "cup",
            "image": "coffee.png",
            "source_prompt": "a cup of coffee",
            "target_prompt": "a cup of tea",
            "category": "change_object",
            "blend_words": "coffee tea",
        },
        {"id": "cat", "image": "cat.png", "source_prompt": "a cat", "target_prompt": "a red cat", "category": 6},
    ]
    (tmp_path / "tasks.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    argv = [
        "evaluate",
        "--model",
        str(tiny_model_dir),
        "--tasks",
        str(tmp_path / "tasks.jsonl"),
        "--split",
        "all",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
        "--metrics",
        "psnr",
        "mse",
        "ssim",
        "--steps",
        "2",
        "--w-tgt",
        "3",
        "-q",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| change_object | 1 |" in out and "2 tasks, 0 already done" in out
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    got = [(r["task_id"], r["w_tgt"], json.loads(r["params"])["steps"]) for r in rows]
    assert got == [("cup", "3.0", 2), ("cat", "3.0", 2)]
    assert max(Image.open(tmp_path / "run" / rows[0]["image"]).size) == 32  # the model's size, aspect kept
    assert all(0 < float(r["mse"]) < 1 for r in rows)
    assert main(argv) == 0 and "2 tasks, 2 already done" in capsys.readouterr().out
    assert main([*argv, "--preset", "balanced", "--method", "ddim"]) == 2
    assert "either --method or --preset" in capsys.readouterr().err


def test_cli_with_a_preset_file_and_an_override(tiny_model_dir, tmp_path, capsys):
    from autotune.engine.editor import Editor
    from autotune.presets.preset import Preset

    info = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False).model_info()
    preset = Preset.paper_default("change_object", info, EditParams(w_src=1.5, w_tgt=4.0, steps=2), citation="test")
    preset.save(tmp_path / "object.json")
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    task = {"id": "cup", "image": "coffee.png", "source_prompt": "a cup of coffee", "target_prompt": "a cup of tea"}
    (tmp_path / "objects.jsonl").write_text(json.dumps({**task, "category": "change_object"}))
    (tmp_path / "colors.jsonl").write_text(json.dumps({**task, "category": "change_color"}))
    common = ["--model", str(tiny_model_dir), "--device", "cpu", "--metrics", "mse", "--split", "all", "-q"]
    argv = ["evaluate", "--tasks", str(tmp_path / "objects.jsonl"), "--preset", str(tmp_path / "object.json")]
    assert main([*argv, "--w-tgt", "3", "--out", str(tmp_path / "run"), *common]) == 0
    row = next(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    assert (float(row["w_src"]), float(row["w_tgt"]), json.loads(row["params"])["steps"]) == (1.5, 3.0, 2)
    capsys.readouterr()
    wrong = ["evaluate", "--tasks", str(tmp_path / "colors.jsonl"), "--preset", str(tmp_path / "object.json")]
    assert main([*wrong, "--out", str(tmp_path / "run2"), *common]) == 2
    assert "change_object preset, not change_color" in capsys.readouterr().err


class GroupingEditor(FakeEditor):
    """The fake engine with `edit_tasks`, as the real one: several tasks per call, up to `max_batch`."""

    max_batch = 2

    def __init__(self, fail_groups: bool = False):
        super().__init__()
        self.groups: list[list[str]] = []
        self.fail_groups = fail_groups

    def edit_tasks(self, tasks, candidates):
        self.groups.append([t.id for t in tasks])
        if self.fail_groups:
            raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return [self.edit_task(t, candidates) for t in tasks]


def _metrics(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_tasks_with_the_same_parameters_are_edited_together(tmp_path):
    alone = evaluate(FakeEditor(), _tasks(), EditParams(w_tgt=10.0), SCORER, tmp_path / "a", progress=False)
    editor = GroupingEditor()
    together = evaluate(editor, _tasks(), EditParams(w_tgt=10.0), SCORER, tmp_path / "b", progress=False)
    assert editor.groups == [["astro", "coffee"]]  # then "cat" alone, through edit_task
    assert editor.calls == ["astro", "coffee", "cat"]
    assert _metrics(together.rows) == _metrics(alone.rows)
    # a per-category source: consecutive tasks with equal parameters only
    editor = GroupingEditor()
    evaluate(editor, _tasks(), lambda t: EditParams(w_tgt=5.0 if t.id != "astro" else 7.0), SCORER,
             tmp_path / "c", progress=False)
    assert editor.groups == [["coffee", "cat"]]
    editor = GroupingEditor()
    evaluate(editor, _tasks(), EditParams(), SCORER, tmp_path / "d", progress=False, task_batch=1)
    assert editor.groups == [] and editor.calls == ["astro", "coffee", "cat"]
    with pytest.raises(InputError, match="task_batch=0 must be a whole number"):
        evaluate(editor, _tasks(), EditParams(), SCORER, tmp_path / "e", progress=False, task_batch=0)


def test_a_group_that_fails_is_edited_task_by_task(tmp_path):
    alone = evaluate(FakeEditor(), _tasks(), EditParams(), SCORER, tmp_path / "a", progress=False)
    editor = GroupingEditor(fail_groups=True)
    result = evaluate(editor, _tasks(), EditParams(), SCORER, tmp_path / "b", progress=False)
    assert editor.groups == [["astro", "coffee"]] and editor.calls == ["astro", "coffee", "cat"]
    assert _metrics(result.rows) == _metrics(alone.rows)


def test_grouped_evaluation_on_the_real_engine_equals_one_task_at_a_time(tiny_model_dir, tmp_path):
    from autotune.shapes.scoring import ShapesScorer
    from autotune.shapes.tasks import shapes_tasks
    from tests.conftest import tiny_editor

    tasks = shapes_tasks("change_color", "heldout", count=3)
    params = EditParams(steps=4)
    runs = {}
    for task_batch in (None, 1):
        editor = tiny_editor(tiny_model_dir, record_sources=False)
        runs[task_batch] = evaluate(editor, tasks, params, ShapesScorer(), tmp_path / str(task_batch),
                                    progress=False, task_batch=task_batch).rows
    for a, b in zip(runs[None], runs[1], strict=True):
        assert a["task_id"] == b["task_id"]
        for name in ("background_psnr", "edit_success", "preservation"):
            assert float(a[name]) == pytest.approx(float(b[name]), abs=1e-3)
