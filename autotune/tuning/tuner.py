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

The study records what it was tuned on (`autotune.tuning.contract`; "The study contract" in docs/tuning.md) and
re-running the same command resumes it: `trials` is the study's total budget (COMPLETE + PRUNED + failed trials),
never redone.
At the end the category's preset is built from the study (`autotune.tuning.to_preset`) and saved.

`tune` reads as its phases: check the settings (`_plan`), open the study (`_open`), run the batches
(`_run_batches`; a batch is `BatchEvaluator.run`, then `record.tell` per trial), build the preset.
"""

from __future__ import annotations

import logging
import os
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

from autotune import __version__
from autotune.errors import InputError, StorageError
from autotune.evaluation.batch import ARTIFACT_TASKS, BatchEvaluator, Candidate, check_prompts, thumbnail
from autotune.presets.store import InstallResult, is_shipped_dir, search_dirs, shipped_presets_dir
from autotune.scoring.objectives import Objectives, default_objectives
from autotune.task import EditTask, category_name, task_digest, task_fingerprint
from autotune.tuning import contract, record
from autotune.tuning.pruning import DominationPruner
from autotune.tuning.samplers import DEFAULT_SAMPLER, SAMPLERS, make_sampler, sampler_record
from autotune.tuning.search_space import SearchSpace
from autotune.tuning.storage import TuneStorage, open_storage
from autotune.tuning.to_preset import save_study_preset

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SAMPLER", "SAMPLERS", "DominationPruner", "TuneResult", "tune"]


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
    saved: InstallResult | None = None  # how the preset was written: added, replaced (the previous one kept), unchanged

    def paper_points(self) -> dict[str, FrozenTrial]:
        return {t.user_attrs[contract.PAPER_POINT]: t for t in self.study.get_trials(states=(TrialState.COMPLETE,))
                if t.user_attrs.get(contract.PAPER_POINT)}

    def summary(self) -> str:
        """The counts, the front (each trial with the preset styles picked from it) and where the preset went."""
        lines = [f"study {self.study.study_name!r} on {self.storage}: " +
                 ", ".join(f"{v} {k}" for k, v in self.counts.items())]
        styles = self._styles_by_trial()
        for t in sorted(self.front, key=lambda t: t.values[0]):
            p = t.user_attrs.get(contract.PARAMS, {})
            tags = styles.get(t.number, []) + ([t.user_attrs[contract.PAPER_POINT]]
                                                if t.user_attrs.get(contract.PAPER_POINT) else [])
            lines.append(f"  trial {t.number:4d}: fidelity {t.values[0]:.4g}, edit strength {t.values[1]:.4g}  "
                         f"w_src={_short(p.get('w_src'))} w_tgt={_short(p.get('w_tgt'))}"
                         + (f"  [{', '.join(tags)}]" if tags else ""))
        flat = self.flat_edit_strength()
        if flat is not None:
            lines.append(f"warning: every completed trial scored the same edit strength ({flat:.4g}): no setting tried "
                         "made the edit more or less often, so the picks only keep the image best. Look at the edits "
                         "(--report), widen the search (--space) or try another --method.")
        if self.saved is not None:
            lines.append(_saved_line(self.saved))
        return "\n".join(lines)

    def flat_edit_strength(self) -> float | None:
        """The one edit strength every completed trial scored, if they all scored the same (at least two trials):
        a study with nothing to trade, whose picks a user should not take for a tuned edit."""
        values = {t.values[1] for t in self.study.trials
                  if t.state == optuna.trial.TrialState.COMPLETE and t.values is not None}
        complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in self.study.trials)
        return values.pop() if complete >= 2 and len(values) == 1 else None

    def _styles_by_trial(self) -> dict[int, list[str]]:
        """Trial number -> the preset's picks (conservative, balanced, aggressive) made from it."""
        out: dict[int, list[str]] = {}
        if self.preset is None:
            return out
        for style, pick in self.preset.picks.items():
            index = pick.get("front_index")
            if index is not None and self.preset.front[index].trial is not None:
                out.setdefault(self.preset.front[index].trial, []).append(style)
        return out


def _short(value: Any) -> str:
    """A guidance value as a person reads it: 2.34, not 2.343304720205481 (a schedule as its dict)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _saved_line(saved: InstallResult) -> str:
    if saved.action == "unchanged":
        return f"preset unchanged: {saved.path} already holds this study's result"
    line = f"preset written to {saved.path}"
    if saved.previous is not None:
        line += f"; it replaced a different one, kept as {saved.previous}"
    looked_up = [d.resolve() for origin, d in search_dirs() if origin != "shipped" and d.exists()]
    if saved.path.parent.resolve() not in looked_up:
        line += f" (a folder the preset lookup does not search: use it with --preset {saved.path})"
        return line
    shipped = shipped_presets_dir()
    if shipped is not None and (shipped / saved.path.name).is_file():
        line += "; it is used before the preset shipped with autotune for this model and category"
    return line


@dataclass
class _Plan:
    """The checked settings of one `tune` call."""

    category: str
    tasks: list[EditTask]  # the category's tasks, sorted by id
    ids: list[str]
    trials: int
    space: SearchSpace
    objectives: Objectives
    pruner: DominationPruner | None


@dataclass
class _Run:
    """An open study and what this worker runs it with."""

    study: optuna.Study
    store: TuneStorage
    worker_seed: int
    artifact_store: Any


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
        objectives: see `autotune.scoring.objectives`; default chosen from the scorer's metrics.
        search_space: a `SearchSpace` or its dict (knob -> range, on the editor's default base parameters and
            paper points); default: the editor's model family's (`SearchSpace.for_editor`): on Stable Diffusion
            1.x/2.x w_src in [0, 2] in steps of 0.1 and w_tgt in [1, 12]; on SD3 / FLUX.1 FlowEdit's guidance
            pair and window around the model's published setting.
        presets_dir: where the preset is written (default: the user's presets directory,
            `autotune.presets.store.user_presets_dir`); a preset it replaces is kept in its `history/` folder, and
            the presets shipped with autotune are refused.
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
    if save_preset and presets_dir is not None and is_shipped_dir(presets_dir):  # refused now, not after the study
        raise InputError(f"presets_dir={str(presets_dir)!r} holds the presets shipped with autotune, which tune does "
                         "not overwrite; leave it unset (the user's presets directory) or give another")
    plan = _plan(editor, tasks, category=category, trials=trials, batch=batch, task_batch=task_batch,
                 callbacks=callbacks, sampler=sampler, scorer=scorer, objectives=objectives,
                 search_space=search_space, prune=prune)
    run = _open(plan, editor, scorer, storage=storage, project_dir=project_dir, study_name=study_name,
                sampler=sampler, seed=seed, batch=batch, artifacts=artifacts, task_source=task_source)
    evaluator = BatchEvaluator(editor, scorer, plan.tasks, plan.objectives, plan.pruner, task_batch, invert_ahead)
    _run_batches(run, plan, evaluator, batch=batch, progress=progress, callbacks=callbacks)
    preset, saved = save_study_preset(run.study, presets_dir) if save_preset else (None, None)
    counts = _budget(run.study)
    return TuneResult(run.study, list(run.study.best_trials), preset, saved.path if saved else None, run.store.url,
                      evaluator.engine_calls, evaluator.candidate_edits,
                      {k: counts[k] for k in ("complete", "pruned", "failed", "retried")}, saved)


# ---------------------------------------------------------------------------------------------------------------------
# 1. Settings


def _plan(editor: Any, tasks: Sequence[EditTask], *, category: str | int, trials: int, batch: int,
          task_batch: int | None, callbacks: Any, sampler: str, scorer: Any, objectives: Any,
          search_space: SearchSpace | Mapping[str, Any] | None, prune: bool | DominationPruner) -> _Plan:
    """Check every argument before any model work: a bad setting fails now, not an hour in."""
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
        space = SearchSpace.for_editor(editor)
    elif isinstance(search_space, SearchSpace):
        space = search_space
    else:
        defaults = SearchSpace.for_editor(editor)
        space = SearchSpace.from_dict(search_space, defaults.base, defaults.points)
    objs = Objectives.from_spec(objectives) if objectives is not None else default_objectives(scorer.metrics())
    objs.check_against(scorer.metrics())
    pruner = prune if isinstance(prune, DominationPruner) else (DominationPruner() if prune else None)
    check_prompts(editor, chosen)
    return _Plan(category, chosen, ids, trials, space, objs, pruner)


def _all_callable(callbacks: Any) -> bool:
    try:
        return not callable(callbacks) and all(callable(c) for c in callbacks)
    except TypeError:  # not iterable
        return False


# ---------------------------------------------------------------------------------------------------------------------
# 2. The study


def _open(plan: _Plan, editor: Any, scorer: Any, *, storage: Any, project_dir: Any, study_name: str | None,
          sampler: str, seed: int, batch: int, artifacts: Any, task_source: Mapping[str, str] | None) -> _Run:
    """Open (or create) the study, check or write its contract, enqueue the paper points, open the artifact store."""
    store = open_storage(storage, project_dir=project_dir)
    model_info = dict(editor.model_info())
    fingerprint = task_fingerprint(plan.tasks)
    name = study_name or f"{_slug(model_info.get('id', 'model'))}--{plan.category}--{fingerprint[7:15]}"
    provisional = make_sampler(sampler, seed, plan.space, batch)
    study, created = _open_study(store, name, plan.objectives.directions, provisional)
    # Each worker its own seed: the one that created the study keeps `seed`, the others derive theirs.
    worker_seed = seed if created else seed + 1 + zlib.crc32(f"{os.uname().nodename}:{os.getpid()}".encode()) % 10**6
    study.sampler = provisional if created else make_sampler(sampler, worker_seed, plan.space, batch)
    contract.record(study, {
        contract.VERSION: __version__,
        contract.MODEL: model_info,
        contract.CATEGORY: plan.category,
        contract.SEARCH_SPACE: plan.space.to_dict(),
        contract.BASE_PARAMS: plan.space.base.to_dict(),
        contract.OBJECTIVES: plan.objectives.to_list(),
        contract.SCORER: scorer.describe(),
        contract.TASK_FINGERPRINT: fingerprint,
        contract.TASK_DIGESTS: sorted(task_digest(t) for t in plan.tasks),
        contract.TASK_COUNT: len(plan.tasks),
        contract.SAMPLER: sampler_record(sampler, seed),
        contract.STORAGE: store.url,
        **({contract.TASK_SOURCE: dict(task_source)} if task_source else {}),
    }, store.url)
    if created:  # named objectives: optuna-dashboard shows "fidelity" and "edit_strength", not "Objective 0"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([f"{o.name} ({', '.join(o.metrics)})" for o in plan.objectives])
        for point, values in plan.space.paper_points():
            study.enqueue_trial(values, user_attrs={contract.PAPER_POINT: point}, skip_if_exists=True)
    return _Run(study, store, worker_seed, _artifact_store(study, store, artifacts, project_dir))


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


def _artifact_store(study: optuna.Study, store: TuneStorage, artifacts: Any, project_dir: Any) -> Any:
    """None (off), a `FileSystemArtifactStore` in `<project_dir>/artifacts` or in the directory given, or the store
    given; the directory is recorded on the study."""
    if artifacts is False:
        return None
    if artifacts is not None and not isinstance(artifacts, (str, os.PathLike)):
        return artifacts
    base = Path(artifacts) if artifacts is not None else (store.project_dir or Path(project_dir or ".autotune"))
    directory = base if artifacts is not None else base / "artifacts"
    directory.mkdir(parents=True, exist_ok=True)
    if contract.ARTIFACTS not in study.user_attrs:
        study.set_user_attr(contract.ARTIFACTS, str(directory))
    return optuna.artifacts.FileSystemArtifactStore(str(directory))


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text))
    return keep.strip("-")[:80] or "model"


# ---------------------------------------------------------------------------------------------------------------------
# 3. The batches


def _run_batches(run: _Run, plan: _Plan, evaluator: BatchEvaluator, *, batch: int, progress: bool,
                 callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] | None) -> None:
    """Ask, evaluate and tell batches until the budget is spent; wait for trials other workers are running."""
    study, store = run.study, run.store
    sources = [thumbnail(_pil_to_tensor(t.image)) for t in plan.tasks[:ARTIFACT_TASKS]]
    counts = _budget(study)
    bar = _Progress(progress, plan.trials, counts["done"], f"tune {plan.category}")
    asked: list[Candidate] = []
    try:
        while True:
            store.sweep(study)
            counts = _budget(study)
            bar.update(study, counts)
            remaining = plan.trials - counts["done"] - counts["running"]
            if remaining <= 0:
                if counts["running"] == 0 or counts["done"] >= plan.trials:
                    break
                bar.update(study, counts, f", waiting for {counts['running']} running elsewhere")
                time.sleep(min(store.heartbeat_interval, 2.0))
                continue
            refs = _front_refs(study, plan.objectives, plan.ids)
            asked = _ask(run, plan, min(batch, remaining))
            bar.start_batch(len(asked), len(plan.tasks))
            with store.heartbeat([c.trial for c in asked]):
                evaluator.run(asked, refs, bar.task_done)
            told = [record.tell(study, cand, plan.objectives, evaluator.signs, plan.ids, sources, run.artifact_store)
                    for cand in asked]
            store.release([c.trial for c in asked])
            done, asked = asked, []
            counts = _budget(study)
            bar.update(study, counts)
            bar.end_batch(plan.trials - counts["done"] - counts["running"])
            for cand, frozen in zip(done, told, strict=True):
                for callback in callbacks or ():
                    callback(study, frozen or _frozen(study, cand.trial))
    except KeyboardInterrupt:
        for cand in asked:
            store.fail_and_retry(study, _frozen(study, cand.trial), "interrupted", "interrupted (Ctrl-C); re-queued")
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


def _ask(run: _Run, plan: _Plan, count: int) -> list[Candidate]:
    """Ask `count` trials, each claimed by this worker at once (an unclaimed RUNNING trial is taken for dead)."""
    asked = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        for _ in range(count):
            trial = run.study.ask()
            run.store.claim(trial, run.worker_seed)
            params = plan.space.suggest(trial)
            asked.append(Candidate(trial, params, trial.user_attrs.get(contract.PAPER_POINT)))
    return asked


def _frozen(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """The stored record of a trial of this study (a study numbers its trials from 0, in order)."""
    return study.get_trials(deepcopy=False)[trial.number]


def _budget(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0, "retried": 0}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif t.state == TrialState.FAIL:
            kind = t.user_attrs.get(contract.FAIL_KIND)
            counts["retried" if kind is None or kind in contract.RETRIED_KINDS else "failed"] += 1
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
        per_task = t.user_attrs.get(contract.PER_TASK) or {}
        if all(tid in per_task for tid in task_ids):
            refs[t.number] = np.array([objectives.values(per_task[tid]) for tid in task_ids], dtype=float)
    return refs


def _pil_to_tensor(image: Any) -> Any:
    import torch

    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


class _Progress:
    """A tqdm bar: trials done of the budget, failures, pruned, and the current front.

    It moves within a batch, by the share of the batch's tasks edited (a batch of 4 trials on 20 tasks takes minutes
    on a CPU), and its time left is this run's average pace (`smoothing=0`), not the pace of the last update. After
    this run's first batch it prints once how long the rest should take at that batch's pace: an upper estimate,
    since the first batch is the dearest (every inversion is new, and no front yet lets the pruner stop a
    candidate early)."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str) -> None:
        self.bar = None
        self.done = initial
        self.batch, self.tasks, self.tasks_done, self.batch_started = 0, 1, 0, 0.0
        self.estimated = False
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=min(initial, total), desc=desc, unit="trial", dynamic_ncols=True,
                            smoothing=0)

    def start_batch(self, size: int, tasks: int) -> None:
        self.batch, self.tasks, self.tasks_done = size, max(tasks, 1), 0
        self.batch_started = time.monotonic()

    def task_done(self) -> None:
        """One more task edited for the batch's live candidates (the evaluator calls this after each chunk)."""
        self.tasks_done += 1
        if self.bar is not None:
            self.bar.n = min(round(self.done + self.batch * self.tasks_done / self.tasks, 2), self.bar.total)
            self.bar.refresh()

    def update(self, study: optuna.Study, counts: Mapping[str, int], note: str = "") -> None:
        self.done = counts["done"]
        if self.bar is None:
            return
        front = sorted((tuple(t.values) for t in study.best_trials), key=lambda v: v[0])
        shown = " ".join(f"({f:.3g},{s:.3g})" for f, s in front[:4]) + (" …" if len(front) > 4 else "")
        self.bar.n = min(counts["done"], self.bar.total)
        self.bar.set_postfix_str(f"failed {counts['failed']}, pruned {counts['pruned']}, front {shown}{note}",
                                 refresh=False)
        self.bar.refresh()

    def end_batch(self, remaining: int) -> None:
        """After this run's first batch: the expected time for the remaining trials, once."""
        if self.estimated or self.bar is None or self.batch == 0:
            return
        self.estimated = True
        took = time.monotonic() - self.batch_started
        if remaining > 0:
            left = took / self.batch * remaining
            self.bar.write(f"first batch: {self.batch} trials in {_duration(took)}; the remaining {remaining} should "
                           f"take at most about {_duration(left)} (later batches reuse inversions and prune)",
                           file=self.bar.fp)  # beside the bar, not among the results on stdout

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 1 h 02 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
