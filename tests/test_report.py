"""The study report on a real (tiny) tuning run: PNGs that open, an index.html that shows them with the figures,
the picks and paper points of the study, and the CLI reading the model and tasks back from the study."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import optuna
import pytest
from PIL import Image

from autotune.params import EditParams
from autotune.tuning.search_space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tuned(tiny_model_dir, tmp_path_factory):
    from autotune.engine.editor import Editor
    from autotune.shapes.scoring import ShapesScorer
    from autotune.shapes.tasks import shapes_tasks
    from autotune.tuning.tuner import tune

    tmp = tmp_path_factory.mktemp("report-study")
    editor = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)
    tasks = shapes_tasks("change_color", "tune", count=2)
    result = tune(editor, tasks, category="change_color", trials=6, batch=3, storage=str(tmp / "s.journal"),
                  study_name="tiny-color", scorer=ShapesScorer(), search_space=SearchSpace.default(
                      base=EditParams(steps=2)), progress=False, prune=False, artifacts=False, save_preset=False,
                  project_dir=tmp, sampler="random")
    return editor, tasks, result, tmp


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.cells.append(data.strip())


def test_write_report_files_and_figures(tuned, tmp_path):
    from autotune.report import write_report
    from autotune.report.read import study_picks

    editor, tasks, result, _ = tuned
    calls = []
    edit_task = editor.edit_task

    def counting(task, cands):
        calls.append((task.id, [(c.w_src.start, c.w_tgt.start) for c in cands]))
        return edit_task(task, cands)

    editor.edit_task = counting
    try:
        index = write_report(result.study, tmp_path / "r", editor=editor, tasks=tasks, edit_tasks=2)
    finally:
        del editor.edit_task
    out = tmp_path / "r"
    parser = _Links()
    parser.feed(index.read_text())
    assert sorted(parser.images) == ["edits.png", "front.png", "slices.png"]
    for name in parser.images:
        with Image.open(out / name) as im:
            im.verify()
        assert Image.open(out / name).size[0] > 300
    # the edit grid: one batched call per task, paper default then the three picks
    picks = study_picks(result.study)
    by = {p.name: p for p in picks}
    expected = [(0.5, 7.5)] + [(by[s].params.w_src.start, by[s].params.w_tgt.start)
                               for s in ("conservative", "balanced", "aggressive")]
    assert calls == [(t.id, expected) for t in tasks]
    # the page's table carries the study's own values
    sim = result.study.trials[0]
    assert sim.user_attrs["paper_point"] == "siminversion"
    assert f"{sim.values[0]:.4g}" in parser.cells
    figures = json.loads((out / "figures.json").read_text())
    assert {p["name"] for p in figures["points"]} >= {"conservative", "balanced", "aggressive", "siminversion", "ddim"}
    front = {t.number for t in result.study.best_trials}
    assert {p["trial"] for p in figures["points"] if p["kind"] == "pick"} <= front
    assert not list(out.glob(".*"))  # no temp files left
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes.values()) == {modes["index.html"]}, modes  # the PNGs as readable as the page that shows them


def test_cli_report_reads_model_and_tasks_from_the_study(tuned, tmp_path, capsys):
    from autotune.cli import main

    _, _, _, tmp = tuned
    code = main(["report", "--study", "tiny-color", "--storage", str(tmp / "s.journal"), "--out",
                 str(tmp_path / "cli"), "--edit-tasks", "1", "--device", "cpu"])
    assert code == 0
    assert capsys.readouterr().out.strip().endswith("index.html")
    assert (tmp_path / "cli" / "edits.png").is_file()  # tasks regenerated and matched by fingerprint
    assert "No edit grid" not in (tmp_path / "cli" / "index.html").read_text()


def test_cli_report_unknown_study_lists_the_others(tuned, tmp_path, capsys):
    from autotune.cli import main

    _, _, _, tmp = tuned
    code = main(["report", "--study", "nope", "--storage", str(tmp / "s.journal"), "--out", str(tmp_path / "x")])
    assert code == 2
    assert "tiny-color" in capsys.readouterr().err


def test_report_without_task_source_says_what_is_missing(tuned, tmp_path):
    from autotune.report import write_report

    _, _, result, _ = tuned
    result.study.set_user_attr("autotune.task_count", 3)  # no longer matches any regenerated task set
    try:
        index = write_report(result.study, tmp_path / "n")
    finally:
        result.study.set_user_attr("autotune.task_count", 2)
    text = index.read_text()
    assert "No edit grid" in text and "autotune.task_source" in text
    assert not (tmp_path / "n" / "edits.png").exists()


def test_front_plot_shows_pruned_trials_at_their_partial_means(tmp_path):
    from optuna.trial import TrialState

    from autotune.report.draw import plot_front
    from autotune.report.read import pruned_points as _pruned_points
    from autotune.report.read import study_picks
    from autotune.tuning.tuner import tune
    from tests.test_tuner_fakes import FakeEditor, FakeScorer, make_tasks

    result = tune(FakeEditor(), make_tasks(6), category="change_color", trials=24, batch=4, sampler="random", seed=3,
                  scorer=FakeScorer(), storage=str(tmp_path / "s.journal"), prune=True, progress=False,
                  save_preset=False, project_dir=tmp_path)
    pruned = result.study.get_trials(states=(TrialState.PRUNED,))
    assert pruned
    spec = result.study.user_attrs["autotune.objectives"]
    expected = []
    for t in pruned:  # the objectives' weighted metrics, averaged over the tasks the trial saw
        seen = list(t.user_attrs["per_task"].values())
        assert len(seen) == t.user_attrs["pruned_after_tasks"] < 6
        expected.append(tuple(sum(w * sum(m[k] for m in seen) / len(seen) for k, w in o["metrics"].items())
                              for o in spec))
    got = _pruned_points(result.study)
    assert np.allclose(np.array(got), np.array(expected))
    path = plot_front(result.study, study_picks(result.study), tmp_path / "front.png")
    assert Image.open(path).size[0] > 300
