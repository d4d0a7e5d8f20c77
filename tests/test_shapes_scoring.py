"""ShapesScorer against edits whose outcome is known: the exact target render, the untouched source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autotune.shapes.scoring import ShapesScorer
from autotune.shapes.tasks import SHAPES_CATEGORIES, shapes_tasks
from autotune.shapes.world import Obj, Scene, render_array


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def _target(task) -> torch.Tensor:
    e = task.expected
    scene = Scene(e["background"]).with_objects([Obj(o["shape"], o["color"], o["x"], o["y"], o["size"])
                                                 for o in e["objects"]])
    return _tensor(render_array(scene))


def test_metrics_contract():
    metrics = ShapesScorer().metrics()
    for name in ("edit_success", "background_psnr", "preservation"):
        assert metrics[name] == "maximize"
    assert ShapesScorer().describe()["scorer"] == "shapes"


@pytest.mark.parametrize("category", SHAPES_CATEGORIES)
def test_perfect_edit_succeeds_and_no_edit_fails(category):
    scorer = ShapesScorer()
    for task in shapes_tasks(category, count=4):
        source = _tensor(np.asarray(task.image))
        perfect, unchanged = scorer.score(task, torch.stack([_target(task), source]))
        assert perfect == {"edit_success": 1.0, "preservation": 1.0, "full_success": 1.0, "background_psnr": 100.0}
        assert unchanged["edit_success"] == 0.0 and unchanged["preservation"] == 1.0
        assert unchanged["background_psnr"] == 100.0


def test_damage_outside_the_mask_lowers_psnr_and_preservation():
    task = shapes_tasks("change_color", count=5)[0]
    edit = _target(task)
    noisy = (edit + 0.1 * torch.randn(edit.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    background = task.expected["background"]
    wrong_bg = "black" if background != "black" else "white"
    e = task.expected
    repainted = _tensor(render_array(Scene(wrong_bg).with_objects(
        [Obj(o["shape"], o["color"], o["x"], o["y"], o["size"]) for o in e["objects"]])))
    clean, damaged, repaint = ShapesScorer().score(task, torch.stack([edit, noisy, repainted]))
    # 0.1 Gaussian noise, clamped: PSNR near 20 dB, an independent reference figure.
    assert 18.0 < damaged["background_psnr"] < 23.0 < clean["background_psnr"]
    assert repaint["edit_success"] == 1.0 and repaint["preservation"] < 1.0 and repaint["full_success"] == 0.0


def test_candidates_at_another_size_are_scored_at_native_size():
    task = shapes_tasks("change_object", count=1)[0]
    big = torch.nn.functional.interpolate(_target(task)[None], size=(64, 64), mode="nearest")
    (result,) = ShapesScorer().score(task, big)
    assert result["edit_success"] == 1.0 and result["background_psnr"] > 30.0
