"""Pareto geometry against independent references: a brute-force dominance matrix and Optuna's hypervolume."""

from __future__ import annotations

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume

from autotune import pareto


def _brute_front(points: np.ndarray) -> list[int]:
    geq = (points[:, None, :] >= points[None, :, :]).all(-1)  # geq[j, i]: j at least as good as i everywhere
    gt = (points[:, None, :] > points[None, :, :]).any(-1)
    dominated = (geq & gt).any(0)
    return [i for i in range(len(points)) if not dominated[i]]


@pytest.mark.parametrize("seed", range(5))
def test_front_is_the_set_no_point_dominates(seed):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 6, size=(40, 2)).astype(float)  # many ties: equal points must all stay
    assert pareto.front_indices(points.tolist()) == _brute_front(points)
    keyed = {100 + i: p for i, p in enumerate(points)}
    assert pareto.front_keys(keyed) == [100 + i for i in _brute_front(points)]


def test_dominance_is_strict_and_weak_dominance_includes_equality():
    assert pareto.dominates((2, 1), (1, 1)) and not pareto.dominates((1, 1), (1, 1))
    assert not pareto.dominates((2, 0), (1, 1))
    assert pareto.weakly_dominates((1, 1), (1, 1)) and not pareto.weakly_dominates((1, 0), (1, 1))


def test_orientation_turns_minimised_objectives():
    assert pareto.orient((3.0, 0.2), ("minimize", "maximize")) == (-3.0, 0.2)
    assert list(pareto.signs(["maximize", "minimize"])) == [1.0, -1.0]


@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_matches_optuna(seed):
    points = np.random.default_rng(seed).random((12, 2))
    ref = np.array([-0.1, -0.2])
    # Optuna minimises: negate both the points and the reference.
    assert pareto.hypervolume(points.tolist(), ref.tolist()) == pytest.approx(compute_hypervolume(-points, -ref))
