"""One candidate's editing parameters: the method, its guidance pair, and the knobs of its model family.

These are what the tuner searches and what a preset stores. Two sets of knobs exist, one per model family:
Prompt-to-Prompt's (`cross_replace` ... `null_text_iterations`) for the UNet methods, and the window, noise draws
and seed (`n_max`, `n_min`, `n_avg`, `noise_seed`) for the rectified-flow methods. A method uses only its family's
set: the other one must stay at its defaults (a clear error otherwise) and is left out of `to_dict`, so presets and
studies of the UNet methods serialise exactly as before the flow methods existed. Defaults are PIE-Bench's P2P
settings with SimInversion's guidance pair (w_src = 0.5 for inversion and the source branch, w_tgt = 7.5), and
FlowEdit's published SD3 window (33 of 50 steps); an editor fills in its own model's defaults
(`Editor.default_params`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from autotune.errors import InputError
from autotune.guidance import Guidance, GuidanceSchedule, as_schedule

UNET_METHODS = ("siminversion", "ddim", "negative_prompt", "null_text", "direct")
FLOW_METHODS = ("flowedit", "flow_siminversion")
METHODS = UNET_METHODS + FLOW_METHODS
P2P_MODES = ("refine", "replace")

# The knobs of each family's methods besides (method, w_src, w_tgt, steps): the other family's must keep defaults.
P2P_KNOBS = ("cross_replace", "self_replace", "reweight", "blend_threshold", "blend_start", "p2p_mode",
             "null_text_iterations")
FLOW_KNOBS = ("n_max", "n_min", "n_avg", "noise_seed")

# What each method fixes, so that "ddim" means the paper's DDIM baseline whatever w_src says.
METHOD_NOTES = {
    "siminversion": "invert at w_src, source branch at w_src, target branch at w_tgt",
    "ddim": "invert at guidance 1, both branches at w_tgt (w_src is ignored)",
    "negative_prompt": "invert at guidance 1, the source prompt replaces the null prompt (w_src ignored)",
    "null_text": "invert at guidance 1, optimise the null embedding per step so the source branch at w_src retraces it",
    "direct": "invert at guidance 1, add the per-step gap back to the source branch (run at w_src)",
    "flowedit": "no inversion: over the window [n_min, n_max) move the image by the target velocity at w_tgt minus "
    "the source velocity at w_src, averaged over n_avg noise draws (FlowEdit)",
    "flow_siminversion": "Euler inversion of the flow ODE at w_src over the last n_max of the steps, source branch at "
    "w_src, target branch at w_tgt (n_min, n_avg and noise_seed are ignored)",
}


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InputError(f"{name}={value!r} must be a fraction of the steps between 0 and 1")


def _check_count(name: str, value: int, low: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name}={value!r} must be a whole number >= {low} ({hint})")


def window_steps(fraction: float, steps: int) -> int:
    """A window edge given as a fraction of the steps, in steps: rounded half up, so 33/50 of 50 steps is 33 and
    24/28 of 28 is 24 whatever the float error (the flow methods' `n_max` and `n_min`)."""
    return min(steps, max(0, math.floor(fraction * steps + 0.5)))


@dataclass(frozen=True)
class EditParams:
    """Parameters of one edit.

    `w_src` / `w_tgt` are numbers or `GuidanceSchedule`s. `steps` is the number of sampling steps.

    Prompt-to-Prompt (UNet methods): `cross_replace` and `self_replace` are the fractions of steps (from the start)
    during which the target branch takes the source branch's cross- and self-attention maps; `reweight` scales the
    target blend word's cross-attention; `blend_threshold` is LocalBlend's mask threshold; `blend_start` the
    fraction of steps before LocalBlend starts.

    Rectified flow (`flowedit`, `flow_siminversion`): `n_max` and `n_min` are FlowEdit's window as fractions of the
    steps (so a preset moves between step counts): the edit runs over the last `n_max` of the steps, and FlowEdit
    samples the last `n_min` of them as plain target sampling (`n_min <= n_max`; `window_steps` turns a fraction
    into steps). `n_avg` is the number of noise draws FlowEdit averages per step, drawn from `noise_seed`.
    `flow_siminversion` inverts over the last `n_max` of the steps and ignores the other three.
    """

    method: str = "siminversion"
    w_src: Guidance = 0.5
    w_tgt: Guidance = 7.5
    steps: int = 50
    cross_replace: float = 0.4
    self_replace: float = 0.6
    reweight: float = 2.0
    blend_threshold: float = 0.3
    blend_start: float = 0.2
    p2p_mode: str = "refine"
    null_text_iterations: int = 10
    n_max: float = 0.66  # FlowEdit's published SD3 window: 33 of 50 steps
    n_min: float = 0.0
    n_avg: int = 1
    noise_seed: int = 0
    extras: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        object.__setattr__(self, "w_src", as_schedule(self.w_src, "w_src"))
        object.__setattr__(self, "w_tgt", as_schedule(self.w_tgt, "w_tgt"))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise InputError(f"steps={self.steps!r} must be a whole number >= 1 (PIE-Bench uses 50)")
        _check_fraction("cross_replace", self.cross_replace)
        _check_fraction("self_replace", self.self_replace)
        _check_fraction("blend_threshold", self.blend_threshold)
        _check_fraction("blend_start", self.blend_start)
        if not isinstance(self.reweight, (int, float)) or math.isnan(self.reweight) or self.reweight < 0:
            raise InputError(f"reweight={self.reweight!r} must be a number >= 0 (1 = no re-weighting)")
        if self.p2p_mode not in P2P_MODES:
            raise InputError(f"p2p_mode={self.p2p_mode!r}: use 'refine' (PIE-Bench) or 'replace' (word swap)")
        _check_count("null_text_iterations", self.null_text_iterations, 0, "the paper uses 10")
        _check_fraction("n_max", self.n_max)
        _check_fraction("n_min", self.n_min)
        if self.n_min > self.n_max:
            raise InputError(f"n_min={self.n_min} > n_max={self.n_max}: FlowEdit's window [n_min, n_max) needs "
                             "n_min <= n_max (both fractions of the steps; FlowEdit publishes n_min = 0)")
        _check_count("n_avg", self.n_avg, 1, "noise draws averaged per step; FlowEdit publishes 1")
        _check_count("noise_seed", self.noise_seed, 0, "the seed of FlowEdit's noise draws")
        own, other = (FLOW_KNOBS, P2P_KNOBS) if self.method in FLOW_METHODS else (P2P_KNOBS, FLOW_KNOBS)
        changed = [name for name in other if getattr(self, name) != _DEFAULTS[name]]
        if changed:
            kind = "Prompt-to-Prompt knobs of the UNet methods" if other is P2P_KNOBS else \
                "knobs of the rectified-flow methods"
            methods = UNET_METHODS if other is P2P_KNOBS else FLOW_METHODS
            raise InputError(f"{', '.join(changed)}: {kind} ({', '.join(methods)}); method {self.method!r} does "
                             f"not use them. Leave them at their defaults, or set this method's own knobs "
                             f"({', '.join(own)})")

    @property
    def family_knobs(self) -> tuple[str, ...]:
        """The knobs of this method's family (besides method, w_src, w_tgt and steps)."""
        return FLOW_KNOBS if self.method in FLOW_METHODS else P2P_KNOBS

    @property
    def window(self) -> tuple[int, int]:
        """The flow methods' window in steps, (first edited step, first plain-sampling step), counted in sampling
        order: FlowEdit edits steps [steps - n_max, steps - n_min) and samples the target alone after them;
        `flow_siminversion` starts both branches at step steps - n_max of its inversion."""
        return self.steps - window_steps(self.n_max, self.steps), self.steps - window_steps(self.n_min, self.steps)

    @property
    def source_scale(self) -> GuidanceSchedule:
        """Guidance of the source branch (and the null-text optimisation target)."""
        if self.method in ("ddim", "negative_prompt"):
            return self.w_tgt
        return self.w_src  # type: ignore[return-value]

    @property
    def inversion_scale(self) -> GuidanceSchedule:
        """Guidance of the inversion: w_src for SimInversion (and its flow form), 1 for the classic baselines."""
        if self.method in ("siminversion", "flow_siminversion"):
            return self.w_src  # type: ignore[return-value]
        return GuidanceSchedule.constant(1.0)

    def source_group(self) -> tuple:
        """What the inversion and the source branch depend on besides the image, the source prompt and the steps:
        candidates that share it share that work (the editor's cache keys; the tuner's cost-aware sampler).

        FlowEdit: the source velocities, per step and noise draw, depend on w_src and the noise seed (not on the
        window or `n_avg`: a candidate reads the steps and draws it needs). `flow_siminversion`: the inversion at
        w_src and the source branch from its depth (the window's first step)."""
        if self.method == "flowedit":
            return (self.method, json.dumps(self.w_src.to_dict(), sort_keys=True), self.noise_seed)  # type: ignore
        if self.method == "flow_siminversion":
            return (self.method, json.dumps(self.w_src.to_dict(), sort_keys=True), self.window[0])  # type: ignore
        iterations = self.null_text_iterations if self.method == "null_text" else None
        scales = (json.dumps(self.inversion_scale.to_dict(), sort_keys=True),
                  json.dumps(self.source_scale.to_dict(), sort_keys=True))  # exact, as the inversion cache's key
        return (self.method, *scales, iterations)

    def with_(self, **changes: Any) -> "EditParams":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields that apply to this method's family (the other family's knobs are at their defaults)."""
        out: dict[str, Any] = {}
        skipped = P2P_KNOBS if self.method in FLOW_METHODS else FLOW_KNOBS
        for f in fields(self):
            if f.name in skipped:
                continue
            value = getattr(self, f.name)
            if isinstance(value, GuidanceSchedule):
                value = value.start if value.is_constant else value.to_dict()
            if f.name == "extras" and not value:
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EditParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown edit parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(data)
        for key in ("w_src", "w_tgt"):
            if isinstance(values.get(key), dict):
                values[key] = GuidanceSchedule.from_dict(values[key])
        return cls(**values)


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(EditParams) if f.name in P2P_KNOBS + FLOW_KNOBS}
