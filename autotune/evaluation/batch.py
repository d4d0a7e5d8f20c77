"""Editing a batch of candidates over a task set and scoring them: batched edits, batched scoring, pruning between
engine calls, and failures isolated from batch to task to candidate.

The tuner hands a `BatchEvaluator` one batch of candidates (the trials it asked at once); the evaluator edits them
over the tasks in chunks of as many tasks as the editor batches (`editor.edit_tasks`, or one `editor.edit_task` per
task), scores each task's K edits in one `scorer.score` call, keeps every candidate's per-task metrics, and between
chunks asks the pruner whether a candidate is already dominated. `evaluate` uses the same grouping for fixed
parameters (`edit_groups`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from autotune import pareto
from autotune.errors import AutotuneError
from autotune.params import EditParams
from autotune.scoring.objectives import Objectives
from autotune.task import EditTask

logger = logging.getLogger(__name__)

ARTIFACT_TASKS = 8  # edited images of at most this many tasks are kept per candidate (a trial's artifact)
THUMB = 128  # longest side of each kept image


class Pruner(Protocol):
    """What the evaluator asks between chunks (the tuner's `DominationPruner`)."""

    def dominated_by(self, cand: np.ndarray, refs: Mapping[int, np.ndarray], signs: np.ndarray) -> int | None: ...


@dataclass
class Candidate:
    """One candidate of a batch and what it has measured so far. `trial` is the caller's handle (an Optuna
    trial for the tuner); `protected` candidates (the paper points) are never pruned."""

    trial: Any
    params: EditParams
    paper_point: str | None = None
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    objective_rows: list[tuple[float, float]] = field(default_factory=list)
    thumbs: list[np.ndarray] = field(default_factory=list)
    state: str = "running"  # running | pruned | failed
    fail_kind: str | None = None
    fail_reason: str | None = None
    pruned_by: int | None = None

    @property
    def protected(self) -> bool:
        return bool(self.paper_point)


def check_prompts(editor: Any, tasks: Sequence[EditTask]) -> None:
    """Refuse a task whose prompt the model cannot read now, not when the run reaches it (`Editor.check_prompts`;
    an engine without it, e.g. a test double, is not checked)."""
    check = getattr(editor, "check_prompts", None)
    if check is not None:
        check(tasks)


def failure_kind(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "outofmemory" in text:
        return "oom"
    return "error"


def thumbnail(pixels: Any) -> np.ndarray:
    import torch

    x = pixels.detach().float().cpu().clamp(0, 1)
    h, w = x.shape[-2:]
    if max(h, w) > THUMB:
        scale = THUMB / max(h, w)
        x = torch.nn.functional.interpolate(x[None], size=(max(1, round(h * scale)), max(1, round(w * scale))),
                                            mode="bilinear", antialias=True, align_corners=False)[0]
    return (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)



class BatchEvaluator:
    """Runs one batch of candidates over the tasks: batched edits, batched scoring, pruning, failures."""

    def __init__(self, editor: Any, scorer: Any, tasks: Sequence[EditTask], objectives: Objectives,
                 pruner: Pruner | None, task_batch: int | None = None, invert_ahead: bool = True) -> None:
        self.editor, self.scorer, self.tasks, self.objectives, self.pruner = editor, scorer, tasks, objectives, pruner
        self.task_batch = task_batch
        self.invert_ahead = invert_ahead
        self.signs = pareto.signs(objectives.directions)
        self.engine_calls = 0
        self.candidate_edits = 0

    def tasks_per_call(self, alive: int) -> int:
        """Tasks edited in one engine call: `task_batch`, or as many as the editor batches at once (its
        `max_batch` target branches), with the pruner asked between calls; 1 for an engine without `edit_tasks`."""
        if not hasattr(self.editor, "edit_tasks"):
            return 1
        if self.task_batch is not None:
            return self.task_batch
        return max(1, int(getattr(self.editor, "max_batch", 1)) // max(alive, 1))

    def _edit_and_score(self, tasks: list[EditTask], cands: list[Candidate]
                        ) -> list[list[dict[str, float] | BaseException]]:
        """Edit and score `cands` on `tasks` in one batch, per task a list of outcomes; if the batch raises,
        fall back to one task, then one candidate at a time, so that only the candidate that fails is failed."""
        if len(tasks) == 1:
            return [self._edit_and_score_task(tasks[0], cands)]
        import torch

        try:
            self.engine_calls += 1
            self.candidate_edits += len(cands) * len(tasks)
            results = self.editor.edit_tasks(tasks, [c.params for c in cands])
            if len(results) != len(tasks) or any(len(row) != len(cands) for row in results):
                raise RuntimeError(f"editor returned {[len(r) for r in results]} results for {len(tasks)} tasks x "
                                   f"{len(cands)} candidates")
            scored = [self._score(task, cands, row) for task, row in zip(tasks, results)]
            for row in results:  # once every task scored: a retry must not keep a task's thumbnails twice
                self._keep_thumbs(cands, row)
            return scored
        except (KeyboardInterrupt, AutotuneError):
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the task and candidate that fail
            logger.info("batched edit of %d tasks failed (%s); retrying them one by one", len(tasks), exc)
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
            return [self._edit_and_score_task(task, cands) for task in tasks]

    def _edit_and_score_task(self, task: EditTask, cands: list[Candidate]) -> list[dict[str, float] | BaseException]:
        import torch

        try:
            self.engine_calls += 1
            self.candidate_edits += len(cands)
            results = self.editor.edit_task(task, [c.params for c in cands])
            scored = self._score(task, cands, results)
            self._keep_thumbs(cands, results)
            return scored
        except (KeyboardInterrupt, AutotuneError):
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the candidate that fails
            if len(cands) == 1:
                return [exc]
            logger.info("batched edit of task %s failed (%s); retrying its %d candidates one by one", task.id,
                        exc, len(cands))
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
            out: list[dict[str, float] | BaseException] = []
            for c in cands:
                out.extend(self._edit_and_score_task(task, [c]))
            return out

    def _score(self, task: EditTask, cands: list[Candidate], results: Sequence[Any]) -> list[dict[str, float]]:
        import torch

        if len(results) != len(cands):
            raise RuntimeError(f"editor returned {len(results)} results for {len(cands)} candidates")
        scores = self.scorer.score(task, torch.stack([r.pixels for r in results]))
        if len(scores) != len(cands):
            raise RuntimeError(f"scorer returned {len(scores)} results for {len(cands)} candidates")
        return list(scores)

    @staticmethod
    def _keep_thumbs(cands: list[Candidate], results: Sequence[Any]) -> None:
        for c, r in zip(cands, results, strict=True):
            if len(c.thumbs) < ARTIFACT_TASKS:
                c.thumbs.append(thumbnail(r.pixels))

    def _invert_ahead(self, cands: list[Candidate]) -> None:
        """Invert every task for the batch before the first chunk, when the tasks take more than one chunk: each
        chunk would otherwise run its own inversion loop of small calls. A failure here only costs the
        look-ahead; the chunks invert what they still miss and isolate the failing candidate."""
        invert = getattr(self.editor, "invert_tasks", None)
        alive = [c for c in cands if c.state == "running"]
        if not self.invert_ahead or invert is None or not alive or self.tasks_per_call(len(alive)) >= len(self.tasks):
            return
        try:
            invert(self.tasks, [c.params for c in alive])
        except (KeyboardInterrupt, AutotuneError):
            raise
        except Exception as exc:  # noqa: BLE001 - the chunks retry and isolate
            logger.info("inverting the batch's tasks ahead failed (%s); the chunks invert them", exc)

    def run(self, cands: list[Candidate], refs: Mapping[int, np.ndarray], on_task: Callable[[], None]) -> None:
        needed = self.objectives.metric_names()
        self._invert_ahead(cands)
        done = 0
        while done < len(self.tasks):
            alive = [c for c in cands if c.state == "running"]
            if not alive:
                break
            chunk = list(self.tasks[done : done + self.tasks_per_call(len(alive))])
            for task, outcomes in zip(chunk, self._edit_and_score(chunk, alive), strict=True):
                for c, outcome in zip(alive, outcomes, strict=True):
                    if c.state != "running":  # failed on an earlier task of this chunk
                        continue
                    if isinstance(outcome, BaseException):
                        c.state, c.fail_kind = "failed", failure_kind(outcome)
                        c.fail_reason = f"task {task.id}: {type(outcome).__name__}: {outcome}"[:2000]
                        continue
                    metrics = {k: float(v) for k, v in outcome.items()}
                    bad = [m for m in needed if not math.isfinite(metrics.get(m, math.nan))]
                    if bad:
                        c.state, c.fail_kind = "failed", "nan"
                        c.fail_reason = f"task {task.id}: metric(s) {', '.join(bad)} not finite (NaN, inf or missing)"
                        continue
                    c.per_task[task.id] = metrics
                    c.objective_rows.append(self.objectives.values(metrics))
                on_task()
            done += len(chunk)
            if self.pruner is None or done >= len(self.tasks) or not refs:
                continue
            for c in cands:
                if c.state != "running" or c.protected:
                    continue
                by = self.pruner.dominated_by(np.array(c.objective_rows), refs, self.signs)
                if by is not None:
                    c.state, c.pruned_by = "pruned", by


# ---------------------------------------------------------------------------------------------------------------------
# Fixed parameters over many tasks (evaluate)


def tasks_per_call(editor: Any, task_batch: int | None) -> int:
    """Tasks of equal parameters edited in one engine call: `task_batch`, else the editor's `max_batch`."""
    if not hasattr(editor, "edit_tasks"):
        return 1
    return task_batch if task_batch is not None else max(1, int(getattr(editor, "max_batch", 1)))


def edit_groups(planned: list[tuple[EditTask, EditParams]], size: int
                ) -> Iterator[tuple[list[EditTask], EditParams]]:
    """Runs of consecutive tasks with equal parameters, at most `size` long."""
    group: list[EditTask] = []
    params: EditParams | None = None
    for task, p in planned:
        if group and (p != params or len(group) == size):
            yield group, params
            group = []
        group.append(task)
        params = p
    if group:
        yield group, params


def edit_group(editor: Any, group: list[EditTask], params: EditParams) -> list[Any]:
    """One edit per task of the group, together; if that fails (e.g. out of memory), one task at a time."""
    if len(group) == 1:
        return [editor.edit_task(group[0], [params])[0]]
    try:
        return [row[0] for row in editor.edit_tasks(group, [params])]
    except (KeyboardInterrupt, AutotuneError):
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory for the group: one task at a time
        logger.info("editing %d tasks together failed (%s); one at a time", len(group), exc)
        return [editor.edit_task(task, [params])[0] for task in group]
