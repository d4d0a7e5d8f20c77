"""A preset's per-image predictor: which of a few measured settings suits one image, from cheap features of it.

The predictor is fitted on a study (`autotune.tuning.fit_predictor`) and stored in the preset file's `predictor`
section as plain JSON numbers: the feature names it reads, the candidate settings it chooses among (the study's
completed trials), a feature transform (optional PCA of the text-difference vector, then standardisation) and one
model of a few known kinds, evaluated here with numpy alone. Nothing is unpickled and nothing names code: an unknown
kind, a field of the wrong shape or a non-finite number is refused with the field named (`check_predictor`), and the
preset's content hash covers the section (a predictor whose file no longer matches its hash is refused too, see
`autotune.presets.schema`).

Model kinds (the scikit-learn estimators they were exported from):

- `knn_landscape` (KNeighborsRegressor): the mean (or inverse-distance weighted mean) of the k nearest training
  images' measured landscapes, each candidate's fidelity and edit strength (oriented, larger is better);
- `ridge_landscape` (Ridge): a linear map from the features to that landscape;
- `knn_best` (KNeighborsClassifier): the vote of the k nearest training images' own best candidate;
- `logistic_best` (LogisticRegression): a multinomial linear classifier over the same labels;
- `pick`: no model beat the preset's own pick in cross-validation; every image falls back.

A landscape is read by the predictor's `rule`: `criterion` (the candidate the trade-off's `Criterion` ranks first
on the image's predicted landscape) or `weighted` (the candidate with the largest `weight` * scaled fidelity +
(1 - `weight`) * scaled edit strength; the weight was chosen in cross-validation). An image whose transformed
features lie farther from every training image than `support.threshold` (calibrated in cross-validation) falls back
to the preset's pick, and says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.errors import PresetError
from autotune.params import EditParams

FORMAT = "autotune.predictor"
FORMAT_VERSION = 1
AUTO_STYLE = "auto"
MODEL_KINDS = ("knn_landscape", "ridge_landscape", "knn_best", "logistic_best", "pick")
RULES = ("criterion", "weighted")
_TRADE_OFFS = ("conservative", "balanced", "aggressive")
_KEYS = {"format", "version", "trade_off", "criterion", "features", "candidates", "pick_index", "transform", "model",
         "rule", "support", "fit"}


@dataclass(frozen=True)
class AutoChoice:
    """How a `style="auto"` edit chose its setting: the predictor's pick, or the preset's own pick and why."""

    params: EditParams
    trade_off: str
    fallback: bool
    reason: str
    candidate: int | None = None  # index into the predictor's candidates (None when no predictor ran)
    distance: float | None = None  # the image's distance to the nearest training image (transformed features)
    threshold: float | None = None

    def describe(self) -> str:
        setting = f"w_src={_brief(self.params.w_src)}, w_tgt={_brief(self.params.w_tgt)}"
        if self.fallback:
            return f"auto fell back to the {self.trade_off} pick ({setting}): {self.reason}"
        return f"auto predicted {setting} (candidate {self.candidate}; {self.reason})"


def _brief(value: Any) -> str:
    return f"{value.start:.3g}" if getattr(value, "is_constant", False) else str(value)


@dataclass(frozen=True)
class Prediction:
    """What the model says for one image: a landscape (fidelity, strength per candidate) or a candidate index."""

    distance: float
    fidelity: np.ndarray | None = None
    strength: np.ndarray | None = None
    label: int | None = None


@dataclass(frozen=True)
class Criterion:
    """How a trade-off ranks (fidelity, edit strength) points, oriented so that larger is better, the way the preset's
    pick rule ranks its front: `balanced`, the nearness to the front's ideal (`ideal`, the best of each objective on
    the front) with each objective scaled by its range on the front (`scales`), a point beyond the ideal in one
    objective not being penalised for it, ties going to the larger scaled sum; `conservative`, fidelity then
    strength; `aggressive`, strength then fidelity. On the front the preset's pick ranks first. It ranks a policy by
    the means its choices achieve, and one task's candidates by the task's own values (its best setting)."""

    trade_off: str
    ideal: tuple[float, float]
    scales: tuple[float, float]

    @classmethod
    def of_front(cls, front: Sequence[Sequence[float]], trade_off: str, fallback_scales: Sequence[float] = (1.0, 1.0)
                 ) -> Criterion:
        """From the front's points (oriented); an objective that does not vary on it takes `fallback_scales`."""
        points = np.asarray(front, dtype=float)
        scales = []
        for axis in range(2):
            spread = float(points[:, axis].max() - points[:, axis].min())
            scales.append(spread if spread > 0 else float(fallback_scales[axis]))
        return cls(trade_off, (float(points[:, 0].max()), float(points[:, 1].max())), (scales[0], scales[1]))

    def key(self, fidelity: float, strength: float) -> tuple[float, ...]:
        if self.trade_off == "conservative":
            return (round(fidelity, 12), round(strength, 12))
        if self.trade_off == "aggressive":
            return (round(strength, 12), round(fidelity, 12))
        f = 1 + (fidelity - self.ideal[0]) / self.scales[0]
        s = 1 + (strength - self.ideal[1]) / self.scales[1]
        return (-round(math.hypot(max(0.0, 1 - f), max(0.0, 1 - s)), 12), round(f + s, 12), round(fidelity, 12))

    def to_dict(self) -> dict[str, Any]:
        return {"ideal": list(self.ideal), "scales": list(self.scales)}


class Predictor:
    """A validated `predictor` section (see the module docstring); build it with `Predictor.from_dict`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self.feature_names: list[str] = list(data["features"]["names"])
        probe = data["features"].get("probe")
        self.probe: EditParams | None = EditParams.from_dict(probe) if probe is not None else None
        self.candidates: list[EditParams] = [EditParams.from_dict(c) for c in data["candidates"]]
        self.trade_off: str = data["trade_off"]
        self.pick_index: int = data["pick_index"]
        self.kind: str = data["model"]["kind"]
        self.rule: dict[str, Any] = dict(data.get("rule") or {"name": "criterion"})
        self.criterion = Criterion(self.trade_off, tuple(data["criterion"]["ideal"]),  # type: ignore[arg-type]
                                   tuple(data["criterion"]["scales"]))  # type: ignore[arg-type]
        transform = data["transform"]
        self._pca = transform.get("text_pca")
        self._pass = np.asarray(transform["passthrough"], dtype=int)
        self._mean = np.asarray(transform["scaler"]["mean"], dtype=float)
        self._scale = np.asarray(transform["scaler"]["scale"], dtype=float)
        self._points = np.asarray(data["support"]["points"], dtype=float)
        self.threshold: float = float(data["support"]["threshold"])

    @classmethod
    def from_dict(cls, data: Any, source: str = "<preset>") -> Predictor:
        return cls(check_predictor(data, source))

    def to_dict(self) -> dict[str, Any]:
        import copy

        return copy.deepcopy(self._data)

    @property
    def fit(self) -> dict[str, Any]:
        """What the fit recorded: study, tasks, cross-validation scores, the feature groups' importance."""
        return dict(self._data.get("fit") or {})

    # -- reading one image ---------------------------------------------------------------------------------------

    def vector(self, features: Mapping[str, float]) -> np.ndarray:
        """The features in the fitted order; a missing or extra name is refused (another model or autotune)."""
        missing = [n for n in self.feature_names if n not in features]
        if missing or len(features) != len(self.feature_names):
            extra = sorted(set(features) - set(self.feature_names))
            raise PresetError(
                f"the predictor reads {len(self.feature_names)} features but this model gave {len(features)} "
                f"(missing: {', '.join(missing[:5]) or 'none'}; unknown: {', '.join(extra[:5]) or 'none'}): it was "
                "fitted on another model or autotune version; re-fit it (`autotune presets fit-predictor`)")
        x = np.asarray([float(features[n]) for n in self.feature_names], dtype=float)
        if not np.all(np.isfinite(x)):
            bad = [n for n, v in zip(self.feature_names, x) if not math.isfinite(v)]
            raise PresetError(f"features {', '.join(bad[:5])} are not finite for this image")
        return x

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Raw feature vector(s) -> the standardised space the model and the support check work in."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        parts = []
        if self._pca is not None:
            cols = np.asarray(self._pca["columns"], dtype=int)
            parts.append((x[:, cols] - np.asarray(self._pca["mean"])) @ np.asarray(self._pca["components"]).T)
        parts.append(x[:, self._pass])
        return (np.concatenate(parts, axis=1) - self._mean) / self._scale

    def predict(self, features: Mapping[str, float]) -> Prediction:
        z = self.transform(self.vector(features))[0]
        distances = np.sqrt(((self._points - z) ** 2).sum(axis=1))
        nearest = float(distances.min()) if len(distances) else math.inf
        model = self._data["model"]
        if self.kind == "pick":
            return Prediction(nearest)
        if self.kind in ("knn_landscape", "knn_best"):
            order = np.argsort(distances, kind="stable")[: model["k"]]
            weights = _knn_weights(distances[order], model["weights"])
            if self.kind == "knn_landscape":
                targets = np.asarray(model["targets"], dtype=float)[order]
                y = (weights[:, None] * targets).sum(axis=0) / weights.sum()
                return self._landscape(nearest, y)
            labels = np.asarray(model["labels"], dtype=int)[order]
            votes = np.zeros(len(self.candidates))
            np.add.at(votes, labels, weights)
            return Prediction(nearest, label=int(np.argmax(votes)))  # ties: the lowest index, as scikit-learn
        if self.kind == "ridge_landscape":
            y = np.asarray(model["coef"], dtype=float) @ z + np.asarray(model["intercept"], dtype=float)
            return self._landscape(nearest, y)
        scores = np.asarray(model["coef"], dtype=float) @ z + np.asarray(model["intercept"], dtype=float)
        classes = np.asarray(model["classes"], dtype=int)
        label = classes[int(scores[0] > 0)] if len(classes) == 2 else classes[int(np.argmax(scores))]
        return Prediction(nearest, label=int(label))

    def _landscape(self, nearest: float, y: np.ndarray) -> Prediction:
        m = len(self.candidates)
        return Prediction(nearest, fidelity=y[:m], strength=y[m:])


def _knn_weights(distances: np.ndarray, kind: str) -> np.ndarray:
    """scikit-learn's neighbour weights: uniform, or 1/d with exact matches taking all the weight."""
    if kind == "uniform":
        return np.ones_like(distances)
    zero = distances == 0
    if zero.any():
        return zero.astype(float)
    return 1.0 / distances


# ---------------------------------------------------------------------------------------------------------------------
# Validation: the section is untrusted data; every field is checked by type and shape


def _fail(source: str, where: str, message: str) -> PresetError:
    return PresetError(f"{source}: predictor.{where}: {message}")


def _matrix(value: Any, source: str, where: str, rows: int | None = None, cols: int | None = None) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise _fail(source, where, "must be a list of lists of numbers") from None
    if array.ndim != 2 or array.dtype == object:
        raise _fail(source, where, f"must be a 2-D list of numbers, got {array.ndim} dimension(s)")
    if not np.all(np.isfinite(array)):
        raise _fail(source, where, "holds a non-finite number")
    if (rows is not None and array.shape[0] != rows) or (cols is not None and array.shape[1] != cols):
        raise _fail(source, where, f"has shape {array.shape}, expected ({rows}, {cols})")
    return array


def _vector(value: Any, source: str, where: str, length: int | None = None) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise _fail(source, where, "must be a list of numbers")
    array = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(array)):
        raise _fail(source, where, "holds a non-finite number")
    if length is not None and len(array) != length:
        raise _fail(source, where, f"has {len(array)} values, expected {length}")
    return array


def _indices(value: Any, source: str, where: str, bound: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _fail(source, where, "must be a list of whole numbers")
    if any(not 0 <= v < bound for v in value):
        raise _fail(source, where, f"holds an index outside 0..{bound - 1}")
    return list(value)


def _positive_int(value: Any, source: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(source, where, f"must be a whole number >= 1, got {value!r}")
    return value


def check_predictor(data: Any, source: str = "<preset>") -> dict[str, Any]:
    """Validate a parsed `predictor` section; returns it (a deep copy) or raises PresetError naming the field."""
    import copy

    if not isinstance(data, dict):
        raise PresetError(f"{source}: predictor: must be an object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise _fail(source, "format", f"{data.get('format')!r} is not {FORMAT!r}")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(source, "version", f"must be a whole number >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(source, "version", f"{version} was written by a newer autotune (this one reads "
                                        f"{FORMAT_VERSION}); upgrade autotune to use this predictor")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise _fail(source, "", f"unknown key(s) {', '.join(unknown)}")
    data = copy.deepcopy(data)
    if data.get("trade_off") not in _TRADE_OFFS:
        raise _fail(source, "trade_off", f"{data.get('trade_off')!r} must be one of {', '.join(_TRADE_OFFS)}")

    features = data.get("features")
    if not isinstance(features, dict) or not isinstance(features.get("names"), list) or not features["names"] \
            or not all(isinstance(n, str) for n in features["names"]):
        raise _fail(source, "features.names", "must be a non-empty list of feature names")
    if len(set(features["names"])) != len(features["names"]):
        raise _fail(source, "features.names", "names a feature twice")
    n_features = len(features["names"])
    if features.get("probe") is not None:
        _params(features["probe"], source, "features.probe")

    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise _fail(source, "candidates", "must be a non-empty list of parameter sets")
    for i, raw in enumerate(candidates):
        _params(raw, source, f"candidates[{i}]")
    m = len(candidates)
    pick = data.get("pick_index")
    if isinstance(pick, bool) or not isinstance(pick, int) or not 0 <= pick < m:
        raise _fail(source, "pick_index", f"must index the candidates (0..{m - 1}), got {pick!r}")
    criterion = data.get("criterion")
    if not isinstance(criterion, dict):
        raise _fail(source, "criterion", "must be an object with ideal and scales")
    _vector(criterion.get("ideal"), source, "criterion.ideal", 2)
    if np.any(_vector(criterion.get("scales"), source, "criterion.scales", 2) <= 0):
        raise _fail(source, "criterion.scales", "must be two positive numbers (the objectives' ranges on the front)")

    transform = data.get("transform")
    if not isinstance(transform, dict):
        raise _fail(source, "transform", "must be an object")
    width = 0
    pca = transform.get("text_pca")
    if pca is not None:
        if not isinstance(pca, dict):
            raise _fail(source, "transform.text_pca", "must be an object or null")
        cols = _indices(pca.get("columns"), source, "transform.text_pca.columns", n_features)
        _vector(pca.get("mean"), source, "transform.text_pca.mean", len(cols))
        components = _matrix(pca.get("components"), source, "transform.text_pca.components", cols=len(cols))
        width += components.shape[0]
    width += len(_indices(transform.get("passthrough"), source, "transform.passthrough", n_features))
    scaler = transform.get("scaler")
    if not isinstance(scaler, dict):
        raise _fail(source, "transform.scaler", "must be an object with mean and scale")
    _vector(scaler.get("mean"), source, "transform.scaler.mean", width)
    if np.any(_vector(scaler.get("scale"), source, "transform.scaler.scale", width) <= 0):
        raise _fail(source, "transform.scaler.scale", "must be positive")

    support = data.get("support")
    if not isinstance(support, dict):
        raise _fail(source, "support", "must be an object with points and threshold")
    points = _matrix(support.get("points"), source, "support.points", cols=width)
    threshold = support.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0 \
            or not math.isfinite(threshold):
        raise _fail(source, "support.threshold", f"must be a finite number >= 0, got {threshold!r}")
    n = points.shape[0]

    model = data.get("model")
    if not isinstance(model, dict) or model.get("kind") not in MODEL_KINDS:
        kind = model.get("kind") if isinstance(model, dict) else model
        raise _fail(source, "model.kind", f"{kind!r} is not a model kind this autotune reads "
                                          f"({', '.join(MODEL_KINDS)}); refused")
    kind = model["kind"]
    if kind in ("knn_landscape", "knn_best"):
        k = _positive_int(model.get("k"), source, "model.k")
        if k > n:
            raise _fail(source, "model.k", f"{k} neighbours but only {n} support points")
        if model.get("weights") not in ("uniform", "distance"):
            raise _fail(source, "model.weights", "must be 'uniform' or 'distance'")
        if kind == "knn_landscape":
            _matrix(model.get("targets"), source, "model.targets", rows=n, cols=2 * m)
        else:
            if len(_indices(model.get("labels"), source, "model.labels", m)) != n:
                raise _fail(source, "model.labels", f"must hold one label per support point ({n})")
    elif kind == "ridge_landscape":
        _matrix(model.get("coef"), source, "model.coef", rows=2 * m, cols=width)
        _vector(model.get("intercept"), source, "model.intercept", 2 * m)
    elif kind == "logistic_best":
        classes = _indices(model.get("classes"), source, "model.classes", m)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise _fail(source, "model.classes", "must list at least two distinct candidates")
        rows = 1 if len(classes) == 2 else len(classes)
        _matrix(model.get("coef"), source, "model.coef", rows=rows, cols=width)
        _vector(model.get("intercept"), source, "model.intercept", rows)

    rule = data.get("rule")
    if kind in ("knn_landscape", "ridge_landscape"):
        if not isinstance(rule, dict) or rule.get("name") not in RULES:
            raise _fail(source, "rule.name", f"a landscape model needs a rule, one of {', '.join(RULES)}")
        if rule["name"] == "weighted":
            weight = rule.get("weight")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
                raise _fail(source, "rule.weight", f"must be a number in [0, 1], got {weight!r}")
    if data.get("fit") is not None and not isinstance(data["fit"], dict):
        raise _fail(source, "fit", "must be an object")
    return data


def _params(raw: Any, source: str, where: str) -> EditParams:
    if not isinstance(raw, dict):
        raise _fail(source, where, "must be an object of edit parameters")
    try:
        return EditParams.from_dict(raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise _fail(source, where, str(exc)) from None


def choose_index(prediction: Prediction, predictor: Predictor) -> int:
    """The candidate an image's prediction selects."""
    if prediction.label is not None:
        return prediction.label
    assert prediction.fidelity is not None and prediction.strength is not None
    return landscape_choice(prediction.fidelity, prediction.strength, predictor.rule, predictor.criterion)


def landscape_choice(fidelity: Sequence[float], strength: Sequence[float], rule: Mapping[str, Any],
                     criterion: Criterion) -> int:
    """The candidate a landscape (oriented: larger is better) selects under `rule` (see the module docstring)."""
    fidelity, strength = np.asarray(fidelity, dtype=float), np.asarray(strength, dtype=float)
    if rule.get("name") == "weighted":
        weight = float(rule["weight"])
        score = weight * fidelity / criterion.scales[0] + (1 - weight) * strength / criterion.scales[1]
        return int(np.argmax(score))
    keys = [criterion.key(f, s) for f, s in zip(fidelity.tolist(), strength.tolist())]
    return max(range(len(keys)), key=lambda i: keys[i])  # ties: the first
