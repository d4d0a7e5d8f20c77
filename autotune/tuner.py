"""The tuner: a multi-objective Optuna study (fidelity vs. edit strength) over editing parameters, per category.

One round of the loop (ask-and-tell, so the GPU engine sees batches):

1. Sweep: fail and re-queue trials left RUNNING by workers that died (`TuneStorage.sweep`).
2. Ask K trials at once (`batch`); the paper points, enqueued when the study was created, come out first.
3. When the tasks take more than one engine call, invert them all for the K candidates first
   (`editor.invert_tasks`): the inversions of new (task, w_src) pairs then run in large batches (up to the
   editor's `max_batch` per loop), not in one small batch per call.
4. In a fixed task order (sorted by id), in chunks of as many tasks as the engine batches (`editor.edit_tasks`,
   or one `editor.edit_task(task, [K params])` per task), then one `scorer.score(task, [K, 3, H, W])` call per
   task; per-task metrics are kept for every candidate.
5. After each chunk, prune: a candidate stops when a trial of the current Pareto front dominates it with
   confidence over the tasks seen so far (see `DominationPruner`). Once every candidate of the batch has stopped,
   the remaining tasks cost no engine call at all.
6. Tell: COMPLETE with values [fidelity, edit_strength] (means over all tasks); PRUNED with the partial means;
   FAIL with `fail_kind` / `fail_reason` user attrs for an exception, NaN metric or out-of-memory error. The
   others of the batch count regardless. A trial that reaches the Pareto front keeps its edited images in
   Optuna's artifact store, so `optuna-dashboard` shows them.

The study records what it was tuned on (see "The study contract" in docs/tuning.md) and re-running the same
command resumes it: `trials` is the study's total budget (COMPLETE + PRUNED + failed trials), never redone.
At the end the category's preset is built from the study (via `autotune.preset`) and saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autotune.cost_aware_tpe import NEW_SOURCE_COST, CostAwareTPESampler
from autotune.errors import AutotuneError, InputError, StorageError
from autotune.objectives import Objectives, default_objectives
from autotune.params import EditParams
from autotune.pruning import DominationPruner
from autotune.search_space import SearchSpace
from autotune.storage import (
    FAIL_KIND_ATTR,
    FAIL_REASON_ATTR,
    RETRIED_KINDS,
    TuneStorage,
    open_storage,
)
from autotune.tasks import EditTask, category_name

logger = logging.getLogger(__name__)

SAMPLERS = ("tpe", "tpe-plain", "gp", "nsga2", "random", "grid")
DEFAULT_SAMPLER = "tpe"
ARTIFACT_TASKS = 8  # edited images of at most this many tasks go into a front trial's artifact
THUMB = 128  # longest side of each image in the artifact


# ---------------------------------------------------------------------------------------------------------------------
# Samplers


TPE_STARTUP_TRIALS = 4  # random trials (COMPLETE or PRUNED) before TPE models the objectives


def make_sampler(name: str, seed: int, space: SearchSpace, batch: int = 4) -> optuna.samplers.BaseSampler:
    """The sampler, chosen explicitly (Optuna's own default changes between versions).

    - `tpe` (default): multivariate TPE with the constant liar, which treats the batch's RUNNING trials as
      bad so K trials asked together spread out instead of piling on one point; multi-objective capable. It
      models the objectives once 4 trials are done (Optuna's default waits for 10): one batch explores at
      random, then TPE. On the shapes grids that reaches 98% of the best in fewer trials (BENCHMARKS.md, 3).
      It is cost-aware (`CostAwareTPESampler`): a candidate whose w_src no trial has used yet, and so costs
      every task an inversion and a source branch, must look `NEW_SOURCE_COST` times as promising.
    - `tpe-plain`: the same TPE without the cost: every w_src counts alike.
    - `gp`: Gaussian-process Bayesian optimisation (Optuna's GPSampler, multi-objective via log EHVI); best for
      small budgets and few knobs; it considers running trials but has no true q-batch acquisition.
    - `nsga2`: the genetic NSGA-II (population = max(8, 2 * batch)); for large budgets.
    - `random`: a baseline; `grid`: `SearchSpace.grid()` points (5 per numeric knob plus the paper values).
    """
    if name == "tpe":
        return CostAwareTPESampler(space, multivariate=True, constant_liar=True, seed=seed,
                                   n_startup_trials=TPE_STARTUP_TRIALS)
    if name == "tpe-plain":
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed,
                                          n_startup_trials=TPE_STARTUP_TRIALS)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, 2 * batch))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise InputError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)} (default {DEFAULT_SAMPLER})")


# ---------------------------------------------------------------------------------------------------------------------
# Study contract helpers


def task_fingerprint(tasks: Sequence[EditTask]) -> str:
    """sha256 over the tasks' ids, prompts, blend words, categories, image and mask bytes, in order."""
    h = hashlib.sha256()
    for task in tasks:
        for text in (task.id, task.source_prompt, task.target_prompt, task.category, repr(task.blend_words)):
            h.update(text.encode("utf-8"))
            h.update(b"\0")
        image = task.image.convert("RGB")
        h.update(f"{image.size}".encode())
        h.update(image.tobytes())
        if task.mask is not None:
            h.update(np.packbits(np.asarray(task.mask, dtype=bool)).tobytes())
        h.update(b"\1")
    return "sha256:" + h.hexdigest()


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text))
    return keep.strip("-")[:80] or "model"


def _jsonable(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> float: user attrs must be plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class TuneResult:
    """What `tune` returns: the study, its Pareto front (COMPLETE trials), the preset and where it was saved."""

    study: optuna.Study
    front: list[FrozenTrial]
    preset: Any | None
    preset_path: Path | None
    storage: str  # redacted URL
    engine_calls: int = 0  # `edit_task` / `edit_tasks` calls made by this run
    candidate_edits: int = 0  # candidates edited by this run, summed over calls
    counts: dict[str, int] = field(default_factory=dict)

    def paper_points(self) -> dict[str, FrozenTrial]:
        return {t.user_attrs["paper_point"]: t for t in self.study.get_trials(states=(TrialState.COMPLETE,))
                if t.user_attrs.get("paper_point")}

    def summary(self) -> str:
        lines = [f"study {self.study.study_name!r} on {self.storage}: " +
                 ", ".join(f"{v} {k}" for k, v in self.counts.items())]
        for t in sorted(self.front, key=lambda t: t.values[0]):
            p = t.user_attrs.get("params", {})
            tag = f" [{t.user_attrs['paper_point']}]" if t.user_attrs.get("paper_point") else ""
            lines.append(f"  trial {t.number:4d}: fidelity {t.values[0]:.4g}, edit strength {t.values[1]:.4g}  "
                         f"w_src={p.get('w_src')} w_tgt={p.get('w_tgt')}{tag}")
        if self.preset_path is not None:
            lines.append(f"preset written to {self.preset_path}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluating a batch


@dataclass
class _Candidate:
    trial: optuna.Trial
    params: EditParams
    paper_point: str | None
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    objective_rows: list[tuple[float, float]] = field(default_factory=list)
    thumbs: list[np.ndarray] = field(default_factory=list)
    state: str = "running"  # running | pruned | failed
    fail_kind: str | None = None
    fail_reason: str | None = None
    pruned_by: int | None = None


def _failure_kind(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "outofmemory" in text:
        return "oom"
    return "error"


def _thumb(pixels: Any) -> np.ndarray:
    import torch

    x = pixels.detach().float().cpu().clamp(0, 1)
    h, w = x.shape[-2:]
    if max(h, w) > THUMB:
        scale = THUMB / max(h, w)
        x = torch.nn.functional.interpolate(x[None], size=(max(1, round(h * scale)), max(1, round(w * scale))),
                                            mode="bilinear", antialias=True, align_corners=False)[0]
    return (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


class _Evaluator:
    """Runs one batch of candidates over the tasks: batched edits, batched scoring, pruning, failures."""

    def __init__(self, editor: Any, scorer: Any, tasks: Sequence[EditTask], objectives: Objectives,
                 pruner: DominationPruner | None, task_batch: int | None = None, invert_ahead: bool = True) -> None:
        self.editor, self.scorer, self.tasks, self.objectives, self.pruner = editor, scorer, tasks, objectives, pruner
        self.task_batch = task_batch
        self.invert_ahead = invert_ahead
        self.signs = np.array([1.0 if d == "maximize" else -1.0 for d in objectives.directions])
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

    def _edit_and_score(self, tasks: list[EditTask], cands: list[_Candidate]
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

    def _edit_and_score_task(self, task: EditTask, cands: list[_Candidate]) -> list[dict[str, float] | BaseException]:
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

    def _score(self, task: EditTask, cands: list[_Candidate], results: Sequence[Any]) -> list[dict[str, float]]:
        import torch

        if len(results) != len(cands):
            raise RuntimeError(f"editor returned {len(results)} results for {len(cands)} candidates")
        scores = self.scorer.score(task, torch.stack([r.pixels for r in results]))
        if len(scores) != len(cands):
            raise RuntimeError(f"scorer returned {len(scores)} results for {len(cands)} candidates")
        return list(scores)

    @staticmethod
    def _keep_thumbs(cands: list[_Candidate], results: Sequence[Any]) -> None:
        for c, r in zip(cands, results, strict=True):
            if len(c.thumbs) < ARTIFACT_TASKS:
                c.thumbs.append(_thumb(r.pixels))

    def _invert_ahead(self, cands: list[_Candidate]) -> None:
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

    def run(self, cands: list[_Candidate], refs: Mapping[int, np.ndarray], on_task: Callable[[], None]) -> None:
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
                        c.state, c.fail_kind = "failed", _failure_kind(outcome)
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
                if c.state != "running" or c.paper_point:
                    continue
                by = self.pruner.dominated_by(np.array(c.objective_rows), refs, self.signs)
                if by is not None:
                    c.state, c.pruned_by = "pruned", by


# ---------------------------------------------------------------------------------------------------------------------
# The study


def _open_study(store: TuneStorage, name: str, directions: list[str], sampler: optuna.samplers.BaseSampler
                ) -> tuple[optuna.Study, bool]:
    import sqlalchemy.exc

    try:
        try:
            return optuna.create_study(storage=store.storage, study_name=name, directions=directions,
                                       sampler=sampler, load_if_exists=False), True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=store.storage, sampler=sampler)
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageError(f"storage {store.url} failed while opening study {name!r}: {first}") from exc
    wanted = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
              for d in directions]
    if list(study.directions) != wanted:
        raise InputError(f"study {name!r} in {store.url} optimises {[d.name.lower() for d in study.directions]}, "
                         f"not {directions}; use another --study name")
    return study, False


_MUST_MATCH = ("autotune.category", "autotune.search_space", "autotune.base_params", "autotune.objectives",
               "autotune.task_fingerprint")


def _record_contract(study: optuna.Study, attrs: dict[str, Any], store: TuneStorage) -> None:
    """Write the study contract attrs, or check that an existing study was made for the same thing."""
    existing = study.user_attrs
    for key in _MUST_MATCH:
        if key in existing and _jsonable(existing[key]) != _jsonable(attrs[key]):
            raise InputError(
                f"study {study.study_name!r} in {store.url} was tuned with a different {key.split('.', 1)[1]} "
                f"({existing[key]!r} there, {attrs[key]!r} now); resume it with the same settings or choose a new "
                "--study name")
    model_id = (existing.get("autotune.model") or {}).get("id")
    if model_id is not None and model_id != attrs["autotune.model"].get("id"):
        raise InputError(f"study {study.study_name!r} was tuned on model {model_id!r}, not "
                         f"{attrs['autotune.model'].get('id')!r}; choose a new --study name")
    for key, value in attrs.items():
        if key not in existing:
            study.set_user_attr(key, _jsonable(value))


def _budget(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0, "retried": 0}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif t.state == TrialState.FAIL:
            kind = t.user_attrs.get(FAIL_KIND_ATTR)
            counts["retried" if kind is None or kind in RETRIED_KINDS else "failed"] += 1
        elif t.state == TrialState.RUNNING:
            counts["running"] += 1
        elif t.state == TrialState.WAITING:
            counts["waiting"] += 1
    counts["done"] = counts["complete"] + counts["pruned"] + counts["failed"]
    return counts


def _front_refs(study: optuna.Study, objectives: Objectives, task_ids: Sequence[str]) -> dict[int, np.ndarray]:
    """Per-task objective rows of the Pareto front's trials (those measured on all tasks)."""
    refs: dict[int, np.ndarray] = {}
    for t in study.best_trials:
        per_task = t.user_attrs.get("per_task") or {}
        if all(tid in per_task for tid in task_ids):
            refs[t.number] = np.array([objectives.values(per_task[tid]) for tid in task_ids], dtype=float)
    return refs


def _dominates(a: Sequence[float], b: Sequence[float], signs: np.ndarray) -> bool:
    x, y = np.asarray(a) * signs, np.asarray(b) * signs
    return bool(np.all(x >= y) and np.any(x > y))


def _save_artifact(study: optuna.Study, trial: optuna.Trial, cand: _Candidate, sources: list[np.ndarray],
                   artifact_store: Any) -> None:
    """A PNG: the task images on top, this trial's edits below."""
    from PIL import Image

    n = min(len(cand.thumbs), len(sources))
    if n == 0:
        return
    h = max(x.shape[0] for x in sources[:n] + cand.thumbs[:n])
    w = sum(max(s.shape[1], e.shape[1]) for s, e in zip(sources[:n], cand.thumbs[:n], strict=True))
    sheet = np.full((2 * h, w, 3), 255, dtype=np.uint8)
    x = 0
    for s, e in zip(sources[:n], cand.thumbs[:n], strict=True):
        sheet[: s.shape[0], x: x + s.shape[1]] = s
        sheet[h: h + e.shape[0], x: x + e.shape[1]] = e
        x += max(s.shape[1], e.shape[1])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"trial-{trial.number}-edits.png")
        Image.fromarray(sheet).save(path)
        optuna.artifacts.upload_artifact(artifact_store=artifact_store, file_path=path, study_or_trial=trial)


def _build_preset(study: optuna.Study, presets_dir: str | os.PathLike | None) -> tuple[Any | None, Path | None]:
    """Build and save the category's preset with the presets helper (`autotune.preset`).

    Hook: uses `autotune.preset.presets_from_study(study)` when that exists, otherwise `Preset.from_front` on the
    study's COMPLETE trials. Returns (preset, path) or (None, None) when there is nothing to build from."""
    from autotune import preset as preset_mod

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None, None
    if hasattr(preset_mod, "presets_from_study"):
        built = preset_mod.presets_from_study(study, storage_label=study.user_attrs.get("autotune.storage"))
        preset = built[0] if isinstance(built, (list, tuple)) else built
    else:
        attrs = study.user_attrs
        points = [preset_mod.FrontPoint(EditParams.from_dict(t.user_attrs["params"]),
                                        {"fidelity": t.values[0], "edit_strength": t.values[1]},
                                        {k: v for k, v in t.user_attrs.get("metrics", {}).items()
                                         if isinstance(v, (int, float))},
                                        t.number, t.user_attrs.get("paper_point"))
                  for t in complete]
        provenance = preset_mod.make_provenance(
            "tuned", study={"name": study.study_name, "storage": attrs.get("autotune.storage")},
            sampler=attrs.get("autotune.sampler"), n_trials=len(study.trials), n_complete=len(complete),
            task_fingerprint=attrs.get("autotune.task_fingerprint"), task_count=attrs.get("autotune.task_count"),
            search_space=attrs.get("autotune.search_space"), base_params=attrs.get("autotune.base_params"))
        preset = preset_mod.Preset.from_front(
            points, category=attrs["autotune.category"], model=attrs["autotune.model"],
            objectives=attrs["autotune.objectives"], scorer=attrs.get("autotune.scorer"), provenance=provenance,
            references=[p for p in points if p.paper_point])
    directory = Path(presets_dir) if presets_dir is not None else Path("presets")
    from autotune.preset_store import preset_filename

    path = preset.save(directory / preset_filename(preset.model.get("id", "model"), preset.category))
    return preset, Path(path)


class _Progress:
    """A tqdm bar: trials done of the budget, failures, pruned, and the current front."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=min(initial, total), desc=desc, unit="trial", dynamic_ncols=True)

    def update(self, study: optuna.Study, counts: Mapping[str, int], note: str = "") -> None:
        if self.bar is None:
            return
        front = sorted((tuple(t.values) for t in study.best_trials), key=lambda v: v[0])
        shown = " ".join(f"({f:.3g},{s:.3g})" for f, s in front[:4]) + (" …" if len(front) > 4 else "")
        self.bar.n = min(counts["done"], self.bar.total)
        self.bar.set_postfix_str(f"failed {counts['failed']}, pruned {counts['pruned']}, front {shown}{note}",
                                 refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def tune(
    editor: Any,
    tasks: Sequence[EditTask],
    *,
    category: str | int,
    trials: int,
    batch: int = 4,
    storage: str | os.PathLike | TuneStorage | None = None,
    study_name: str | None = None,
    sampler: str = DEFAULT_SAMPLER,
    seed: int = 0,
    scorer: Any,
    objectives: Any = None,
    search_space: SearchSpace | Mapping[str, Any] | None = None,
    presets_dir: str | os.PathLike | None = None,
    progress: bool = True,
    prune: bool | DominationPruner = True,
    artifacts: Any = None,
    project_dir: str | os.PathLike | None = None,
    save_preset: bool = True,
    task_source: Mapping[str, str] | None = None,
    task_batch: int | None = None,
    invert_ahead: bool = True,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
) -> TuneResult:
    """Tune the editing parameters for one category: a two-objective study, resumable and shareable.

    Args:
        editor: an `Editor` (anything with `edit_task(task, candidates)` and `model_info()`).
        tasks: edit tasks; those of `category` are used, in order of their ids.
        trials: the study's total budget (COMPLETE + PRUNED + failed trials); a re-run continues up to it.
        batch: trials asked at once, edited together.
        storage: None (`<project_dir>/studies.journal`), a `.journal` path, or an RDB URL (`postgresql://...`).
        study_name: default `<model>--<category>--<task fingerprint prefix>`.
        sampler: "tpe" (default, cost-aware), "tpe-plain", "gp", "nsga2", "random" or "grid"; this worker's seed
            is `seed` if it created the study, else derived from `seed`, host and pid (each worker its own seed).
        scorer: a `Scorer` (metrics / score / describe).
        objectives: see `autotune.objectives`; default chosen from the scorer's metrics.
        search_space: a `SearchSpace` or its dict; default w_src in [0, 2] in steps of 0.1, w_tgt in [1, 12].
        presets_dir: where the preset is written (default `./presets`).
        prune: True (a `DominationPruner()`), False, or a configured pruner.
        artifacts: None (a `FileSystemArtifactStore` in `<project_dir>/artifacts`), False (off), a directory,
            or any Optuna artifact store.
        task_source: where the tasks came from, e.g. {"spec": "shapes:change_color", "split": "tune"}; recorded
            so that `autotune report` and `presets from-study` can reload the same tasks.
        task_batch: tasks per engine call (the pruner decides between calls); default: as many as the editor's
            `max_batch` target branches hold (4 tasks for 4 live candidates), 1 for an engine without `edit_tasks`.
        invert_ahead: when the tasks take several engine calls, invert them all for a batch, in large batches,
            before the first call (an editor with `invert_tasks`). Fewer, larger UNet calls for some wasted
            inversions of candidates pruned after the first call: on the shapes model on a CPU 26% fewer calls, 5%
            more samples, about 9% less time (docs/tuning.md); where a UNet call is compute-bound (a large model on
            a GPU) it may cost about those 5%.
        callbacks: called as `callback(study, frozen_trial)` for each trial once its batch is recorded, as in
            Optuna's `study.optimize(callbacks=...)` (`study.stop()` does not apply: the budget is `trials`). An
            exception in a callback ends the study there; every recorded trial is kept.
    """
    # 1. Check inputs.
    category = category_name(category)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise InputError(f"trials={trials!r} must be a whole number >= 1")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch={batch!r} must be a whole number >= 1")
    if task_batch is not None and (isinstance(task_batch, bool) or not isinstance(task_batch, int) or task_batch < 1):
        raise InputError(f"task_batch={task_batch!r} must be a whole number >= 1 (or None: as many as fit)")
    if callbacks is not None and not _all_callable(callbacks):
        raise InputError("callbacks must be a list of functions called as callback(study, frozen_trial)")
    chosen = sorted((t for t in tasks if t.category == category), key=lambda t: t.id)
    if not chosen:
        found = sorted({t.category for t in tasks})
        raise InputError(f"no task of category {category!r} among the {len(tasks)} given (categories: "
                         f"{', '.join(found) or 'none'}); check --tasks and --category")
    ids = [t.id for t in chosen]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"duplicate task id(s) {', '.join(dup)}: every task needs its own id")
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if search_space is None:
        space = SearchSpace.default()
    elif isinstance(search_space, SearchSpace):
        space = search_space
    else:
        space = SearchSpace.from_dict(search_space)
    objs = Objectives.from_spec(objectives) if objectives is not None else default_objectives(scorer.metrics())
    objs.check_against(scorer.metrics())
    pruner = prune if isinstance(prune, DominationPruner) else (DominationPruner() if prune else None)
    _check_prompts(editor, chosen)

    # 2. Storage, study, contract.
    store = open_storage(storage, project_dir=project_dir)
    model_info = dict(editor.model_info())
    fingerprint = task_fingerprint(chosen)
    name = study_name or f"{_slug(model_info.get('id', 'model'))}--{category}--{fingerprint[7:15]}"
    provisional = make_sampler(sampler, seed, space, batch)
    study, created = _open_study(store, name, objs.directions, provisional)
    worker_seed = seed if created else seed + 1 + zlib.crc32(f"{os.uname().nodename}:{os.getpid()}".encode()) % 10**6
    study.sampler = provisional if created else make_sampler(sampler, worker_seed, space, batch)
    from autotune import __version__

    _record_contract(study, {
        "autotune.version": __version__,
        "autotune.model": model_info,
        "autotune.category": category,
        "autotune.search_space": space.to_dict(),
        "autotune.base_params": space.base.to_dict(),
        "autotune.objectives": objs.to_list(),
        "autotune.scorer": scorer.describe(),
        "autotune.task_fingerprint": fingerprint,
        "autotune.task_count": len(chosen),
        "autotune.sampler": {"name": sampler, "seed": seed,
                             **({"new_source_cost": NEW_SOURCE_COST} if sampler == "tpe" else {})},
        "autotune.storage": store.url,
        **({"autotune.task_source": dict(task_source)} if task_source else {}),
    }, store)
    if created:
        for point, values in space.paper_points():
            study.enqueue_trial(values, user_attrs={"paper_point": point}, skip_if_exists=True)

    artifact_store = None
    if artifacts is not False:
        if artifacts is None or isinstance(artifacts, (str, os.PathLike)):
            base = Path(artifacts) if artifacts is not None else (store.project_dir or Path(project_dir or ".autotune"))
            directory = base if artifacts is not None else base / "artifacts"
            directory.mkdir(parents=True, exist_ok=True)
            artifact_store = optuna.artifacts.FileSystemArtifactStore(str(directory))
            if "autotune.artifacts" not in study.user_attrs:
                study.set_user_attr("autotune.artifacts", str(directory))
        else:
            artifact_store = artifacts

    # 3. The loop.
    evaluator = _Evaluator(editor, scorer, chosen, objs, pruner, task_batch, invert_ahead)
    signs = evaluator.signs
    sources = [_thumb(_pil_to_tensor(t.image)) for t in chosen[:ARTIFACT_TASKS]]
    counts = _budget(study)
    bar = _Progress(progress, trials, counts["done"], f"tune {category}")
    asked: list[_Candidate] = []
    try:
        while True:
            store.sweep(study)
            counts = _budget(study)
            bar.update(study, counts)
            remaining = trials - counts["done"] - counts["running"]
            if remaining <= 0:
                if counts["running"] == 0 or counts["done"] >= trials:
                    break
                bar.update(study, counts, f", waiting for {counts['running']} running elsewhere")
                time.sleep(min(store.heartbeat_interval, 2.0))
                continue
            refs = _front_refs(study, objs, ids)
            asked = []
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                for _ in range(min(batch, remaining)):
                    trial = study.ask()
                    store.claim(trial, worker_seed)  # at once: an unclaimed RUNNING trial is taken for dead
                    params = space.suggest(trial)
                    paper_point = study._storage.get_trial_user_attrs(trial._trial_id).get("paper_point")
                    asked.append(_Candidate(trial, params, paper_point))
            with store.heartbeat([c.trial for c in asked]):
                evaluator.run(asked, refs, lambda: None)
            for cand in asked:
                _tell(study, cand, objs, signs, ids, sources, artifact_store)
            store.release([c.trial for c in asked])
            told, asked = asked, []
            bar.update(study, _budget(study))
            for cand in told:
                for callback in callbacks or ():
                    callback(study, study._storage.get_trial(cand.trial._trial_id))
    except KeyboardInterrupt:
        for cand in asked:
            store.fail_and_retry(study, study._storage.get_trial(cand.trial._trial_id), "interrupted",
                                 "interrupted (Ctrl-C); re-queued")
        raise
    except Exception as exc:
        import sqlalchemy.exc

        # Optuna's RDB storage re-raises SQLAlchemy's errors as StorageInternalError.
        if isinstance(exc, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)):
            raise StorageError(f"lost the storage {store.url} during the study ({str(exc).splitlines()[0]}); "
                               "completed trials are kept: re-run the same command to resume") from exc
        raise
    finally:
        store.release([c.trial for c in asked])
        bar.close()

    # 4. The preset.
    preset, path = (None, None)
    if save_preset:
        preset, path = _build_preset(study, presets_dir)
    counts = _budget(study)
    return TuneResult(study, list(study.best_trials), preset, path, store.url, evaluator.engine_calls,
                      evaluator.candidate_edits,
                      {k: counts[k] for k in ("complete", "pruned", "failed", "retried")})


def _all_callable(callbacks: Any) -> bool:
    try:
        return not callable(callbacks) and all(callable(c) for c in callbacks)
    except TypeError:  # not iterable
        return False


def _check_prompts(editor: Any, tasks: Sequence[EditTask]) -> None:
    """Refuse a prompt the model cannot read (past 77 tokens) now, not when a batch reaches its task."""
    tokenizer = getattr(getattr(editor, "components", None), "tokenizer", None)
    if tokenizer is None:
        return
    from autotune.prompts import tokenize_prompt

    for task in tasks:
        for role, text in (("source prompt", task.source_prompt), ("target prompt", task.target_prompt)):
            tokenize_prompt(tokenizer, text, f"task {task.id!r}: {role}")


def check_presets_dir(folder: Path) -> None:
    """Create the presets folder or fail now, before hours of trials whose preset could not be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"presets folder {folder} exists and is not a directory; choose another --presets-dir") \
            from None
    except OSError as exc:
        raise InputError(f"cannot create the presets folder {folder} ({exc.strerror or exc}); choose another "
                         "--presets-dir") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"the presets folder {folder} is not writable; choose another --presets-dir")


def _pil_to_tensor(image: Any) -> Any:
    import torch

    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def _tell(study: optuna.Study, cand: _Candidate, objs: Objectives, signs: np.ndarray, task_ids: Sequence[str],
          sources: list[np.ndarray], artifact_store: Any) -> None:
    """Record a candidate's outcome on its trial (attrs first: a finished trial takes no more attrs)."""
    try:
        _record(study, cand, objs, signs, task_ids, sources, artifact_store)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker's sweep took this trial for dead (a heartbeat lost for longer than the grace period)
        # and re-queued it; its retry will record the result.
        logger.warning("trial %d was failed by another worker's sweep before it could be told", cand.trial.number)


def _record(study: optuna.Study, cand: _Candidate, objs: Objectives, signs: np.ndarray, task_ids: Sequence[str],
            sources: list[np.ndarray], artifact_store: Any) -> None:
    trial = cand.trial
    trial.set_user_attr("params", cand.params.to_dict())
    seen = [tid for tid in task_ids if tid in cand.per_task]
    means: dict[str, float] = {}
    if seen:
        names = sorted({m for tid in seen for m in cand.per_task[tid]})
        for m in names:
            vals = [cand.per_task[tid].get(m, math.nan) for tid in seen]
            means[m] = float(np.mean(vals))
    trial.set_user_attr("metrics", _jsonable(means))
    trial.set_user_attr("per_task", _jsonable(cand.per_task))
    if cand.state == "failed":
        trial.set_user_attr(FAIL_KIND_ATTR, cand.fail_kind)
        trial.set_user_attr(FAIL_REASON_ATTR, cand.fail_reason)
        logger.warning("trial %d failed (%s): %s", trial.number, cand.fail_kind, cand.fail_reason)
        study.tell(trial, state=TrialState.FAIL)
    elif cand.state == "pruned":
        trial.set_user_attr("pruned_after_tasks", len(seen))
        trial.set_user_attr("pruned_by_trial", cand.pruned_by)
        study.tell(trial, state=TrialState.PRUNED)
    else:
        values = list(objs.values(means))
        if artifact_store is not None and not any(_dominates(t.values, values, signs) for t in study.best_trials):
            try:
                _save_artifact(study, trial, cand, sources, artifact_store)
            except Exception as exc:  # noqa: BLE001 - images are a convenience, the values are the result
                logger.warning("could not store the images of trial %d: %s", trial.number, exc)
        study.tell(trial, values)


def load_tasks_arg(text: str) -> list[EditTask]:
    """Tasks from a CLI `--tasks` value, through the task loaders (`autotune.tasks`) when they exist."""
    from autotune import tasks as tasks_mod

    loader = getattr(tasks_mod, "load_tasks", None)
    if loader is None:
        raise InputError("this build has no task loader (autotune.tasks.load_tasks); pass tasks from Python")
    return list(loader(text))


__all__ = ["DEFAULT_SAMPLER", "SAMPLERS", "DominationPruner", "TuneResult", "check_presets_dir", "load_tasks_arg",
           "make_sampler", "task_fingerprint", "tune"]
