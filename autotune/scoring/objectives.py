"""The two objectives of a tuning study, fidelity and edit strength, built from a scorer's metrics.

Each objective is a weighted sum of metrics, applied exactly as written: `value = sum(weight * metric)`, per task,
then averaged over the tasks (the mean of the sums equals the sum of the means, so the study's values and the
per-task values agree). A metric whose own direction differs from its objective's must carry a negative weight
(e.g. a "maximize" fidelity from PSNR and LPIPS would be {"psnr": 1, "lpips": -10}); a
positive weight there is refused, since it would reward the wrong thing.

Documented defaults (the first whose metrics the scorer provides is used):

- PIE-Bench scorer: fidelity = structure_distance + lpips (background LPIPS) (minimize; both are distances in similar
  ranges, ~0.01-0.3), edit strength = clip_edited (maximize; CLIP score of the edited region, 0-100).
- shapes scorer: fidelity = background_psnr (maximize; PSNR outside the edited region, continuous, where
  `preservation`, the share of other objects read back unchanged, moves in coarse steps), edit strength =
  full_success (maximize; share of tasks whose edit is read back as asked with nothing else changed and nothing
  added). Where ground truth says whether an edit is right, edit strength counts only right edits: edit_success
  would reward a setting that makes the edit and breaks the rest (docs/tuning.md, Objectives). Every metric
  stays on the trial.

Pass `objectives=` to `tune` (or `--fidelity` / `--strength` on the CLI) to choose other metrics or weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.errors import InputError

DIRECTIONS = ("maximize", "minimize")
NAMES = ("fidelity", "edit_strength")

# (fidelity, edit_strength) per scorer family: name -> ((direction, metrics), (direction, metrics))
DEFAULTS: dict[str, tuple[tuple[str, dict[str, float]], tuple[str, dict[str, float]]]] = {
    "piebench": (("minimize", {"structure_distance": 1.0, "lpips": 1.0}),
                 ("maximize", {"clip_edited": 1.0})),
    "shapes": (("maximize", {"background_psnr": 1.0}), ("maximize", {"full_success": 1.0})),
}


@dataclass(frozen=True)
class Objective:
    """One objective: `name`, `direction`, and `metrics` metric -> weight (value = sum of weight * metric)."""

    name: str
    direction: str
    metrics: dict[str, float]

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise InputError(f"objective name {self.name!r} must be one of {', '.join(NAMES)}")
        if self.direction not in DIRECTIONS:
            raise InputError(f"objective {self.name}: direction {self.direction!r} must be maximize or minimize")
        if not isinstance(self.metrics, Mapping) or not self.metrics:
            raise InputError(f"objective {self.name}: give at least one metric with a weight")
        for metric, weight in self.metrics.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight == 0:
                raise InputError(f"objective {self.name}: weight of {metric!r} must be a non-zero number, "
                                 f"got {weight!r}")
        object.__setattr__(self, "metrics", {str(k): float(v) for k, v in self.metrics.items()})

    def value(self, metrics: Mapping[str, float]) -> float:
        """The objective for one task's (or the mean) metrics; NaN if a metric is missing or NaN."""
        total = 0.0
        for metric, weight in self.metrics.items():
            v = metrics.get(metric, math.nan)
            total += weight * float(v)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "direction": self.direction, "metrics": dict(self.metrics)}


@dataclass(frozen=True)
class Objectives:
    """Fidelity and edit strength, in that order (the study's value order)."""

    fidelity: Objective
    edit_strength: Objective

    @property
    def directions(self) -> list[str]:
        return [self.fidelity.direction, self.edit_strength.direction]

    def __iter__(self):  # iterate in value order
        return iter((self.fidelity, self.edit_strength))

    def values(self, metrics: Mapping[str, float]) -> tuple[float, float]:
        return self.fidelity.value(metrics), self.edit_strength.value(metrics)

    def metric_names(self) -> list[str]:
        return sorted(set(self.fidelity.metrics) | set(self.edit_strength.metrics))

    def check_against(self, scorer_metrics: Mapping[str, str]) -> None:
        """Every metric must exist, and its weight's sign must agree with its direction and the objective's."""
        for obj in self:
            for metric, weight in obj.metrics.items():
                if metric not in scorer_metrics:
                    raise InputError(f"objective {obj.name}: the scorer has no metric {metric!r}; it has "
                                     f"{', '.join(sorted(scorer_metrics))}")
                agrees = scorer_metrics[metric] == obj.direction
                if (weight > 0) != agrees:
                    raise InputError(
                        f"objective {obj.name} ({obj.direction}): metric {metric!r} is to {scorer_metrics[metric]}, "
                        f"so its weight must be {'positive' if agrees else 'negative'}, got {weight:g}")

    def to_list(self) -> list[dict[str, Any]]:
        """The study attr `autotune.objectives`."""
        return [self.fidelity.to_dict(), self.edit_strength.to_dict()]

    @classmethod
    def from_spec(cls, spec: Any) -> Objectives:
        """From an `Objectives`, a list of two {name, direction, metrics} dicts, or {name: {direction, metrics}}."""
        if isinstance(spec, Objectives):
            return spec
        if isinstance(spec, Mapping):
            spec = [{"name": name, **dict(value)} for name, value in spec.items()]
        if not isinstance(spec, Sequence) or isinstance(spec, str):
            raise InputError(f"objectives must be a list of {{name, direction, metrics}}, got {spec!r}")
        by_name: dict[str, Objective] = {}
        for item in spec:
            obj = item if isinstance(item, Objective) else Objective(item.get("name"), item.get("direction"),
                                                                     item.get("metrics"))
            by_name[obj.name] = obj
        missing = [n for n in NAMES if n not in by_name]
        if missing:
            raise InputError(f"objectives: missing {', '.join(missing)}; give both fidelity and edit_strength")
        return cls(by_name["fidelity"], by_name["edit_strength"])


def default_objectives(scorer_metrics: Mapping[str, str]) -> Objectives:
    """The documented default for a scorer, chosen by which metrics it provides."""
    for (fdir, fmetrics), (sdir, smetrics) in DEFAULTS.values():
        if set(fmetrics) | set(smetrics) <= set(scorer_metrics):
            return Objectives(Objective("fidelity", fdir, fmetrics), Objective("edit_strength", sdir, smetrics))
    raise InputError(
        f"no default objectives for a scorer with metrics {', '.join(sorted(scorer_metrics))}; pass objectives="
        "[{'name': 'fidelity', 'direction': ..., 'metrics': {...}}, {'name': 'edit_strength', ...}]")


def parse_objective_arg(name: str, text: str) -> Objective:
    """CLI form: `minimize:structure_distance=1,lpips=1` or `maximize:clip_edited`."""
    direction, _, rest = text.partition(":")
    if direction not in DIRECTIONS or not rest:
        raise InputError(f"--{name.replace('_', '-')} {text!r}: write DIRECTION:METRIC[=WEIGHT],... "
                         "e.g. maximize:clip_edited or minimize:structure_distance=1,lpips=1")
    metrics: dict[str, float] = {}
    for part in rest.split(","):
        metric, _, weight = part.partition("=")
        try:
            metrics[metric.strip()] = float(weight) if weight else 1.0
        except ValueError as exc:
            raise InputError(f"--{name.replace('_', '-')} {text!r}: weight {weight!r} is not a number") from exc
    return Objective(name, direction, metrics)
