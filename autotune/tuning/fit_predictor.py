"""Fit a preset's per-image predictor from what a study already measured (scikit-learn), and export it as JSON.

Every trial of a study records every task's metrics (`per_task`, `autotune.tuning.contract`). The completed trials'
settings are the *candidates*; for each task and candidate the study knows the task's fidelity and edit strength
(the study's objectives, per task). The preset's trade-off (`balanced` unless asked otherwise) is a `Criterion`: the
preset's pick rule, which ranks points by their nearness to the front's ideal. From that `Landscape` two kinds of
model are tried, each an sklearn `Pipeline` (optional PCA of the text-difference vector, `StandardScaler`, the
estimator):

1. **landscape**: predict a task's whole landscape (every candidate's fidelity and edit strength) from its features
   (`KNeighborsRegressor`, `Ridge`), then choose the candidate the criterion ranks first on the prediction
   (`rule="criterion"`), or the one with the largest weighted sum of the scaled objectives (`rule="weighted"`, the
   weight one more knob of the model);
2. **best setting**: label each task with its own best candidate (the one the criterion ranks first on the task's
   own values) and classify (`KNeighborsClassifier`, `LogisticRegression`).

Models are compared by cross-validation grouped by source image (`GroupKFold`: no image in a training and a test fold
at once) on what their choices achieve on the held-out folds' measured landscapes: the mean fidelity and edit strength
of the chosen candidates, ranked by the criterion, as the preset's picks are. The preset's pick itself is in the race
(always choosing it scores exactly the preset's point): when nothing ranks above it, the predictor says so and every
image falls back. The winner's fallback threshold (the distance, in its standardised feature space, beyond which an
image counts as outside the training data) is calibrated on the same folds, and the feature groups' permutation
importance is measured on them. The winner is refitted on every task and exported to the plain-JSON `predictor`
section (`autotune.presets.predictor`), which needs neither scikit-learn nor pickle to run.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
from sklearn.base import BaseEstimator, TransformerMixin

from autotune.engine.features import GROUPS, group_of
from autotune.errors import InputError, PresetError
from autotune.params import EditParams
from autotune.presets.predictor import FORMAT, FORMAT_VERSION, Criterion, Predictor, landscape_choice
from autotune.presets.preset import Preset
from autotune.presets.schema import canonical_json
from autotune.redact import redact_url
from autotune.scoring.objectives import Objectives
from autotune.task import EditTask
from autotune.tuning import contract

MIN_TASKS = 10  # fewer and grouped cross-validation says nothing
MAX_CANDIDATES = 8  # settings a predictor chooses among (`select_candidates`)
MAX_PREDICTOR_BYTES = 1 << 20  # of the 4 MiB preset limit
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
THRESHOLD_QUANTILES = (0.5, 0.75, 0.9, 1.0)


@dataclass
class Landscape:
    """Per task and candidate, the study's two objectives oriented so that larger is better: `fidelity[t, c]`."""

    task_ids: list[str]
    candidates: list[EditParams]
    trials: list[int]
    fidelity: np.ndarray
    strength: np.ndarray

    def criterion(self, trade_off: str) -> Criterion:
        """The trade-off's criterion on the front of the candidates' means (the preset's front)."""
        from autotune import pareto

        means = np.stack([self.fidelity.mean(axis=0), self.strength.mean(axis=0)], axis=1)
        spreads = [float(np.ptp(means[:, axis])) or 1.0 for axis in range(2)]
        return Criterion.of_front(means[pareto.front_indices(means.tolist())], trade_off, spreads)

    def own_best(self, criterion: Criterion) -> np.ndarray:
        """Each task's best candidate under the trade-off: the one the criterion ranks first on the task's own
        values (scaled as on the preset's front, so a task whose gentle settings fail is not 'best' failing)."""
        return np.asarray([landscape_choice(f, s, {"name": "criterion"}, criterion)
                           for f, s in zip(self.fidelity, self.strength)])

    def with_candidates(self, columns: Sequence[int]) -> Landscape:
        columns = list(columns)
        return Landscape(self.task_ids, [self.candidates[c] for c in columns], [self.trials[c] for c in columns],
                         self.fidelity[:, columns], self.strength[:, columns])

    def subset(self, rows: Sequence[int]) -> Landscape:
        rows = list(rows)
        return Landscape([self.task_ids[i] for i in rows], self.candidates, self.trials, self.fidelity[rows],
                         self.strength[rows])


def study_landscape(study: optuna.Study) -> Landscape:
    """The landscape of a study written by `autotune tune`: its completed trials (identical settings once) as
    candidates, over the tasks every one of them measured."""
    attrs = study.user_attrs
    if not contract.written_by_autotune(attrs):
        raise PresetError(f"study {study.study_name!r} was not written by `autotune tune`")
    objectives = Objectives.from_spec(attrs[contract.OBJECTIVES])
    signs = [1.0 if d == "maximize" else -1.0 for d in objectives.directions]
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if isinstance(t.user_attrs.get(contract.PER_TASK), dict) and t.user_attrs.get(contract.PARAMS)]
    candidates: list[EditParams] = []
    trials, rows = [], []
    for trial in sorted(complete, key=lambda t: t.number):
        try:
            params = EditParams.from_dict(trial.user_attrs[contract.PARAMS])
        except (ValueError, TypeError):
            continue
        if params in candidates:
            continue
        candidates.append(params)
        trials.append(trial.number)
        rows.append(trial.user_attrs[contract.PER_TASK])
    if len(candidates) < 2:
        raise PresetError(f"study {study.study_name!r} has {len(candidates)} distinct completed setting(s); a "
                          "predictor chooses among at least two: run more trials")
    task_ids = sorted(set.intersection(*(set(r) for r in rows)))
    fid = np.full((len(task_ids), len(candidates)), np.nan)
    strength = np.full_like(fid, np.nan)
    for c, per_task in enumerate(rows):
        for t, tid in enumerate(task_ids):
            fid[t, c] = signs[0] * objectives.fidelity.value(per_task[tid] or {})
            strength[t, c] = signs[1] * objectives.edit_strength.value(per_task[tid] or {})
    usable = np.isfinite(fid).all(axis=0) & np.isfinite(strength).all(axis=0)
    if usable.sum() < 2:
        raise PresetError(f"study {study.study_name!r}: fewer than two candidates have finite scores on every task")
    keep = np.flatnonzero(usable)
    return Landscape(task_ids, [candidates[c] for c in keep], [trials[c] for c in keep], fid[:, keep],
                     strength[:, keep])


def select_candidates(land: Landscape, criterion: Criterion, pick: int, limit: int) -> list[int]:
    """At most `limit` candidates, the pick first, then greedily the one that most improves what choosing each task's
    best among those kept would achieve (the criterion on the means), until none improves it: the settings per-image
    choice can use. Fewer candidates cost fewer edits (the benchmark, the oracle) and leave less to overfit."""
    kept = [pick]
    rows = np.arange(len(land.task_ids))

    def achieved(columns: list[int]) -> tuple[float, ...]:
        best = [columns[landscape_choice(land.fidelity[t, columns], land.strength[t, columns], {"name": "criterion"},
                                         criterion)] for t in rows]
        return criterion.key(land.fidelity[rows, best].mean(), land.strength[rows, best].mean())

    current = achieved(kept)
    while len(kept) < min(limit, len(land.candidates)):
        trials = [(achieved(kept + [c]), c) for c in range(len(land.candidates)) if c not in kept]
        score, best = max(trials, key=lambda item: item[0])
        if score <= current:
            break
        kept.append(best)
        current = score
    return kept


# ---------------------------------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class Config:
    """One model to try: approach (landscape / best), estimator and its settings, PCA components of the text diff."""

    approach: str
    estimator: str
    settings: tuple[tuple[str, Any], ...] = ()
    text_pca: int = 4

    @property
    def kind(self) -> str:
        return f"{self.estimator}_{self.approach}"

    def label(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in self.settings)
        return f"{self.kind}({knobs}{', ' if knobs else ''}text_pca={self.text_pca})"


def default_configs() -> list[Config]:
    """The models cross-validation chooses among (the preset's pick is always in the race besides them)."""
    out = []
    for pca in (0, 4):
        for k in (3, 5, 8, 12, 20):
            for weights in ("uniform", "distance"):
                out.append(Config("landscape", "knn", (("k", k), ("weights", weights)), pca))
        for alpha in (1.0, 10.0, 100.0, 1000.0):
            out.append(Config("landscape", "ridge", (("alpha", alpha),), pca))
        for k in (3, 5, 8, 12):
            out.append(Config("best", "knn", (("k", k), ("weights", "uniform")), pca))
        for c in (0.01, 0.1, 1.0):
            out.append(Config("best", "logistic", (("C", c),), pca))
    return out


def _text_columns(names: Sequence[str]) -> tuple[list[int], list[int]]:
    text = [i for i, n in enumerate(names) if n.startswith("text.diff.")]
    return text, [i for i in range(len(names)) if i not in set(text)]


class TextPCA(TransformerMixin, BaseEstimator):
    """The first step of every pipeline: PCA of the text-difference columns (the text encoder's width, 768 on Stable
    Diffusion, too many for a few dozen images), the other columns passed through, PCA components first."""

    def __init__(self, text_columns: Sequence[int] = (), rest_columns: Sequence[int] = (), n_components: int = 0):
        self.text_columns = text_columns
        self.rest_columns = rest_columns
        self.n_components = n_components

    def fit(self, x: np.ndarray, y: Any = None) -> TextPCA:
        from sklearn.decomposition import PCA

        self.pca_ = None
        if self.n_components > 0:
            self.pca_ = PCA(n_components=self.n_components, svd_solver="full").fit(x[:, list(self.text_columns)])
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        parts = [] if self.pca_ is None else [self.pca_.transform(x[:, list(self.text_columns)])]
        parts.append(x[:, list(self.rest_columns)])
        return np.concatenate(parts, axis=1)


def _pipeline(config: Config, names: Sequence[str], n_train: int) -> Any:
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    text, rest = _text_columns(names)
    components = max(0, min(config.text_pca, len(text), n_train - 1))
    settings = dict(config.settings)
    if config.estimator == "knn":
        k = min(settings["k"], n_train)
        cls = KNeighborsRegressor if config.approach == "landscape" else KNeighborsClassifier
        estimator = cls(n_neighbors=k, weights=settings["weights"], algorithm="brute")
    elif config.estimator == "ridge":
        estimator = Ridge(alpha=settings["alpha"])
    else:
        estimator = LogisticRegression(C=settings["C"], max_iter=5000)
    return Pipeline([("features", TextPCA(text, rest, components)), ("scale", StandardScaler()), ("model", estimator)])


@dataclass
class _Fitted:
    """A fitted pipeline, or the single label of a training fold with only one class."""

    pipeline: Any
    constant: int | None = None
    z_train: np.ndarray | None = None  # the training rows, transformed (for the distance to them)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.pipeline[:-1].transform(x)


def _fit(config: Config, names: Sequence[str], x: np.ndarray, land: Landscape, labels: np.ndarray) -> _Fitted:
    pipe = _pipeline(config, names, len(x))
    if config.approach == "landscape":
        pipe.fit(x, np.concatenate([land.fidelity, land.strength], axis=1))
        return _Fitted(pipe)
    if len(set(labels.tolist())) == 1:
        pipe[:-1].fit(x)
        return _Fitted(pipe, constant=int(labels[0]))
    pipe.fit(x, labels)
    return _Fitted(pipe)


def _outputs(fitted: _Fitted, config: Config, x: np.ndarray, m: int) -> np.ndarray:
    """Landscape models: (n, 2m) predictions; best-setting models: (n,) labels."""
    if fitted.constant is not None:
        return np.full(len(x), fitted.constant)
    return fitted.pipeline.predict(x)


def _choices(outputs: np.ndarray, config: Config, rule: dict[str, Any], criterion: Criterion, m: int) -> np.ndarray:
    if config.approach == "best":
        return outputs.astype(int)
    return np.asarray([landscape_choice(y[:m], y[m:], rule, criterion) for y in outputs])


def _rules(config: Config) -> list[dict[str, Any]]:
    if config.approach == "best":
        return [{}]
    return [{"name": "criterion"}] + [{"name": "weighted", "weight": w} for w in WEIGHTS]


@dataclass(frozen=True)
class Score:
    """What a policy's choices achieve over a set of tasks: the mean of each objective (oriented: larger is better),
    their gain over the preset's pick on the same tasks, and the criterion's ranking key."""

    fidelity: float
    strength: float
    fidelity_gain: float
    strength_gain: float
    key: tuple[float, ...]


def score_choices(land: Landscape, choices: Sequence[int], pick: int, criterion: Criterion) -> Score:
    rows = np.arange(len(land.task_ids))
    choices = np.asarray(choices, dtype=int)
    fidelity, strength = float(land.fidelity[rows, choices].mean()), float(land.strength[rows, choices].mean())
    return Score(fidelity, strength, fidelity - float(land.fidelity[:, pick].mean()),
                 strength - float(land.strength[:, pick].mean()), criterion.key(fidelity, strength))


# ---------------------------------------------------------------------------------------------------------------------
# Cross-validation


@dataclass
class CVResult:
    """One (model, rule) pair's out-of-fold record."""

    config: Config | None  # None: the preset's pick
    rule: dict[str, Any]
    score: Score
    choices: np.ndarray
    distances: np.ndarray  # each task's distance to the nearest training task of its fold


@dataclass
class FitReport:
    """What `fit_predictor` tried and found, kept in the predictor's `fit` section."""

    tasks: int
    images: int
    folds: int
    candidates: int
    selected: str
    score: Score
    threshold_quantile: float | None
    fallback_share: float
    table: list[dict[str, Any]] = field(default_factory=list)
    importance: dict[str, dict[str, float]] = field(default_factory=dict)
    approaches: dict[str, dict[str, float]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{self.tasks} tasks ({self.images} images), {self.candidates} candidate settings, {self.folds}-fold "
               "cross-validation grouped by image; gains over the preset's pick on the held-out folds, in the "
               "objectives' units (oriented: larger is better)",
               f"selected: {self.selected}: fidelity {self.score.fidelity_gain:+.4g}, edit strength "
               f"{self.score.strength_gain:+.4g}"]
        for approach, best in self.approaches.items():
            out.append(f"  best {approach} model: fidelity {best['fidelity_gain']:+.4g}, edit strength "
                       f"{best['strength_gain']:+.4g} ({best['model']})")
        if self.threshold_quantile is not None:
            out.append(f"fallback beyond the {self.threshold_quantile:.0%} quantile of the held-out tasks' distances "
                       f"to their training folds ({self.fallback_share:.0%} of them fell back)")
        for group, imp in self.importance.items():
            out.append(f"  shuffling {group} features costs fidelity {imp['fidelity']:+.4g} (sd "
                       f"{imp['fidelity_std']:.2g}), edit strength {imp['edit_strength']:+.4g} (sd "
                       f"{imp['edit_strength_std']:.2g})")
        return out


def _folds(groups: Sequence[str], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold

    distinct = len(set(groups))
    splitter = GroupKFold(n_splits=min(5, distinct), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(groups)), groups=groups))


def _oof(config: Config, names: Sequence[str], x: np.ndarray, land: Landscape, labels: np.ndarray,
         folds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, list[_Fitted]]:
    """Out-of-fold model outputs and each task's distance to its training fold (in the fold's standardised space)."""
    m = len(land.candidates)
    outputs: np.ndarray | None = None
    distances = np.zeros(len(x))
    models = []
    for train, test in folds:
        fitted = _fit(config, names, x[train], land.subset(train), labels[train])
        models.append(fitted)
        out = _outputs(fitted, config, x[test], m)
        if outputs is None:
            outputs = np.zeros((len(x), *out.shape[1:]))
        outputs[test] = out
        fitted.z_train = fitted.transform(x[train])
        distances[test] = _nearest(fitted.transform(x[test]), fitted.z_train)
    assert outputs is not None
    return outputs, distances, models


def _nearest(z: np.ndarray, points: np.ndarray | None) -> np.ndarray:
    """Each row's Euclidean distance to the nearest of `points`."""
    assert points is not None
    return np.sqrt(((z[:, None, :] - points[None, :, :]) ** 2).sum(-1)).min(axis=1)


def _with_threshold(choices: np.ndarray, distances: np.ndarray, threshold: float, pick: int) -> np.ndarray:
    return np.where(distances <= threshold, choices, pick)


def fit_predictor(
    land: Landscape,
    features: Sequence[Mapping[str, float]],
    groups: Sequence[str],
    *,
    pick: int,
    trade_off: str = "balanced",
    probe: EditParams | None = None,
    configs: Sequence[Config] | None = None,
    seed: int = 0,
    repeats: int = 20,
    record: Mapping[str, Any] | None = None,
    criterion: Criterion | None = None,
) -> tuple[Predictor, FitReport]:
    """Choose, calibrate and export a predictor for `land` (tasks in its order, `features[t]` and `groups[t]` (the
    source image) for each). `pick` is the preset's pick for `trade_off` as a candidate index; `probe`, the setting
    the features' inversion group was computed at (None: no inversion features). `record` is stored in `fit`.
    `criterion` defaults to the trade-off's on the landscape's own front (pass the full study's when `land` holds a
    selection of its candidates)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # hundreds of tiny fits: threads only cost here
        return _fit_predictor(land, features, groups, pick=pick, probe=probe, configs=configs, seed=seed,
                              repeats=repeats, record=record, criterion=criterion or land.criterion(trade_off))


def _fit_predictor(land: Landscape, features: Sequence[Mapping[str, float]], groups: Sequence[str], *, pick: int,
                   probe: EditParams | None, configs: Sequence[Config] | None, seed: int, repeats: int,
                   record: Mapping[str, Any] | None, criterion: Criterion) -> tuple[Predictor, FitReport]:
    n, m = len(land.task_ids), len(land.candidates)
    if len(features) != n or len(groups) != n:
        raise InputError(f"{n} tasks in the landscape but {len(features)} feature rows and {len(groups)} groups")
    if n < MIN_TASKS or len(set(groups)) < 3:
        raise InputError(f"a predictor needs at least {MIN_TASKS} tasks of at least 3 images to cross-validate; the "
                         f"study has {n} tasks of {len(set(groups))} images: tune on more tasks")
    names = list(features[0])
    if any(list(f) != names for f in features):
        raise InputError("every task's features must have the same names in the same order (one model)")
    x = np.asarray([[float(f[k]) for k in names] for f in features])
    if not np.all(np.isfinite(x)):
        raise InputError("some task features are not finite")
    labels = land.own_best(criterion)
    folds = _folds(groups, seed)
    baseline = CVResult(None, {}, score_choices(land, np.full(n, pick), pick, criterion), np.full(n, pick),
                        np.zeros(n))
    results = [baseline]
    oof_models: dict[Config, tuple[np.ndarray, np.ndarray, list[_Fitted]]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of tiny folds; the scores decide
        for config in configs or default_configs():
            outputs, distances, models = _oof(config, names, x, land, labels, folds)
            oof_models[config] = (outputs, distances, models)
            for rule in _rules(config):
                choices = _choices(outputs, config, rule, criterion, m)
                results.append(CVResult(config, rule, score_choices(land, choices, pick, criterion), choices,
                                        distances))
    best = max(results, key=lambda r: r.score.key)  # the pick comes first: a tie keeps it

    threshold, quantile, share = 0.0, None, 1.0
    if best.config is not None:
        options = [(q, float(np.quantile(best.distances, q))) for q in THRESHOLD_QUANTILES]
        scored = [(score_choices(land, _with_threshold(best.choices, best.distances, t, pick), pick, criterion).key,
                   q, t) for q, t in options]
        _, quantile, threshold = max(scored, key=lambda s: (s[0], s[1]))
        share = float((best.distances > threshold).mean())
        best = CVResult(best.config, best.rule,
                        score_choices(land, _with_threshold(best.choices, best.distances, threshold, pick), pick,
                                      criterion), best.choices, best.distances)

    importance = {}
    if best.config is not None:
        importance = _importance(best, oof_models[best.config][2], names, x, land, folds, pick, criterion,
                                 threshold, seed, repeats)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = _export(best, names, x, land, labels, pick, criterion, probe, threshold)
    report = FitReport(
        tasks=n, images=len(set(groups)), folds=len(folds), candidates=m,
        selected=_describe(best), score=best.score, threshold_quantile=quantile, fallback_share=share,
        table=_table(results), importance=importance, approaches=_approaches(results))
    data["fit"] = {**dict(record or {}), **_report_record(report)}
    predictor = Predictor.from_dict(data, "<fit>")
    size = len(canonical_json(data).encode("utf-8"))
    if size > MAX_PREDICTOR_BYTES:
        raise PresetError(f"the predictor would take {size} bytes in the preset (limit {MAX_PREDICTOR_BYTES}); fit it "
                          "on fewer tasks or candidates")
    return predictor, report


def _describe(result: CVResult) -> str:
    if result.config is None:
        return "the preset's pick (no model beat it in cross-validation)"
    rule = result.rule
    how = "" if not rule else f", rule {rule['name']}" + (f" {rule['weight']:g}" if "weight" in rule else "")
    return result.config.label() + how


def _table(results: Sequence[CVResult]) -> list[dict[str, Any]]:
    ranked = sorted(results, key=lambda r: r.score.key, reverse=True)
    return [{"model": _describe(r), "fidelity_gain": round(r.score.fidelity_gain, 6),
             "strength_gain": round(r.score.strength_gain, 6)} for r in ranked[:10]]


def _approaches(results: Sequence[CVResult]) -> dict[str, dict[str, Any]]:
    """The best of each approach (landscape, best setting), so the report can say which works better."""
    out = {}
    for approach in ("landscape", "best"):
        mine = [r for r in results if r.config is not None and r.config.approach == approach]
        if mine:
            top = max(mine, key=lambda r: r.score.key)
            name = "landscape" if approach == "landscape" else "best setting"
            out[name] = {"model": _describe(top), "fidelity_gain": round(top.score.fidelity_gain, 6),
                         "strength_gain": round(top.score.strength_gain, 6)}
    return out


def _importance(best: CVResult, models: list[_Fitted], names: Sequence[str], x: np.ndarray, land: Landscape,
                folds: list[tuple[np.ndarray, np.ndarray]], pick: int, criterion: Criterion, threshold: float,
                seed: int, repeats: int) -> dict[str, dict[str, float]]:
    """Permutation importance of each feature group on the held-out folds: how much the policy's mean fidelity and
    edit strength drop when the group's values are shuffled among a fold's test tasks, the models unchanged."""
    assert best.config is not None
    rng = np.random.default_rng(seed)
    m = len(land.candidates)
    out = {}
    for group in GROUPS:
        cols = [i for i, name in enumerate(names) if group_of(name) == group]
        if not cols:
            continue
        drops = []
        for _ in range(repeats):
            choices = np.zeros(len(x), dtype=int)
            distances = np.zeros(len(x))
            for (_, test), fitted in zip(folds, models):
                shuffled = x[test].copy()
                shuffled[:, cols] = shuffled[rng.permutation(len(test))][:, cols]
                out_ = _outputs(fitted, best.config, shuffled, m)
                choices[test] = _choices(out_, best.config, best.rule, criterion, m)
                distances[test] = _nearest(fitted.transform(shuffled), fitted.z_train)
            score = score_choices(land, _with_threshold(choices, distances, threshold, pick), pick, criterion)
            drops.append((best.score.fidelity - score.fidelity, best.score.strength - score.strength))
        drops_ = np.asarray(drops)
        out[group] = {"fidelity": round(float(drops_[:, 0].mean()), 6),
                      "edit_strength": round(float(drops_[:, 1].mean()), 6),
                      "fidelity_std": round(float(drops_[:, 0].std()), 6),
                      "edit_strength_std": round(float(drops_[:, 1].std()), 6)}
    return out


def _export(best: CVResult, names: Sequence[str], x: np.ndarray, land: Landscape, labels: np.ndarray, pick: int,
            criterion: Criterion, probe: EditParams | None, threshold: float) -> dict[str, Any]:
    """The winner refitted on every task, as the plain-JSON `predictor` section."""
    config = best.config or Config("landscape", "knn", (("k", 1), ("weights", "uniform")), 0)
    fitted = _fit(config, names, x, land, labels)
    pipe = fitted.pipeline
    text, rest = _text_columns(names)
    pca = None
    step = pipe.named_steps["features"].pca_
    if step is not None:
        pca = {"columns": text, "mean": step.mean_.tolist(), "components": step.components_.tolist()}
    scaler = pipe.named_steps["scale"]
    points = fitted.transform(x)
    estimator = pipe.named_steps["model"]
    model: dict[str, Any]
    if best.config is None:
        model = {"kind": "pick"}
    elif config.kind == "knn_landscape":
        model = {"kind": "knn_landscape", "k": int(estimator.n_neighbors), "weights": estimator.weights,
                 "targets": np.concatenate([land.fidelity, land.strength], axis=1).tolist()}
    elif config.kind == "ridge_landscape":
        model = {"kind": "ridge_landscape", "coef": estimator.coef_.tolist(),
                 "intercept": estimator.intercept_.tolist()}
    elif config.kind == "knn_best":
        if fitted.constant is not None:
            model = {"kind": "knn_best", "k": 1, "weights": "uniform", "labels": [fitted.constant] * len(x)}
        else:
            model = {"kind": "knn_best", "k": int(estimator.n_neighbors), "weights": estimator.weights,
                     "labels": [int(v) for v in labels]}
    else:
        if fitted.constant is not None:
            model = {"kind": "knn_best", "k": 1, "weights": "uniform", "labels": [fitted.constant] * len(x)}
        else:
            model = {"kind": "logistic_best", "coef": estimator.coef_.tolist(),
                     "intercept": estimator.intercept_.tolist(), "classes": [int(c) for c in estimator.classes_]}
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "trade_off": criterion.trade_off,
        "criterion": criterion.to_dict(),
        "features": {"names": list(names), "probe": probe.to_dict() if probe is not None else None},
        "candidates": [c.to_dict() for c in land.candidates],
        "pick_index": int(pick),
        "transform": {"text_pca": pca, "passthrough": rest,
                      "scaler": {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()}},
        "model": model,
        "support": {"points": points.tolist(), "threshold": float(threshold)},
    }
    if best.config is not None and best.config.approach == "landscape":
        data["rule"] = dict(best.rule)
    return data


def _report_record(report: FitReport) -> dict[str, Any]:
    return {
        "tasks": report.tasks, "images": report.images, "folds": report.folds,
        "selected": report.selected,
        "cv_gain": {"fidelity": round(report.score.fidelity_gain, 6),
                    "edit_strength": round(report.score.strength_gain, 6)},
        "threshold_quantile": report.threshold_quantile, "cv_fallback_share": round(report.fallback_share, 6),
        "approaches": report.approaches, "top_models": report.table, "importance": report.importance,
    }


# ---------------------------------------------------------------------------------------------------------------------
# From a study and its tasks to a preset that carries its predictor


def preset_with_predictor(study: optuna.Study, editor: Any, tasks: Sequence[EditTask], *, trade_off: str = "balanced",
                          inversion_features: bool = True, seed: int = 0, storage_label: str | None = None,
                          configs: Sequence[Config] | None = None, max_candidates: int = MAX_CANDIDATES
                          ) -> tuple[Preset, FitReport]:
    """The study's preset (`presets_from_study`) with a predictor fitted on it: the tasks' features from `editor`
    (the study's model), the landscape from the trials. `tasks` must be the study's (checked by fingerprint)."""
    import sklearn

    from autotune.images import image_digest
    from autotune.task import task_fingerprint
    from autotune.tuning.to_preset import presets_from_study

    attrs = study.user_attrs
    fingerprint = attrs.get(contract.TASK_FINGERPRINT)
    tasks = sorted((t for t in tasks if t.category == attrs.get(contract.CATEGORY)), key=lambda t: t.id)  # as tune
    if fingerprint and task_fingerprint(tasks) != fingerprint:
        raise InputError(f"these {len(tasks)} tasks are not the ones study {study.study_name!r} was tuned on (task "
                         "fingerprints differ); pass the study's own --tasks and --split")
    preset = presets_from_study(study, storage_label=storage_label)[0]
    if trade_off not in preset.picks:
        raise InputError(f"trade-off {trade_off!r} is not one of the preset's picks ({', '.join(preset.picks)})")
    land = study_landscape(study)
    by_id = {t.id: t for t in tasks}
    missing = [tid for tid in land.task_ids if tid not in by_id]
    if missing:
        raise InputError(f"the study measured tasks that are not among those given ({', '.join(missing[:3])}...)")
    chosen = preset.params(trade_off)
    if chosen not in land.candidates:
        raise PresetError(f"the preset's {trade_off} pick is not among the study's completed settings")
    criterion = land.criterion(trade_off)
    kept = select_candidates(land, criterion, land.candidates.index(chosen), max_candidates)
    land, pick = land.with_candidates(kept), 0
    ordered = [by_id[tid] for tid in land.task_ids]
    probe = chosen if inversion_features else None
    features = editor.task_features(ordered, probe)
    groups = [image_digest(editor.prepare_image(t.image)) for t in ordered]
    record = {"study": {"name": study.study_name, "storage": redact_url(attrs.get(contract.STORAGE) or storage_label)},
              "task_fingerprint": fingerprint, "sklearn": sklearn.__version__, "seed": seed}
    predictor, report = fit_predictor(land, features, groups, pick=pick, trade_off=trade_off, probe=probe,
                                      configs=configs, seed=seed, record=record, criterion=criterion)
    return preset.with_predictor(predictor), report

