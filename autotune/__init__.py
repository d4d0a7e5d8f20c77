"""autotune: tune the source/target guidance of inversion-based image editing, per edit category.

The public API is below; heavy modules (diffusers, optuna) load on first use, so `import autotune` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from autotune.guidance import GuidanceSchedule
from autotune.params import EditParams
from autotune.task import CATEGORIES, EditTask

__version__ = "0.1.0"

_LAZY = {
    "Editor": "autotune.engine.editor",
    "EditResult": "autotune.engine.editor",
    "Inversion": "autotune.engine.unet.inversion",
    "tune": "autotune.tuning.tuner",
    "TuneResult": "autotune.tuning.tuner",
    "DominationPruner": "autotune.tuning.pruning",
    "Preset": "autotune.presets.preset",
    "load_tasks": "autotune.tasks.sources",
    "evaluate": "autotune.evaluation.evaluate",
}

__all__ = ["CATEGORIES", "EditParams", "EditTask", "GuidanceSchedule", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
