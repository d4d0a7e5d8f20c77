"""One candidate's editing parameters: the method, its guidance pair and the Prompt-to-Prompt knobs.

These are what the tuner searches and what a preset stores. Defaults are PIE-Bench's P2P settings
with SimInversion's guidance pair (w_src = 0.5 for inversion and the source branch, w_tgt = 7.5).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from autotune.errors import InputError
from autotune.guidance import Guidance, GuidanceSchedule, as_schedule

METHODS = ("siminversion", "ddim", "negative_prompt", "null_text", "direct")
P2P_MODES = ("refine", "replace")

# What each method fixes, so that "ddim" means the paper's DDIM baseline whatever w_src says.
METHOD_NOTES = {
    "siminversion": "invert at w_src, source branch at w_src, target branch at w_tgt",
    "ddim": "invert at guidance 1, both branches at w_tgt (w_src is ignored)",
    "negative_prompt": "invert at guidance 1, the source prompt replaces the null prompt (w_src ignored)",
    "null_text": "invert at guidance 1, optimise the null embedding per step so the source branch at w_src retraces it",
    "direct": "invert at guidance 1, add the per-step gap back to the source branch (run at w_src)",
}


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InputError(f"{name}={value!r} must be a fraction of the steps between 0 and 1")


@dataclass(frozen=True)
class EditParams:
    """Parameters of one edit.

    `w_src` / `w_tgt` are numbers or `GuidanceSchedule`s. `cross_replace` and `self_replace` are the
    fractions of steps (from the start) during which the target branch takes the source branch's
    cross- and self-attention maps; `reweight` scales the target blend word's cross-attention;
    `blend_threshold` is LocalBlend's mask threshold; `blend_start` the fraction of steps before
    LocalBlend starts.
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
        iterations = self.null_text_iterations
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise InputError(f"null_text_iterations={iterations!r} must be a whole number >= 0 (the paper uses 10)")

    @property
    def source_scale(self) -> GuidanceSchedule:
        """Guidance of the source branch (and the null-text optimisation target)."""
        if self.method in ("ddim", "negative_prompt"):
            return self.w_tgt
        return self.w_src  # type: ignore[return-value]

    @property
    def inversion_scale(self) -> GuidanceSchedule:
        """Guidance of the DDIM inversion: w_src for SimInversion, 1 for the classic baselines."""
        if self.method == "siminversion":
            return self.w_src  # type: ignore[return-value]
        return GuidanceSchedule.constant(1.0)

    def source_group(self) -> tuple:
        """What the inversion and the source branch depend on besides the image, the source prompt and the steps:
        candidates that share it share that work (the editor's cache keys; the tuner's cost-aware sampler)."""
        iterations = self.null_text_iterations if self.method == "null_text" else None
        scales = (json.dumps(self.inversion_scale.to_dict(), sort_keys=True),
                  json.dumps(self.source_scale.to_dict(), sort_keys=True))  # exact, as the inversion cache's key
        return (self.method, *scales, iterations)

    def with_(self, **changes: Any) -> "EditParams":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
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
