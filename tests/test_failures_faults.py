"""Faults during a run lose nothing finished (docs/failures.md): Ctrl-C in `autotune tune`, NaN metrics and
out-of-memory errors on one candidate of a batch on the real engine, and a PostgreSQL server that goes away
mid-study and comes back.

SIGKILL mid-trial (journal and PostgreSQL) is tests/test_storage.py::test_sigkill_mid_trial_then_resume;
concurrent preset writers are tests/test_preset_atomic.py::test_eight_processes_writing_at_once_leave_only_valid_files.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotune.errors import StorageError
from autotune.tuning.storage import open_storage
from autotune.tuning.tuner import tune
from tests.needs import need
from tests.test_tuner_fakes import FakeEditor, FakeScorer, make_tasks

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parent.parent


def _load_only_study(journal: Path) -> optuna.Study:
    storage = open_storage(str(journal)).storage
    names = optuna.get_all_study_names(storage)
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=storage)


# ---------------------------------------------------------------------------------------------------------------------
# Ctrl-C: a real SIGINT to a real `autotune tune` process

SLOW = [pytest.mark.slow,
        pytest.mark.skipif(os.environ.get("AUTOTUNE_SLOW_TESTS") != "1", reason="slow: set AUTOTUNE_SLOW_TESTS=1")]

# `autotune tune` with the fake engine of tests/test_tuner_fakes.py (0.2 s per engine call) on 3 tasks.
_FAKE_LAUNCHER = """
import sys
import autotune.cli._common, autotune.cli.tune, autotune.tasks.sources
from tests.needs import need
from tests.test_tuner_fakes import FakeEditor, FakeScorer, make_tasks
autotune.cli._common.load_editor = lambda args, presets=None: FakeEditor(delay=0.2)
autotune.cli._common.make_scorer = lambda args, editor: FakeScorer()
autotune.tasks.sources.load_tasks = lambda *a, **k: make_tasks(3)
from autotune.cli import main
sys.exit(main(sys.argv[1:]))
"""

# `autotune tune` on the tiny pipeline and 2 of the shapes tasks.
_REAL_LAUNCHER = """
import sys
from autotune.tasks import sources as task_sources
load = task_sources.load_tasks
task_sources.load_tasks = lambda *a, **k: load(*a, **k)[:2]
from autotune.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("engine", ["fake", pytest.param("tiny", marks=SLOW)])
def test_sigint_during_tune_keeps_the_study_and_a_preset_can_be_written(request, tmp_path, engine):
    journal = tmp_path / "studies.journal"
    if engine == "fake":
        launcher, model = _FAKE_LAUNCHER, "fake"
    else:
        launcher, model = _REAL_LAUNCHER, str(request.getfixturevalue("tiny_model_dir"))
    args = [sys.executable, "-c", launcher, "tune", "--model", model, "--device", "cpu",
            "--tasks", "shapes:change_color", "--trials", "200", "--batch", "2", "--space", "steps=2:2", "--no-prune",
            "--storage", str(journal), "--project-dir", str(tmp_path / "proj"),
            "--presets-dir", str(tmp_path / "presets"), "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        complete = 0
        while complete < 2:  # the first batch told: two completed trials
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "tune completed no 2 trials in 240 s"
            time.sleep(0.2)
            if journal.exists():
                with open(journal, encoding="utf-8") as handle:
                    complete = sum(1 for line in handle if '"state":1' in line.replace(' ', ''))
        time.sleep(0.3)  # into the second batch
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "autotune tune: interrupted" in err and "Traceback" not in err, err
    assert not list((tmp_path / "presets").glob("*.json"))  # interrupted: no preset written by tune itself

    study = _load_only_study(journal)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) >= 2
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]  # nothing left claimed
    for t in study.trials:
        if t.state == TrialState.FAIL:  # the trial Ctrl-C cut short is failed and queued again
            assert t.user_attrs["fail_kind"] == "interrupted"
            assert any(w.state == TrialState.WAITING for w in study.trials)

    from autotune.cli import main

    code = main(["presets", "from-study", "--storage", str(journal), "--out", str(tmp_path / "from-study")])
    assert code == 0
    files = list((tmp_path / "from-study").glob("*.json"))
    assert len(files) == 1
    preset = json.loads(files[0].read_text())
    assert preset["category"] == "change_color"
    assert {p["trial"] for p in preset["front"]} <= {t.number for t in done}


# ---------------------------------------------------------------------------------------------------------------------
# NaN and out-of-memory on one candidate of a batch, on the real engine


class _FlakyEngine:
    """The real editor, except that a batch holding the DDIM paper point (w_src = 1) runs out of device memory."""

    def __init__(self, editor) -> None:
        self.editor, self.batches, self.last = editor, [], []

    def model_info(self) -> dict:
        return self.editor.model_info()

    def edit_task(self, task, candidates):
        import torch

        self.batches.append(len(candidates))
        self.last = list(candidates)
        if any(c.w_src.start == 1.0 for c in candidates):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.editor.edit_task(task, candidates)


class _NaNScorer:
    """The shapes scorer, except that the SimInversion paper point (0.5, 7.5) gets a NaN background PSNR."""

    def __init__(self, engine: _FlakyEngine) -> None:
        from autotune.shapes.scoring import ShapesScorer

        self.inner, self.engine = ShapesScorer(), engine

    def metrics(self):
        return self.inner.metrics()

    def describe(self):
        return self.inner.describe()

    def score(self, task, edited):
        rows = self.inner.score(task, edited)
        for k, params in enumerate(self.engine.last):
            if (params.w_src.start, params.w_tgt.start) == (0.5, 7.5):
                rows[k] = dict(rows[k], background_psnr=math.nan)
        return rows


def test_nan_metric_and_oom_fail_only_their_candidates_on_the_real_engine(tiny_model_dir, tmp_path):
    from autotune.engine.editor import Editor
    from autotune.params import EditParams
    from autotune.shapes.tasks import shapes_tasks
    from autotune.tuning.search_space import SearchSpace

    engine = _FlakyEngine(Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False))
    tasks = shapes_tasks("change_color", "tune", count=2)
    result = tune(engine, tasks, category="change_color", trials=4, batch=4, storage=str(tmp_path / "s.journal"),
                  scorer=_NaNScorer(engine), search_space=SearchSpace.default(base=EditParams(steps=2)),
                  sampler="random", progress=False, prune=False, presets_dir=tmp_path / "presets",
                  project_dir=tmp_path)
    trials = result.study.trials
    assert [t.user_attrs.get("paper_point") for t in trials[:2]] == ["siminversion", "ddim"]
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    first = sorted(tasks, key=lambda t: t.id)[0].id
    assert trials[0].user_attrs["fail_kind"] == "nan"
    assert trials[0].user_attrs["fail_reason"] == f"task {first}: metric(s) background_psnr not finite " \
                                                  "(NaN, inf or missing)"
    assert trials[1].user_attrs["fail_kind"] == "oom"
    assert trials[1].user_attrs["fail_reason"].startswith(f"task {first}: OutOfMemoryError: CUDA out of memory")
    # The batch of 4 failed, so its candidates ran one at a time; the two survivors were batched again.
    assert engine.batches == [4, 1, 1, 1, 1, 2]
    assert result.counts == {"complete": 2, "pruned": 0, "failed": 2, "retried": 0}
    front = {p["trial"] for p in json.loads(result.preset_path.read_text())["front"]}
    assert front and front <= {2, 3}  # the preset is built from the trials that counted


# ---------------------------------------------------------------------------------------------------------------------
# The database goes away mid-study and comes back: a private PostgreSQL server, stopped and started by the test


@pytest.fixture()
def private_postgres(tmp_path_factory):
    """A PostgreSQL server of the test's own (tests/postgres.py), so that stopping it cannot disturb the other
    tests' shared server."""
    from tests import postgres

    why = postgres.unavailable()
    if why:
        need(why)
    server = postgres.ThrowawayServer(tmp_path_factory.mktemp("private-pg"))
    server.start()
    yield server
    server.remove()


class _ServerKiller(FakeEditor):
    """Stops the database server during its `at_call`-th engine call (a trial is running)."""

    def __init__(self, server, at_call: int) -> None:
        super().__init__()
        self.server, self.at_call = server, at_call

    def edit_task(self, task, candidates):
        if len(self.calls) == self.at_call:
            self.server.stop()
        return super().edit_task(task, candidates)


def _tune_on(server, tmp_path: Path, editor: FakeEditor, trials: int = 6):
    return tune(editor, make_tasks(3), category="change_color", trials=trials, batch=2, scorer=FakeScorer(),
                storage=server.url, study_name="lost-and-back", sampler="random", prune=False, progress=False,
                presets_dir=tmp_path / "presets", project_dir=tmp_path)


def test_postgres_server_lost_mid_study_is_a_clear_error(private_postgres, tmp_path):
    with pytest.raises(StorageError) as info:
        _tune_on(private_postgres, tmp_path, _ServerKiller(private_postgres, at_call=4))  # batch 2, its 2nd task
    message = str(info.value)
    assert "re-run the same command to resume" in message
    assert f"autotune:***@127.0.0.1:{private_postgres.port}" in message
    assert private_postgres.password not in message


def test_postgres_server_lost_mid_study_then_back_resumes(private_postgres, tmp_path):
    with pytest.raises(StorageError, match="re-run the same command to resume"):
        _tune_on(private_postgres, tmp_path, _ServerKiller(private_postgres, at_call=4))
    private_postgres.start()
    result = _tune_on(private_postgres, tmp_path, FakeEditor())
    trials = result.study.trials
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE] * 2  # finished before the loss: kept
    assert result.counts["complete"] == 6
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in lost] == [2, 3]  # the batch cut short: failed and retried
    assert {t.user_attrs.get("fail_kind") for t in lost} == {"stale"}


# ---------------------------------------------------------------------------------------------------------------------
# The presets directory cannot be written when the study ends


def test_unwritable_presets_dir_after_a_study_keeps_the_study(tmp_path, capsys):
    from autotune.cli import main
    from autotune.errors import PresetError

    (tmp_path / "blocker").write_text("a file where the presets folder should be")
    journal = tmp_path / "s.journal"
    with pytest.raises(PresetError, match="cannot write the preset in .*blocker/presets.*nothing was written"):
        tune(FakeEditor(), make_tasks(2), category="change_color", trials=4, batch=2, scorer=FakeScorer(),
             storage=str(journal), progress=False, presets_dir=tmp_path / "blocker" / "presets", project_dir=tmp_path)
    study = _load_only_study(journal)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4  # the study is whole
    assert main(["presets", "from-study", "--storage", str(journal), "--out", str(tmp_path / "presets")]) == 0
    assert len(list((tmp_path / "presets").glob("*.json"))) == 1


# ---------------------------------------------------------------------------------------------------------------------
# A task the model cannot read, given to the tuner


def test_task_prompt_past_77_tokens_is_refused_before_the_study_starts(tiny_model_dir, tmp_path):
    from dataclasses import replace

    from autotune.engine.editor import Editor
    from autotune.errors import InputError
    from autotune.params import EditParams
    from autotune.shapes.scoring import ShapesScorer
    from autotune.shapes.tasks import shapes_tasks
    from autotune.tuning.search_space import SearchSpace

    editor = Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)
    tasks = sorted(shapes_tasks("change_color", "tune", count=2), key=lambda t: t.id)
    tasks[-1] = replace(tasks[-1], target_prompt=tasks[-1].target_prompt + " word" * 80)
    journal = tmp_path / "s.journal"
    with pytest.raises(InputError, match="at most 75"):
        tune(editor, tasks, category="change_color", trials=2, batch=2, storage=str(journal), scorer=ShapesScorer(),
             search_space=SearchSpace.default(base=EditParams(steps=2)), progress=False, prune=False,
             presets_dir=tmp_path / "presets", project_dir=tmp_path)
    study = _load_only_study(journal) if journal.exists() and journal.stat().st_size else None
    assert study is None or not [t for t in study.trials if t.state != TrialState.WAITING]  # no trial was started


def test_unwritable_presets_dir_is_refused_before_the_study(tmp_path, capsys, monkeypatch):
    import autotune.cli._common
    import autotune.cli.tune
    import autotune.tasks.sources
    from autotune.cli import main

    monkeypatch.setattr(autotune.cli._common, "load_editor", lambda args, presets=None: FakeEditor())
    monkeypatch.setattr(autotune.cli._common, "make_scorer", lambda args, editor: FakeScorer())
    monkeypatch.setattr(autotune.tasks.sources, "load_tasks", lambda *a, **k: make_tasks(2))
    (tmp_path / "blocker").write_text("a file where the presets folder should be")
    journal = tmp_path / "s.journal"
    code = main(["tune", "--model", "fake", "--tasks", "shapes:change_color", "--trials", "2", "--batch", "2", "-q",
                 "--storage", str(journal), "--presets-dir", str(tmp_path / "blocker" / "presets"),
                 "--project-dir", str(tmp_path / "proj")])
    err = capsys.readouterr().err
    assert code == 2 and "blocker" in err and "Traceback" not in err
    assert not journal.exists() or not _load_only_study(journal).trials  # refused before any trial ran
