"""Held-out splits of any task set: a task's digest decides whether it is for tuning or held out.

    tune_tasks = select_split(tasks, "tune")         # 70% by default
    heldout = select_split(tasks, "heldout")         # the other 30%: no tuning run ever sees them

A task is held out when its digest (`autotune.task.task_digest`: sha256 of its image file's bytes and its two
prompts), read as a number in [0, 1), is below the held-out fraction. Nothing else enters: not the order of the
tasks, not the other tasks, not the machine, not a random seed. So a task lands in the same split on every machine
and in every version that keeps the digest scheme, a task file may grow or be reordered without moving any task
between splits, and a larger fraction only moves tasks from tune to held-out, never back. The shapes world draws
its own split by construction (`autotune.shapes.tasks`, one scene in five).
"""

from __future__ import annotations

from collections.abc import Sequence

from autotune.errors import InputError
from autotune.task import EditTask, task_digest

SPLITS = ("tune", "heldout", "all")
DEFAULT_HELDOUT_FRACTION = 0.3


def check_split(split: str, heldout_fraction: float) -> None:
    """Refuse an unknown split or a fraction outside (0, 1), saying what is accepted."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use tune, heldout or all")
    if isinstance(heldout_fraction, bool) or not isinstance(heldout_fraction, (int, float)) \
            or not 0 < heldout_fraction < 1:
        raise InputError(f"held-out fraction {heldout_fraction!r} must lie strictly between 0 and 1 (e.g. 0.3)")


def split_of(task: EditTask, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> str:
    """"heldout" when the task's digest, as a fraction of 2^64, is below `heldout_fraction`; else "tune"."""
    return "heldout" if int(task_digest(task), 16) < heldout_fraction * 2**64 else "tune"


def select_split(tasks: Sequence[EditTask], split: str, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
                 ) -> list[EditTask]:
    """The tasks of one split (`all`: every task), in their order."""
    check_split(split, heldout_fraction)
    return [t for t in tasks if split == "all" or split_of(t, heldout_fraction) == split]
