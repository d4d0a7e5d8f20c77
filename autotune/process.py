"""A process on this machine: when it started, and whether it still runs.

A pid alone does not name a process for long: the kernel hands it to another one once it exits. The pair (pid,
kernel start time) does, so records that outlive their process (a study's trial claims, the registry of running
autotune processes in `autotune.threads`) store both and check both.
"""

from __future__ import annotations

import os


def process_start(pid: int) -> str | None:
    """Kernel start time of a process (Linux `/proc/<pid>/stat`, field 22); None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, start: str | None) -> bool:
    """Whether the process `pid` that started at `start` still runs (a recycled pid does not count)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    if start is not None:
        now = process_start(pid)
        if now is not None and now != start:
            return False
    return True
