"""The flow family's entry in the registry: which checkpoints it reads, which methods it runs, what a study searches.

Rectified-flow transformers: Stable Diffusion 3 / 3.5 (`StableDiffusion3Pipeline`) and FLUX.1 dev and schnell
(`FluxPipeline`), edited by `FlowEngine` with FlowEdit and with flow inversion at separate source and target
guidance. The published settings come from `autotune.flow_defaults`; which of them apply depends on the loaded
model (SD3 / SD3.5, FLUX.1-dev with its guidance embedding, FLUX.1-schnell without one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autotune import flow_defaults as published
from autotune.params import FLOW_METHODS

if TYPE_CHECKING:  # the registry reads this module for its constants: keep torch out of that import
    import torch

    from autotune.engine.family import EngineSettings, FamilyDefaults

# Each method's published setting per model variant: what an edit uses when given no parameters.
PUBLISHED: dict[str, dict[str, dict[str, Any]]] = {
    "sd3": {"flowedit": published.FLOWEDIT_SD3, "flow_siminversion": published.SIMINVERSION_SD3},
    "flux-dev": {"flowedit": published.FLOWEDIT_FLUX_DEV, "flow_siminversion": published.RF_SOLVER_FLUX_DEV},
    "flux-schnell": {"flowedit": published.FLOWEDIT_FLUX_SCHNELL,
                     "flow_siminversion": published.SIMINVERSION_FLUX_SCHNELL},
}
# The paper points a study enqueues first (name -> setting); a point applies to the method it names. FLUX.1-schnell
# has none: nothing is published for it.
PAPER_POINTS: dict[str, dict[str, dict[str, Any]]] = {
    "sd3": {"flowedit": published.FLOWEDIT_SD3, "siminversion": published.SIMINVERSION_SD3},
    "flux-dev": {"flowedit": published.FLOWEDIT_FLUX_DEV, "rf_solver": published.RF_SOLVER_FLUX_DEV},
    "flux-schnell": {},
}
# The default search space per architecture and method, around the published settings: the source guidance on a grid
# (the source work of a value is shared by every trial that draws it), the target guidance continuous, the window as
# fractions of the steps (0.3 of 50 steps is FlowEdit's SD3 function default of 15; 1 starts from pure noise).
SEARCH_RANGES: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "sd3": {
        "flowedit": {"w_src": {"low": 1.0, "high": 8.0, "step": 0.5}, "w_tgt": {"low": 3.0, "high": 20.0},
                     "n_max": {"low": 0.3, "high": 1.0}, "n_min": {"low": 0.0, "high": 0.3}},
        "flow_siminversion": {"w_src": {"low": 0.0, "high": 4.0, "step": 0.25}, "w_tgt": {"low": 1.0, "high": 20.0},
                              "n_max": {"low": 0.3, "high": 1.0}},
    },
    "flux": {
        "flowedit": {"w_src": {"low": 0.5, "high": 5.0, "step": 0.5}, "w_tgt": {"low": 1.0, "high": 10.0},
                     "n_max": {"low": 0.3, "high": 1.0}, "n_min": {"low": 0.0, "high": 0.3}},
        "flow_siminversion": {"w_src": {"low": 0.0, "high": 4.0, "step": 0.25}, "w_tgt": {"low": 1.0, "high": 10.0},
                              "n_max": {"low": 0.3, "high": 1.0}},
    },
}
DEFAULT_METHOD = "flowedit"


def variant(model_info: dict[str, Any]) -> str:
    """'sd3', 'flux-dev' (guidance embedded) or 'flux-schnell' (none), from the loaded model's `model_info()`."""
    if model_info.get("architecture") == "flux":
        return "flux-dev" if model_info.get("guidance") == "embedded" else "flux-schnell"
    return "sd3"


class FlowFamily:
    name = "flow"
    pipelines = ("StableDiffusion3Pipeline", "FluxPipeline")
    methods = FLOW_METHODS
    offload_modes: tuple[str, ...] = ("model", "sequential")
    search_ranges: dict[str, dict[str, float]] = SEARCH_RANGES["sd3"][DEFAULT_METHOD]
    paper_points: dict[str, dict[str, Any]] = PAPER_POINTS["sd3"]

    def defaults_for(self, model_info: dict[str, Any], method: str | None = None) -> FamilyDefaults:
        """The loaded model's published setting for `method` (default FlowEdit), the search ranges around it and
        the paper points that apply to it."""
        from autotune.engine.family import FamilyDefaults
        from autotune.errors import InputError
        from autotune.params import EditParams

        method = method or DEFAULT_METHOD
        if method not in self.methods:
            raise InputError(f"method {method!r} does not run on flow models; choose one of "
                             f"{', '.join(self.methods)}")
        kind = variant(model_info)
        params = EditParams(**PUBLISHED[kind][method])
        ranges = SEARCH_RANGES["flux" if kind.startswith("flux") else "sd3"][method]
        points = {name: dict(point) for name, point in PAPER_POINTS[kind].items() if point["method"] == method}
        return FamilyDefaults(params, {k: dict(v) for k, v in ranges.items()}, points)

    def load(self, checkpoint: Any, *, device: torch.device, dtype: torch.dtype, scheduler: str,
             config: str | None, allow_pickle: bool, settings: EngineSettings) -> Any:
        from autotune.engine.flow.engine import FlowEngine
        from autotune.engine.flow.loading import load_components

        components = load_components(checkpoint, device=device, dtype=dtype, scheduler=scheduler,
                                     allow_pickle=allow_pickle, offload=settings.offload)
        return FlowEngine(components, settings)


FAMILY = FlowFamily()
"""The flow family (SD3 / SD3.5, FLUX.1): FlowEdit and Euler flow inversion with separate source and target guidance,
batched over candidates and tasks, source work shared and recorded."""
