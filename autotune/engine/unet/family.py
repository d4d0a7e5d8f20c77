"""The UNet family's entry in the registry: which checkpoints it reads, which methods it runs, what a study searches.

Stable Diffusion 1.x (epsilon prediction) and 2.x (v-prediction) checkpoints, loaded through diffusers'
`StableDiffusionPipeline`, and SDXL base and its fine-tunes (`StableDiffusionXLPipeline`), edited by `UNetEngine`:
SimInversion and the four classic baselines (DDIM, negative-prompt, null-text and direct inversion) under
Prompt-to-Prompt control.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autotune.params import UNET_METHODS

if TYPE_CHECKING:  # the registry reads this module for its constants: keep torch out of that import
    import torch

    from autotune.engine.family import EngineSettings, FamilyDefaults


class UNetFamily:
    name = "unet"
    pipelines = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
    methods = UNET_METHODS
    offload_modes: tuple[str, ...] = ()
    # The default search space: w_src on a 0.1 grid in [0, 2] (inversions and source branches are reused across
    # trials that share a w_src; above 2 the inversion drifts badly), w_tgt in [1, 12] (7.5 is SD's default).
    search_ranges: dict[str, dict[str, float]] = {
        "w_src": {"low": 0.0, "high": 2.0, "step": 0.1},
        "w_tgt": {"low": 1.0, "high": 12.0},
    }
    # Enqueued first in every study, so each study reports how far tuning moved from the published settings.
    paper_points: dict[str, dict[str, float]] = {
        "siminversion": {"w_src": 0.5, "w_tgt": 7.5},  # SimInversion's prescription
        "ddim": {"w_src": 1.0, "w_tgt": 7.5},  # DDIM-style: invert and reconstruct at 1, edit at 7.5
    }

    def defaults_for(self, model_info: dict[str, Any], method: str | None = None) -> FamilyDefaults:
        """The same for every Stable Diffusion checkpoint: SimInversion's pair with PIE-Bench's P2P settings."""
        from autotune.engine.family import FamilyDefaults
        from autotune.params import EditParams

        params = EditParams() if method is None else EditParams(method=method)
        return FamilyDefaults(params, {k: dict(v) for k, v in self.search_ranges.items()},
                              {k: dict(v) for k, v in self.paper_points.items()})

    def load(self, checkpoint: Any, *, device: torch.device, dtype: torch.dtype, scheduler: str,
             config: str | None, allow_pickle: bool, settings: EngineSettings) -> Any:
        from autotune.engine.unet.engine import UNetEngine
        from autotune.engine.unet.loading import load_components

        components = load_components(checkpoint, device=device, dtype=dtype, scheduler=scheduler, config=config,
                                     allow_pickle=allow_pickle)
        return UNetEngine(components, settings)


FAMILY = UNetFamily()
