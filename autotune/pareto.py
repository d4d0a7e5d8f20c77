"""Pareto geometry in one home: orientation, dominance, the non-dominated front and the 2-D hypervolume.

Every function but `orient` takes points already oriented so that larger is better on every axis (a minimised
objective multiplied by -1), which is how the tuner, the pruner, the presets and the report all compare them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def signs(directions: Sequence[str]) -> np.ndarray:
    """+1 for each "maximize" objective, -1 for each "minimize" one."""
    return np.array([1.0 if d == "maximize" else -1.0 for d in directions])


def orient(values: Sequence[float], directions: Sequence[str]) -> tuple[float, ...]:
    """`values` turned so that larger is better on every axis."""
    return tuple(float(v) if d == "maximize" else -float(v) for v, d in zip(values, directions, strict=True))


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """`a` is at least as good as `b` on every axis and better on one."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(np.all(x >= y) and np.any(x > y))


def weakly_dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """`a` is at least as good as `b` on every axis (equal points included)."""
    return bool(np.all(np.asarray(a, dtype=float) >= np.asarray(b, dtype=float)))


def front_indices(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates, in their order (equal points all stay)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def front_keys(points: Mapping[int, Sequence[float]]) -> list[int]:
    """`front_indices` for points keyed by (e.g.) trial number: the keys of the non-dominated ones."""
    keys = list(points)
    return [keys[i] for i in front_indices([points[k] for k in keys])]


def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Area dominated by 2-D `points` above the reference point `ref`."""
    area, best_y = 0.0, ref[1]
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y and x > ref[0]:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area
