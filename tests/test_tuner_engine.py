"""End to end: the real engine (tiny random pipeline), the shapes world's tasks and scorer, the tuner, a preset."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autotune.params import EditParams
from autotune.tuning.search_space import SearchSpace
from autotune.tuning.tuner import tune

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_tune_on_the_real_engine(tiny_model_dir, tmp_path):
    from autotune.engine.editor import Editor
    from autotune.shapes.scoring import ShapesScorer
    from autotune.shapes.tasks import shapes_tasks

    editor = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)
    tasks = shapes_tasks("change_color", "tune", count=2)
    space = SearchSpace.default(base=EditParams(steps=3))
    calls = []
    edit_task, edit_tasks = editor.edit_task, editor.edit_tasks

    def counting(task, candidates):
        calls.append(([task.id], len(candidates)))
        return edit_task(task, candidates)

    def counting_tasks(tasks, candidates):
        calls.append(([t.id for t in tasks], len(candidates)))
        return edit_tasks(tasks, candidates)

    editor.edit_task, editor.edit_tasks = counting, counting_tasks
    result = tune(editor, tasks, category="change_color", trials=3, batch=3, storage=str(tmp_path / "s.journal"),
                  scorer=ShapesScorer(), search_space=space, progress=False, prune=False,
                  presets_dir=tmp_path / "presets", project_dir=tmp_path)
    assert calls == [(sorted(t.id for t in tasks), 3)]  # both tasks and all three trials in one engine call
    trials = result.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.user_attrs.get("paper_point") for t in trials[:2]] == ["siminversion", "ddim"]
    for t in trials:
        assert set(t.user_attrs["per_task"]) == {task.id for task in tasks}
        assert 0.0 <= t.user_attrs["metrics"]["edit_success"] <= 1.0
    assert result.study.user_attrs["autotune.model"] == editor.model_info()
    preset = json.loads(result.preset_path.read_text())
    assert preset["category"] == "change_color" and preset["steps"] == 3


def test_cli_tune_writes_the_preset(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import autotune.cli._common
    from autotune.cli import main
    from autotune.task import task_digest
    from autotune.tasks import sources as task_sources

    load = task_sources.load_tasks
    monkeypatch.setattr(task_sources, "load_tasks", lambda *a, **k: load(*a, **k)[:2])  # 2 of the 20 tasks: fast
    editors = []
    load_editor = autotune.cli._common.load_editor
    monkeypatch.setattr(autotune.cli._common, "load_editor", lambda *a, **k: editors.append(load_editor(*a, **k))
                        or editors[-1])

    code = main(["tune", "--model", str(tiny_model_dir), "--device", "cpu", "--tasks", "shapes:change_color",
                 "--trials", "2", "--batch", "2", "--space", "steps=2:2", "--project-dir", str(tmp_path / "proj"),
                 "--presets-dir", str(tmp_path / "presets"), "--quiet", "--report", "--cache-mb", "300"])
    out = capsys.readouterr().out
    assert code == 0
    assert editors[0].cache.max_bytes == 300 << 20 and editors[0].cache.directory == tmp_path / "proj" / "inversions"
    assert "paper point siminversion" in out and "preset written to" in out
    (preset_path,) = (tmp_path / "presets").glob("*change_color*.json")
    provenance = json.loads(preset_path.read_text())["provenance"]
    assert provenance["task_source"] == {"spec": "shapes:change_color", "split": "tune", "heldout_fraction": 0.2}
    tuned_on = load("shapes:change_color")[:2]
    assert provenance["task_digests"] == sorted(task_digest(t) for t in tuned_on)
    assert (tmp_path / "proj" / "studies.journal").stat().st_size > 0
    assert list((tmp_path / "proj" / "inversions").glob("*.safetensors"))  # shared with re-runs and workers
    index = Path(out.split("report: ", 1)[1].split()[0])  # --report writes the visual report and names it
    assert index.name == "index.html" and index.parent.parent == tmp_path / "proj" / "reports"
    assert {"front.png", "slices.png", "edits.png"} <= {p.name for p in index.parent.iterdir()}


def test_cli_tune_report_failure_keeps_the_study_and_says_how_to_redraw(tiny_model_dir, tmp_path, capsys,
                                                                         monkeypatch):
    import autotune.report as report
    from autotune.cli import main
    from autotune.tasks import sources as task_sources

    load = task_sources.load_tasks
    monkeypatch.setattr(task_sources, "load_tasks", lambda *a, **k: load(*a, **k)[:1])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report, "write_report", broken)
    code = main(["tune", "--model", str(tiny_model_dir), "--device", "cpu", "--tasks", "shapes:change_color",
                 "--trials", "2", "--batch", "2", "--space", "steps=2:2", "--project-dir", str(tmp_path / "proj"),
                 "--presets-dir", str(tmp_path / "presets"), "--quiet", "--report", "--study", "s1"])
    captured = capsys.readouterr()
    assert code == 1 and "preset written to" in captured.out
    assert "OSError: disk full" in captured.err and "autotune report --study s1" in captured.err
    assert list((tmp_path / "presets").glob("*change_color*.json"))  # nothing computed was lost


def test_cli_bad_storage_is_a_clear_error(tmp_path, capsys):
    from autotune.cli import main

    code = main(["tune", "--model", "shapes", "--tasks", "shapes:change_color", "--trials", "2",
                 "--storage", "postgres://me:hunter2@localhost/x", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "postgresql://" in err and "hunter2" not in err and "Traceback" not in err
