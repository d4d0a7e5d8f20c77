"""What every benchmark shares: the machine it ran on, the categories, the default search space."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from autotune.params import EditParams
from autotune.tuning.search_space import SearchSpace, family_defaults

BENCHMARKS = ("throughput", "overhead", "efficiency", "quality", "inversion", "memory", "predictor")
SHAPES_CATEGORIES = ("change_color", "change_object", "change_background", "add_object", "delete_object")


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """What the figures were measured on; the load average says whether the machine was busy."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device or "cpu"),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if str(device or "cpu").startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def other_load(machine: dict[str, Any]) -> float | None:
    """The 1-minute load beyond the benchmark's own: its torch threads on a CPU (a run at 2 threads on 2 CPUs makes
    a load of about 2 by itself), one Python thread driving a GPU."""
    load, cpus = machine.get("load_average_1min"), machine.get("cpu_count")
    if load is None or not cpus:
        return None
    own = (machine.get("torch_threads") or 1) if str(machine.get("device", "cpu")).startswith("cpu") else 1
    return max(0.0, load - own)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_space(steps: int, editor: Any = None) -> SearchSpace:
    """The tuner's default search space with `steps` sampling steps: the editor's family's (`SearchSpace.for_editor`),
    else the UNet family's (w_src in [0, 2] step 0.1, w_tgt in [1, 12])."""
    if editor is None:
        return SearchSpace.default(base=EditParams(steps=steps))
    return SearchSpace.for_editor(editor, family_defaults(editor, None).params.with_(steps=steps))
