"""A study records which tasks it saw, its preset carries them, and `evaluate` says when it scores a preset on its
own tuning tasks: tuned on a task file's tune split, then evaluated on the whole file and on its held-out split."""

from __future__ import annotations

import json
import warnings

import numpy as np
import optuna
import pytest
from PIL import Image

from autotune.cli import main
from autotune.errors import PresetError
from autotune.evaluation.evaluate import evaluate
from autotune.evaluation.overlap import TuningOverlapWarning
from autotune.params import EditParams
from autotune.presets.preset import Preset
from autotune.scoring import PieBenchScorer
from autotune.task import task_digest
from autotune.tasks.sources import load_tasks
from autotune.tasks.split import split_of
from autotune.tuning import contract
from autotune.tuning.tuner import tune
from tests.test_evaluate import FakeEditor as DarkeningEditor

optuna.logging.set_verbosity(optuna.logging.WARNING)


class FakeEditor(DarkeningEditor):
    """test_evaluate's fake engine (darkens by w_tgt / 100), with a scheduler record a preset can keep."""

    def model_info(self):
        return {"id": "fake", "scheduler": {"_class_name": "DDIMScheduler"}}

SCORER = PieBenchScorer(mode="masked", device="cpu", metrics=("psnr", "mse"))
OBJECTIVES = [{"name": "fidelity", "direction": "maximize", "metrics": {"psnr": 1.0}},
              {"name": "edit_strength", "direction": "maximize", "metrics": {"mse": -1.0}}]


@pytest.fixture()
def task_file(tmp_path):
    """40 change_color tasks, each its own 8x8 photo, in a JSONL file."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"id": f"t{i:02d}", "image": f"{i}.png", "source_prompt": f"photo {i}",
                     "target_prompt": f"photo {i} in red", "category": "change_color"})
    (tmp_path / "tasks.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return str(tmp_path / "tasks.jsonl")


@pytest.fixture()
def tuned(task_file, tmp_path):
    """A preset tuned on the file's tune split, as `autotune tune --tasks FILE` records it."""
    tasks = load_tasks(task_file)
    result = tune(FakeEditor(), tasks, category="change_color", trials=3, batch=3, scorer=SCORER,
                  objectives=OBJECTIVES, sampler="random", storage=str(tmp_path / "s.journal"), progress=False,
                  prune=False, artifacts=False, presets_dir=tmp_path / "presets",
                  task_source={"spec": task_file, "split": "tune", "heldout_fraction": 0.3})
    return tasks, result


def test_the_study_and_its_preset_list_every_tuning_task(tuned, task_file):
    tasks, result = tuned
    every = load_tasks(task_file, split="all")
    assert 0 < len(tasks) < len(every)
    digests = result.study.user_attrs[contract.TASK_DIGESTS]
    assert digests == sorted(task_digest(t) for t in tasks)
    assert len(set(digests)) == len(tasks)
    preset = Preset.load(result.preset_path)
    assert preset.tuning_tasks == {task_digest(t) for t in every if split_of(t) == "tune"}
    assert preset.provenance["task_source"] == {"spec": task_file, "split": "tune", "heldout_fraction": 0.3}


def test_evaluate_counts_the_tuning_tasks_it_scores(tuned, task_file, tmp_path):
    tasks, result = tuned
    preset = Preset.load(result.preset_path)
    every = load_tasks(task_file, split="all")
    with pytest.warns(TuningOverlapWarning, match=rf"{len(tasks)} of {len(every)} tasks are among the tasks the "
                                                  "preset was tuned on"):
        run = evaluate(FakeEditor(), every, preset, SCORER, tmp_path / "all", progress=False,
                       task_source={"spec": task_file, "split": "all", "heldout_fraction": 0.3})
    record = json.loads((run.out_dir / "run.json").read_text())
    assert record["tuning_overlap"]["overlapping"] == len(tasks)
    assert record["tuning_overlap"]["by_category"]["change_color"]["tasks"] == len(every)
    assert record["task_source"]["split"] == "all"
    summary = (run.out_dir / "summary.md").read_text()
    assert f"**Warning:** {len(tasks)} of {len(every)} tasks" in summary and "split tune" in summary

    heldout = load_tasks(task_file, split="heldout")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningOverlapWarning)
        run = evaluate(FakeEditor(), heldout, preset, SCORER, tmp_path / "heldout", progress=False)
    assert json.loads((run.out_dir / "run.json").read_text())["tuning_overlap"]["overlapping"] == 0
    assert f"held out: none of the {len(heldout)} tasks" in (run.out_dir / "summary.md").read_text()


def test_a_preset_that_does_not_list_its_tasks_cannot_vouch_for_them(task_file, tmp_path):
    preset = Preset.paper_default("change_color", FakeEditor().model_info(), EditParams(), citation="test")
    with pytest.warns(TuningOverlapWarning, match="does not list its tuning tasks"):
        run = evaluate(FakeEditor(), load_tasks(task_file, split="heldout"), preset, SCORER, tmp_path / "r",
                       progress=False)
    assert json.loads((run.out_dir / "run.json").read_text())["tuning_overlap"]["unknown"] == ["change_color"]
    with warnings.catch_warnings():  # fixed parameters: no preset, nothing to check
        warnings.simplefilter("error", TuningOverlapWarning)
        run = evaluate(FakeEditor(), load_tasks(task_file, split="heldout"), EditParams(), SCORER, tmp_path / "p",
                       progress=False)
    assert "tuning_overlap" not in json.loads((run.out_dir / "run.json").read_text())


def test_the_cli_warns_at_once_and_records_the_split(tuned, task_file, tmp_path, capsys, tiny_model_dir):
    _, result = tuned
    data = json.loads(result.preset_path.read_text())
    data["model"]["id"] = str(tiny_model_dir)  # the same digests on a preset the tiny pipeline accepts
    data["model"].pop("file_hash", None)
    data.pop("content_hash")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    # Five of the file's tasks, three of its tune split and two held out: the same images and prompts.
    rows = [json.loads(line) for line in open(task_file)]
    splits = [split_of(t) for t in load_tasks(task_file, split="all")]
    few = [r for r, s in zip(rows, splits) if s == "tune"][:3] + [r for r, s in zip(rows, splits) if s != "tune"][:2]
    (tmp_path / "few.jsonl").write_text("\n".join(json.dumps(r) for r in few))
    argv = ["evaluate", "--model", str(tiny_model_dir), "--device", "cpu", "--tasks", str(tmp_path / "few.jsonl"),
            "--preset", str(path), "--metrics", "mse", "--steps", "1", "-q"]
    assert main([*argv, "--split", "all", "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert "autotune evaluate: warning: 3 of 5 tasks are among the tasks the preset was tuned on" in captured.err
    assert "**Warning:**" in captured.out and "tasks: " in captured.out and "split all" in captured.out
    assert main([*argv, "--out", str(tmp_path / "h")]) == 0  # the default: the held-out split
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "held out: none of the 2 tasks" in captured.out


def test_the_preset_file_checks_its_task_list(tuned):
    _, result = tuned
    data = json.loads(result.preset_path.read_text())
    data.pop("content_hash")
    data["provenance"]["task_digests"][0] = "not-a-digest"
    with pytest.raises(PresetError, match=r"provenance.task_digests\[0\]: 'not-a-digest' is not a task digest"):
        Preset.from_dict(json.loads(json.dumps(data)))
    data["provenance"]["task_digests"] = "abc"
    with pytest.raises(PresetError, match="provenance.task_digests: must be a list"):
        Preset.from_dict(data)
    data["provenance"]["task_digests"] = []
    data["provenance"]["task_source"] = {"spec": "x.jsonl", "split": "train"}
    with pytest.raises(PresetError, match="provenance.task_source.split: 'train'"):
        Preset.from_dict(data)
    tampered = json.loads(result.preset_path.read_text())
    tampered["provenance"]["task_digests"] = tampered["provenance"]["task_digests"][1:]  # hide a tuning task
    with pytest.raises(PresetError, match="content_hash does not match"):
        Preset.from_dict(tampered, strict=True)


def test_a_study_made_before_digests_gets_them_when_resumed(task_file, tmp_path):
    tasks = load_tasks(task_file)
    kw = dict(category="change_color", batch=3, scorer=SCORER, objectives=OBJECTIVES, sampler="random",
              storage=str(tmp_path / "s.journal"), progress=False, prune=False, artifacts=False, save_preset=False,
              study_name="old")
    study = tune(FakeEditor(), tasks, trials=3, **kw).study
    # An older autotune wrote every key but the digests: rebuild that study without them.
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "o.journal")))
    old = optuna.create_study(study_name="old", storage=storage, directions=["maximize", "maximize"])
    for key, value in study.user_attrs.items():
        if key != contract.TASK_DIGESTS:
            old.set_user_attr(key, value)
    kw["storage"] = str(tmp_path / "o.journal")
    resumed = tune(FakeEditor(), tasks, trials=3, **kw).study
    assert resumed.user_attrs[contract.TASK_DIGESTS] == sorted(task_digest(t) for t in tasks)


def test_the_report_reloads_the_split_a_study_recorded(task_file, tmp_path):
    from autotune.report.read import study_tasks

    kw = dict(category="change_color", trials=1, batch=1, scorer=SCORER, objectives=OBJECTIVES, sampler="random",
              storage=str(tmp_path / "s.journal"), progress=False, prune=False, artifacts=False, save_preset=False)
    tuned = tune(FakeEditor(), load_tasks(task_file), study_name="now",
                 task_source={"spec": task_file, "split": "tune", "heldout_fraction": 0.3}, **kw).study
    tasks, label = study_tasks(tuned)
    assert [t.id for t in tasks] == sorted(t.id for t in load_tasks(task_file)) and label.endswith("(tune)")
    # Before splits, a task file's study saw every task and recorded no fraction: it is reloaded whole.
    before = tune(FakeEditor(), load_tasks(task_file, split="all"), study_name="before",
                  task_source={"spec": task_file, "split": "tune"}, **kw).study
    tasks, label = study_tasks(before)
    assert len(tasks) == 40 and label.endswith("(all)")


def test_a_preset_written_before_task_digests_still_loads_and_verifies():
    from pathlib import Path

    old = Path(__file__).parent / "data" / "preset_before_task_digests.json"  # shapes__change_color of 2026-11-22
    preset = Preset.load(old, strict=True)  # its content hash still holds: nothing it has was reinterpreted
    assert preset.tuning_tasks is None and preset.provenance["task_count"] == 20
    assert "task_digests" not in json.loads(preset.dumps())["provenance"]
