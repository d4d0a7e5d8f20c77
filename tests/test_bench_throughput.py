"""The throughput benchmark compares like for like: the same trial parameters, the same thread count, every loop from
an empty cache, the unit a user gets (scored edits), every run kept; and each factor run switches off one thing."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest
import torch

from autotune.bench import throughput
from autotune.bench.throughput import AUTOTUNE, FACTORS, NAIVE, STRONG_NAIVE, LoopRun, ThroughputResult
from autotune.errors import InputError
from autotune.params import EditParams

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def editor(tiny_model_dir):
    from autotune.engine.editor import Editor

    return Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)


@pytest.fixture(scope="module")
def tasks():
    from autotune.shapes.tasks import shapes_tasks

    return shapes_tasks("change_color", "tune", count=2)


@pytest.fixture(scope="module")
def scorer():
    from autotune.shapes.scoring import ShapesScorer

    return ShapesScorer()


def _unet_calls(editor, run) -> int:
    from autotune.bench.overhead import record_unet_calls

    return len(record_unet_calls(editor.components.unet, run))


def test_naive_loops_fresh_and_cached(editor, tasks, scorer):
    steps = 2
    params = [EditParams(steps=steps, w_src=0.5, w_tgt=7.5), EditParams(steps=steps, w_src=0.5, w_tgt=3.0)]
    editor.cache.clear()
    fresh = _unet_calls(editor, lambda: throughput.naive_loop(editor, tasks, scorer, params, fresh=True))
    # every (trial, task) inverts (one call per step) and runs both branches (one call per step)
    assert fresh == len(params) * len(tasks) * (steps + steps)
    editor.cache.clear()
    cached = _unet_calls(editor, lambda: throughput.naive_loop(editor, tasks, scorer, params, fresh=False))
    # the second trial shares the first's w_src: its inversion and source branch come from the cache, its target
    # branch alone runs (one call per step)
    assert cached == len(tasks) * (steps + steps) + len(tasks) * steps
    editor.cache.clear()


def test_one_edit_per_call_gives_the_batched_edits_one_call_each(editor, tasks):
    cands = [EditParams(steps=2, w_src=0.5, w_tgt=7.5), EditParams(steps=2, w_src=1.0, w_tgt=3.0)]
    unbatched = throughput.OneEditPerCall(editor)
    assert getattr(unbatched, "invert_tasks", None) is None  # nothing inverted ahead
    assert unbatched.max_batch == editor.max_batch and unbatched.cache is editor.cache
    calls = []
    real = editor.edit_task
    editor.edit_task = lambda task, cs: calls.append(len(cs)) or real(task, cs)
    try:
        editor.cache.clear()
        got = unbatched.edit_tasks(tasks, cands)
    finally:
        del editor.edit_task
    assert calls == [1] * len(tasks) * len(cands)
    editor.cache.clear()
    want = editor.edit_tasks(tasks, cands)
    for got_row, want_row in zip(got, want, strict=True):
        for a, b in zip(got_row, want_row, strict=True):
            assert a.params == b.params
            torch.testing.assert_close(a.pixels, b.pixels, rtol=1e-4, atol=1e-4)
    editor.cache.clear()


def test_throughput_compares_like_for_like(editor, tasks, scorer, monkeypatch):
    """The baselines edit exactly the tuner's trials (the strong loop all of them, the naive loop an even spread), each
    loop starts from an empty cache, at the same thread count, and the figures count scored edits."""
    from autotune.engine.editor import Editor

    edited, caches_at_start = [], []
    real_edit = Editor.edit

    def recording(self, image, source, target, params=None, **kw):
        edited.append(params)
        return real_edit(self, image, source, target, params, **kw)

    real_naive, real_tuner = throughput.naive_loop, throughput._tuner_run

    def naive_watch(ed, *a, **k):
        caches_at_start.append(("naive", k.get("fresh"), len(ed.cache), torch.get_num_threads()))
        return real_naive(ed, *a, **k)

    tuner_trials = []

    def tuner_watch(ed, *a, **k):
        got, params = real_tuner(ed, *a, **k)
        caches_at_start.append(("tune", None, len(ed.cache), torch.get_num_threads()))
        tuner_trials.append(params)
        return got, params

    monkeypatch.setattr(Editor, "edit", recording)
    monkeypatch.setattr(throughput, "naive_loop", naive_watch)
    monkeypatch.setattr(throughput, "_tuner_run", tuner_watch)
    r = throughput.bench_throughput(editor, tasks, scorer, trials=5, batch=2, steps=2, sampler="random",
                                    naive_trials=2, thread_counts=[1], runs=1, factors=False)
    assert [x.loop for x in r.loops] == [AUTOTUNE, STRONG_NAIVE, NAIVE]
    trials = tuner_trials[0]
    assert len(trials) == 5
    strong, naive = edited[:5 * len(tasks)], edited[5 * len(tasks):]  # the tuner edits through edit_tasks
    assert strong == [p for p in trials for _ in tasks]  # every trial, in order, each task
    assert naive == [p for p in (trials[0], trials[2]) for _ in tasks]  # two trials spread over the five
    assert [fresh for kind, fresh, *_ in caches_at_start if kind == "naive"] == [False, True]
    assert all(size == 0 and threads == 1 for _, _, size, threads in caches_at_start)  # empty caches, one thread
    assert len(editor.cache) == 0  # every loop leaves an empty cache for the next
    auto, strong_run, naive_run = r.loops
    assert (auto.trials, strong_run.trials, naive_run.trials) == (5, 5, 2)
    assert strong_run.edits == 5 * len(tasks) and naive_run.edits == 2 * len(tasks)
    assert auto.edits <= 5 * len(tasks) and auto.pruned <= 5
    for x in r.loops:
        assert math.isclose(x.edits_per_min, 60 * x.edits / x.seconds)
        assert x.calls > 0 and x.rows >= x.calls
    assert naive_run.calls == 2 * len(tasks) * (2 + 2)  # a fresh inversion and both branches per edit
    assert r.ratios(NAIVE, 1) == [auto.edits_per_min / naive_run.edits_per_min]
    assert strong_run.source_groups == len({p.source_group() for p in trials})


def test_factor_runs_switch_off_one_thing_each(editor, tasks, scorer, monkeypatch):
    import autotune.tuning.tuner as tuner

    seen = {}
    real_tune = tuner.tune

    def watching(subject, tasks_, **kw):
        name = (type(subject).__name__, kw["prune"], kw["sampler"], len(kw["callbacks"]))
        seen[name] = kw
        return real_tune(subject, tasks_, **kw)

    monkeypatch.setattr(tuner, "tune", watching)
    r = throughput.bench_throughput(editor, tasks, scorer, trials=2, batch=2, steps=2, sampler="tpe",
                                    naive_trials=1, thread_counts=[1], runs=1)
    assert sorted(seen) == sorted([
        ("Editor", True, "tpe", 0),  # as shipped
        ("OneEditPerCall", True, "tpe", 0),  # without batching
        ("Editor", True, "tpe", 1),  # without caching: a callback clears the cache after every batch
        ("Editor", False, "tpe", 0),  # without pruning
        ("Editor", True, "tpe-plain", 0),  # with plain TPE
    ])
    same = [{k: v for k, v in kw.items() if k not in ("prune", "sampler", "callbacks", "storage", "project_dir")}
            for kw in seen.values()]
    assert all(s.keys() == same[0].keys() for s in same)
    assert all(s["trials"] == 2 and s["seed"] == 0 and s["batch"] == 2 for s in same)
    assert {x.loop for x in r.loops} == {AUTOTUNE, STRONG_NAIVE, NAIVE, *FACTORS.values()}
    text = r.markdown()
    for factor, loop in FACTORS.items():
        assert f"| {factor} (autotune vs {loop}) |" in text


def test_runs_rotate_the_loops_and_every_run_is_kept(editor, tasks, scorer, monkeypatch):
    order = []

    def fake_tuner(ed, tasks_, scorer_, loop, threads, run, **kw):
        order.append((run, threads, loop))
        return LoopRun(loop, threads, run, 1.0 + run, 4, 8), [EditParams(steps=2)] * 4

    def fake_baseline(ed, tasks_, scorer_, loop, params, threads, run, progress):
        order.append((run, threads, loop))
        return LoopRun(loop, threads, run, 2.0, len(params), len(params) * 2)

    monkeypatch.setattr(throughput, "_tuner_run", fake_tuner)
    monkeypatch.setattr(throughput, "_baseline_run", fake_baseline)
    torch.set_num_threads(2)
    try:
        r = throughput.bench_throughput(editor, tasks, scorer, trials=4, steps=2, sampler="random", runs=3,
                                        factors=True)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(1)
    loops = [AUTOTUNE, STRONG_NAIVE, NAIVE, *[v for f, v in FACTORS.items() if f != "sampler"]]  # random: no TPE
    assert r.thread_counts == [1, 2]  # 1 and the machine's default
    for run in range(3):
        got = [loop for rr, t, loop in order if rr == run and t == 2]
        assert got == loops[run:] + loops[:run]  # the first run starts with the tuner, later ones rotate
        got = [loop for rr, t, loop in order if rr == run and t == 1]
        assert got == (loops[:3] * 2)[run:run + 3]  # the factors at the default thread count only
    assert len(r.loops) == 3 * (len(loops) + 3)  # every loop of every run kept
    assert r.ratios(NAIVE, 1) == [(8 / (1.0 + run)) / (8 / 2.0) for run in range(3)]
    # a deadline already past: the first run runs, no other
    r = throughput.bench_throughput(editor, tasks, scorer, trials=4, steps=2, sampler="random", runs=3,
                                    thread_counts=[1], deadline=0.0)
    assert r.runs() == 1 and r.runs_asked == 3 and "1 of the 3 runs asked fitted the time budget" in r.markdown()
    with pytest.raises(InputError, match="runs=0 must be a whole number >= 1"):
        throughput.bench_throughput(editor, tasks, scorer, runs=0)


def test_markdown_gives_medians_ranges_and_labels_the_projection():
    def run(loop, run_, seconds, trials=8, edits=32, pruned=0, calls=0, rows=0):
        return LoopRun(loop, 1, run_, seconds, trials, edits, pruned, calls, rows)

    loops = []
    for k, secs in enumerate((60.0, 40.0, 50.0)):
        loops += [run(AUTOTUNE, k, secs, edits=24, pruned=2, calls=30, rows=300),
                  run(STRONG_NAIVE, k, 120.0, calls=400, rows=1200), run(NAIVE, k, 10.0, trials=2, edits=8,
                                                                           calls=200, rows=600)]
    r = ThroughputResult(4, 8, 4, 50, "tpe", 0, 2, "cpu", [1], loops)
    text = r.markdown()
    auto = [24 / s * 60 for s in (60.0, 40.0, 50.0)]
    assert f"| {statistics.median(auto):.3g} ({min(auto):.3g}-{max(auto):.3g}) |" in text
    vs_strong = [a / (32 / 120 * 60) for a in auto]
    assert f"| autotune vs strong naive | {statistics.median(vs_strong):.3g}x ({min(vs_strong):.3g}-" in text
    assert "| 6 of 24 |" in text  # pruned trials over all runs
    slower = [a / (8 / 10 * 60) for a in auto]  # the naive loop edits faster than autotune here
    assert f"**Where autotune loses** (median below 1x): autotune vs naive, in edits per minute: " \
        f"{statistics.median(slower):.3g}x" in text
    assert "3 run(s) only: a trial of the code, not a recorded figure" in text
    assert "**Projection for a GPU (not measured: no GPU here).**" in text
    calls_per_edit = 90 / 72, 1200 / 96  # autotune and strong naive, over the three runs
    assert f"{calls_per_edit[1] / calls_per_edit[0]:.1f}x fewer calls per scored edit than the strong naive" in text
    assert text.count("| 1 | at 1 thread |") == 3  # the first run's three loops, each a row


def test_throughput_refuses_a_study_whose_trials_all_failed(editor, tasks, scorer):
    class FailingScorer:
        def __init__(self) -> None:
            self.metrics, self.describe = scorer.metrics, scorer.describe

        def score(self, task, pixels):
            raise ValueError("this scorer fails every edit")

    with pytest.raises(InputError, match="every trial of the 'autotune' run failed"):
        throughput.bench_throughput(editor, tasks, FailingScorer(), trials=2, batch=2, steps=2, sampler="random",
                                    thread_counts=[1], runs=1, factors=False)
