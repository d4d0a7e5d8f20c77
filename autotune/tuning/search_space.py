"""The search space of a tuning study, declared in one place and recorded with the study.

The default knobs, the base parameters and the paper points come from the editor's model family
(`SearchSpace.for_editor`, `ModelFamily.defaults_for`). On Stable Diffusion 1.x/2.x (the UNet family) the tuner
searches the guidance pair only:

- `w_src` in [0, 2] in steps of 0.1: the source-branch scale, which SimInversion also uses for inversion. Its
  analysis puts the optimum near 0.5 (plain DDIM inversion sits at 1, or 0); above 2 the inversion drifts badly.
  The step is what makes the inversion cache pay: an inversion depends on the task and w_src only, so trials
  (and workers) that share a w_src share it, and candidates of one batch that share it share one source branch.
  Reconstruction error varies smoothly with w_src (docs/shapes.md), so 0.1 loses nothing that matters.
- `w_tgt` in [1, 12]: the target-branch scale; 7.5 is the usual Stable Diffusion default, 1 means no guidance.

Any other field of `EditParams` can be opened: `method` and `p2p_mode` (choices), `steps` (integer range),
`cross_replace`, `self_replace`, `blend_threshold`, `blend_start`, `reweight` (float ranges); and guidance
schedules: `w_src_end` / `w_tgt_end` turn that scale into a linear ramp from the sampled start to the sampled
end; `w_tgt_begin` / `w_tgt_finish` (fractions of the steps) turn it into an interval schedule (the base
schedule's `outside` scale, 1 for a constant, elsewhere). Knobs that are not searched keep the base `EditParams`.

On SD3 and FLUX.1 (the flow family) the defaults are FlowEdit's knobs: `w_src` on a grid and `w_tgt` around the
loaded model's published setting, and the window `n_max`, `n_min` (fractions of the steps; a sampled `n_min` above
`n_max` is clamped to it); `n_avg` (integer) on request. A knob of the other family's methods is refused.

The space serialises to JSON (`to_dict` / `from_dict`) and is stored on the study as `autotune.search_space`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from autotune.engine.unet.family import FAMILY as UNET
from autotune.errors import InputError
from autotune.guidance import GuidanceSchedule
from autotune.params import FLOW_KNOBS, FLOW_METHODS, METHODS, P2P_KNOBS, P2P_MODES, EditParams

# The default knobs and the paper points enqueued first in every study: the UNet family's (autotune.engine.unet).
DEFAULT_RANGES: dict[str, dict[str, float]] = UNET.search_ranges
PAPER_POINTS: dict[str, dict[str, float]] = UNET.paper_points

# knob -> (kind, lowest allowed, highest allowed); "float" | "int" | "choice"
_KNOBS: dict[str, tuple[str, Any, Any]] = {
    "w_src": ("float", 0.0, math.inf),
    "w_tgt": ("float", 0.0, math.inf),
    "w_src_end": ("float", 0.0, math.inf),
    "w_tgt_end": ("float", 0.0, math.inf),
    "w_src_begin": ("float", 0.0, 1.0),
    "w_src_finish": ("float", 0.0, 1.0),
    "w_tgt_begin": ("float", 0.0, 1.0),
    "w_tgt_finish": ("float", 0.0, 1.0),
    "steps": ("int", 1, 1000),
    "cross_replace": ("float", 0.0, 1.0),
    "self_replace": ("float", 0.0, 1.0),
    "blend_threshold": ("float", 0.0, 1.0),
    "blend_start": ("float", 0.0, 1.0),
    "reweight": ("float", 0.0, math.inf),
    "n_max": ("float", 0.0, 1.0),
    "n_min": ("float", 0.0, 1.0),
    "n_avg": ("int", 1, 64),
    "method": ("choice", METHODS, None),
    "p2p_mode": ("choice", P2P_MODES, None),
}


@dataclass(frozen=True)
class Range:
    """A numeric range [low, high]; `log` samples on a log scale, `step` quantises."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class Choice:
    """A categorical knob."""

    choices: tuple[Any, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}


Knob = Range | Choice


def _parse_knob(name: str, spec: Any) -> Knob:
    if name not in _KNOBS:
        raise InputError(f"search space: unknown knob {name!r}; known: {', '.join(sorted(_KNOBS))}")
    kind, lo_allowed, hi_allowed = _KNOBS[name]
    if isinstance(spec, (Range, Choice)):
        spec = spec.to_dict()
    if isinstance(spec, (list, tuple)):
        spec = {"choices": list(spec)} if kind == "choice" else dict(zip(("low", "high"), spec, strict=False))
    if not isinstance(spec, Mapping):
        raise InputError(f"search space: {name} must be a {{'low', 'high'}} range or a list of choices, got {spec!r}")
    if kind == "choice":
        choices = tuple(spec.get("choices", ()))
        bad = [c for c in choices if c not in lo_allowed]
        if not choices or bad:
            raise InputError(f"search space: {name} choices {list(choices)!r} must be a non-empty subset of "
                             f"{', '.join(lo_allowed)}")
        return Choice(choices)
    unknown = sorted(set(spec) - {"low", "high", "log", "step"})
    if unknown or "low" not in spec or "high" not in spec:
        raise InputError(f"search space: {name} needs 'low' and 'high' (optional 'log', 'step'), got {dict(spec)!r}")
    low, high = spec["low"], spec["high"]
    for label, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"search space: {name} {label}={value!r} must be a finite number")
    if low > high:
        raise InputError(f"search space: {name} has low={low} > high={high}; swap them")
    if low < lo_allowed or high > hi_allowed:
        raise InputError(f"search space: {name} range [{low}, {high}] leaves the allowed range "
                         f"[{lo_allowed}, {hi_allowed}]")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise InputError(f"search space: {name} uses log=True, so low must be > 0 (got {low})")
    step = spec.get("step")
    if kind == "int":
        if low != int(low) or high != int(high):
            raise InputError(f"search space: {name} is a whole number; use integer low/high, got [{low}, {high}]")
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    if step is not None and (step <= 0 or (log and step is not None)):
        raise InputError(f"search space: {name} step={step!r} must be > 0 and cannot be combined with log")
    return Range(low, high, log, step)


@dataclass(frozen=True)
class SearchSpace:
    """The knobs a study searches (`knobs`), the `EditParams` every other knob keeps (`base`), and the published
    settings a new study enqueues first (`points`: name -> knob values; not part of the recorded space)."""

    knobs: dict[str, Knob] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_RANGES.items()})
    base: EditParams = field(default_factory=EditParams)
    points: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: dict(v) for k, v in PAPER_POINTS.items()},
                                              compare=False)

    def __post_init__(self) -> None:
        parsed = {name: _parse_knob(name, spec) for name, spec in dict(self.knobs).items()}
        object.__setattr__(self, "knobs", parsed)
        for g in ("w_src", "w_tgt"):
            if f"{g}_end" in parsed and ({f"{g}_begin", f"{g}_finish"} & parsed.keys()):
                raise InputError(f"search space: {g} can be a linear ramp ({g}_end) or an interval "
                                 f"({g}_begin/{g}_finish), not both")
        if not isinstance(self.base, EditParams):
            raise InputError("search space: base must be an EditParams")
        methods = parsed["method"].choices if "method" in parsed else (self.base.method,)  # type: ignore[union-attr]
        for name in parsed:
            users = [m for m in methods if name not in (P2P_KNOBS if m in FLOW_METHODS else FLOW_KNOBS)]
            if not users:
                kind = "the rectified-flow methods" if name in FLOW_KNOBS else "the UNet methods (Prompt-to-Prompt)"
                raise InputError(f"search space: {name} is a knob of {kind}; the method searched "
                                 f"({', '.join(methods)}) does not use it")

    @classmethod
    def default(cls, base: EditParams | None = None, **overrides: Any) -> SearchSpace:
        """The UNet family's default (w_src, w_tgt) space, with `overrides` knob -> range/choices added or replaced
        (an editor's own defaults: `for_editor`)."""
        knobs: dict[str, Any] = {k: dict(v) for k, v in DEFAULT_RANGES.items()}
        knobs.update(overrides)
        return cls(knobs, base or EditParams())

    @classmethod
    def for_editor(cls, editor: Any, base: EditParams | None = None, **overrides: Any) -> SearchSpace:
        """The default space of the editor's model family for the loaded model and `base.method` (default: the
        family's own method), with `overrides` knob -> range/choices added or replaced. `base` defaults to the
        published setting; the paper points are those of the searched method(s). An editor without `defaults`
        (a test double) gets the UNet family's."""
        method = base.method if base is not None else None
        defaults = family_defaults(editor, method)
        knobs: dict[str, Any] = {k: dict(v) for k, v in defaults.search_ranges.items()}
        knobs.update(overrides)
        points = dict(defaults.paper_points)
        if "method" in overrides:
            spec = _parse_knob("method", overrides["method"])
            for choice in spec.choices:  # type: ignore[union-attr]
                points.update(family_defaults(editor, choice).paper_points)
        return cls(knobs, base or defaults.params, points)

    # -- Optuna ---------------------------------------------------------------------------------------------------
    def distributions(self) -> dict[str, BaseDistribution]:
        """The Optuna distributions, for `study.ask(fixed_distributions=...)`."""
        out: dict[str, BaseDistribution] = {}
        for name, knob in self.knobs.items():
            if isinstance(knob, Choice):
                out[name] = CategoricalDistribution(knob.choices)
            elif _KNOBS[name][0] == "int":
                out[name] = IntDistribution(int(knob.low), int(knob.high), log=knob.log, step=int(knob.step or 1))
            else:
                out[name] = FloatDistribution(knob.low, knob.high, log=knob.log, step=knob.step)
        return out

    def suggest(self, trial: optuna.Trial) -> EditParams:
        """Sample every knob on `trial` (enqueued values come back as they were fixed); the full parameters."""
        for name, dist in self.distributions().items():
            if isinstance(dist, CategoricalDistribution):
                trial.suggest_categorical(name, list(dist.choices))
            elif isinstance(dist, IntDistribution):
                trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        return self.to_params(trial.params)

    def to_params(self, values: Mapping[str, Any]) -> EditParams:
        """Map sampled knob values to an `EditParams` (base values for everything not searched)."""
        values = dict(values)
        for name, knob in self.knobs.items():
            if isinstance(knob, Range) and knob.step and isinstance(values.get(name), float):
                # Optuna returns low + k * step in floating point (0.6000000000000001); presets should read 0.6
                values[name] = round(knob.low + round((values[name] - knob.low) / knob.step) * knob.step, 10)
        changes: dict[str, Any] = {k: v for k, v in values.items() if k in EditParams.__dataclass_fields__}
        for g in ("w_src", "w_tgt"):
            base: GuidanceSchedule = getattr(self.base, g)
            start = float(values.get(g, base.start))
            if f"{g}_end" in values:
                changes[g] = GuidanceSchedule.linear(start, float(values[f"{g}_end"]))
            elif f"{g}_begin" in values or f"{g}_finish" in values:
                begin = float(values.get(f"{g}_begin", base.begin))
                finish = float(values.get(f"{g}_finish", base.finish))
                begin, finish = min(begin, finish), max(begin, finish)
                changes[g] = GuidanceSchedule.interval(start, begin, finish, base.outside)
            elif g in values and not base.is_constant:
                changes[g] = GuidanceSchedule(base.kind, start, start if base.kind != "linear" else base.end,
                                              base.begin, base.finish, base.outside)
        if "n_min" in changes or "n_max" in changes:  # FlowEdit's window needs n_min <= n_max
            n_max = changes.get("n_max", self.base.n_max)
            changes["n_min"] = min(changes.get("n_min", self.base.n_min), n_max)
        try:
            return self.base.with_(**changes)
        except (TypeError, ValueError) as exc:
            raise InputError(f"search space: values {values} give invalid parameters: {exc}") from exc

    def paper_points(self) -> list[tuple[str, dict[str, Any]]]:
        """The paper points to enqueue, as (name, knob values); empty unless both w_src and w_tgt are searched.

        A point's values of searched knobs are used; other searched knobs are fixed to their base values when those
        lie inside the range, so the paper points are the published settings (knobs not searched keep the base). A
        point outside the searched range is left out (the sampler never goes there), as is a point that names a
        method the study does not run.
        """
        if not {"w_src", "w_tgt"} <= self.knobs.keys():
            return []
        out = []
        for name, point in self.points.items():
            method = point.get("method")
            if method is not None and not (self.contains("method", method) if "method" in self.knobs
                                           else method == self.base.method):
                continue
            pair = {k: v for k, v in point.items() if k in self.knobs}
            if not all(self.contains(k, v) for k, v in pair.items()):
                continue
            values: dict[str, Any] = dict(pair)
            base = self.base.to_dict()
            for knob in self.knobs:
                if knob in values:
                    continue
                if knob == "method" and self.contains("method", "siminversion"):
                    values[knob] = "siminversion"  # both points are (w_src, w_tgt) of the SimInversion framework
                elif knob in base and not isinstance(base[knob], dict) and self.contains(knob, base[knob]):
                    values[knob] = base[knob]
            out.append((name, values))
        return out

    def contains(self, knob: str, value: Any) -> bool:
        spec = self.knobs[knob]
        if isinstance(spec, Choice):
            return value in spec.choices
        return isinstance(value, (int, float)) and spec.low <= value <= spec.high

    def grid(self, points: int = 5) -> dict[str, list[Any]]:
        """A grid for `GridSampler`: `points` values per numeric knob (paper-point values added), choices as is."""
        out: dict[str, list[Any]] = {}
        for name, knob in self.knobs.items():
            if isinstance(knob, Choice):
                out[name] = list(knob.choices)
                continue
            if _KNOBS[name][0] == "int":
                vals = sorted({round(knob.low + (knob.high - knob.low) * i / max(points - 1, 1))
                               for i in range(points)})
            elif knob.log:
                vals = [float(knob.low * (knob.high / knob.low) ** (i / max(points - 1, 1))) for i in range(points)]
            else:
                vals = [float(knob.low + (knob.high - knob.low) * i / max(points - 1, 1)) for i in range(points)]
            for pair in self.points.values():
                if name in pair and self.contains(name, pair[name]):
                    vals.append(pair[name])
            out[name] = sorted({round(v, 6) if isinstance(v, float) else v for v in vals})
        return out

    # -- serialisation --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {name: knob.to_dict() for name, knob in self.knobs.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: EditParams | None = None,
                  points: Mapping[str, Mapping[str, Any]] | None = None) -> SearchSpace:
        if not isinstance(data, Mapping) or not data:
            raise InputError(f"search space must be a non-empty mapping of knob -> range, got {data!r}")
        if points is None:
            return cls(dict(data), base or EditParams())
        return cls(dict(data), base or EditParams(), {k: dict(v) for k, v in points.items()})


def family_defaults(editor: Any, method: str | None) -> Any:
    """`editor.defaults(method)`, or the UNet family's for an editor without it (a test double)."""
    defaults = getattr(editor, "defaults", None)
    if defaults is None:
        return UNET.defaults_for({}, method)
    return defaults(method)


def parse_knob_arg(text: str) -> tuple[str, dict[str, Any]]:
    """Parse a CLI `--space` value: `w_src=0:2`, `steps=10:50:10` (low:high[:step]), `w_tgt=1:12:log`,
    `method=siminversion,ddim`."""
    if "=" not in text:
        raise InputError(f"--space {text!r}: write KNOB=LOW:HIGH or KNOB=CHOICE,CHOICE (e.g. w_src=0:2)")
    name, value = (part.strip() for part in text.split("=", 1))
    if name not in _KNOBS:
        raise InputError(f"--space {text!r}: unknown knob {name!r}; known: {', '.join(sorted(_KNOBS))}")
    if _KNOBS[name][0] == "choice":
        return name, {"choices": [v.strip() for v in value.split(",") if v.strip()]}
    parts = value.split(":")
    try:
        if len(parts) < 2:
            raise ValueError
        spec: dict[str, Any] = {"low": float(parts[0]), "high": float(parts[1])}
        if len(parts) == 3 and parts[2] == "log":
            spec["log"] = True
        elif len(parts) == 3:
            spec["step"] = float(parts[2])
        elif len(parts) > 3:
            raise ValueError
    except ValueError as exc:
        raise InputError(f"--space {text!r}: write {name}=LOW:HIGH, {name}=LOW:HIGH:STEP or {name}=LOW:HIGH:log") \
            from exc
    if _KNOBS[name][0] == "int":
        spec = {k: (int(v) if isinstance(v, float) and v == int(v) else v) for k, v in spec.items()}
    _parse_knob(name, spec)  # the range itself, checked now
    return name, spec
