"""Classifier-free guidance as a value over sampling steps.

A number means a constant scale. A schedule lets the scale vary with the step, e.g. a linear
ramp or guidance applied only inside an interval (elsewhere the branch runs at scale `outside`).
Steps are counted in sampling (denoising) order: step 0 is the noisiest; inversion uses the scale
of the denoising step that shares its timestep, so both directions see the same guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from autotune.errors import InputError


@dataclass(frozen=True)
class GuidanceSchedule:
    """`kind` is "constant", "linear" (start -> end across the steps) or "interval"
    (`start` inside the fraction range [begin, end), `outside` elsewhere)."""

    kind: str = "constant"
    start: float = 7.5
    end: float = 7.5
    begin: float = 0.0
    finish: float = 1.0
    outside: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "linear", "interval"):
            raise InputError(f"guidance schedule kind must be constant, linear or interval, got {self.kind!r}")
        for name in ("start", "end", "outside"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise InputError(f"guidance scale {name}={value!r} must be a number >= 0")
        if not (0.0 <= self.begin <= self.finish <= 1.0):
            raise InputError(f"guidance interval [{self.begin}, {self.finish}) must satisfy 0 <= begin <= finish <= 1")

    @classmethod
    def constant(cls, scale: float) -> "GuidanceSchedule":
        return cls("constant", float(scale), float(scale))

    @classmethod
    def linear(cls, start: float, end: float) -> "GuidanceSchedule":
        return cls("linear", float(start), float(end))

    @classmethod
    def interval(cls, scale: float, begin: float, finish: float, outside: float = 1.0) -> "GuidanceSchedule":
        return cls("interval", float(scale), float(scale), float(begin), float(finish), float(outside))

    def scale_at(self, step: int, num_steps: int) -> float:
        """The guidance scale at denoising step `step` of `num_steps`."""
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            frac = step / (num_steps - 1) if num_steps > 1 else 0.0
            return self.start + (self.end - self.start) * frac
        frac = step / num_steps
        return self.start if self.begin <= frac < self.finish else self.outside

    def scales(self, num_steps: int) -> list[float]:
        return [self.scale_at(i, num_steps) for i in range(num_steps)]

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant"

    def to_dict(self) -> dict:
        if self.is_constant:
            return {"kind": "constant", "scale": self.start}
        if self.kind == "linear":
            return {"kind": "linear", "start": self.start, "end": self.end}
        return {
            "kind": "interval",
            "scale": self.start,
            "begin": self.begin,
            "end": self.finish,
            "outside": self.outside,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "GuidanceSchedule":
        kind = data.get("kind", "constant")
        if kind == "constant":
            return cls.constant(data["scale"])
        if kind == "linear":
            return cls.linear(data["start"], data["end"])
        if kind == "interval":
            return cls.interval(data["scale"], data["begin"], data["end"], data.get("outside", 1.0))
        raise InputError(f"unknown guidance schedule kind {kind!r}; use constant, linear or interval")

    def __str__(self) -> str:
        if self.is_constant:
            return f"{self.start:g}"
        if self.kind == "linear":
            return f"linear({self.start:g}->{self.end:g})"
        return f"interval({self.start:g} in [{self.begin:g},{self.finish:g}), else {self.outside:g})"


Guidance = Union[float, int, GuidanceSchedule]


def as_schedule(value: Guidance, name: str = "guidance") -> GuidanceSchedule:
    """Turn a number or schedule into a schedule, with a clear error for anything else."""
    if isinstance(value, GuidanceSchedule):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number or a GuidanceSchedule, got {type(value).__name__}")
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise InputError(f"{name}={value} is not a valid guidance scale: use a finite number >= 0 (e.g. 0.5 or 7.5)")
    return GuidanceSchedule.constant(float(value))
