"""Benchmarks: what autotune saves (speed) and what its presets gain (quality), each measured against a
baseline run in the same process, on the same machine, at the same moment.

Each `bench_*` function returns a small dataclass of figures whose `markdown()` is a table; `autotune bench`
(autotune/cli/bench.py) prints it and rewrites that benchmark's section of BENCHMARKS.md.

1. `bench_throughput`: the tuner's loop (`tune`: batched `edit_task`, cached inversions and source branches,
   pruning) against the loop a user would write (each trial edits each task alone, cache cleared: a fresh
   inversion every time, no batching, no pruning), on the trial parameters the tuner asked, run between the
   tuner's batches so that both loops meet the same machine: trials per minute and the ratio.
2. `bench_overhead`: one candidate edit against the UNet forward passes it cannot avoid: the same calls (shapes,
   timesteps, batch sizes, recorded by a forward hook during the edit) replayed alone, SDPA attention throughout.
3. `bench_efficiency`: per category, a dense w_src x w_tgt grid is edited and scored once; TPE, GP and random
   search then query that table (nearest grid point) and we count the trials each needs to reach 98% of the
   grid's best scalarised score.
4. `bench_quality`: on each category's held-out split, the tuned preset against SimInversion's (0.5, 7.5) and
   DDIM-style (1, 7.5): edit success and fidelity.
5. `bench_inversion`: reconstruction PSNR against w_inv (`autotune.shapes.measure.inversion_table`).
6. `bench_memory`: peak memory of a tuning run (RSS of a child process on the CPU, `max_memory_allocated` on CUDA).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autotune import atomic
from autotune.errors import InputError
from autotune.params import EditParams
from autotune.search_space import PAPER_POINTS, SearchSpace
from autotune.tasks import EditTask

BENCHMARKS = ("throughput", "overhead", "efficiency", "quality", "inversion", "memory")
SHAPES_CATEGORIES = ("change_color", "change_object", "change_background", "add_object", "delete_object")
THRESHOLD = 0.98
TARGET_TRIALS = 30  # the trials the efficiency benchmark is read against (98% of the grid's best within them)
EFFICIENCY_SAMPLERS = ("tpe", "tpe-plain", "gp", "random")
# A trial whose w_src is new to the study runs an inversion and a source branch besides its target branch, each
# two UNet predictions per step: three times the samples of a trial whose w_src is cached (no pruning counted).
NEW_SOURCE_WORK = 3
PAPER_NOTE = {True: "the paper points enqueued first, as `tune` does", False: "no paper points enqueued"}


# ---------------------------------------------------------------------------------------------------------------------
# The machine and the file


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """What the figures were measured on; the load average says whether the machine was busy."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device or "cpu"),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if str(device or "cpu").startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _marker(name: str, end: bool = False) -> str:
    return f"<!-- autotune-bench:{name}:{'end' if end else 'start'} -->"


def write_section(path: str | Path, name: str, body: str) -> Path:
    """Replace benchmark `name`'s section of the markdown file (kept between markers), or add it in the order of
    `BENCHMARKS`; other sections are left as they are. Written atomically (temp file + os.replace)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)  # lock the directory: two benchmark processes may write at once
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _rewrite_section(path, name, body)
    finally:
        os.close(fd)


def _rewrite_section(path: Path, name: str, body: str) -> Path:
    text = path.read_text(encoding="utf-8") if path.is_file() else (
        "# Benchmarks\n\nMeasured with `autotune bench`; each section is rewritten by its own command.\n")
    block = f"{_marker(name)}\n{body.strip()}\n{_marker(name, end=True)}"
    pattern = re.compile(re.escape(_marker(name)) + r".*?" + re.escape(_marker(name, end=True)), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        later = [n for n in BENCHMARKS[BENCHMARKS.index(name) + 1:] if _marker(n) in text] if name in BENCHMARKS \
            else []
        if later:
            at = text.index(_marker(later[0]))
            text = text[:at] + block + "\n\n" + text[at:]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    return atomic.write_text(path, text)


def other_load(machine: dict[str, Any]) -> float | None:
    """The 1-minute load beyond the benchmark's own: its torch threads on a CPU (a run at 2 threads on 2 CPUs makes
    a load of about 2 by itself), one Python thread driving a GPU."""
    load, cpus = machine.get("load_average_1min"), machine.get("cpu_count")
    if load is None or not cpus:
        return None
    own = (machine.get("torch_threads") or 1) if str(machine.get("device", "cpu")).startswith("cpu") else 1
    return max(0.0, load - own)


def section(title: str, command: str, machine: dict[str, Any], table: str, notes: str = "") -> str:
    """A BENCHMARKS.md section: title, exact command, date, machine, figures, notes."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = machine.get("load_average_1min")
    busy = ""
    others = other_load(machine)
    if others is not None and others > 0.25 * machine["cpu_count"]:
        busy = (f" **The machine was busy** (1-minute load {load} on {machine['cpu_count']} CPUs, about "
                f"{others:.1f} beyond this benchmark's own): absolute times are inflated; ratios measured in the same "
                "run are the figures to read.")
    lines = [f"## {title}", "", f"Command: `{command}`", "",
             f"Measured {date} on {machine.get('cpu_count')} CPUs, torch {machine.get('torch')} "
             f"({machine.get('torch_threads')} threads), device {machine.get('device')}"
             + (f" ({machine['gpu']})" if machine.get("gpu") else "")
             + (f", load {load}" if load is not None else "") + "." + busy, "", table.strip()]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_space(steps: int) -> SearchSpace:
    """The tuner's default search space (w_src in [0, 2] step 0.1, w_tgt in [1, 12]) with `steps` DDIM steps."""
    return SearchSpace.default(base=EditParams(steps=steps))


# ---------------------------------------------------------------------------------------------------------------------
# 1. Throughput


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
        table = _table(
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
    _sync(device)
    start = time.perf_counter()
    with tqdm(total=len(params) * len(tasks), desc=desc, unit="edit", disable=not progress, leave=False) as bar:
        for p in params:
            for task in tasks:
                editor.cache.clear()  # no inversion (or VAE latent) reuse between calls
                result = editor.edit(task.image, task.source_prompt, task.target_prompt, p,
                                     blend_words=task.blend_words)
                scorer.score(task, result.pixels[None])
                bar.update()
    _sync(device)
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
    editor.edit_task(tasks[0], [EditParams(steps=steps)])
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
    from autotune.tuner import tune

    category = tasks[0].category
    device = torch.device(getattr(editor, "device", "cpu"))
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    naive = _NaiveBetweenBatches(editor, tasks, scorer, trials, naive_trials, one_thread=threads > 1,
                                 progress=progress)
    with tempfile.TemporaryDirectory() as tmp:
        editor.cache.clear()
        unet = editor.components.unet
        _sync(device)
        start = time.perf_counter()
        runs: list[Any] = []
        calls = record_unet_calls(unet, lambda: runs.append(tune(
            editor, tasks, category=category, trials=trials, batch=batch, storage=f"{tmp}/bench.journal",
            sampler=sampler, seed=seed, scorer=scorer, search_space=bench_space(steps), progress=progress,
            prune=prune, artifacts=False, save_preset=False, project_dir=tmp, task_batch=task_batch,
            invert_ahead=invert_ahead, callbacks=[naive])), naive.recorder)
        _sync(device)
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
        self.recorder = _CallRecorder()
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


# ---------------------------------------------------------------------------------------------------------------------
# 2. Engine overhead


@dataclass
class OverheadResult:
    steps: int
    cold_unet_calls: int
    warm_unet_calls: int
    cold_edit_seconds: float
    cold_unet_seconds: float
    warm_edit_seconds: float
    warm_unet_seconds: float
    vae_seconds: float
    cold_ratio: float
    warm_ratio: float
    repeats: int
    sample_ms: dict[int, float] = field(default_factory=dict)  # UNet alone: ms per sample by batch size

    def markdown(self) -> str:
        table = _table(
            ["one candidate edit", "UNet calls", "edit seconds", "same UNet calls alone (s)", "ratio",
             "ratio without VAE encode/decode"],
            [["cold (inversion + two-branch edit)", self.cold_unet_calls, self.cold_edit_seconds,
              self.cold_unet_seconds, self.cold_ratio,
              (self.cold_edit_seconds - self.vae_seconds) / self.cold_unet_seconds],
             ["warm (inversion and source branch from the cache)", self.warm_unet_calls, self.warm_edit_seconds,
              self.warm_unet_seconds, self.warm_ratio,
              (self.warm_edit_seconds - self.vae_seconds) / self.warm_unet_seconds]])
        return (table + f"\n\nTarget: ratio <= 1.2. Medians of {self.repeats} runs, {self.steps} DDIM steps; the "
                "UNet calls are recorded by a forward hook during the edit and replayed alone (same shapes, "
                "timesteps and batch sizes, random inputs, SDPA attention throughout, text keys and values "
                "projected once per run of same-shaped calls as in the engine). The VAE encode + decode "
                f"of one image takes {self.vae_seconds:.3g} s (unavoidable too, but not a UNet pass)."
                + self._sample_costs())

    def _sample_costs(self) -> str:
        if not self.sample_ms:
            return ""
        table = _table(["UNet batch (rows)", *map(str, self.sample_ms)], [["ms per sample", *self.sample_ms.values()]])
        return ("\n\nWhat batching buys: the same UNet call (the edit's last) replayed alone at other batch sizes, "
                "time per sample (row). The tuner's batches of several tasks run at the right-hand end, the naive "
                "loop's at 2-4 rows.\n\n" + table)


class _CallRecorder:
    """A forward pre-hook that records each UNet call's input shapes and timestep."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Size, Any, torch.Size]] = []

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        states = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        t = t.detach().clone() if torch.is_tensor(t) else t
        self.calls.append((sample.shape, t, states.shape))


def record_unet_calls(unet: Any, run: Callable[[], Any], recorder: _CallRecorder | None = None
                      ) -> list[tuple[torch.Size, Any, torch.Size]]:
    recorder = recorder if recorder is not None else _CallRecorder()
    handle = unet.register_forward_pre_hook(recorder, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return recorder.calls


@torch.no_grad()
def replay_unet_calls(unet: Any, calls: Sequence[tuple[torch.Size, Any, torch.Size]], device: torch.device,
                      dtype: torch.dtype) -> float:
    """Seconds for the same UNet calls alone (inputs made before the clock starts). One text-embedding tensor per
    shape, under autotune's attention processors: consecutive calls of a shape project its text keys and values
    once, as the engine's loops do, so that the replay does no work the engine avoids."""
    from autotune.attention import attention_control

    gen = torch.Generator(device="cpu").manual_seed(0)
    texts: dict[torch.Size, torch.Tensor] = {}
    for _, _, e in calls:
        if e not in texts:
            texts[e] = torch.randn(e, generator=gen).to(device, dtype)
    inputs = [(torch.randn(s, generator=gen).to(device, dtype), t, texts[e]) for s, t, e in calls]
    with attention_control(unet, None):
        _sync(device)
        start = time.perf_counter()
        for x, t, e in inputs:
            unet(x, t, encoder_hidden_states=e)
        _sync(device)
        return time.perf_counter() - start


def bench_overhead(editor: Any, task: EditTask, params: EditParams | None = None, repeats: int = 3
                   ) -> OverheadResult:
    """Time one candidate edit (cold: cache cleared, so it inverts and records its source branch; warm: both from the
    cache, only the target branch runs) against its own UNet calls alone."""
    params = params or EditParams()
    unet, device, dtype = editor.components.unet, torch.device(editor.device), editor.dtype

    def edit() -> None:
        editor.edit_task(task, [params])

    edit()  # warm-up
    cold, cold_unet, warm, warm_unet = [], [], [], []
    cold_calls: list = []
    warm_calls: list = []
    for _ in range(repeats):
        editor.cache.clear()
        cold_calls = record_unet_calls(unet, edit)  # hook cost is negligible; timed runs below carry no hook
        editor.cache.clear()
        _sync(device)
        start = time.perf_counter()
        edit()
        _sync(device)
        cold.append(time.perf_counter() - start)
        cold_unet.append(replay_unet_calls(unet, cold_calls, device, dtype))
        warm_calls = record_unet_calls(unet, edit)
        _sync(device)
        start = time.perf_counter()
        edit()
        _sync(device)
        warm.append(time.perf_counter() - start)
        warm_unet.append(replay_unet_calls(unet, warm_calls, device, dtype))
    sample_ms = unet_sample_costs(unet, cold_calls[-1], device, dtype)
    pil = editor.prepare_image(task.image)
    vae = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        editor.decode(editor.encode_image(pil)[None])
        _sync(device)
        vae.append(time.perf_counter() - start)
    med = statistics.median
    return OverheadResult(params.steps, len(cold_calls), len(warm_calls), med(cold), med(cold_unet), med(warm),
                          med(warm_unet), med(vae), med(cold) / med(cold_unet), med(warm) / med(warm_unet), repeats,
                          sample_ms)


def unet_sample_costs(unet: Any, call: tuple[torch.Size, Any, torch.Size], device: torch.device, dtype: torch.dtype,
                      batches: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), samples: int = 128) -> dict[int, float]:
    """Milliseconds per sample of one UNet call's shape replayed alone at each batch size (about `samples` rows
    each, after one warm-up call). Stops at the first batch size the device has no memory for (a large model on a
    small GPU), keeping the sizes measured before it."""
    shape, timestep, states = call
    out = {}
    for b in batches:
        calls = [(torch.Size((b, *shape[1:])), timestep, torch.Size((b, *states[1:])))] * max(2, samples // b)
        try:
            replay_unet_calls(unet, calls[:1], device, dtype)
            out[b] = 1000 * replay_unet_calls(unet, calls, device, dtype) / (len(calls) * b)
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
    return out


# ---------------------------------------------------------------------------------------------------------------------
# 3. Sample efficiency


@dataclass
class GridTable:
    """Objective values of every (w_src, w_tgt) pair of a dense grid, averaged over the tasks."""

    category: str
    w_src: list[float]
    w_tgt: list[float]
    fidelity: list[list[float]]  # [i_src][j_tgt]
    strength: list[list[float]]
    directions: list[str]  # of (fidelity, edit_strength)
    metrics: list[list[dict[str, float]]] = field(default_factory=list)
    tasks: int = 0
    steps: int = 0
    seconds: float = 0.0

    def scalarised(self) -> np.ndarray:
        """Each objective scaled to [0, 1] over the grid (1 = best), then averaged: [n_src, n_tgt]."""
        out = []
        for values, direction in ((self.fidelity, self.directions[0]), (self.strength, self.directions[1])):
            v = np.asarray(values, dtype=float)
            v = np.where(np.isfinite(v), v, np.nan)
            if direction == "minimize":
                v = -v
            lo, hi = np.nanmin(v), np.nanmax(v)
            out.append((v - lo) / (hi - lo) if hi > lo else np.ones_like(v))
        return np.nan_to_num((out[0] + out[1]) / 2.0, nan=0.0)

    def nearest(self, w_src: float, w_tgt: float) -> tuple[int, int]:
        i = int(np.argmin(np.abs(np.asarray(self.w_src) - w_src)))
        j = int(np.argmin(np.abs(np.asarray(self.w_tgt) - w_tgt)))
        return i, j

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GridTable:
        return cls(**json.loads(text))


def grid_scores(editor: Any, tasks: Sequence[EditTask], scorer: Any, *, points: int = 15, steps: int = 50,
                space: SearchSpace | None = None, objectives: Any = None, progress: bool = False) -> GridTable:
    """Edit and score every grid pair on every task: one engine call per (task, w_src) with all w_tgt values."""
    from tqdm.auto import tqdm

    from autotune.objectives import default_objectives

    space = space or bench_space(steps)
    objs = objectives or default_objectives(scorer.metrics())
    lo_s, hi_s = space.knobs["w_src"].low, space.knobs["w_src"].high
    lo_t, hi_t = space.knobs["w_tgt"].low, space.knobs["w_tgt"].high
    w_src = [round(float(v), 6) for v in np.linspace(lo_s, hi_s, points)]
    w_tgt = [round(float(v), 6) for v in np.linspace(lo_t, hi_t, points)]
    sums: list[list[dict[str, float]]] = [[{} for _ in w_tgt] for _ in w_src]
    start = time.perf_counter()
    bar = tqdm(total=len(tasks) * len(w_src), desc=f"grid {tasks[0].category}", unit="edit call",
               disable=not progress)
    for task in tasks:
        for i, s in enumerate(w_src):
            cands = [space.to_params({"w_src": s, "w_tgt": t}) for t in w_tgt]
            results = editor.edit_task(task, cands)
            scores = scorer.score(task, torch.stack([r.pixels for r in results]))
            for j, metrics in enumerate(scores):
                for k, v in metrics.items():
                    sums[i][j][k] = sums[i][j].get(k, 0.0) + float(v) / len(tasks)
            bar.update()
        editor.cache.clear()  # this task's inversions are done with
    bar.close()
    fidelity = [[objs.fidelity.value(m) for m in row] for row in sums]
    strength = [[objs.edit_strength.value(m) for m in row] for row in sums]
    return GridTable(tasks[0].category, w_src, w_tgt, fidelity, strength, objs.directions, sums, len(tasks), steps,
                     time.perf_counter() - start)


def efficiency_space(table: GridTable) -> SearchSpace:
    """The tuner's search space over the table's ranges: w_src on the tuner's grid (steps of 0.1) wherever that
    grid fits the table's range, since the cost-aware sampler counts on trials sharing a w_src."""
    default = SearchSpace.default()
    spec: dict[str, dict[str, float]] = {}
    for name, values in (("w_src", table.w_src), ("w_tgt", table.w_tgt)):
        low, high = float(values[0]), float(values[-1])
        spec[name] = {"low": low, "high": high}
        step = default.knobs[name].step
        if step and high > low and math.isclose(round((high - low) / step) * step, high - low, abs_tol=1e-9):
            spec[name]["step"] = step
    return SearchSpace(spec, default.base)


def trials_to_reach(table: GridTable, sampler: str, seed: int, budget: int = 60, batch: int = 4,
                    threshold: float = THRESHOLD, paper_points: bool = False
                    ) -> tuple[int | None, float, int, int | None]:
    """Run `sampler` (configured as the tuner configures it, two objectives, asked `batch` at a time, on the
    tuner's space: `efficiency_space`; with `paper_points`, those first, as `tune` enqueues them) against the grid
    table for `budget` trials. Returns the trials until the running best scalarised score first reaches
    `threshold` x the grid's best (None: not within the budget), the best fraction reached, how many distinct w_src
    values the budget drew, and the work until the threshold in target branches per task (a trial with a new w_src
    costs `NEW_SOURCE_WORK`: its inversion and source branch too; None: not reached)."""
    import optuna

    from autotune.tuner import make_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = efficiency_space(table)
    scal = table.scalarised()
    goal = threshold * float(scal.max())
    study = optuna.create_study(directions=table.directions, sampler=make_sampler(sampler, seed, space, batch))
    if paper_points:
        for _, values in space.paper_points():
            study.enqueue_trial(values)
    dists = space.distributions()
    best, n, reached, drawn, work, work_reached = -math.inf, 0, None, set(), 0, None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while n < budget:
            asked = [study.ask(dists) for _ in range(min(batch, budget - n))]
            for trial in asked:
                i, j = table.nearest(trial.params["w_src"], trial.params["w_tgt"])
                study.tell(trial, [table.fidelity[i][j], table.strength[i][j]])
                n += 1
                w_src = round(float(trial.params["w_src"]), 6)
                work += 1 if w_src in drawn else NEW_SOURCE_WORK
                drawn.add(w_src)
                best = max(best, float(scal[i, j]))
                if reached is None and best >= goal:
                    reached, work_reached = n, work
    return reached, best / float(scal.max()), len(drawn), work_reached


@dataclass
class EfficiencyRow:
    category: str
    tasks: int
    grid_seconds: float
    best_w_src: float
    best_w_tgt: float
    paper_fraction: float  # scalarised score of the nearest grid point to (0.5, 7.5), as a share of the best
    needed: dict[str, list[int | None]]  # sampler -> trials needed per seed (None: not within the budget)
    drawn: dict[str, list[int]] = field(default_factory=dict)  # sampler -> distinct w_src in the budget, per seed
    work: dict[str, list[int | None]] = field(default_factory=dict)  # sampler -> work to the threshold, per seed


@dataclass
class EfficiencyResult:
    points: int
    steps: int
    budget: int
    seeds: int
    batch: int
    rows: list[EfficiencyRow]
    paper_points: bool = False

    def _show(self, v: float) -> str:
        return f">{self.budget}" if v > self.budget else f"{v:g}"

    def markdown(self) -> str:
        def cell(values: list[int | None]) -> str:
            got = [v if v is not None else self.budget + 1 for v in values]
            med = statistics.median(got)
            within = sum(v <= TARGET_TRIALS for v in got) / len(got)
            return f"{self._show(med)} ({within:.0%} within {TARGET_TRIALS}, worst {self._show(max(got))})"

        header = ["category", "tasks", "grid best (w_src, w_tgt)", "(0.5, 7.5) reaches"] + \
            [f"{s} trials to 98%" for s in EFFICIENCY_SAMPLERS if any(s in r.needed for r in self.rows)]
        rows = []
        for r in self.rows:
            rows.append([r.category, r.tasks, f"({r.best_w_src:.3g}, {r.best_w_tgt:.3g})", f"{r.paper_fraction:.1%}"]
                        + [cell(r.needed[s]) for s in EFFICIENCY_SAMPLERS if s in r.needed])

        def work_cell(values: list[int | None]) -> str:
            got = [v if v is not None else math.inf for v in values]
            return "not reached" if statistics.median(got) == math.inf else f"{statistics.median(got):g}"

        shown = [s for s in EFFICIENCY_SAMPLERS if any(s in r.drawn for r in self.rows)]
        drawn = _table(["category"] + [f"{s}: w_src drawn / work to 98%" for s in shown],
                       [[r.category] + [f"{statistics.median(r.drawn[s]):g} / {work_cell(r.work[s])}" for s in shown]
                        for r in self.rows])
        return (_table(header, rows) + f"\n\nTarget: <= {TARGET_TRIALS} trials. Grid {self.points} x {self.points} "
                f"over w_src in [0, 2] x w_tgt in [1, 12], {self.steps} DDIM steps, edited and scored once per "
                "category; each sampler (configured as the tuner configures it: two objectives, asked "
                f"{self.batch} at a time, w_src on the tuner's grid of 0.1, "
                f"{PAPER_NOTE[self.paper_points]}) then queries "
                "the table at the nearest grid point. Scalarised score: fidelity and edit strength each scaled to "
                f"[0, 1] over the grid, averaged. Median over {self.seeds} seeds (the share of seeds within the "
                f"target, the worst seed), budget {self.budget} trials."
                "\n\nHow many of w_src's 21 values each sampler drew in those trials, and its work until 98% in "
                "target branches per task (a trial with a w_src new to the study costs "
                f"{NEW_SOURCE_WORK}: its inversion and source branch too), medians over the seeds.\n\n" + drawn)


def _one_thread() -> None:
    torch.set_num_threads(1)  # GPSampler fits its model with torch: one thread per worker process


def bench_efficiency(tables: Sequence[GridTable], *, samplers: Sequence[str] = EFFICIENCY_SAMPLERS, seeds: int = 5,
                     budget: int = 60, batch: int = 4, paper_points: bool = False, jobs: int = 1,
                     progress: bool = False) -> EfficiencyResult:
    """Every (table, sampler, seed) run of `trials_to_reach`; with `jobs` > 1, in that many worker processes (the
    runs are independent and seeded, so the figures are the same; GP's runs take most of the time)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    if jobs < 1:
        raise InputError(f"jobs={jobs} must be >= 1")
    work = [(t, s, seed) for t in range(len(tables)) for s in samplers for seed in range(seeds)]
    bar = tqdm(total=len(work), desc="sampler runs", unit="run", disable=not progress)
    if jobs == 1:
        results = []
        for t, s, seed in work:
            results.append(trials_to_reach(tables[t], s, seed, budget, batch, paper_points=paper_points))
            bar.update()
    else:
        # spawn, not fork: the parent holds torch's thread pool, which a forked child must not inherit
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_one_thread) as pool:
            futures = [pool.submit(trials_to_reach, tables[t], s, seed, budget, batch, paper_points=paper_points)
                       for t, s, seed in work]
            for future in futures:
                future.add_done_callback(lambda _: bar.update())
            results = [future.result() for future in futures]
    bar.close()
    by_run = dict(zip(work, results))
    rows = []
    for t, table in enumerate(tables):
        scal = table.scalarised()
        i, j = np.unravel_index(int(np.argmax(scal)), scal.shape)
        pi, pj = table.nearest(PAPER_POINTS["siminversion"]["w_src"], PAPER_POINTS["siminversion"]["w_tgt"])
        runs = {s: [by_run[t, s, seed] for seed in range(seeds)] for s in samplers}
        rows.append(EfficiencyRow(table.category, table.tasks, table.seconds, table.w_src[i], table.w_tgt[j],
                                  float(scal[pi, pj] / scal.max()),
                                  {s: [run[0] for run in got] for s, got in runs.items()},
                                  {s: [run[2] for run in got] for s, got in runs.items()},
                                  {s: [run[3] for run in got] for s, got in runs.items()}))
    steps = tables[0].steps if tables else 0
    points = len(tables[0].w_src) if tables else 0
    return EfficiencyResult(points, steps, budget, seeds, batch, rows, paper_points)


def cached_grid(editor: Any, tasks: Sequence[EditTask], scorer: Any, cache_dir: str | Path | None, *,
                points: int = 15, steps: int = 50, progress: bool = False) -> GridTable:
    """`grid_scores`, kept as JSON under `cache_dir` keyed by the model's weights, the tasks, steps and points."""
    from autotune.tuner import task_fingerprint

    if cache_dir is None:
        return grid_scores(editor, tasks, scorer, points=points, steps=steps, progress=progress)
    info = editor.model_info()
    key = hashlib.sha256(json.dumps([info.get("weights"), info.get("scheduler"), task_fingerprint(tasks), points,
                                     steps, scorer.describe()], sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"grid-{tasks[0].category}-{key}.json"
    if path.is_file():
        return GridTable.from_json(path.read_text(encoding="utf-8"))
    table = grid_scores(editor, tasks, scorer, points=points, steps=steps, progress=progress)
    atomic.write_text(path, table.to_json())
    return table


# ---------------------------------------------------------------------------------------------------------------------
# 4. Quality


@dataclass
class QualityRow:
    category: str
    setting: str
    w_src: float
    w_tgt: float
    edit_success: float
    background_psnr: float
    preservation: float
    full_success: float
    tasks: int


@dataclass
class QualityResult:
    rows: list[QualityRow]
    sources: dict[str, str]  # category -> where the tuned parameters came from

    def markdown(self) -> str:
        table = _table(["category", "parameters", "(w_src, w_tgt)", "edit success", "background PSNR (dB)",
                        "preservation", "full success", "held-out tasks"],
                       [[r.category, r.setting, f"({r.w_src:.3g}, {r.w_tgt:.3g})", f"{r.edit_success:.0%}",
                         r.background_psnr, f"{r.preservation:.0%}", f"{r.full_success:.0%}", r.tasks]
                        for r in self.rows])
        notes = "; ".join(f"{c}: {s}" for c, s in self.sources.items())
        return (table + "\n\nEdit success: the shapes reader finds the asked edit; background PSNR: fidelity outside "
                "the edited region; preservation: share of untouched objects/background read back unchanged; full "
                "success: all three. Only the guidance pair differs between the rows of a category. Tuned "
                f"parameters: {notes}.")


def tuned_params(editor: Any, category: str, grid: GridTable | None = None, style: str = "balanced",
                 presets: Any = None) -> tuple[EditParams | None, str]:
    """The tuned pick for `category`: a tuned preset for this model from the preset store (or `presets`, a
    directory), else the same pick rule applied to the dense grid measured on the tune split; None if neither."""
    from autotune.errors import PresetError
    from autotune.preset import FrontPoint, Preset
    from autotune.preset_store import PresetStore

    try:
        store = PresetStore([Path(presets)]) if presets is not None else PresetStore()
        entry = store.find(category, editor.model_info())
        if entry.preset is not None and entry.preset.kind == "tuned":
            return entry.preset.params(style), f"preset {_shown_path(entry.path)} ({style})"
    except PresetError:
        pass
    if grid is None:
        return None, "no tuned preset for this model and no grid"
    points = []
    for i, s in enumerate(grid.w_src):
        for j, t in enumerate(grid.w_tgt):
            f, e = grid.fidelity[i][j], grid.strength[i][j]
            if math.isfinite(f) and math.isfinite(e):
                points.append(FrontPoint(EditParams(w_src=s, w_tgt=t, steps=grid.steps),
                                         {"fidelity": f, "edit_strength": e}))
    objectives = [{"name": "fidelity", "direction": grid.directions[0], "metrics": {}},
                  {"name": "edit_strength", "direction": grid.directions[1], "metrics": {}}]
    preset = Preset.from_front(points, category=category, model=editor.model_info(), objectives=objectives)
    return preset.params(style), (f"the {style} pick of the {len(grid.w_src)}x{len(grid.w_tgt)} grid's Pareto front "
                                  f"on {grid.tasks} tune-split tasks (no tuned preset for this model)")


def _shown_path(path: Any) -> str:
    """Relative to the working directory when under it: the section is committed and read on other machines."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, TypeError):
        return str(path)


def bench_quality(editor: Any, scorer: Any, heldout: dict[str, Sequence[EditTask]],
                  tuned: dict[str, tuple[EditParams | None, str]], progress: bool = False) -> QualityResult:
    """Edit each held-out task under the tuned pick and the two paper settings in one batch, score, average."""
    from tqdm.auto import tqdm

    rows: list[QualityRow] = []
    sources = {}
    for category, tasks in heldout.items():
        params, source = tuned.get(category, (None, "none"))
        sources[category] = source
        base = params or EditParams()
        settings = [("SimInversion default", base.with_(method="siminversion", **PAPER_POINTS["siminversion"])),
                    ("DDIM-style", base.with_(method="siminversion", **PAPER_POINTS["ddim"]))]
        if params is not None:
            settings.insert(0, ("tuned", params))
        sums = [dict.fromkeys(("edit_success", "background_psnr", "preservation", "full_success"), 0.0)
                for _ in settings]
        for task in tqdm(tasks, desc=f"quality {category}", unit="task", disable=not progress):
            results = editor.edit_task(task, [p for _, p in settings])
            scores = scorer.score(task, torch.stack([r.pixels for r in results]))
            for acc, s in zip(sums, scores, strict=True):
                for k in acc:
                    acc[k] += float(s.get(k, math.nan)) / len(tasks)
            editor.cache.clear()
        for (name, p), acc in zip(settings, sums, strict=True):
            rows.append(QualityRow(category, name, p.w_src.start, p.w_tgt.start, acc["edit_success"],
                                   acc["background_psnr"], acc["preservation"], acc["full_success"], len(tasks)))
    return QualityResult(rows, sources)


# ---------------------------------------------------------------------------------------------------------------------
# 5. Inversion error vs. w_inv


@dataclass
class InversionResult:
    rows: list[dict[str, Any]]  # {"setting", "psnr", "read_ok"}
    samples: int
    steps: int
    table: str

    def markdown(self) -> str:
        return (self.table + f"\n\n{self.samples} rendered scenes, {self.steps} DDIM steps; reconstruction = the "
                "source branch of an edit with identical prompts, inverted at w_inv = w_src "
                "(`autotune.shapes.measure.inversion_table`).")


def bench_inversion(model: str | Path, samples: int = 20, steps: int = 50, seed: int = 0) -> InversionResult:
    """The SimInversion replication table, computed by the shapes world's own measurement (not duplicated here)."""
    from autotune.shapes.measure import inversion_table

    table = inversion_table(model, samples, steps, seed)
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 3:
            psnr = float(cells[1])
            read = float(cells[2].rstrip("%")) / 100 if cells[2].endswith("%") else None
            rows.append({"setting": cells[0], "psnr": psnr, "read_ok": read})
    return InversionResult(rows, samples, steps, table)


# ---------------------------------------------------------------------------------------------------------------------
# 6. Peak memory


@dataclass
class MemoryResult:
    device: str
    load_only_mb: float
    tuning_mb: float
    trials: int
    batch: int
    tasks: int
    steps: int
    kind: str  # "RSS (child process)" | "CUDA max_memory_allocated"

    def markdown(self) -> str:
        table = _table(["process", f"peak {self.kind} (MB)"],
                       [["load the model only", self.load_only_mb],
                        [f"tuning run: {self.trials} trials, batch {self.batch}, {self.tasks} tasks, {self.steps} "
                         "steps", self.tuning_mb]])
        return table + "\n\nThe tuning run is `autotune tune` with the same model, in its own process."


def _child_peak_rss_mb(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Run `cmd` and return its peak resident set size (Linux ru_maxrss is in KiB)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
    scale = 1.0 if sys.platform != "darwin" else 1 / 1024
    return usage.ru_maxrss * scale / 1024


def bench_memory(model: str, device: str = "cpu", *, category: str = "change_color", trials: int = 8, batch: int = 4,
                 tasks: int = 4, steps: int = 50) -> MemoryResult:
    """Peak memory of `autotune tune` on `tasks` shapes tasks, against loading the model alone."""
    with tempfile.TemporaryDirectory() as tmp:
        tune_args = ["tune", "--model", model, "--device", device, "--tasks", f"shapes:{category}",
                     "--trials", str(trials), "--batch", str(batch), "--space", f"steps={steps}:{steps}",
                     "--project-dir", f"{tmp}/proj", "--presets-dir", f"{tmp}/presets", "--quiet"]
        if device.startswith("cuda"):
            return _cuda_memory(model, device, tune_args, trials, batch, tasks, steps)
        env = dict(os.environ, HF_HUB_OFFLINE="1", AUTOTUNE_BENCH_TASKS=str(tasks),
                   OMP_NUM_THREADS=str(torch.get_num_threads()))  # the child computes as this process does
        load = [sys.executable, "-c", "import sys; from autotune.editor import Editor; "
                "Editor.from_pretrained(sys.argv[1], device=sys.argv[2], progress=False)", model, device]
        tune_cmd = [sys.executable, "-c", _TUNE_CHILD, *tune_args]
        return MemoryResult(device, _child_peak_rss_mb(load, env), _child_peak_rss_mb(tune_cmd, env), trials, batch,
                            tasks, steps, "RSS")


# The child limits the shapes tasks to AUTOTUNE_BENCH_TASKS so the memory run is the size asked for.
_TUNE_CHILD = """
import os, sys
import autotune.shapes.tasks as st
_orig = st.shapes_tasks
def _limited(category, split="tune", count=None, seed=0):
    return _orig(category, split, int(os.environ["AUTOTUNE_BENCH_TASKS"]), seed)
st.shapes_tasks = _limited
from autotune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cuda_memory(model: str, device: str, tune_args: list[str], trials: int, batch: int, tasks: int, steps: int
                 ) -> MemoryResult:
    from autotune.editor import Editor
    from autotune.shapes.scoring import ShapesScorer
    from autotune.shapes.tasks import shapes_tasks
    from autotune.tuner import tune

    dev = torch.device(device)
    torch.cuda.reset_peak_memory_stats(dev)
    editor = Editor.from_pretrained(model, device=device, progress=False)
    load_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    category = tune_args[tune_args.index("--tasks") + 1].split(":", 1)[1]
    with tempfile.TemporaryDirectory() as tmp:
        tune(editor, shapes_tasks(category, "tune", tasks), category=category, trials=trials, batch=batch,
             storage=f"{tmp}/s.journal", scorer=ShapesScorer(), search_space=bench_space(steps), progress=False,
             artifacts=False, save_preset=False, project_dir=tmp)
    return MemoryResult(device, load_mb, torch.cuda.max_memory_allocated(dev) / 2**20, trials, batch, tasks, steps,
                        "CUDA max_memory_allocated")
