"""The per-image predictor: fitted from a landscape by cross-validation, exported to plain JSON, read back without
scikit-learn, stored in the preset under its content hash, and falling back to the preset's pick where it should."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from autotune.errors import PresetError
from autotune.params import EditParams
from autotune.presets.predictor import Criterion, Predictor
from autotune.presets.preset import FrontPoint, Preset, PresetWarning, pick_indices
from autotune.tuning.fit_predictor import Config, Landscape, fit_predictor, select_candidates

NAMES = (["text.cosine", "text.diff_norm"] + [f"text.diff.{i}" for i in range(6)]
         + ["words.replaced", "words.inserted", "latent.mean.0", "latent.std.0", "latent.busy"])
HARDNESS = NAMES.index("latent.mean.0")
GENTLE, STRONG, WEAK = EditParams(w_src=0.0, w_tgt=1.1), EditParams(w_src=0.5, w_tgt=7.5), EditParams(w_tgt=3.0)
OBJECTIVES = [{"name": "fidelity", "direction": "maximize", "metrics": {"background_psnr": 1.0}},
              {"name": "edit_strength", "direction": "maximize", "metrics": {"edit_success": 1.0}}]


def planted(n: int, seed: int) -> tuple[Landscape, list[dict[str, float]]]:
    """Tasks whose hardness is one latent feature: the gentle setting (33 dB) makes the edit on easy images only,
    the strong one (25 dB) on all; a third setting is worse at both. Everything else is noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(NAMES)))
    easy = x[:, HARDNESS] < 0
    fidelity = np.stack([33 + rng.normal(0, 0.5, n), 25 + rng.normal(0, 0.5, n), 20 + rng.normal(0, 0.5, n)], 1)
    strength = np.stack([easy.astype(float), np.ones(n), (rng.random(n) < 0.3).astype(float)], 1)
    land = Landscape([f"t{i:03d}" for i in range(n)], [GENTLE, STRONG, WEAK], [0, 1, 2], fidelity, strength)
    return land, [dict(zip(NAMES, row)) for row in x]


def preset_for(land: Landscape) -> Preset:
    points = [FrontPoint(c, {"fidelity": float(land.fidelity[:, i].mean()),
                             "edit_strength": float(land.strength[:, i].mean())}, trial=i)
              for i, c in enumerate(land.candidates)]
    return Preset.from_front(points, category="change_color", model={"id": "shapes"}, objectives=OBJECTIVES)


@pytest.fixture(scope="module")
def fitted() -> tuple[Landscape, list[dict[str, float]], Predictor, Preset]:
    land, features = planted(60, seed=0)
    preset = preset_for(land)
    pick = land.candidates.index(preset.params("balanced"))
    predictor, _ = fit_predictor(land, features, [f"img{i}" for i in range(60)], pick=pick, repeats=5)
    return land, features, predictor, preset.with_predictor(predictor)


def test_criterion_ranks_the_presets_pick_first():
    rng = np.random.default_rng(3)
    for _ in range(200):
        points = rng.normal(size=(int(rng.integers(2, 9)), 2)) * [5.0, 0.2] + [30.0, 0.8]
        points = np.round(points, int(rng.integers(1, 3)))  # ties as well
        from autotune import pareto

        front = points[pareto.front_indices(points.tolist())]
        values = [{"fidelity": f, "edit_strength": s} for f, s in front]
        expected = pick_indices(values, ("maximize", "maximize"))
        for style in ("conservative", "balanced", "aggressive"):
            criterion = Criterion.of_front(front, style)
            ranked = max(range(len(front)), key=lambda i: criterion.key(*front[i]))
            assert tuple(front[ranked]) == tuple(front[expected[style]]), (style, front)


def test_the_fit_finds_the_planted_signal_and_helps_on_new_tasks(fitted):
    land, _, predictor, preset = fitted
    assert preset.params("balanced") == GENTLE  # the category's pick: faithful, fails the hard images
    assert predictor.kind != "pick"
    assert predictor.fit["importance"]["latent"]["edit_strength"] > 0.05  # the feature that carries it
    new, features = planted(200, seed=1)
    chosen = [preset.choose(f) for f in features]
    hard = np.asarray([f["latent.mean.0"] >= 0 for f in features])
    right = [(c.params == STRONG) == h for c, h in zip(chosen, hard) if not c.fallback]
    assert len(right) > 150 and np.mean(right) > 0.85
    index = [land.candidates.index(c.params) for c in chosen]
    rows = np.arange(len(index))
    criterion = land.criterion("balanced")
    mine = criterion.key(new.fidelity[rows, index].mean(), new.strength[rows, index].mean())
    always_pick = criterion.key(new.fidelity[:, 0].mean(), new.strength[:, 0].mean())
    assert mine > always_pick


def test_the_candidates_kept_are_the_ones_per_image_choice_uses():
    land, _ = planted(60, seed=6)
    criterion = land.criterion("balanced")
    assert select_candidates(land, criterion, pick=0, limit=8) == [0, 1]  # the weak setting is never a task's best
    assert select_candidates(land, criterion, pick=0, limit=1) == [0]
    land.strength[:, 0] = 1.0
    assert select_candidates(land, criterion, pick=0, limit=8) == [0]  # nothing beats the pick on any task


def test_an_image_outside_the_training_data_falls_back_and_says_so(fitted):
    _, features, predictor, preset = fitted
    far = {k: v + 50.0 for k, v in features[0].items()}
    choice = preset.choose(far)
    assert choice.fallback and choice.params == preset.params("balanced")
    assert "outside the training data" in choice.reason and choice.distance > predictor.threshold
    inside = preset.choose(features[0])
    assert inside.distance <= predictor.threshold  # a training image lies in its own support


def test_no_model_beats_a_pick_that_cannot_be_improved_on():
    land, features = planted(40, seed=2)
    land.strength[:, 0] = 1.0  # the gentle setting now succeeds everywhere: nothing to gain per image
    preset = preset_for(land)
    predictor, report = fit_predictor(land, features, [f"i{i}" for i in range(40)],
                                      pick=land.candidates.index(preset.params("balanced")), repeats=2)
    assert predictor.kind == "pick" and "no model beat" in report.selected
    choice = preset.with_predictor(predictor).choose(features[3])
    assert choice.fallback and choice.params == GENTLE and "cross-validation" in choice.reason


@pytest.mark.parametrize("config", [
    Config("landscape", "knn", (("k", 5), ("weights", "uniform")), 0),
    Config("landscape", "knn", (("k", 8), ("weights", "distance")), 4),
    Config("landscape", "ridge", (("alpha", 10.0),), 4),
    Config("best", "knn", (("k", 5), ("weights", "uniform")), 4),
    Config("best", "logistic", (("C", 1.0),), 0),
])
def test_the_json_predictor_computes_what_scikit_learn_computes(config):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.preprocessing import StandardScaler

    land, features = planted(60, seed=4)
    predictor, _ = fit_predictor(land, features, [f"i{i}" for i in range(60)], pick=0, configs=[config], repeats=1)
    assert predictor.kind == config.kind  # the planted signal makes the model beat the pick
    # the reference, built here from scikit-learn directly
    x = np.asarray([[f[n] for n in NAMES] for f in features])
    text = [i for i, n in enumerate(NAMES) if n.startswith("text.diff.")]
    rest = [i for i in range(len(NAMES)) if i not in text]

    def columns(rows, pca):
        return np.concatenate(([pca.transform(rows[:, text])] if pca else []) + [rows[:, rest]], axis=1)

    pca = PCA(config.text_pca, svd_solver="full").fit(x[:, text]) if config.text_pca else None
    scaler = StandardScaler().fit(columns(x, pca))
    z = scaler.transform(columns(x, pca))
    knobs = dict(config.settings)
    if config.approach == "landscape":
        target = np.concatenate([land.fidelity, land.strength], axis=1)
        model = (KNeighborsRegressor(knobs["k"], weights=knobs["weights"]) if config.estimator == "knn"
                 else Ridge(alpha=knobs["alpha"])).fit(z, target)
    else:
        labels = land.own_best(land.criterion("balanced"))
        model = (KNeighborsClassifier(knobs["k"]) if config.estimator == "knn"
                 else LogisticRegression(C=knobs["C"], max_iter=5000)).fit(z, labels)
    new = np.random.default_rng(5).normal(size=(25, len(NAMES)))
    expected = model.predict(scaler.transform(columns(new, pca)))
    for row, want in zip(new, expected):
        got = predictor.predict(dict(zip(NAMES, row)))
        if config.approach == "landscape":
            np.testing.assert_allclose(np.concatenate([got.fidelity, got.strength]), want, rtol=1e-9, atol=1e-9)
        else:
            assert got.label == want
        nearest = np.sqrt(((z - scaler.transform(columns(row[None], pca))) ** 2).sum(axis=1)).min()
        assert math.isclose(got.distance, nearest, rel_tol=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# Stored in the preset


def test_the_predictor_round_trips_through_the_file_as_plain_json(fitted, tmp_path):
    _, features, _, preset = fitted
    path = preset.save(tmp_path / "p.json")
    text = path.read_text()
    data = json.loads(text)  # nothing but JSON: numbers, strings, lists
    assert data["predictor"]["format"] == "autotune.predictor" and data["predictor"]["model"]["kind"]
    loaded = Preset.load(path, strict=True)
    assert loaded.content_hash == preset.content_hash
    for f in features[:10]:
        assert loaded.choose(f) == preset.choose(f)


def test_presets_without_a_predictor_keep_their_content_hash():
    from pathlib import Path

    # A shapes preset written before predictors existed (kept as test data: the shipped ones now carry one).
    shipped = Path(__file__).resolve().parent / "data" / "preset_before_task_digests.json"
    data = json.loads(shipped.read_text())
    assert "predictor" not in data
    preset = Preset.load(shipped, strict=True)
    assert preset.predictor is None and preset.to_dict()["content_hash"] == data["content_hash"]
    with pytest.raises(PresetError, match="has no predictor"):
        preset.check_auto()


def _tampered(path, change) -> str:
    data = json.loads(path.read_text())
    change(data["predictor"])
    return json.dumps(data)


def test_a_tampered_predictor_is_refused_and_the_picks_still_work(fitted, tmp_path):
    _, features, _, preset = fitted
    path = preset.save(tmp_path / "p.json")

    def nudge(section):
        section["support"]["threshold"] = 1e9

    text = _tampered(path, nudge)
    with pytest.raises(PresetError, match="content_hash"):
        Preset.loads(text, strict=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PresetWarning)
        loaded = Preset.loads(text, source="p.json")
    assert loaded.predictor is None and loaded.params("balanced") == GENTLE
    assert any("predictor" in str(w.message) and "refused" in str(w.message) for w in caught)
    with pytest.raises(PresetError, match="predictor.*refused.*content_hash"):
        loaded.choose(features[0])
    # without a hash at all, the predictor is not trusted either
    data = json.loads(path.read_text())
    del data["content_hash"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PresetWarning)
        assert Preset.loads(json.dumps(data)).predictor is None


@pytest.mark.parametrize("change, message", [
    (lambda s: s["model"].update(kind="gradient_boosting"), "'gradient_boosting' is not a model kind"),
    (lambda s: s["model"].update(kind="__reduce__"), "not a model kind"),
    (lambda s: s.update(version=99), "newer autotune"),
    (lambda s: s["transform"]["scaler"].update(scale=[1.0]), r"transform.scaler.scale: has 1 values"),
    (lambda s: s["support"].update(points="gASVBQAAAAAAAACMAW6ULg=="), "support.points"),
    (lambda s: s.update(pick_index=99), "pick_index"),
    (lambda s: s["candidates"][0].update(method="exec"), r"candidates\[0\]"),
    (lambda s: s.update(code="import os"), "unknown key"),
])
def test_a_predictor_of_an_unknown_kind_or_shape_is_refused_with_the_field_named(fitted, tmp_path, change, message):
    from autotune.presets.schema import content_hash_of

    _, _, _, preset = fitted
    data = preset.to_dict()
    change(data["predictor"])
    data["content_hash"] = content_hash_of(data)  # re-hashed: the check is on the content itself
    with pytest.raises(PresetError, match=message):
        Preset.loads(json.dumps(data), strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PresetWarning)
        loaded = Preset.loads(json.dumps(data))
    assert loaded.predictor is None
    with pytest.raises(PresetError, match=message):
        loaded.check_auto()


def test_a_predictor_for_other_features_is_refused_at_use(fitted):
    _, features, _, preset = fitted
    fewer = dict(list(features[0].items())[:-1])
    with pytest.raises(PresetError, match="re-fit"):
        preset.choose(fewer)


def test_saving_keeps_a_fitted_predictor_and_history(fitted, tmp_path):
    """Re-running a finished study writes its preset without a predictor: the fitted one must stay. A new fit
    replaces the file and keeps the old one in history/; fitting never replaces another study's preset silently."""
    from autotune.presets.store import save_preset

    land, features, predictor, with_predictor = fitted
    bare = with_predictor.with_predictor(None)
    first = save_preset(bare, tmp_path)
    assert first.action == "added"
    fitted_once = save_preset(with_predictor, tmp_path, same_result_only=True)
    assert fitted_once.action == "replaced" and fitted_once.previous is None  # nothing of the bare file is lost
    rerun = save_preset(bare, tmp_path)
    assert rerun.action == "unchanged" and "predictor kept" in rerun.reason
    assert Preset.load(first.path).content_hash == with_predictor.content_hash
    refit, _ = fit_predictor(land, features, [f"img{i}" for i in range(60)],
                             pick=land.candidates.index(bare.params("balanced")), repeats=5, seed=1)
    assert refit.to_dict() != predictor.to_dict()
    again = save_preset(bare.with_predictor(refit), tmp_path, same_result_only=True)
    assert again.action == "replaced" and again.previous is not None
    assert Preset.load(again.previous).content_hash == with_predictor.content_hash
    other = Preset.from_front([FrontPoint(GENTLE, {"fidelity": 30.0, "edit_strength": 0.5}, trial=0)],
                              category="change_color", model={"id": "shapes"}, objectives=OBJECTIVES)
    with pytest.raises(PresetError, match="holds a different preset.*--force"):
        save_preset(other.with_predictor(None), tmp_path, same_result_only=True)
    assert Preset.load(first.path).content_hash == bare.with_predictor(refit).content_hash
