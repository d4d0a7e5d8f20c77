"""Study storage: the embedded journal and a real PostgreSQL server, under several workers and a SIGKILL.

The PostgreSQL tests use the server the test run starts (conftest's `postgres_url`: a throwaway server from the
`dev` extra's binaries, or `$AUTOTUNE_TEST_POSTGRES_URL`); where none can be had they are skipped, except in CI
(CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotune.errors import StorageError
from autotune.redact import redact_url
from autotune.tuning.storage import LEASE_ATTR, WORKER_ATTR, open_storage
from autotune.tuning.tuner import tune
from tests.test_tuner_fakes import FakeEditor, FakeScorer, make_tasks

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parents[1]
@pytest.fixture(params=["journal", "postgresql"])
def storage_url(request, tmp_path) -> str:
    if request.param == "journal":
        return str(tmp_path / "studies.journal")
    return request.getfixturevalue("postgres_url")


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url).storage)


def _worker(url: str, name: str, trials: int, *, batch: int = 2, delay: float = 0.0, seed: int = 0,
            project_dir: Path | None = None, start_file: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "tests" / "test_tuner_fakes.py"), "--storage", url, "--study", name,
           "--trials", str(trials), "--batch", str(batch), "--delay", str(delay), "--seed", str(seed)]
    if project_dir is not None:
        cmd += ["--project-dir", str(project_dir)]
    if start_file is not None:
        cmd += ["--start-file", str(start_file)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ---------------------------------------------------------------------------------------------------------------------
# URLs and errors


@pytest.mark.parametrize("url, match", [
    ("postgresql://user:pw@host:notaport/db", "malformed storage URL"),
    ("postgres://user:pw@localhost/db", "postgresql://"),
    ("redis://localhost:6379", "unsupported storage URL"),
    ("no_such_dialect://x/y", "unsupported storage URL"),
    ("plainname", "neither a URL nor a .journal file"),
])
def test_malformed_urls_fail_fast_and_redacted(url, match):
    with pytest.raises(StorageError, match=match) as info:
        open_storage(url)
    assert "pw@" not in str(info.value)


def test_unreachable_server_fails_fast():
    start = time.monotonic()
    with pytest.raises(StorageError, match="unreachable") as info:
        open_storage("postgresql://u:topsecret@127.0.0.1:1/db", connect_timeout=2)
    assert time.monotonic() - start < 10
    assert "topsecret" not in str(info.value) and "u:***@127.0.0.1:1" in str(info.value)


def test_wrong_credentials_are_named(postgres_url):
    url = postgres_url
    from sqlalchemy.engine import make_url

    bad = make_url(url).set(password="definitely-wrong").render_as_string(hide_password=False)
    with pytest.raises(StorageError, match="credentials") as info:
        open_storage(bad)
    assert "definitely-wrong" not in str(info.value)


def test_missing_database_is_named(postgres_url):
    url = postgres_url
    from sqlalchemy.engine import make_url

    bad = make_url(url).set(database="no_such_db_autotune").render_as_string(hide_password=False)
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(bad)


def test_unwritable_journal_is_a_storage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot open the study journal"):
        open_storage(str(blocker / "sub" / "s.journal"))


def test_default_storage_is_a_journal_in_the_project_dir(tmp_path):
    store = open_storage(None, project_dir=tmp_path / "proj")
    assert store.kind == "journal" and Path(store.url) == tmp_path / "proj" / "studies.journal"
    assert (tmp_path / "proj" / "studies.journal").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Same behaviour on every storage


def test_study_records_redacted_storage(storage_url, tmp_path):
    name = f"redact-{uuid.uuid4().hex[:8]}"
    result = tune(FakeEditor(), make_tasks(2), category="change_color", trials=2, batch=2, storage=storage_url,
                  study_name=name, scorer=FakeScorer(), progress=False, save_preset=False, artifacts=False,
                  project_dir=tmp_path)
    recorded = result.study.user_attrs["autotune.storage"]
    assert recorded == redact_url(storage_url)
    if "@" in storage_url:
        assert ":***@" in recorded


def test_two_workers_one_study_every_trial_once(storage_url, tmp_path):
    name = f"two-{uuid.uuid4().hex[:8]}"
    budget = 12
    go = tmp_path / "go"
    procs = [_worker(storage_url, name, budget, batch=2, delay=0.05, seed=s, project_dir=tmp_path, start_file=go)
             for s in (0, 1)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.*.ready"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    go.touch()  # both are imported and waiting: start them together
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = _study(storage_url, name)
    trials = study.get_trials()
    assert len({t._trial_id for t in trials}) == len(trials)  # each recorded once
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert budget <= len(complete) <= budget + 2  # at most one batch of overshoot from the racing worker
    assert sorted(t.user_attrs["paper_point"] for t in trials if "paper_point" in t.user_attrs) == ["ddim",
                                                                                                   "siminversion"]
    workers = {(t.system_attrs[WORKER_ATTR]["pid"], t.system_attrs[WORKER_ATTR]["seed"]) for t in trials}
    assert len({pid for pid, _ in workers}) == 2  # both worked
    assert len({seed for _, seed in workers}) == 2  # each with its own sampler seed


def test_sigkill_mid_trial_then_resume(storage_url, tmp_path):
    name = f"kill-{uuid.uuid4().hex[:8]}"
    budget = 6
    proc = _worker(storage_url, name, budget, batch=2, delay=0.4, project_dir=tmp_path)
    deadline = time.monotonic() + 90
    study = None
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            study = study or _study(storage_url, name)
        except KeyError:
            continue
        trials = study.get_trials()
        # The second batch (trials 2, 3) asked, its parameters drawn, none of it told yet: the kill lands while it
        # is edited. (Waiting only for "a COMPLETE and a RUNNING trial" could catch the first batch between its two
        # tells and kill too late, or a trial half way through drawing its parameters.)
        second = [t for t in trials if t.number >= 2]
        if any(t.state == TrialState.COMPLETE for t in trials) and len(second) == 2 and \
                all(t.state == TrialState.RUNNING and set(t.params) == {"w_src", "w_tgt"} for t in second):
            break
    else:
        proc.kill()
        pytest.fail(f"worker never reached a second batch: {proc.communicate()[0]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: t.values for t in study.get_trials() if t.state == TrialState.COMPLETE}
    killed = [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert before and killed

    editor = FakeEditor()
    store = open_storage(storage_url, heartbeat_interval=1, grace_period=3)
    result = tune(editor, make_tasks(3), category="change_color", trials=budget, batch=2, storage=store,
                  study_name=name, scorer=FakeScorer(), sampler="random", progress=False, save_preset=False,
                  artifacts=False, project_dir=tmp_path, prune=False)
    trials = result.study.get_trials()
    for number, values in before.items():
        assert trials[number].state == TrialState.COMPLETE and trials[number].values == values
    for number in killed:
        assert trials[number].state == TrialState.FAIL and trials[number].user_attrs["fail_kind"] == "stale"
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == number]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
        if trials[number].params:  # killed after its parameters were drawn: the retry runs the same ones
            assert retries[0].params == trials[number].params
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert result.counts["complete"] == budget
    from autotune.tuning.to_preset import presets_from_study

    preset = presets_from_study(result.study)[0]  # the final preset sees every completed trial
    assert preset.provenance["n_complete"] == budget


def test_stale_trial_of_another_host_is_swept_after_the_grace_period(storage_url, tmp_path):
    name = f"stale-{uuid.uuid4().hex[:8]}"
    store = open_storage(storage_url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=store.storage, study_name=name, directions=["maximize", "maximize"])
    trial = study.ask({"w_src": optuna.distributions.FloatDistribution(0, 2)})
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, {"host": "elsewhere", "pid": 1})
    store._beat([trial._trial_id])
    assert store.sweep(study) == []  # fresh heartbeat
    time.sleep(2.5)
    other = open_storage(storage_url, heartbeat_interval=1, grace_period=1)  # a second sweeper, racing
    other_study = optuna.load_study(study_name=name, storage=other.storage)
    swept = store.sweep(study) + other.sweep(other_study)
    assert swept == [trial.number]  # failed once, by one sweeper
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == trials[0].params
    assert WORKER_ATTR not in waiting[0].system_attrs and LEASE_ATTR not in waiting[0].system_attrs


def test_a_trial_stopped_half_way_through_drawing_is_retried_with_what_it_drew(storage_url, tmp_path):
    # A worker that dies between drawing w_src and w_tgt leaves a RUNNING trial with only w_src: the retry keeps
    # that w_src (a WAITING trial's parameters are fixed) and draws the rest.
    from autotune.tuning.search_space import SearchSpace

    name = f"half-{uuid.uuid4().hex[:8]}"
    store = open_storage(storage_url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=store.storage, study_name=name, directions=["maximize", "maximize"])
    w_src = SearchSpace.default().distributions()["w_src"]
    trial = study.ask({"w_src": w_src})
    drawn = trial.params["w_src"]
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, {"host": "elsewhere", "pid": 1})
    store._beat([trial._trial_id])
    time.sleep(2.5)  # past the grace period: the worker is gone

    result = tune(FakeEditor(), make_tasks(2), category="change_color", trials=3, batch=1, storage=store,
                  study_name=name, scorer=FakeScorer(), sampler="random", seed=1, progress=False,
                  save_preset=False, artifacts=False, project_dir=tmp_path, prune=False)
    trials = result.study.get_trials()
    # Failed by the tuner's sweep (fail_kind "stale") or, on an RDB, by Optuna's own heartbeat check (no fail_kind)
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs.get("fail_kind", "stale") == "stale"
    assert set(trials[0].params) == {"w_src"}
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params["w_src"] == drawn and 1.0 <= retry[0].params["w_tgt"] <= 12.0
    assert result.counts["complete"] == 3
