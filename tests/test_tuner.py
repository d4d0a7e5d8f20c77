"""The tuner's loop on a fake editor and scorer whose optimum is known (see test_tuner_fakes.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from autotune.errors import InputError, StorageError
from autotune.params import EditParams
from autotune.tuning.pruning import DominationPruner, replay
from autotune.tuning.samplers import SAMPLERS
from autotune.tuning.search_space import SearchSpace
from autotune.tuning.storage import open_storage
from autotune.tuning.tuner import tune
from tests.test_tuner_fakes import FakeEditor, FakeScorer, GridLandscape, GridScorer, make_tasks, true_values

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run(tmp_path, trials=8, batch=4, tasks=3, editor=None, scorer=None, **kw):
    """`tune` on the fakes: `tasks` is a count of smooth-landscape tasks, or the tasks themselves."""
    kw.setdefault("presets_dir", tmp_path / "presets")
    kw.setdefault("progress", False)
    kw.setdefault("prune", False)
    kw.setdefault("sampler", "random")
    kw.setdefault("storage", str(tmp_path / "s.journal"))
    tasks = make_tasks(tasks) if isinstance(tasks, int) else tasks
    return tune(editor or FakeEditor(), tasks, category=tasks[0].category, trials=trials, batch=batch,
                scorer=scorer or FakeScorer(), project_dir=tmp_path, **kw)


def test_paper_points_come_first_and_are_marked(tmp_path):
    result = run(tmp_path, trials=4, batch=1)
    trials = result.study.trials
    assert [t.user_attrs.get("paper_point") for t in trials[:2]] == ["siminversion", "ddim"]
    assert trials[0].params == {"w_src": 0.5, "w_tgt": 7.5}
    assert trials[1].params == {"w_src": 1.0, "w_tgt": 7.5}
    assert all("paper_point" not in t.user_attrs for t in trials[2:])
    # The values are the fake's exact means over the tasks.
    offsets = [t.metadata["offset"] for t in make_tasks(3)]
    fid, strength = np.mean([true_values(0.5, 7.5, o) for o in offsets], axis=0)
    assert trials[0].values == pytest.approx([30 + 10 * fid, strength], abs=1e-4)  # background_psnr, full_success


def test_a_batch_costs_one_engine_call_per_task(tmp_path):
    editor = FakeEditor()
    result = run(tmp_path, trials=8, batch=4, tasks=3, editor=editor)
    assert len(result.study.trials) == 8
    assert editor.calls == [(f"t{i:02d}", 4) for i in range(3)] * 2  # 2 batches x 3 tasks, tasks in id order
    assert result.engine_calls == 6 and result.candidate_edits == 24


class BatchingFakeEditor(FakeEditor):
    """The fake engine, editing several tasks per call as the real one does (`edit_tasks`, `max_batch`)."""

    max_batch = 8

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.task_calls: list[tuple[list[str], int]] = []

    def edit_tasks(self, tasks, candidates):
        self.task_calls.append(([t.id for t in tasks], len(candidates)))
        return [FakeEditor.edit_task(self, t, candidates) for t in tasks]


def _outcomes(result) -> list[tuple]:
    return [(t.state, t.params, t.values, t.user_attrs.get("fail_kind")) for t in result.study.trials]


def test_tasks_share_engine_calls_up_to_max_batch(tmp_path):
    editor = BatchingFakeEditor()
    result = run(tmp_path / "a", trials=8, batch=4, tasks=6, editor=editor)
    # 8 target branches per call at 4 candidates: 2 tasks per call, 3 calls per batch of trials
    assert editor.task_calls == [(["t00", "t01"], 4), (["t02", "t03"], 4), (["t04", "t05"], 4)] * 2
    assert result.engine_calls == 6 and result.candidate_edits == 48
    fixed = BatchingFakeEditor()
    run(tmp_path / "b", trials=4, batch=4, tasks=6, editor=fixed, task_batch=4)
    assert fixed.task_calls == [(["t00", "t01", "t02", "t03"], 4), (["t04", "t05"], 4)]
    # The same study as one task per call.
    assert _outcomes(result) == _outcomes(run(tmp_path / "c", trials=8, batch=4, tasks=6, editor=FakeEditor()))


class InvertingFakeEditor(BatchingFakeEditor):
    """Records `invert_tasks` calls; `fail_invert` makes them raise."""

    def __init__(self, fail_invert: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_invert = fail_invert
        self.inverted: list[tuple[list[str], list[float]]] = []

    def invert_tasks(self, tasks, candidates):
        self.inverted.append(([t.id for t in tasks], [c.w_src.start for c in candidates]))
        if self.fail_invert:
            raise RuntimeError("out of memory while inverting ahead")
        return 0


def test_a_batch_inverts_its_tasks_ahead_when_they_take_several_calls(tmp_path):
    editor = InvertingFakeEditor()
    result = run(tmp_path / "a", trials=8, batch=4, tasks=6, editor=editor)
    # 6 tasks at 2 per call: all six inverted for the batch's four candidates before the first call
    assert [ids for ids, _ in editor.inverted] == [[f"t{i:02d}" for i in range(6)]] * 2
    batches = [result.study.trials[:4], result.study.trials[4:]]
    assert [w for _, w in editor.inverted] == [[round(t.params["w_src"], 6) for t in b] for b in batches]
    one_call = InvertingFakeEditor()
    run(tmp_path / "b", trials=4, batch=4, tasks=2, editor=one_call)
    assert one_call.inverted == []  # one call holds every task: it inverts them itself
    failing = InvertingFakeEditor(fail_invert=True)
    assert _outcomes(run(tmp_path / "c", trials=8, batch=4, tasks=6, editor=failing)) == _outcomes(result)
    assert len(failing.inverted) == 2 and failing.task_calls == editor.task_calls


@pytest.mark.parametrize("flag", [[], ["--no-invert-ahead"]])
def test_cli_tune_inverts_ahead_unless_told_not_to(tmp_path, monkeypatch, flag):
    import autotune.cli._common
    import autotune.cli.tune
    import autotune.tasks.sources
    from autotune.cli import main

    editor = InvertingFakeEditor()
    monkeypatch.setattr(autotune.cli._common, "load_editor", lambda args, presets=None: editor)
    monkeypatch.setattr(autotune.cli._common, "make_scorer", lambda args, editor: FakeScorer())
    monkeypatch.setattr(autotune.tasks.sources, "load_tasks", lambda *a, **k: make_tasks(6))
    code = main(["tune", "--model", "fake", "--tasks", "shapes:change_color", "--trials", "4", "--batch", "4", "-q",
                 "--project-dir", str(tmp_path), "--presets-dir", str(tmp_path / "presets"), *flag])
    assert code == 0 and len(editor.task_calls) == 3  # 6 tasks, 2 per call
    assert len(editor.inverted) == (0 if flag else 1)


def test_callbacks_see_each_trial_once_its_batch_is_recorded(tmp_path):
    editor = FakeEditor()
    seen = []

    def watch(study, trial):
        # At a callback the whole batch is recorded: no trial of the study is still running.
        running = [t.number for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        seen.append((trial.number, trial.state, trial.values, running, len(editor.calls)))

    result = run(tmp_path / "a", trials=6, batch=4, editor=editor, callbacks=[watch])
    assert [n for n, *_ in seen] == list(range(6))
    assert all(state == TrialState.COMPLETE and len(values) == 2 and running == []
               for _, state, values, running, _ in seen)
    by_number = {t.number: t.values for t in result.study.trials}
    assert all(values == by_number[n] for n, _, values, _, _ in seen)
    calls = [c for *_, c in seen]
    assert calls[0] == calls[3] < calls[4] == calls[5]  # called after the first batch, before the second ran

    def stop_after_first(study, trial):
        raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        run(tmp_path / "b", trials=8, batch=4, callbacks=[stop_after_first])
    kept = optuna.load_study(study_name=result.study.study_name, storage=open_storage(
        str(tmp_path / "b" / "s.journal")).storage).trials
    assert [t.state for t in kept] == [TrialState.COMPLETE] * 4  # the batch it ended on is kept, nothing left open
    for bad in (["not a function"], watch, 3):
        with pytest.raises(InputError, match="callbacks must be a list of functions"):
            run(tmp_path / "c", callbacks=bad)


def test_a_failing_multi_task_call_fails_only_its_candidate(tmp_path):
    kw = {"trials": 24, "batch": 4, "scorer": FakeScorer(nan_below=0.3)}
    batching = BatchingFakeEditor(fail_above=10.0, oom_above=11.0)
    together = run(tmp_path / "a", editor=batching, **kw)
    alone = run(tmp_path / "b", editor=FakeEditor(fail_above=10.0, oom_above=11.0), **kw)
    assert _outcomes(together) == _outcomes(alone)
    assert {t.user_attrs.get("fail_kind") for t in together.study.trials} >= {"error", "oom", "nan"}
    assert len(batching.task_calls) > 0 and len(batching.calls) > 3 * len(batching.task_calls)  # fell back


def test_bad_task_batch_is_refused(tmp_path):
    with pytest.raises(InputError, match="task_batch=0 must be a whole number >= 1"):
        run(tmp_path, task_batch=0)


def test_study_contract(tmp_path):
    result = run(tmp_path, trials=4, batch=2)
    attrs = result.study.user_attrs
    json.dumps(attrs)  # plain JSON
    assert attrs["autotune.category"] == "change_color"
    assert attrs["autotune.model"]["id"] == "fake/editor"
    assert attrs["autotune.search_space"] == {"w_src": {"low": 0.0, "high": 2.0, "step": 0.1},
                                              "w_tgt": {"low": 1.0, "high": 12.0}}
    assert attrs["autotune.base_params"]["method"] == "siminversion"
    assert [o["name"] for o in attrs["autotune.objectives"]] == ["fidelity", "edit_strength"]
    assert attrs["autotune.objectives"][0] == {"name": "fidelity", "direction": "maximize",
                                               "metrics": {"background_psnr": 1.0}}
    assert attrs["autotune.scorer"] == {"mode": "fake", "version": 1}
    assert attrs["autotune.task_fingerprint"].startswith("sha256:") and attrs["autotune.task_count"] == 3
    assert attrs["autotune.sampler"] == {"name": "random", "seed": 0}
    assert attrs["autotune.storage"].endswith("s.journal")
    assert [d.name for d in result.study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    for t in result.study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.user_attrs["params"]["w_src"] == pytest.approx(t.params["w_src"])
        assert set(t.user_attrs["per_task"]) == {"t00", "t01", "t02"}
        mean = np.mean([m["background_psnr"] for m in t.user_attrs["per_task"].values()])
        assert t.user_attrs["metrics"]["background_psnr"] == pytest.approx(mean)
        assert t.values[0] == pytest.approx(mean)


def test_front_moves_toward_the_known_optimum(tmp_path):
    result = run(tmp_path, trials=36, batch=4, sampler="tpe", prune=True)
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    early = [abs(t.params["w_src"] - 0.5) for t in complete[2:10]]
    front = [abs(t.params["w_src"] - 0.5) for t in result.front]
    assert np.median(front) < np.median(early)
    assert np.median(front) < 0.15  # the Pareto set is w_src = 0.5
    # The front dominates or matches both paper points.
    ddim = result.paper_points()["ddim"].values
    assert any(all(a >= b for a, b in zip(t.values, ddim, strict=True)) for t in result.front)


def test_failures_are_recorded_and_the_batch_goes_on(tmp_path):
    editor = FakeEditor(fail_above=10.0, oom_above=11.0)
    result = run(tmp_path, trials=24, batch=4, editor=editor, scorer=FakeScorer(nan_below=0.3))
    trials = result.study.trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    kinds = {t.user_attrs["fail_kind"] for t in failed}
    assert kinds == {"error", "oom", "nan"}
    for t in failed:
        w_src, w_tgt = t.params["w_src"], t.params["w_tgt"]
        reason = t.user_attrs["fail_reason"]
        assert reason.startswith("task t00:")
        if t.user_attrs["fail_kind"] == "oom":
            assert w_tgt > 11.0 and "out of memory" in reason
        elif t.user_attrs["fail_kind"] == "error":
            assert 10.0 < w_tgt <= 11.0
        else:
            assert w_src < 0.3 and "background_psnr" in reason and "not finite" in reason
    ok = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(t.params["w_tgt"] <= 10.0 and t.params["w_src"] >= 0.3 for t in ok)
    assert len(ok) + len(failed) == 24 and len(ok) >= 2  # the study reached its budget


def test_pruning_stops_dominated_candidates_and_saves_engine_work(tmp_path):
    kw = {"trials": 24, "batch": 4, "tasks": 6, "sampler": "random", "seed": 3}
    plain = run(tmp_path / "a", **kw)
    pruned = run(tmp_path / "b", prune=True, **kw)
    stopped = pruned.study.get_trials(states=(TrialState.PRUNED,))
    assert stopped, "nothing was pruned"
    assert pruned.candidate_edits < plain.candidate_edits
    assert pruned.engine_calls <= plain.engine_calls
    offsets = [t.metadata["offset"] for t in make_tasks(6)]
    front_values = [t.values for t in pruned.study.get_trials(states=(TrialState.COMPLETE,))]
    for t in stopped:
        assert 2 <= t.user_attrs["pruned_after_tasks"] < 6
        # Truly dominated over all tasks by some measured trial (the fake's exact values).
        full = np.mean([true_values(t.params["w_src"], t.params["w_tgt"], o) for o in offsets], axis=0)
        assert any(f >= full[0] and s >= full[1] for f, s in front_values)
    assert not any(t.user_attrs.get("paper_point") for t in stopped)


def test_pruner_is_a_paired_test():
    pruner = DominationPruner(confidence=0.95, min_tasks=2)
    signs = np.array([1.0, 1.0])
    ref = np.array([[0.8, 0.8], [0.5, 0.5], [0.9, 0.9]])
    worse = ref - 0.05  # consistently worse on every task: pruned even though tasks vary a lot
    assert pruner.dominated_by(worse[:2], {7: ref}, signs) == 7
    noisy = ref + np.array([[-0.2, -0.2], [0.15, 0.15], [0.0, 0.0]])  # worse, better: no evidence
    assert pruner.dominated_by(noisy[:2], {7: ref}, signs) is None
    tradeoff = ref + np.array([[-0.1, 0.1], [-0.1, 0.1], [0, 0]])  # worse fidelity, better strength
    assert pruner.dominated_by(tradeoff[:2], {7: ref}, signs) is None
    assert pruner.dominated_by(worse[:1], {7: ref}, signs) is None  # never on one task
    assert pruner.dominated_by(worse, {7: ref}, signs) is None  # nor once every task is seen


def test_pruner_bound_matches_scipy_one_sided_interval():
    """The pruning bound is the lower end of scipy's one-sided t confidence interval of the paired differences."""
    from scipy.stats import ttest_1samp

    rng = np.random.default_rng(0)
    signs = np.array([1.0, -1.0])  # maximise fidelity, minimise the second objective
    pruner = DominationPruner(confidence=0.9, min_tasks=2, min_effect=0.0)
    decided = {True: 0, False: 0}
    for _ in range(200):
        ref = rng.normal(size=(8, 2))
        cand = ref[:4] - signs * rng.normal(0.4, 0.5, size=(4, 2))  # worse on average, with noise
        diff = (ref[:4] - cand) * signs
        lows = [ttest_1samp(diff[:, j], 0.0, alternative="greater").confidence_interval(0.9).low for j in range(2)]
        expected = all(low >= 0 for low in lows) and any(low > 0 for low in lows)
        assert (pruner.dominated_by(cand, {3: ref}, signs) == 3) is expected
        decided[expected] += 1
    assert decided[True] > 20 and decided[False] > 20  # both outcomes exercised


def test_pruner_treats_pass_fail_ties_by_what_is_left_to_see():
    """Both succeed on the tasks seen (a tie with no spread), the front trial has better fidelity: whether that
    tie is trusted depends on whether the front trial also succeeds on every task not yet seen."""
    pruner = DominationPruner()
    signs = np.array([1.0, 1.0])  # (fidelity dB, edit success)
    cand = np.array([[20.0, 1.0], [24.0, 1.0], [18.0, 1.0]])
    always = np.array([[26.0, 1], [30.0, 1], [25.0, 1], [28.0, 1], [27.0, 1], [29.0, 1]])
    assert pruner.dominated_by(cand, {4: always}, signs) == 4  # c cannot out-succeed r anywhere
    sometimes = always.copy()
    sometimes[4, 1] = 0.0  # r fails on a task still to come, where c might succeed
    assert pruner.dominated_by(cand, {4: sometimes}, signs) is None
    # the same fidelity gap without a tie: c fails where r succeeds, so r is better on both
    failing = cand.copy()
    failing[:, 1] = 0.0
    assert pruner.dominated_by(failing, {4: sometimes}, signs) == 4


def test_pruner_keeps_near_duplicates():
    signs = np.array([1.0, 1.0])
    ref = np.array([[10.9, 1], [12.5, 1], [11.8, 1], [17.1, 1], [8.0, 1], [39.4, 1], [42.4, 1], [36.0, 1]])
    twin = ref[:4] - np.array([[0.05, 0], [0.03, 0], [0.15, 0], [0.07, 0]])  # a hair worse, consistently
    assert DominationPruner(min_effect=0.0).dominated_by(twin, {1: ref}, signs) == 1
    assert DominationPruner().dominated_by(twin, {1: ref}, signs) is None  # 0.075 dB < 0.05 x 13 dB spread


@pytest.mark.parametrize("kwargs, match", [
    ({"confidence": 1.0}, "confidence"), ({"confidence": 0.2}, "confidence"),
    ({"min_tasks": 1}, "min_tasks"), ({"min_effect": -1.0}, "min_effect"),
    ({"min_effect": float("nan")}, "min_effect"),
])
def test_pruner_refuses_bad_settings(kwargs, match):
    with pytest.raises(InputError, match=match):
        DominationPruner(**kwargs)


def test_replay_predicts_the_live_pruning_exactly(tmp_path):
    """The random sampler draws the same parameters with or without pruning, so replaying the pruner on the
    unpruned study must stop the same trials after the same tasks, by the same front trials."""
    kw = {"trials": 24, "batch": 4, "tasks": 6, "sampler": "random", "seed": 3}
    plain = run(tmp_path / "a", **kw)
    live = run(tmp_path / "b", prune=True, **kw)
    stopped = {t.number: (t.user_attrs["pruned_after_tasks"], t.user_attrs["pruned_by_trial"])
               for t in live.study.get_trials(states=(TrialState.PRUNED,))}
    replayed = replay(plain.study, batch=4)
    assert stopped and replayed.stopped == stopped
    assert (replayed.edits, replayed.full_edits) == (live.candidate_edits, plain.candidate_edits)
    assert replayed.cost == pytest.approx(live.candidate_edits / plain.candidate_edits)
    assert replayed.front_cut == [] and replayed.front
    assert replay(plain.study, DominationPruner(min_effect=100.0)).cost == 1.0  # a pruner that never stops


def test_replay_predicts_pruning_between_multi_task_calls(tmp_path):
    kw = {"trials": 24, "batch": 4, "tasks": 7, "sampler": "random", "seed": 3}
    plain = run(tmp_path / "a", **kw)
    for task_batch in (None, 3):  # None: as many as max_batch target branches hold for the live candidates
        live = run(tmp_path / f"b{task_batch}", prune=True, editor=BatchingFakeEditor(), task_batch=task_batch, **kw)
        stopped = {t.number: (t.user_attrs["pruned_after_tasks"], t.user_attrs["pruned_by_trial"])
                   for t in live.study.get_trials(states=(TrialState.PRUNED,))}
        replayed = replay(plain.study, batch=4, task_batch=task_batch, max_batch=BatchingFakeEditor.max_batch)
        assert stopped and replayed.stopped == stopped
        assert replayed.edits == live.candidate_edits
        # Pruning is asked only between calls: never after fewer tasks than task by task.
        by_task = replay(plain.study, batch=4)
        assert all(replayed.stopped.get(n, (7,))[0] >= t for n, (t, _) in by_task.stopped.items())


def test_replay_in_another_task_order_and_its_hypervolume(tmp_path):
    from optuna._hypervolume import compute_hypervolume

    from autotune.pareto import hypervolume

    points = np.random.default_rng(0).random((12, 2))
    assert hypervolume(list(points), (-0.01, -0.01)) == pytest.approx(
        compute_hypervolume(-points, np.array([0.01, 0.01])))
    plain = run(tmp_path, trials=24, batch=4, tasks=6, sampler="random", seed=3)
    same = replay(plain.study, order=list(range(6)))
    assert same.stopped == replay(plain.study).stopped
    assert same.hypervolume_kept == pytest.approx(1.0)  # no front trial cut: every kept trial's area is there
    backwards = replay(plain.study, order=[5, 4, 3, 2, 1, 0])
    assert backwards.front == same.front and backwards.full_edits == same.full_edits
    everything = replay(plain.study, DominationPruner(confidence=0.5, min_effect=0.0))
    everything.stopped.update({n: (2, -1) for n in everything.front})  # pretend the front was cut too
    assert everything.hypervolume_kept < 1.0
    with pytest.raises(InputError, match="permutation"):
        replay(plain.study, order=[0, 0, 1, 2, 3, 4])


def test_replay_refuses_a_study_it_cannot_read(tmp_path):
    bare = optuna.create_study(directions=["maximize", "maximize"])
    with pytest.raises(InputError, match="autotune.objectives"):
        replay(bare)
    with pytest.raises(InputError, match="batch"):
        replay(bare, batch=0)


def test_resume_never_redoes_completed_trials(tmp_path):
    first = run(tmp_path, trials=6, batch=2)
    before = {t.number: (t.values, t.datetime_complete) for t in first.study.trials}
    editor = FakeEditor()
    second = run(tmp_path, trials=10, batch=2, editor=editor)
    assert len(second.study.trials) == 10
    for t in second.study.trials[:6]:
        assert (t.values, t.datetime_complete) == before[t.number]
    assert len(editor.calls) == 2 * 3  # only the 4 new trials, 2 per batch, 3 tasks
    again = FakeEditor()
    run(tmp_path, trials=10, batch=2, editor=again)
    assert again.calls == []  # the budget is met: nothing to do


def test_a_different_task_set_is_refused_under_the_same_study_name(tmp_path):
    run(tmp_path, trials=2, batch=2, study_name="mine")
    with pytest.raises(InputError, match="task_fingerprint"):
        tune(FakeEditor(), make_tasks(3, seed=1), category="change_color", trials=4,
             storage=str(tmp_path / "s.journal"), study_name="mine", scorer=FakeScorer(), progress=False,
             save_preset=False)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs(tmp_path, sampler):
    result = run(tmp_path, trials=5, batch=2, sampler=sampler, save_preset=False)
    assert len(result.study.get_trials(states=(TrialState.COMPLETE,))) == 5
    recorded = result.study.user_attrs["autotune.sampler"]
    assert recorded["name"] == sampler and (recorded.get("new_source_cost") == 2.0) == (sampler == "tpe")


def test_front_trials_keep_their_images_as_artifacts(tmp_path):
    from optuna.artifacts import get_all_artifact_meta

    result = run(tmp_path, trials=8, batch=4)
    for t in result.front:
        metas = get_all_artifact_meta(t, storage=result.study._storage)
        assert metas and metas[0].mimetype == "image/png"
        assert (tmp_path / "artifacts" / metas[0].artifact_id).stat().st_size > 100


def test_preset_is_written_from_the_study(tmp_path):
    result = run(tmp_path, trials=8, batch=4)
    assert result.preset_path is not None and result.preset_path.parent == tmp_path / "presets"
    data = json.loads(result.preset_path.read_text())
    assert data["category"] == "change_color" and data["model"]["id"] == "fake/editor"
    numbers = {p["trial"] for p in data["front"]}
    assert numbers == {t.number for t in result.front}


def test_preset_goes_to_the_user_dir_and_a_replaced_one_is_kept(tmp_path, monkeypatch):
    """By default the preset lands in the user's presets directory, never in ./presets; a later, different result
    replaces it only after keeping it in history/, an unchanged one is left alone, and the summary says which."""
    from autotune.presets.preset import Preset

    user = tmp_path / "user-presets"
    monkeypatch.setenv("AUTOTUNE_PRESETS_DIR", str(user))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "presets").mkdir()
    common = dict(category="change_color", batch=4, scorer=FakeScorer(), progress=False, sampler="random",
                  prune=False, storage=str(tmp_path / "s.journal"), project_dir=tmp_path)
    first = tune(FakeEditor(), make_tasks(3), trials=4, **common)
    assert first.preset_path == user / "fake--editor__change_color.json" and first.saved.action == "added"
    assert list((tmp_path / "presets").iterdir()) == []
    assert f"preset written to {first.preset_path}" in first.summary()
    assert "--preset" not in first.summary()  # the user's folder is searched: no need to name the file
    elsewhere = run(tmp_path / "other", trials=4)
    assert f"does not search: use it with --preset {elsewhere.preset_path}" in elsewhere.summary()
    again = tune(FakeEditor(), make_tasks(3), trials=4, **common)  # the same study, nothing new to run
    assert again.saved.action == "unchanged" and "preset unchanged" in again.summary()
    assert not (user / "history").exists()
    more = tune(FakeEditor(), make_tasks(3), trials=12, **common)  # the study goes on: a new front
    assert more.saved.action == "replaced"
    (kept,) = (user / "history").iterdir()
    assert Preset.load(kept).content_hash == first.preset.content_hash  # the first result, whole
    assert Preset.load(more.preset_path).content_hash == more.preset.content_hash != first.preset.content_hash
    assert f"kept as {kept}" in more.summary()


def test_shipped_presets_are_read_only_to_tune(tmp_path):
    from autotune.errors import PresetError
    from autotune.presets.store import check_presets_dir, save_preset, shipped_presets_dir

    shipped = shipped_presets_dir()
    before = {p.name: p.read_bytes() for p in shipped.glob("*.json")}
    with pytest.raises(InputError, match="presets shipped with autotune"):
        run(tmp_path, trials=4, presets_dir=shipped)
    assert not (tmp_path / "s.journal").exists()  # refused before the study
    with pytest.raises(PresetError, match="presets shipped with autotune"):
        save_preset(run(tmp_path, trials=4).preset, shipped)
    with pytest.raises(InputError, match="presets shipped with autotune.*--presets-dir"):
        check_presets_dir(shipped)
    assert {p.name: p.read_bytes() for p in shipped.glob("*.json")} == before


def test_summary_rounds_guidance_and_names_the_picks(tmp_path):
    result = run(tmp_path, trials=12, batch=4)
    text = result.summary()
    for style, pick in result.preset.picks.items():
        trial = result.preset.front[pick["front_index"]].trial
        line = next(line for line in text.splitlines() if line.startswith(f"  trial {trial:4d}:"))
        assert style in line.split("[", 1)[1]
        w_tgt = result.study.trials[trial].user_attrs["params"]["w_tgt"]
        assert f"w_tgt={w_tgt:.3g} " in line + " " and len(line.split("w_tgt=")[1].split()[0]) <= 5


def test_summary_warns_when_no_setting_changed_the_edit_strength(tmp_path):
    """A study where no trial ever made the edit (every edit strength 0) has nothing to trade: the summary says so
    instead of presenting max-fidelity picks as a tuned edit; a study with a trade-off prints no warning."""

    class NeverEdits(FakeScorer):
        def score(self, task, edited):
            return [{**s, "full_success": 0.0} for s in super().score(task, edited)]

    flat = run(tmp_path / "flat", trials=8, scorer=NeverEdits())
    assert flat.flat_edit_strength() == 0.0
    assert "warning: every completed trial scored the same edit strength (0)" in flat.summary()
    normal = run(tmp_path / "normal", trials=8)
    assert normal.flat_edit_strength() is None and "warning" not in normal.summary()


def test_progress_moves_within_the_first_batch_and_says_how_long_the_rest_takes(tmp_path, capsys):
    """A batch takes minutes on a CPU: the bar moves task by task, and after the first batch one line says how long
    the remaining trials should take at that pace."""
    run(tmp_path, trials=8, batch=4, tasks=4, progress=True, task_batch=1)
    err = capsys.readouterr().err.replace("\r", "\n")
    seen = [float(n) for n in re.findall(r"\| *([0-9.]+)/8 \[", err)]
    assert {1.0, 2.0, 3.0} <= set(seen)  # a quarter of the first batch's 4 trials per task, before the batch ends
    assert seen.index(1.0) < seen.index(4.0)
    line = next(line for line in err.splitlines() if line.startswith("first batch:"))
    assert re.fullmatch(r"first batch: 4 trials in \d+ s; the remaining 4 should take at most about \d+ s .*", line)
    assert err.count("first batch:") == 1  # once per run


class RecordingEditor(FakeEditor):
    """The fake engine, keeping every parameter set it was asked to edit with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[EditParams] = []

    def edit_task(self, task, candidates):
        self.seen.extend(candidates)
        return super().edit_task(task, candidates)


@pytest.mark.parametrize("steps_range, paper_steps", [((10, 50), 50), ((10, 30), None)])
def test_search_space_knobs_reach_the_engine(tmp_path, steps_range, paper_steps):
    editor = RecordingEditor()
    low, high = steps_range
    space = SearchSpace.default(steps={"low": low, "high": high, "step": 10}, w_tgt_end={"low": 1.0, "high": 12.0})
    result = run(tmp_path, trials=4, batch=4, editor=editor, search_space=space)
    trials = result.study.trials
    for t in trials:
        params = t.user_attrs["params"]
        assert params["steps"] == t.params["steps"] and params["steps"] in range(low, high + 1, 10)
        assert params["w_tgt"]["kind"] == "linear"
        assert params["w_tgt"]["end"] == pytest.approx(t.params["w_tgt_end"])
        # The engine edited every task with exactly the trial's parameters.
        sent = [p for p in editor.seen if p.to_dict() == params]
        assert len(sent) == 3
    # The paper points keep the base's 50 steps when the range holds it (docs/tuning.md, "Paper points"); outside
    # it the sampler draws their steps like any other knob's.
    base_steps = SearchSpace.default().base.steps
    assert base_steps == 50
    for t in trials[:2]:
        assert t.user_attrs["paper_point"]
        if paper_steps is not None:
            assert t.params["steps"] == paper_steps
        else:
            assert t.params["steps"] != base_steps and low <= t.params["steps"] <= high


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(InputError, match="no task of category"):
        tune(FakeEditor(), make_tasks(2), category="change_style", trials=2, scorer=FakeScorer(), progress=False,
             storage=str(tmp_path / "s.journal"))
    with pytest.raises(InputError, match="trials"):
        tune(FakeEditor(), make_tasks(2), category="change_color", trials=0, scorer=FakeScorer(), progress=False)
    with pytest.raises(InputError, match="sampler"):
        tune(FakeEditor(), make_tasks(2), category="change_color", trials=2, sampler="cmaes", scorer=FakeScorer(),
             progress=False)
    with pytest.raises(InputError, match="weight must be negative"):
        run(tmp_path, objectives=[{"name": "fidelity", "direction": "minimize", "metrics": {"preservation": 1}},
                                  {"name": "edit_strength", "direction": "maximize", "metrics": {"full_success": 1}}])


class InterruptingEditor(FakeEditor):
    """Ctrl-C arrives during its `at_call`-th engine call."""

    def __init__(self, at_call: int) -> None:
        super().__init__()
        self.at_call = at_call

    def edit_task(self, task, candidates):
        if len(self.calls) == self.at_call:
            raise KeyboardInterrupt
        return super().edit_task(task, candidates)


def test_ctrl_c_keeps_completed_trials_and_requeues_the_batch(tmp_path):
    from autotune.tuning.to_preset import presets_from_study

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, trials=8, batch=2, editor=InterruptingEditor(at_call=4))  # batch 2, its second task
    storage = open_storage(str(tmp_path / "s.journal")).storage
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    states = [t.state for t in study.trials]
    assert states[:4] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] * 2
    assert [t.user_attrs["fail_kind"] for t in study.trials[2:4]] == ["interrupted"] * 2
    assert states[4:] == [TrialState.WAITING] * 2
    presets = presets_from_study(study)  # a preset from the trials completed so far
    assert {p.trial for p in presets[0].front} <= {0, 1}
    result = run(tmp_path, trials=8, batch=2)  # resume
    assert result.counts == {"complete": 8, "pruned": 0, "failed": 0, "retried": 2}
    retried = [t for t in result.study.trials if "failed_trial" in t.system_attrs]
    assert sorted(t.system_attrs["failed_trial"] for t in retried) == [2, 3]
    assert all(t.state == TrialState.COMPLETE for t in retried)


def test_database_lost_mid_study_then_resumed_in_the_same_process(tmp_path, monkeypatch):
    import sqlalchemy.exc
    from optuna.storages import RDBStorage

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    finished = {"n": 0}
    original = RDBStorage.set_trial_state_values

    def flaky(self, trial_id, state, values=None):
        if state.is_finished():
            finished["n"] += 1
            if finished["n"] == 3:
                raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("server closed the connection"))
        return original(self, trial_id, state, values)

    monkeypatch.setattr(RDBStorage, "set_trial_state_values", flaky)
    with pytest.raises(StorageError, match="re-run the same command to resume"):
        run(tmp_path, trials=6, batch=2, storage=url)
    monkeypatch.setattr(RDBStorage, "set_trial_state_values", original)
    result = run(tmp_path, trials=6, batch=2, storage=url)
    trials = result.study.trials
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE] * 2  # kept
    assert [t.user_attrs.get("fail_kind") for t in trials[2:4]] == ["stale", "stale"]  # abandoned, swept
    assert result.counts["complete"] == 6
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.parametrize("done", [3, 4])
def test_tpe_models_the_objectives_after_one_batch_of_four(done):
    import warnings

    from autotune.tuning.samplers import make_sampler

    space = SearchSpace.default()
    sampler = make_sampler("tpe", 0, space, batch=4)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    dists = space.distributions()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is marked experimental
        for i in range(done):
            trial = study.ask(dists)
            study.tell(trial, [float(i), float(-i)])
        probe = study.ask(dists)
        relative = sampler.sample_relative(study, study._storage.get_trial(probe._trial_id),
                                           sampler.infer_relative_search_space(study, probe))
    assert (relative != {}) == (done >= 4)  # {}: still the random start-up


# ---------------------------------------------------------------------------------------------------------------------
# The same behaviour on a jagged landscape: a grid table recorded from the shapes model (GridLandscape in
# test_tuner_fakes.py), pass/fail metrics over 8 tasks, where the smooth fake's optimum-where-expected does not hold.


@pytest.fixture(scope="module")
def grid() -> GridLandscape:
    return GridLandscape()


def on_grid(tmp_path, grid, **kw):
    return run(tmp_path, tasks=grid.tasks(), scorer=GridScorer(grid), **kw)


def _grid_points(grid) -> dict[tuple[int, int], tuple[float, float]]:
    """(fidelity, edit strength) = (background PSNR, full success), the shapes defaults, at every cell."""
    psnr, full = grid.metrics["background_psnr"].mean(0), grid.metrics["full_success"].mean(0)
    return {(i, j): (psnr[i, j], full[i, j]) for i in range(len(grid.w_src)) for j in range(len(grid.w_tgt))}


def _pareto(points: dict) -> set:
    """Brute force: the keys of the points no other point beats on one objective without losing on the other."""
    return {k for k, (f, s) in points.items()
            if not any(f2 >= f and s2 >= s and (f2, s2) != (f, s) for f2, s2 in points.values())}


def _scaled_hypervolume(values, grid) -> float:
    """Hypervolume of `values` with each objective scaled to [0, 1] over the whole grid, as a share of the grid
    front's own."""
    cells = np.array(list(_grid_points(grid).values()))
    lo, hi = cells.min(axis=0), cells.max(axis=0)

    def area(points):
        scaled = sorted(((np.asarray(p) - lo) / (hi - lo) for p in points), key=lambda p: -p[0])
        total, best = 0.0, 0.0
        for x, y in scaled:
            if y > best:
                total, best = total + x * (y - best), y
        return total

    return area(values) / area([cells[i] for i in range(len(cells))])


def test_the_recorded_landscape_is_jagged_and_its_optimum_a_needle(grid):
    points = _grid_points(grid)
    cells = np.array(list(points.values()))
    scaled = (cells - cells.min(axis=0)) / (cells.max(axis=0) - cells.min(axis=0))
    score = scaled.mean(axis=1).reshape(len(grid.w_src), len(grid.w_tgt))
    assert (score >= 0.98 * score.max()).sum() <= 0.05 * score.size  # a needle: few cells near the best
    steps = np.abs(np.diff(score, axis=1)).max()
    assert steps >= 0.25  # neighbouring cells differ by a quarter of the range or more
    assert len(_pareto(points)) >= 3 and "make_grid_table.py" in grid.command


def test_on_the_jagged_landscape_values_are_the_recorded_cells_and_the_front_their_pareto_set(tmp_path, grid):
    result = on_grid(tmp_path, grid, trials=16, batch=4, seed=1)
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 16
    for t in complete:
        want = grid.means(t.params["w_src"], t.params["w_tgt"])
        assert t.values == pytest.approx([want["background_psnr"], want["full_success"]], abs=1e-9)
        for task, metrics in zip(grid.tasks(), (t.user_attrs["per_task"][k] for k in sorted(t.user_attrs["per_task"]))):
            assert metrics == grid.task_metrics(task.metadata["index"], t.params["w_src"], t.params["w_tgt"])
    paper = result.paper_points()["siminversion"]
    assert paper.values[1] == pytest.approx(grid.means(0.5, 7.5)["full_success"])
    values = {t.number: tuple(t.values) for t in complete}
    assert {t.number for t in result.front} == _pareto(values)  # ties on the 1/8 steps kept, as equal points
    preset = json.loads(result.preset_path.read_text())
    assert {p["trial"] for p in preset["front"]} <= _pareto(values)


def test_on_the_jagged_landscape_pruning_saves_edits_and_keeps_the_front(tmp_path, grid):
    kw = {"trials": 32, "batch": 4, "sampler": "random", "seed": 3}
    plain = on_grid(tmp_path / "a", grid, **kw)
    pruned = on_grid(tmp_path / "b", grid, prune=True, **kw)
    assert [t.params for t in plain.study.trials] == [t.params for t in pruned.study.trials]  # the same candidates
    stopped = pruned.study.get_trials(states=(TrialState.PRUNED,))
    assert stopped and pruned.candidate_edits < plain.candidate_edits
    kept = [t.values for t in pruned.study.get_trials(states=(TrialState.COMPLETE,))]
    every = [t.values for t in plain.study.get_trials(states=(TrialState.COMPLETE,))]
    # A 90%-confidence test over pass/fail tasks makes mistakes (docs/tuning.md); they must cost little of the front.
    assert _scaled_hypervolume(kept, grid) >= 0.95 * _scaled_hypervolume(every, grid)
    wrongly = 0
    for t in stopped:
        truth = grid.means(t.params["w_src"], t.params["w_tgt"])
        full = (truth["background_psnr"], truth["full_success"])
        wrongly += not any(f >= full[0] and s >= full[1] for f, s in kept)
    assert wrongly <= len(stopped) // 4


def test_on_the_jagged_landscape_tpe_covers_more_of_the_front_than_random_search(tmp_path, grid, sampler="tpe"):
    """The default sampler against random search, 6 seeds each, 32 trials (the README job's budget), pruning on."""
    def covered(name, seed):
        result = on_grid(tmp_path / f"{name}-{seed}", grid, trials=32, batch=4, sampler=name, seed=seed, prune=True,
                         artifacts=False, save_preset=False)
        return _scaled_hypervolume([t.values for t in result.front], grid)

    seeds = range(6)
    tpe = [covered(sampler, seed) for seed in seeds]
    random = [covered("random", seed) for seed in seeds]
    assert np.mean(tpe) > np.mean(random)
    assert max(tpe) > 0.95  # within 32 trials TPE reaches (nearly) the whole grid front in some seeds
