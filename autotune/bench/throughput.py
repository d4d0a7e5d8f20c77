"""1. Tuning throughput, like for like: the tuner's loop (`tune`: batched edits, cached inversions and source branches,
pruning, the cost-aware sampler) against two loops a user would write, on the same trial parameters, at the same
thread count, counted in what the user gets: scored candidate-task edits per minute (trials per minute beside it).

- the **naive loop**: each (trial, task) edited alone, from scratch (`editor.edit`, cache cleared: a fresh inversion
  and source branch every time);
- the **strong naive loop**: what a careful user's script does: one `editor.edit` per (trial, task) through the same
  Editor with its cache on, so inversions and source branches are reused across trials; no cross-candidate batching,
  no pruning. It runs every trial of the study (a subset would see fewer repeated w_src values, fewer cache hits).

Every loop runs alone, from an empty cache; the baselines edit the trial parameters the tuner's first run asked.
The gain is then split into its factors, measured one at a time: the tuner again with batching, caching, pruning or
the cost-aware sampler switched off (same trial budget, seed and tasks). The whole comparison repeats `runs` times
at each thread count (1 and the machine's default on a CPU), the order of the loops rotating from run to run; every
run is kept and the figures are medians with their range.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from autotune.bench import markdown
from autotune.bench._common import bench_space, denoiser, sync
from autotune.errors import InputError
from autotune.params import EditParams
from autotune.task import EditTask
from autotune.tuning.search_space import family_defaults

AUTOTUNE = "autotune"
STRONG_NAIVE = "strong naive"
NAIVE = "naive"
# factor -> the tuner's loop with that factor switched off
FACTORS = {
    "batching": "autotune without batching",
    "caching": "autotune without caching",
    "pruning": "autotune without pruning",
    "sampler": "autotune with plain TPE",
}
LOOP_NOTES = {
    AUTOTUNE: "`tune`: batched, cached, pruned",
    STRONG_NAIVE: "one `edit` per trial and task, cache on, no pruning",
    NAIVE: "one `edit` per trial and task, fresh inversion each, no pruning",
    FACTORS["batching"]: "one `edit_task` call per candidate and task, nothing inverted ahead",
    FACTORS["caching"]: "cache cleared after every batch of trials",
    FACTORS["pruning"]: "every trial runs every task",
    FACTORS["sampler"]: "`--sampler tpe-plain`: no cost for a new w_src",
}
MIN_RECORDED_RUNS = 5


@dataclass
class LoopRun:
    """One loop's figures in one run of the comparison."""

    loop: str
    threads: int  # torch CPU threads (0: a GPU run)
    run: int
    seconds: float
    trials: int  # trials timed (COMPLETE + PRUNED for the tuner's loops)
    edits: int  # candidate-task edits scored
    pruned: int = 0
    calls: int = 0  # sequential denoiser (UNet/transformer) calls
    rows: int = 0  # denoiser samples: the calls' batch rows summed
    source_groups: int = 0  # distinct source work (w_src for SimInversion) among the trials

    @property
    def edits_per_min(self) -> float:
        return 60.0 * self.edits / self.seconds

    @property
    def trials_per_min(self) -> float:
        return 60.0 * self.trials / self.seconds


@dataclass
class ThroughputResult:
    tasks: int
    trials: int
    batch: int
    steps: int
    sampler: str
    seed: int
    naive_trials: int
    device: str
    thread_counts: list[int]
    loops: list[LoopRun] = field(default_factory=list)  # every loop of every run, in the order they ran
    load_before: float | None = None  # 1-minute load average when the benchmark started
    runs_asked: int = 0  # runs asked for; fewer ran when a deadline came first

    # -- reading the runs --------------------------------------------------------------------------------------------
    def of(self, loop: str, threads: int) -> list[LoopRun]:
        return [r for r in self.loops if r.loop == loop and r.threads == threads]

    def ratios(self, loop: str, threads: int, unit: str = "edits_per_min") -> list[float]:
        """autotune's rate over `loop`'s, run by run (both measured in the same run)."""
        mine = {r.run: getattr(r, unit) for r in self.of(AUTOTUNE, threads)}
        return [mine[r.run] / getattr(r, unit) for r in self.of(loop, threads) if r.run in mine]

    def runs(self) -> int:
        return len({r.run for r in self.loops})

    # -- the section ---------------------------------------------------------------------------------------------------
    def markdown(self) -> str:
        parts = []
        for threads in self.thread_counts:
            parts.append(self._per_threads(threads))
        parts.append(self._every_run())
        parts.append(self._projection())
        head = (f"{self.tasks} tasks, {self.steps} DDIM steps, {self.trials} trials asked {self.batch} at a time, "
                f"sampler {self.sampler}, seed {self.seed}; {self.runs()} run(s) of the whole comparison at each "
                f"thread count ({', '.join(map(_threads_label, self.thread_counts))}), each loop alone and from an "
                "empty cache, their order rotating from run to run; the baselines edit the trial parameters of the "
                "first run's tuner. The unit is what a user gets: scored candidate-task edits per minute; trials per "
                f"minute beside it. The naive loop is timed on {self.naive_trials} trial(s) spread over the study "
                "(each of its edits costs the same whatever came before), the strong naive loop on every trial (its "
                "cache hits depend on the trials before). Figures: medians over the runs with their range (min-max).")
        if self.load_before is not None:
            head += f" 1-minute load when the benchmark started: {self.load_before}."
        if self.runs_asked > self.runs():
            head += f" {self.runs()} of the {self.runs_asked} runs asked fitted the time budget."
        if self.runs() < MIN_RECORDED_RUNS:
            head += (f" **{self.runs()} run(s) only: a trial of the code, not a recorded figure (record with "
                     f"--runs {MIN_RECORDED_RUNS} or more).**")
        return head + "\n\n" + "\n\n".join(parts)

    def _per_threads(self, threads: int) -> str:
        loops = [AUTOTUNE, STRONG_NAIVE, NAIVE, *[v for v in FACTORS.values() if self.of(v, threads)]]
        rows = []
        for loop in loops:
            got = self.of(loop, threads)
            if not got:
                continue
            trials = sum(r.trials for r in got)
            rows.append([f"{loop} ({LOOP_NOTES[loop]})", _spread([r.edits_per_min for r in got]),
                         _spread([r.trials_per_min for r in got]),
                         f"{sum(r.pruned for r in got)} of {trials}" if loop.startswith(AUTOTUNE) else "-",
                         statistics.median(r.source_groups for r in got),
                         sum(r.calls for r in got) / max(trials, 1), sum(r.rows for r in got) / max(trials, 1)])
        loops_table = markdown.table(["loop", "edits / min", "trials / min", "trials pruned", "w_src values",
                                      "denoiser calls / trial", "denoiser samples / trial"], rows)
        gains, losses = [], []
        compared = [(f"autotune vs {b}", b) for b in (STRONG_NAIVE, NAIVE)]
        compared += [(f"{factor} (autotune vs {loop})", loop) for factor, loop in FACTORS.items()]
        for label, loop in compared:
            if not self.of(loop, threads):
                continue
            ratios = {unit: self.ratios(loop, threads, unit) for unit in ("edits_per_min", "trials_per_min")}
            gains.append([label, _spread(ratios["edits_per_min"], "x"), _spread(ratios["trials_per_min"], "x")])
            for unit, name in (("edits_per_min", "edits"), ("trials_per_min", "trials")):
                if statistics.median(ratios[unit]) < 1:
                    losses.append(f"{label}, in {name} per minute: {_spread(ratios[unit], 'x')}")
        gains_table = markdown.table(["speed-up", "in edits / min", "in trials / min"], gains)
        lost = ("\n\n**Where autotune loses** (median below 1x): " + "; ".join(losses) + "." if losses else "")
        return (f"**{_threads_label(threads).capitalize()}.**\n\n" + loops_table + "\n\n" + gains_table + lost
                + "\n\nw_src values: the distinct source guidances among the trials timed (each costs every task an "
                "inversion and a source branch where nothing is cached). A factor is autotune's rate over its rate "
                "with that one factor switched off, the rest as shipped, in the same run. Pruning gains in trials, not "
                "in edits: a pruned trial is a verdict reached with fewer edits, and the edits left run in smaller "
                "batches.")

    def _every_run(self) -> str:
        rows = [[r.run + 1, _threads_label(r.threads), r.loop, r.seconds, r.trials, r.edits, r.pruned,
                 r.edits_per_min, r.trials_per_min] for r in self.loops]
        return ("Every run, in the order the loops ran:\n\n"
                + markdown.table(["run", "threads", "loop", "seconds", "trials", "edits scored", "pruned",
                                  "edits / min", "trials / min"], rows))

    def _projection(self) -> str:
        lines = []
        threads = self.thread_counts[-1]
        for loop in (AUTOTUNE, STRONG_NAIVE, NAIVE):
            got = self.of(loop, threads)
            edits = sum(r.edits for r in got)
            if edits:
                lines.append([loop, sum(r.calls for r in got) / edits, sum(r.rows for r in got) / edits])
        if not lines:
            return ""
        auto = lines[0][1]
        ratios = "; ".join(f"{auto and row[1] / auto:.1f}x fewer calls per scored edit than the {row[0]} loop"
                           for row in lines[1:])
        return ("**Projection for a GPU (not measured: no GPU here).** On a GPU that a call does not fill, a call's "
                "time barely grows with its rows, so time would follow sequential denoiser calls rather than "
                f"samples: autotune makes {ratios}. A projection, not a measured speed-up; "
                "`autotune bench gpu` measures it on a card.\n\n"
                + markdown.table(["loop", "denoiser calls / scored edit", "denoiser samples / scored edit"], lines))


def _threads_label(threads: int) -> str:
    return "on the GPU" if threads == 0 else f"at {threads} thread{'s' if threads > 1 else ''}"


def _spread(values: Sequence[float], suffix: str = "") -> str:
    """The median and, with several values, the range: `5.2x (4.9-5.6)`."""
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.3g}{suffix}"
    return f"{med:.3g}{suffix} ({min(values):.3g}-{max(values):.3g})"


# ---------------------------------------------------------------------------------------------------------------------
# The baselines


def naive_loop(editor: Any, tasks: Sequence[EditTask], scorer: Any, params: Sequence[EditParams], *,
               fresh: bool = True, progress: bool = False, desc: str = "naive loop") -> float:
    """The loop a user would write: every trial edits every task with one `editor.edit` call and scores it. `fresh`:
    the cache cleared before each call (a fresh inversion and source branch every time); otherwise the cache stays
    on, as in a careful user's script. Returns seconds."""
    from tqdm.auto import tqdm

    device = torch.device(getattr(editor, "device", "cpu"))
    sync(device)
    start = time.perf_counter()
    with tqdm(total=len(params) * len(tasks), desc=desc, unit="edit", disable=not progress, leave=False) as bar:
        for p in params:
            for task in tasks:
                if fresh:
                    editor.cache.clear()
                result = editor.edit(task.image, task.source_prompt, task.target_prompt, p,
                                     blend_words=task.blend_words)
                scorer.score(task, result.pixels[None])
                bar.update()
    sync(device)
    return time.perf_counter() - start


class OneEditPerCall:
    """The editor with batching switched off: every candidate of every task in an engine call of its own
    (`edit_task` with one candidate), nothing inverted ahead; its cache is the editor's. The tuner still asks it for
    as many tasks per call as the editor batches, so the pruner is asked at the same points as with batching."""

    def __init__(self, editor: Any) -> None:
        self._editor = editor

    def __getattr__(self, name: str) -> Any:
        if name == "invert_tasks":  # nothing inverted ahead: each edit inverts its own
            raise AttributeError(name)
        return getattr(self._editor, name)

    def edit_task(self, task: EditTask, candidates: Sequence[EditParams]) -> list[Any]:
        return [self._editor.edit_task(task, [c])[0] for c in candidates]

    def edit_tasks(self, tasks: Sequence[EditTask], candidates: Sequence[EditParams]) -> list[list[Any]]:
        return [self.edit_task(task, candidates) for task in tasks]


class _CallCounter:
    """A forward pre-hook on the denoiser counting its calls and their batch rows."""

    def __init__(self) -> None:
        self.calls = self.rows = 0

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        first = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        self.calls += 1
        self.rows += int(first.shape[0]) if torch.is_tensor(first) else 1


# ---------------------------------------------------------------------------------------------------------------------
# The comparison


def bench_throughput(editor: Any, tasks: Sequence[EditTask], scorer: Any, *, trials: int = 16, batch: int = 4,
                     steps: int = 50, sampler: str = "tpe", seed: int = 0, naive_trials: int | None = None,
                     thread_counts: Sequence[int] | None = None, runs: int = MIN_RECORDED_RUNS,
                     factors: bool = True, deadline: float | None = None, progress: bool = False
                     ) -> ThroughputResult:
    """Run the whole comparison `runs` times at each thread count (default: 1 and torch's current count on a CPU;
    on a GPU, once); every loop of every run is kept. A run times each loop alone, from an empty cache: the tuner,
    the two baselines on the tuner's trial parameters, and (with `factors`) the tuner with each factor switched off.
    The first run starts with the tuner, whose trials give every run's baselines their parameters; later runs rotate
    the order, so that a drift of the machine's speed does not always fall on the same loop. The factor runs are
    made at the last (the machine's default) thread count only. With a `deadline` (a
    `time.perf_counter()` value), no run starts that would, at the pace of the runs before it, end after it (the
    first run always runs)."""
    import optuna

    from autotune.tuning.samplers import SAMPLERS

    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise InputError(f"runs={runs!r} must be a whole number >= 1")
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    device = torch.device(getattr(editor, "device", "cpu"))
    default_threads = torch.get_num_threads()
    if device.type != "cpu":
        counts = [0]
    else:
        counts = sorted(set(thread_counts or (1, default_threads)))
        if any(n < 1 for n in counts):
            raise InputError(f"thread counts {counts} must be >= 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    naive_trials = trials if naive_trials is None else max(1, min(naive_trials, trials))
    variants = [v for f, v in FACTORS.items() if factors and not (f == "sampler" and sampler != "tpe")]
    result = ThroughputResult(len(tasks), trials, batch, steps, sampler, seed, naive_trials, str(device), counts,
                              load_before=_load(), runs_asked=runs)
    settings = dict(trials=trials, batch=batch, steps=steps, sampler=sampler, seed=seed, progress=progress)
    params: list[EditParams] = []  # the trials of the first run's tuner, in the order it asked them
    began = time.perf_counter()
    try:
        for run in range(runs):
            if run and deadline is not None and time.perf_counter() + (time.perf_counter() - began) / run > deadline:
                break
            for threads in counts:
                # the factors at the machine's default thread count only: what a user runs, and half the time
                loops = [AUTOTUNE, STRONG_NAIVE, NAIVE] + (variants if threads == counts[-1] else [])
                order = loops[run % len(loops):] + loops[:run % len(loops)]
                if threads:
                    torch.set_num_threads(threads)
                if run == 0:  # no loop pays for first-call kernel selection
                    editor.edit_task(tasks[0], [family_defaults(editor, None).params.with_(steps=steps)])
                if progress:
                    print(f"throughput run {run + 1} of {runs}, {_threads_label(threads)}", file=sys.stderr)
                for loop in order:
                    if loop in (STRONG_NAIVE, NAIVE):
                        picked = params if loop == STRONG_NAIVE else _spread_pick(params, naive_trials)
                        result.loops.append(_baseline_run(editor, tasks, scorer, loop, picked, threads, run, progress))
                        continue
                    got, trial_params = _tuner_run(editor, tasks, scorer, loop, threads, run, **settings)
                    result.loops.append(got)
                    if loop == AUTOTUNE and not params:
                        params = trial_params
    finally:
        torch.set_num_threads(default_threads)
    return result


def _spread_pick(params: Sequence[EditParams], count: int) -> list[EditParams]:
    """`count` of the trials, spread evenly over the study (a trial's cost depends on its guidance)."""
    count = max(1, min(count, len(params)))
    return [params[i] for i in sorted({round(i * len(params) / count) for i in range(count)})]


def _load() -> float | None:
    import os

    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _counting(editor: Any) -> tuple[_CallCounter, Any]:
    counter = _CallCounter()
    return counter, denoiser(editor).register_forward_pre_hook(counter, with_kwargs=True)


def _baseline_run(editor: Any, tasks: Sequence[EditTask], scorer: Any, loop: str, params: Sequence[EditParams],
                  threads: int, run: int, progress: bool) -> LoopRun:
    """A naive loop on the tuner's trial parameters, from an empty cache."""
    editor.cache.clear()
    counter, hook = _counting(editor)
    try:
        seconds = naive_loop(editor, tasks, scorer, params, fresh=loop == NAIVE, progress=progress,
                             desc=f"{loop} loop")
    finally:
        hook.remove()
    editor.cache.clear()
    calls, rows = counter.calls, counter.rows
    groups = {p.source_group() for p in params}
    return LoopRun(loop, threads, run, seconds, len(params), len(params) * len(tasks), 0, calls, rows, len(groups))


def _tuner_run(editor: Any, tasks: Sequence[EditTask], scorer: Any, loop: str, threads: int, run: int, *,
               trials: int, batch: int, steps: int, sampler: str, seed: int, progress: bool
               ) -> tuple[LoopRun, list[EditParams]]:
    """One study from an empty cache, as shipped (`AUTOTUNE`) or with one factor switched off (`FACTORS`); its
    figures and the parameters of its timed trials, in trial order."""
    from optuna.trial import TrialState

    from autotune.tuning import contract
    from autotune.tuning.tuner import tune

    subject, callbacks, prune = editor, [], True
    if loop == FACTORS["batching"]:
        subject = OneEditPerCall(editor)
    elif loop == FACTORS["caching"]:
        callbacks = [lambda study, trial: editor.cache.clear()]  # called per trial once its batch is recorded
    elif loop == FACTORS["pruning"]:
        prune = False
    elif loop == FACTORS["sampler"]:
        sampler = "tpe-plain"
    elif loop != AUTOTUNE:
        raise InputError(f"unknown loop {loop!r}")
    device = torch.device(getattr(editor, "device", "cpu"))
    editor.cache.clear()
    counter, hook = _counting(editor)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sync(device)
            start = time.perf_counter()
            result = tune(subject, tasks, category=tasks[0].category, trials=trials, batch=batch,
                          storage=f"{tmp}/bench.journal", sampler=sampler, seed=seed, scorer=scorer,
                          search_space=bench_space(steps, editor), progress=progress, prune=prune, artifacts=False,
                          save_preset=False, project_dir=tmp, callbacks=callbacks)
            sync(device)
            seconds = time.perf_counter() - start
            done = result.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    finally:
        hook.remove()
    editor.cache.clear()
    if not done:
        raise InputError(f"every trial of the {loop!r} run failed; see its log")
    params = [EditParams.from_dict(t.user_attrs[contract.PARAMS]) for t in sorted(done, key=lambda t: t.number)]
    edits = sum(len(t.user_attrs.get(contract.PER_TASK) or {}) for t in done)
    pruned = sum(t.state == TrialState.PRUNED for t in done)
    calls, rows = counter.calls, counter.rows
    return LoopRun(loop, threads, run, seconds, len(done), edits, pruned, calls, rows,
                   len({p.source_group() for p in params})), params
