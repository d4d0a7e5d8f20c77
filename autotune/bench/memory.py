"""6. Peak memory of a tuning run: RSS of a child process on the CPU, `max_memory_allocated` on CUDA."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import torch

from autotune.bench import markdown
from autotune.bench._common import bench_space


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
    load_runs_mb: list[float] = field(default_factory=list)  # every run; the figures above are their medians
    tuning_runs_mb: list[float] = field(default_factory=list)

    def markdown(self) -> str:
        def spread(runs: list[float]) -> str:
            return f"{min(runs):.4g}-{max(runs):.4g}" if runs else "one run"

        def every(runs: list[float]) -> str:
            return ", ".join(f"{r:.4g}" for r in runs)

        table = markdown.table(["process", f"peak {self.kind} (MB), median", "range", "every run"],
                       [["load the model only", self.load_only_mb, spread(self.load_runs_mb),
                         every(self.load_runs_mb)],
                        [f"tuning run: {self.trials} trials, batch {self.batch}, {self.tasks} tasks, {self.steps} "
                         "steps", self.tuning_mb, spread(self.tuning_runs_mb), every(self.tuning_runs_mb)]])
        return (table + f"\n\nThe tuning run is `autotune tune` with the same model, in its own process; "
                f"{len(self.tuning_runs_mb) or 1} run(s) of each, every one a fresh process.")


# Runs argv[1:] as its child and writes that child's ru_maxrss (KiB; bytes on macOS) to stdout. Why a launcher: a
# child's ru_maxrss includes the memory of the process image it replaced at exec, and subprocess starts children
# by vfork from this process, so a child started directly reads at least this process's own peak (the test process
# or the benchmark with torch loaded, hundreds of MB). The launcher is small, so its child's figure is the child's.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        os.execv(sys.argv[1], sys.argv[1:])
    except OSError as exc:
        os.write(2, f"cannot run {sys.argv[1]}: {exc}\\n".encode())
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, flush=True)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def _child_peak_rss_mb(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Run `cmd` and return its peak resident set size in MiB (its own, not this process's: see `_LAUNCHER`)."""
    proc = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *cmd], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, check=False)
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
    try:
        maxrss = int(proc.stdout.decode().split()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"{' '.join(cmd)}: the memory launcher reported no peak ({proc.stdout[-200:]!r})") from None
    scale = 1.0 if sys.platform != "darwin" else 1 / 1024
    return maxrss * scale / 1024


def bench_memory(model: str, device: str = "cpu", *, category: str = "change_color", trials: int = 8, batch: int = 4,
                 tasks: int = 4, steps: int = 50, repeats: int = 3) -> MemoryResult:
    """Peak memory of `autotune tune` on `tasks` shapes tasks, against loading the model alone; on the CPU each
    `repeats` times in fresh processes (medians, every run kept). CUDA's allocator counts exactly: one run."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        def tune_args(run: int) -> list[str]:  # a fresh project per run: a second run must not resume the first's
            return ["tune", "--model", model, "--device", device, "--tasks", f"shapes:{category}",
                    "--trials", str(trials), "--batch", str(batch), "--space", f"steps={steps}:{steps}",
                    "--project-dir", f"{tmp}/run{run}/proj", "--presets-dir", f"{tmp}/run{run}/presets", "--quiet"]

        if device.startswith("cuda"):
            return _cuda_memory(model, device, tune_args(0), trials, batch, tasks, steps)
        env = dict(os.environ, HF_HUB_OFFLINE="1", AUTOTUNE_BENCH_TASKS=str(tasks),
                   OMP_NUM_THREADS=str(torch.get_num_threads()))  # the child computes as this process does
        load = [sys.executable, "-c", "import sys; from autotune.engine.editor import Editor; "
                "Editor.from_pretrained(sys.argv[1], device=sys.argv[2], progress=False)", model, device]
        loads, tunings = [], []
        for run in range(repeats):
            loads.append(_child_peak_rss_mb(load, env))
            tunings.append(_child_peak_rss_mb([sys.executable, "-c", _TUNE_CHILD, *tune_args(run)], env))
        med = statistics.median
        return MemoryResult(device, med(loads), med(tunings), trials, batch, tasks, steps, "RSS", loads, tunings)


# The child limits the shapes tasks to AUTOTUNE_BENCH_TASKS so the memory run is the size asked for.
_TUNE_CHILD = """
import os, sys
import autotune.shapes.tasks as st
_orig = st.shapes_tasks
def _limited(category, split="tune", count=None, seed=0, version=1):
    return _orig(category, split, int(os.environ["AUTOTUNE_BENCH_TASKS"]), seed, version)
st.shapes_tasks = _limited
from autotune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cuda_memory(model: str, device: str, tune_args: list[str], trials: int, batch: int, tasks: int, steps: int
                 ) -> MemoryResult:
    from autotune.engine.editor import Editor
    from autotune.shapes.scoring import ShapesScorer
    from autotune.shapes.tasks import shapes_tasks
    from autotune.tuning.tuner import tune

    dev = torch.device(device)
    torch.cuda.reset_peak_memory_stats(dev)
    editor = Editor.from_pretrained(model, device=device, progress=False)
    load_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    category = tune_args[tune_args.index("--tasks") + 1].split(":", 1)[1]
    with tempfile.TemporaryDirectory() as tmp:
        tune(editor, shapes_tasks(category, "tune", tasks), category=category, trials=trials, batch=batch,
             storage=f"{tmp}/s.journal", scorer=ShapesScorer(), search_space=bench_space(steps, editor), progress=False,
             artifacts=False, save_preset=False, project_dir=tmp)
    return MemoryResult(device, load_mb, torch.cuda.max_memory_allocated(dev) / 2**20, trials, batch, tasks, steps,
                        "CUDA max_memory_allocated")
