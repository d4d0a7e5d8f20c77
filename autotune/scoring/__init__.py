"""Scorers: PIE-Bench's fidelity and edit-strength metrics behind one small contract (`Scorer`)."""

from autotune.scoring.base import (
    METRICS,
    MetricInfo,
    Scorer,
    display_value,
    metric_info,
    register_metric,
)
from autotune.scoring.piebench_scorer import ALL_METRICS, PieBenchScorer

__all__ = [
    "ALL_METRICS",
    "METRICS",
    "MetricInfo",
    "PieBenchScorer",
    "Scorer",
    "display_value",
    "metric_info",
    "register_metric",
]
