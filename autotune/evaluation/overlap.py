"""Whether an evaluation scores a preset on the tasks it was tuned on.

A preset tuned by `autotune tune` lists the digest of every task its study saw (`provenance.task_digests`;
`autotune.task.task_digest`: the image file's bytes and the two prompts). `autotune evaluate` compares its own
tasks' digests with the list of the preset each task is edited with, and says how many it shares, so that a score
on tuning tasks is never read as a held-out one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune.task import EditTask, task_digest


class TuningOverlapWarning(UserWarning):
    """An evaluation scores a preset on tasks it was tuned on, or cannot tell."""


@dataclass
class TuningOverlap:
    """Per category: the preset used, how many tasks were evaluated, and how many it was tuned on (None: the
    preset does not list its tuning tasks)."""

    by_category: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def tasks(self) -> int:
        return sum(entry["tasks"] for entry in self.by_category.values())

    @property
    def overlapping(self) -> int:
        return sum(entry["overlap"] or 0 for entry in self.by_category.values())

    @property
    def unknown(self) -> list[str]:
        """Categories whose preset does not list its tuning tasks."""
        return [c for c, entry in self.by_category.items() if entry["overlap"] is None]

    def message(self) -> str | None:
        """The warning to give, or None when every task was checked and none was a tuning task."""
        parts = []
        if self.overlapping:
            shared = ", ".join(f"{c}: {e['overlap']} of {e['tasks']}" for c, e in self.by_category.items()
                               if e["overlap"])
            sources = sorted({e["tuned_on"] for e in self.by_category.values() if e["overlap"] and e["tuned_on"]})
            hint = f" (the preset was tuned on {'; '.join(sources)})" if sources else ""
            parts.append(f"{self.overlapping} of {self.tasks} tasks are among the tasks the preset was tuned on "
                         f"({shared}): their scores are not held out. Evaluate on tasks the tuning never saw, e.g. "
                         f"the held-out split of the tuning tasks{hint}")
        if self.unknown:
            parts.append(f"the preset for {', '.join(self.unknown)} does not list its tuning tasks (hand-made, or "
                         "tuned before autotune recorded them): whether these tasks are held out is unknown")
        return "; ".join(parts) or None

    def summary_line(self) -> str:
        """One line for summary.md."""
        message = self.message()
        if message:
            return f"**Warning:** {message}."
        return f"held out: none of the {self.tasks} tasks is among the preset's tuning tasks (checked by task digest)"

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "overlapping": self.overlapping, "unknown": self.unknown,
                "by_category": {c: dict(e) for c, e in self.by_category.items()}}


def tuning_overlap(source: Any, tasks: Sequence[EditTask], model_info: Mapping[str, Any]) -> TuningOverlap | None:
    """The overlap between `tasks` and the tuning tasks of the preset(s) `source` edits them with; None when
    `source` is not a preset (fixed parameters, a function)."""
    find_preset = getattr(source, "find_preset", None)
    if find_preset is None:
        return None
    overlap = TuningOverlap()
    for category in sorted({t.category for t in tasks}):
        group = [t for t in tasks if t.category == category]
        preset = find_preset(category, model_info)
        tuned = preset.tuning_tasks if preset is not None else None
        task_source = (preset.provenance.get("task_source") or {}) if preset is not None else {}
        overlap.by_category[category] = {
            "preset": preset.label if preset is not None else None,
            "tasks": len(group),
            "overlap": None if tuned is None else sum(task_digest(t) in tuned for t in group),
            "tuned_on": _describe(task_source),
        }
    return overlap


def _describe(task_source: Mapping[str, Any]) -> str | None:
    if not task_source.get("spec"):
        return None
    fraction = task_source.get("heldout_fraction")
    return (f"{task_source['spec']}, split {task_source.get('split', 'tune')}"
            + (f", held-out fraction {fraction:g}" if fraction is not None else ""))
