"""How many CPU threads torch computes with: a fair share of the cores this process may run on, among the autotune
processes running on them.

Why. torch's default is one intra-op thread per core, and its OpenMP threads spin while they wait for each other.
Two autotune processes on one machine at that default (two workers of a study, or an `autotune edit` beside an
`autotune tune`) ask for twice the cores there are, and each parallel region then waits for a thread the other
process has descheduled: the edit that takes 5.5 s at one thread took 43 s beside a tuning run (BENCHMARKS.md,
"Two processes on one CPU"). Splitting the cores keeps each process near the speed of the cores it keeps.

The rule, in order of precedence:

1. `--threads N` on the command line, else `$AUTOTUNE_THREADS`: exactly N threads.
2. `$OMP_NUM_THREADS` set: torch already follows it; autotune leaves the threads alone.
3. Otherwise, automatic: the cores this process may use (`os.sched_getaffinity`, so `taskset` and container CPU sets
   count) divided among the autotune processes registered on any of those cores, the first registered getting the
   remainder; at least 1, at most torch's own default (it counts physical cores, so hyper-threads are not
   oversubscribed). An automatic process looks again at most once a second while it computes (before each model
   call, `follow`), so a long tuning run gives a core to an edit started beside it and takes it back when the edit
   ends.

The registry is a folder of small JSON files, one per running process (pid, kernel start time, cores, when it
registered), in `$XDG_CACHE_HOME/autotune/running` (default `~/.cache/autotune/running`). A process removes its file
when it exits; a file whose process is gone (killed) is ignored and removed by the next look. Only processes of the
same user share a registry: other users' jobs are not seen.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune import atomic
from autotune.errors import InputError
from autotune.process import process_alive, process_start

logger = logging.getLogger(__name__)

THREADS_ENV = "AUTOTUNE_THREADS"
RECHECK_SECONDS = 1.0  # an automatic process looks at the registry at most this often


@dataclass(frozen=True)
class ThreadChoice:
    """The threads chosen and why (printed with `--verbose`, recorded by benchmarks)."""

    threads: int | None  # None: left to torch ($OMP_NUM_THREADS)
    source: str  # "--threads", "AUTOTUNE_THREADS", "OMP_NUM_THREADS" or "auto"
    reason: str


@dataclass
class _State:
    automatic: bool
    cores: frozenset[int]
    ceiling: int  # torch's default: never more threads than that
    entry: Path | None
    checked: float = 0.0


_state: _State | None = None


def usable_cores() -> frozenset[int]:
    """The CPUs this process may run on (its affinity mask), or all of them where the OS has no such call."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset(range(os.cpu_count() or 1))


def registry_dir() -> Path:
    """`$XDG_CACHE_HOME/autotune/running`, else `~/.cache/autotune/running`."""
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache) if cache else Path.home() / ".cache") / "autotune" / "running"


def fair_share(cores: int, rank: int, processes: int, ceiling: int) -> int:
    """Threads for the process at `rank` (0 = registered first) of `processes` sharing `cores` cores: an even split,
    the first `cores % processes` getting one more; at least 1, at most `ceiling`."""
    processes = max(processes, 1)
    share = cores // processes + (1 if rank < cores % processes else 0)
    return max(1, min(share, ceiling))


def configure(requested: int | None = None, directory: Path | None = None) -> ThreadChoice:
    """Register this process and set torch's threads by the rule above; call once, before loading a model.

    `requested` is `--threads` (None: unset). Registering is skipped when the registry folder cannot be written
    (then this process counts only itself)."""
    global _state
    import torch

    env = os.environ.get(THREADS_ENV, "").strip()
    if requested is not None:
        choice = ThreadChoice(_positive(requested, "--threads"), "--threads", "asked for on the command line")
    elif env:
        choice = ThreadChoice(_positive(env, THREADS_ENV), THREADS_ENV, f"${THREADS_ENV}={env}")
    elif os.environ.get("OMP_NUM_THREADS", "").strip():
        choice = ThreadChoice(None, "OMP_NUM_THREADS", f"$OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} (torch's)")
    else:
        choice = ThreadChoice(None, "auto", "")
    cores = usable_cores()
    ceiling = max(1, min(torch.get_num_threads(), len(cores)))  # torch's default, before anything changes it
    entry = _register(directory or registry_dir(), cores)
    if _state is not None and _state.entry is not None and _state.entry != entry:
        _unregister(_state.entry)
    _state = _State(choice.source == "auto", cores, ceiling, entry)
    if choice.source == "auto":
        threads, why = _auto_threads(_state)
        choice = ThreadChoice(threads, "auto", why)
    if choice.threads is not None:
        torch.set_num_threads(choice.threads)
    logger.info("torch threads: %s (%s: %s)", choice.threads or torch.get_num_threads(), choice.source, choice.reason)
    return choice


def rebalance(force: bool = False) -> int | None:
    """In an automatic process, look at the registry again (at most once a second unless `force`) and change
    torch's threads if the fair share moved; returns the new count when it changed. Call it from the thread that
    runs torch's operations (OpenMP's thread count belongs to the calling thread)."""
    state = _state
    if state is None or not state.automatic:
        return None
    now = time.monotonic()
    if not force and now - state.checked < RECHECK_SECONDS:
        return None
    state.checked = now
    import torch

    threads, why = _auto_threads(state)
    if threads == torch.get_num_threads():
        return None
    torch.set_num_threads(threads)
    logger.info("torch threads now %d (%s)", threads, why)
    return threads


def follow(owner: Any) -> int:
    """Rebalance before every forward call of the `torch.nn.Module`s among `owner`'s attributes (e.g.
    `editor.components`: UNet, VAE, text encoders), and of a diffusers pipeline among them (the flow family keeps
    its transformer in `components.pipe`): the model calls are where a long run spends its time, and a hook there
    needs no change to the engine. Returns how many modules are followed."""
    import torch

    values = list(vars(owner).values())
    for value in list(values):
        parts = getattr(value, "components", None)  # a DiffusionPipeline: its modules by name
        if isinstance(parts, dict) and not isinstance(value, torch.nn.Module):
            values.extend(parts.values())
    hooked, seen = 0, set()
    for module in values:
        if isinstance(module, torch.nn.Module) and id(module) not in seen:
            seen.add(id(module))
            module.register_forward_pre_hook(_before_forward)
            hooked += 1
    return hooked


def _before_forward(_module: Any, _args: Any) -> None:
    """A forward pre-hook: rebalance, and return None, which leaves the call's inputs as they are (anything else
    would replace them)."""
    rebalance()


def running(directory: Path | None = None) -> list[dict[str, Any]]:
    """The registered autotune processes that still run, oldest first; files of processes that are gone are
    removed on the way."""
    folder = directory or registry_dir()
    out = []
    try:
        files = list(folder.glob("*.json"))
    except OSError:
        return []
    for path in files:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            pid, start = int(entry["pid"]), entry.get("start")
            cores = frozenset(int(c) for c in entry["cores"])
            registered = float(entry["registered"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours: skip it, never fail a run over it
        if not process_alive(pid, start):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        out.append({"pid": pid, "start": start, "cores": cores, "registered": registered, "path": path})
    return sorted(out, key=lambda e: (e["registered"], e["pid"]))


def _auto_threads(state: _State) -> tuple[int, str]:
    """This process's share, from the live registry entries on its cores."""
    folder = state.entry.parent if state.entry is not None else None
    sharing = [e for e in running(folder) if e["cores"] & state.cores] if folder is not None else []
    me = os.getpid()
    ranks = [e["pid"] for e in sharing]
    if me not in ranks:  # not registered (unwritable registry): count ourselves last
        ranks.append(me)
    threads = fair_share(len(state.cores), ranks.index(me), len(ranks), state.ceiling)
    others = len(ranks) - 1
    why = f"{len(state.cores)} usable core(s), {others} other autotune process(es) on them"
    return threads, why


def _register(folder: Path, cores: frozenset[int]) -> Path | None:
    pid = os.getpid()
    entry = {"pid": pid, "start": process_start(pid), "cores": sorted(cores), "registered": time.time()}
    path = folder / f"{pid}.json"
    try:
        atomic.write_text(path, json.dumps(entry) + "\n")
    except OSError as exc:
        logger.info("cannot register in %s (%s): threads chosen as if alone", folder, exc)
        return None
    atexit.register(_unregister, path)
    return path


def _unregister(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _positive(value: Any, option: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1:
        raise InputError(f"{option}={value!r}: give a whole number of threads, at least 1")
    return number
