"""1. Tuning throughput: the tuner's loop (`tune`: batched edits, cached inversions and source branches, pruning)
against the loop a user would write (each trial edits each task alone, cache cleared), on the trial parameters the
tuner asked, run between the tuner's batches so that both loops meet the same machine."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from autotune.bench import markdown
from autotune.bench._common import bench_space, sync
from autotune.bench.overhead import CallRecorder, record_unet_calls
from autotune.errors import InputError
from autotune.params import EditParams
from autotune.task import EditTask
from autotune.tuning.search_space import family_defaults


@dataclass
class ThroughputResult:
    trials: int
    tasks: int
    batch: int
    steps: int
    sampler: str
    autotune_seconds: float
    autotune_trials_per_min: float
    engine_calls: int
    candidate_edits: int
    pruned: int
    naive_trials: int
    naive_seconds: float
    naive_trials_per_min: float
    ratio: float
    task_batch: int | None = None  # tasks per engine call (None: as many as the editor's max_batch holds)
    max_batch: int = 0
    autotune_unet_calls: int = 0  # UNet forward calls made by the timed run
    autotune_unet_rows: int = 0  # samples through the UNet (sum of the calls' batch sizes)
    naive_unet_calls: int = 0
    naive_unet_rows: int = 0
    threads: int = 0  # torch CPU threads of both loops (0: not a CPU run)
    naive_one_thread_seconds: float | None = None  # the naive loop again at 1 thread, when `threads` > 1
    ratios: list[float] = field(default_factory=list)  # every run's speed-up, when several were run
    ratios_one_thread: list[float] = field(default_factory=list)
    invert_ahead: bool = True  # `tune(invert_ahead=...)`: a batch's tasks inverted before its first call
    source_groups: int = 0  # distinct source work (w_src, for SimInversion) among the study's trials

    @property
    def ratio_one_thread(self) -> float | None:
        """The speed-up against the naive loop at 1 thread: its calls of 2-4 rows barely use a second core and pay
        for splitting the work, so on some CPUs it is faster alone; the lower of the two ratios is the one to hold
        against the target."""
        if not self.naive_one_thread_seconds:
            return None
        return self.autotune_trials_per_min / (60.0 * self.naive_trials / self.naive_one_thread_seconds)

    @property
    def ceiling_without_pruning(self) -> float:
        """Naive UNet samples per trial over the samples no loop can skip when it runs every task of a trial:
        each task's target branch, 2 rows (unconditional, conditional) per step. No caching beats this ratio in
        samples; only pruning can, and batching makes each sample cheaper."""
        floor = 2 * self.steps * self.tasks
        return self.naive_unet_rows / max(self.naive_trials, 1) / floor

    def _tasks_per_call(self) -> str:
        calls = (f"{self.task_batch} task(s)" if self.task_batch is not None
                 else f"as many tasks as {self.max_batch} target branches hold")
        ahead = ("inverted ahead before each batch's first call" if self.invert_ahead
                 else "each call inverting its own tasks")
        return f"{calls} per engine call, {ahead}"

    def markdown(self) -> str:
        def per_trial(value: int, trials: int) -> float:
            return value / max(trials, 1)

        auto_calls, naive_calls = (per_trial(self.autotune_unet_calls, self.trials),
                                   per_trial(self.naive_unet_calls, self.naive_trials))
        auto_rows, naive_rows = (per_trial(self.autotune_unet_rows, self.trials),
                                 per_trial(self.naive_unet_rows, self.naive_trials))
        table = markdown.table(
            ["loop", "trials timed", "seconds", "trials / minute", "engine calls", "candidate-task edits",
             "UNet calls / trial", "UNet samples / trial"],
            [["autotune (`tune`: batched, cached, pruned)", self.trials, self.autotune_seconds,
              self.autotune_trials_per_min, self.engine_calls, self.candidate_edits, auto_calls, auto_rows],
             ["naive (one candidate per call, fresh inversion, no pruning)", self.naive_trials, self.naive_seconds,
              self.naive_trials_per_min, self.naive_trials * self.tasks, self.naive_trials * self.tasks,
              naive_calls, naive_rows]]
            + ([["naive again at 1 thread", self.naive_trials, self.naive_one_thread_seconds,
                 60.0 * self.naive_trials / self.naive_one_thread_seconds, self.naive_trials * self.tasks,
                 self.naive_trials * self.tasks, naive_calls, naive_rows]] if self.naive_one_thread_seconds else []))
        work = ""
        if auto_calls and auto_rows:
            auto_ms = 1000 * self.autotune_seconds / max(self.autotune_unet_rows, 1)
            naive_ms = 1000 * self.naive_seconds / max(self.naive_unet_rows, 1)
            work = (f" Work per trial: {naive_calls / auto_calls:.2f}x fewer sequential UNet calls and "
                    f"{naive_rows / auto_rows:.2f}x fewer UNet samples (batch rows); each sample cost "
                    f"{naive_ms / auto_ms:.2f}x less ({auto_ms:.2f} vs {naive_ms:.2f} ms of the loop's time per "
                    "sample: larger batches use the CPU better). The speed-up is the product of those two. Samples "
                    f"ceiling without pruning: {self.ceiling_without_pruning:.2f}x (the naive samples per trial over "
                    "the target branches' 2 samples per step and task, which every loop must compute). On a GPU a "
                    "batched call costs little more than a single one until the device is full, so there the calls "
                    "count (not measured here: no GPU).")
        def listed(ratios: list[float]) -> str:
            return ", ".join(f"{r:.2f}x" for r in ratios)

        runs = ""
        if len(self.ratios) > 1:
            runs = (f" The median of {len(self.ratios)} runs of the whole comparison ({listed(self.ratios)}); the "
                    "table shows that run.")
        threads = ""
        if self.threads:
            threads = f" Both loops at {self.threads} CPU thread(s)"
            one = self.ratio_one_thread
            said = "; against the naive loop run again at 1 thread (the faster setting for calls of 2-4 rows on some "
            if len(self.ratios_one_thread) > 1:
                median_one = statistics.median(self.ratios_one_thread)
                threads += f"{said}machines): **{median_one:.2f}x**, the median of {listed(self.ratios_one_thread)}."
            elif one is not None:
                threads += f"{said}machines): **{one:.2f}x**."
            else:
                threads += "."
        return (table + f"\n\n**Speed-up: {self.ratio:.2f}x** trials per minute (target >= 5x).{runs}{threads} "
                f"{self.tasks} tasks, {self.steps} DDIM steps, sampler {self.sampler}, batch {self.batch}, "
                f"{self._tasks_per_call()}; "
                f"{self.pruned} of {self.trials} trials pruned; the study drew {self.source_groups} distinct "
                "w_src values (each costs every task an inversion and a source branch). Both loops ran the same "
                "trial parameters, taking turns: the naive trials ran between the tuner's batches, the tuner's "
                "clock stopped meanwhile." + work)


def naive_loop(editor: Any, tasks: Sequence[EditTask], scorer: Any, params: Sequence[EditParams],
               progress: bool = False, desc: str = "naive loop") -> float:
    """The loop a user would write: every trial edits every task alone, from scratch. Returns seconds."""
    from tqdm.auto import tqdm

    device = torch.device(getattr(editor, "device", "cpu"))
    sync(device)
    start = time.perf_counter()
    with tqdm(total=len(params) * len(tasks), desc=desc, unit="edit", disable=not progress, leave=False) as bar:
        for p in params:
            for task in tasks:
                editor.cache.clear()  # no inversion (or VAE latent) reuse between calls
                result = editor.edit(task.image, task.source_prompt, task.target_prompt, p,
                                     blend_words=task.blend_words)
                scorer.score(task, result.pixels[None])
                bar.update()
    sync(device)
    return time.perf_counter() - start


def bench_throughput(editor: Any, tasks: Sequence[EditTask], scorer: Any, *, trials: int = 16, batch: int = 4,
                     steps: int = 50, sampler: str = "tpe", seed: int = 0, naive_trials: int | None = None,
                     prune: bool = True, task_batch: int | None = None, progress: bool = False,
                     runs: int = 1, invert_ahead: bool = True) -> ThroughputResult:
    """Run `tune` for `trials` trials and, between its batches, the naive loop on `naive_trials` (default all) of
    the same trial parameters, spread evenly over the study (the subset's rate stands for the whole study's): the
    two loops alternate, so a drift of the machine's speed reaches both. On a CPU with several torch threads the
    naive loop is timed again at 1 thread right after (on some CPUs its faster setting).
    `runs` repeats the whole comparison (the same study each time) and returns the run of median speed-up, with
    every run's ratios: on a shared or virtual machine one run's ratio moves by 10-20%."""
    import optuna

    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise InputError(f"runs={runs!r} must be a whole number >= 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Warm-up so neither loop pays for first-call kernel selection.
    editor.edit_task(tasks[0], [family_defaults(editor, None).params.with_(steps=steps)])
    results = []
    for run in range(runs):
        if progress and runs > 1:
            print(f"throughput run {run + 1} of {runs}", file=sys.stderr)
        results.append(_throughput_run(editor, tasks, scorer, trials=trials, batch=batch, steps=steps,
                                       sampler=sampler, seed=seed, naive_trials=naive_trials, prune=prune,
                                       task_batch=task_batch, progress=progress, invert_ahead=invert_ahead))
    ranked = sorted(results, key=lambda r: r.ratio)
    median = ranked[(len(ranked) - 1) // 2]  # the lower middle of an even count: the cautious side
    one_thread = [r.ratio_one_thread for r in results if r.ratio_one_thread is not None]
    return replace(median, ratios=[r.ratio for r in results], ratios_one_thread=one_thread)


def _throughput_run(editor: Any, tasks: Sequence[EditTask], scorer: Any, *, trials: int, batch: int, steps: int,
                    sampler: str, seed: int, naive_trials: int | None, prune: bool, task_batch: int | None,
                    progress: bool, invert_ahead: bool) -> ThroughputResult:
    from autotune.tuning.tuner import tune

    category = tasks[0].category
    device = torch.device(getattr(editor, "device", "cpu"))
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    naive = _NaiveBetweenBatches(editor, tasks, scorer, trials, naive_trials, one_thread=threads > 1,
                                 progress=progress)
    with tempfile.TemporaryDirectory() as tmp:
        editor.cache.clear()
        denoiser = editor.components.denoiser
        sync(device)
        start = time.perf_counter()
        runs: list[Any] = []
        calls = record_unet_calls(denoiser, lambda: runs.append(tune(
            editor, tasks, category=category, trials=trials, batch=batch, storage=f"{tmp}/bench.journal",
            sampler=sampler, seed=seed, scorer=scorer, search_space=bench_space(steps, editor), progress=progress,
            prune=prune, artifacts=False, save_preset=False, project_dir=tmp, task_batch=task_batch,
            invert_ahead=invert_ahead, callbacks=[naive])), naive.recorder)
        sync(device)
        auto_seconds = time.perf_counter() - start - naive.wall_seconds
        result = runs[0]
        done = [t for t in result.study.trials if "params" in t.user_attrs]
        groups = {(p.source_group(), p.steps) for p in (EditParams.from_dict(t.user_attrs["params"]) for t in done)}
    auto_calls = [c for at, c in enumerate(calls) if at not in naive.call_indices]
    naive_calls = [calls[at] for at in naive.counted_indices]
    if not naive.timed:
        raise InputError(f"the {len(naive.picked)} trial(s) picked for the naive loop all failed in the tuner; "
                         "see its log, or time more with --naive-trials")
    auto_rate = 60.0 * len(done) / auto_seconds
    naive_rate = 60.0 * naive.timed / naive.seconds
    return ThroughputResult(len(done), len(tasks), batch, steps, sampler, auto_seconds, auto_rate,
                            result.engine_calls, result.candidate_edits, result.counts.get("pruned", 0), naive.timed,
                            naive.seconds, naive_rate, auto_rate / naive_rate,
                            task_batch, int(getattr(editor, "max_batch", 0)),
                            len(auto_calls), sum(c[0][0] for c in auto_calls),
                            len(naive_calls), sum(c[0][0] for c in naive_calls), threads,
                            naive.one_thread_seconds if threads > 1 else None, invert_ahead=invert_ahead,
                            source_groups=len(groups))


class _NaiveBetweenBatches:
    """A `tune` callback that times the naive loop on some of the study's trials while the study runs, right after
    their batch: both loops then see the same machine (a virtual machine's speed drifts by 10-20% within minutes,
    more than the gains worth measuring), and the tuner's clock is stopped meanwhile (`wall_seconds` is subtracted).
    The naive loop runs on a copy of the editor with a cache of its own, so it cannot clear the tuner's.
    `naive_trials` of the `trials` (all when None) are picked evenly in the order trials are recorded."""

    def __init__(self, editor: Any, tasks: Sequence[EditTask], scorer: Any, trials: int, naive_trials: int | None,
                 *, one_thread: bool, progress: bool) -> None:
        import copy

        count = trials if naive_trials is None else max(1, min(naive_trials, trials))
        self.picked = {round(i * trials / count) for i in range(count)}
        self.editor = copy.copy(editor)
        self.editor.cache = type(editor.cache)()
        self.tasks, self.scorer, self.one_thread, self.progress = tasks, scorer, one_thread, progress
        self.recorder = CallRecorder()
        self.seen = self.timed = 0
        self.seconds = self.one_thread_seconds = self.wall_seconds = 0.0
        self.call_indices: set[int] = set()  # the UNet calls made here, to leave out of the tuner's count
        self.counted_indices: list[int] = []  # those of the naive loop at the default thread count

    def __call__(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        at, self.seen = self.seen, self.seen + 1
        if at not in self.picked or trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            return  # a failed trial's parameters would fail the naive loop too: nothing to compare
        params = [EditParams.from_dict(trial.user_attrs["params"])]
        begin, first = time.perf_counter(), len(self.recorder.calls)
        self.seconds += naive_loop(self.editor, self.tasks, self.scorer, params, self.progress,
                                   desc=f"naive loop, trial {trial.number}")
        self.counted_indices += range(first, len(self.recorder.calls))
        if self.one_thread:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                self.one_thread_seconds += naive_loop(self.editor, self.tasks, self.scorer, params, self.progress,
                                                      desc=f"naive loop, trial {trial.number}, 1 thread")
            finally:
                torch.set_num_threads(threads)
        self.call_indices.update(range(first, len(self.recorder.calls)))
        self.timed += 1
        self.wall_seconds += time.perf_counter() - begin
