"""The published settings of the rectified-flow editing methods, per model, with where they come from.

One place for the numbers: the flow family's defaults (`autotune.engine.flow.family`), the paper points a tuning
study enqueues first, and the shipped paper-default presets (`autotune.presets.store`) all read them here.

FlowEdit (Kulikov et al., ICCV 2025) publishes one setting per model for every kind of edit, in its official code's
experiment files `SD3_exp.yaml` and `FLUX_exp.yaml`. The official SD3 function's own keyword default is
`n_max=15`, which contradicts `SD3_exp.yaml`'s 33; autotune uses 33: it is what the authors' `run_script.py` passes
for SD3 (the keyword default is never used by their runs) and what the paper reports.

No flow-inversion method publishes a separate source and target guidance: the SD3 pair below is SimInversion's
prescription carried over (not measured on a flow model; the flow shapes model measures it), and the FLUX.1-dev
pair is RF-Solver's and FireFlow's one guidance of 2 for inversion and editing.
"""

from __future__ import annotations

from typing import Any

FLOWEDIT_CITATION = (
    "FlowEdit: Kulikov, Kleiner, Huberman-Spiegelglas, Michaeli, 'FlowEdit: Inversion-Free Text-Based Editing Using "
    "Pre-Trained Flow Models', ICCV 2025, arXiv:2412.08629; settings from the official code's SD3_exp.yaml and "
    "FLUX_exp.yaml (github.com/fallenshock/FlowEdit): SD3 50 steps, source guidance 3.5, target 13.5, n_max 33, "
    "n_min 0, n_avg 1; FLUX.1-dev 28 steps, source 1.5, target 5.5, n_max 24, n_min 0, n_avg 1."
)

# FlowEdit's published settings, the window as fractions of the steps (33 of 50, 24 of 28).
FLOWEDIT_SD3: dict[str, Any] = {"method": "flowedit", "w_src": 3.5, "w_tgt": 13.5, "steps": 50,
                                "n_max": 33 / 50, "n_min": 0.0, "n_avg": 1}
FLOWEDIT_FLUX_DEV: dict[str, Any] = {"method": "flowedit", "w_src": 1.5, "w_tgt": 5.5, "steps": 28,
                                     "n_max": 24 / 28, "n_min": 0.0, "n_avg": 1}
# FLUX.1-schnell: no published FlowEdit setting. FLUX.1-dev's window at schnell's 4 steps, without guidance
# (schnell has no guidance embedding: a scale of 1 is its plain conditional velocity, one pass per branch).
FLOWEDIT_FLUX_SCHNELL: dict[str, Any] = {"method": "flowedit", "w_src": 1.0, "w_tgt": 1.0, "steps": 4,
                                         "n_max": 0.75, "n_min": 0.0, "n_avg": 1}

# Flow inversion with separate guidance (autotune's `flow_siminversion`), full-depth inversion.
SIMINVERSION_SD3: dict[str, Any] = {"method": "flow_siminversion", "w_src": 0.5, "w_tgt": 7.5, "steps": 50,
                                    "n_max": 1.0}
RF_SOLVER_FLUX_DEV: dict[str, Any] = {"method": "flow_siminversion", "w_src": 2.0, "w_tgt": 2.0, "steps": 28,
                                      "n_max": 1.0}
SIMINVERSION_FLUX_SCHNELL: dict[str, Any] = {"method": "flow_siminversion", "w_src": 1.0, "w_tgt": 1.0, "steps": 4,
                                             "n_max": 1.0}

# The models the shipped paper-default presets are for (`autotune.presets.store`); short names are aliases.
SD3_MEDIUM_MODEL: dict[str, Any] = {
    "id": "stabilityai/stable-diffusion-3-medium-diffusers",
    "revision": None,
    "file_hash": None,
    "applies_to": ["sd3"],
    "scheduler": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
    "scheduler_mode": "checkpoint",
    "notes": "Stable Diffusion 3 medium, the model FlowEdit's SD3 settings were published for.",
}
SD35_MODEL: dict[str, Any] = {
    "id": "stabilityai/stable-diffusion-3.5-medium",
    "revision": None,
    "file_hash": None,
    "applies_to": ["sd35", "stabilityai/stable-diffusion-3.5-large", "sd35-large"],
    "scheduler": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000},
    "scheduler_mode": "checkpoint",
    "notes": "Stable Diffusion 3.5 (medium and large). FlowEdit publishes no SD3.5 setting: these are its SD3 "
    "settings, applied to the same architecture family.",
}
FLUX_DEV_MODEL: dict[str, Any] = {
    "id": "black-forest-labs/FLUX.1-dev",
    "revision": None,
    "file_hash": None,
    "applies_to": ["flux-dev"],
    "scheduler": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                  "use_dynamic_shifting": True},
    "scheduler_mode": "checkpoint",
    "notes": "FLUX.1-dev, guidance-distilled: w_src and w_tgt are the guidance embedding's values, one pass each.",
}
