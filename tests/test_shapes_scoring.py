"""ShapesScorer against edits whose outcome is known: renders of the target scene, of the source, and of scenes
broken on purpose (an object moved, grown, duplicated, the background repainted); PSNR against scikit-image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio

from autotune.shapes.scoring import SIZE_SLACK, ShapesScorer
from autotune.shapes.tasks import SHAPES_CATEGORIES, shapes_tasks
from autotune.shapes.world import Obj, Scene, render_array


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def _scene(task, background: str | None = None) -> Scene:
    e = task.expected
    return Scene(background or e["background"]).with_objects(
        [Obj(o["shape"], o["color"], o["x"], o["y"], o["size"]) for o in e["objects"]])


def _render(scene: Scene) -> torch.Tensor:
    return _tensor(render_array(scene))


def _kept_index(task) -> int:
    return next(i for i in range(len(task.expected["objects"])) if i != task.expected["edited"])


@pytest.mark.parametrize("category", SHAPES_CATEGORIES)
def test_the_target_scene_is_a_full_success_and_the_source_no_edit(category):
    scorer = ShapesScorer()
    for task in shapes_tasks(category, count=4):
        source = _tensor(np.asarray(task.image))
        perfect, unchanged = scorer.score(task, torch.stack([_render(_scene(task)), source]))
        assert perfect["edit_success"] == perfect["preservation"] == perfect["full_success"] == 1.0
        assert unchanged["edit_success"] == 0.0 and unchanged["full_success"] == 0.0
        assert unchanged["preservation"] == 1.0  # nothing else changed either
        # Outside the mask the target is the source pixel for pixel: PSNR at its cap.
        assert perfect["background_psnr"] == unchanged["background_psnr"] == 100.0


def test_background_psnr_is_scikit_image_psnr_outside_the_grown_mask():
    task = shapes_tasks("change_color", count=5)[0]
    edit = _render(_scene(task))
    noisy = (edit + 0.1 * torch.randn(edit.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    (got,) = ShapesScorer().score(task, noisy[None])
    keep = ~ndimage.binary_dilation(task.mask, iterations=1)
    source = np.asarray(task.image, dtype=np.float32) / 255
    want = peak_signal_noise_ratio(source[keep], noisy.permute(1, 2, 0).numpy()[keep], data_range=1.0)
    assert got["background_psnr"] == pytest.approx(want, abs=1e-4)


def test_each_metric_moves_the_way_it_says_it_does():
    """metrics() declares every metric 'maximize': an edit known to be better never scores lower on any."""
    scorer = ShapesScorer()
    assert set(scorer.metrics()) == {"edit_success", "preservation", "full_success", "background_psnr"}
    task = next(t for t in shapes_tasks("change_color", count=10) if len(t.expected["objects"]) == 2)
    objects = list(_scene(task).objects)
    kept = _kept_index(task)
    objects[kept] = dataclasses.replace(objects[kept], color=_other_color(objects[kept].color, objects))
    broken = Scene(task.expected["background"], tuple(objects))  # the edit made, the other object recoloured
    better, worse = scorer.score(task, torch.stack([_render(_scene(task)), _render(broken)]))
    for name, direction in scorer.metrics().items():
        assert direction == "maximize"
        assert better[name] >= worse[name], name
    assert better["preservation"] > worse["preservation"] and better["background_psnr"] > worse["background_psnr"]


def _other_color(color: str, objects) -> str:
    return next(c for c in ("green", "red", "blue", "yellow") if c != color and c not in {o.color for o in objects})


def test_full_success_needs_the_rest_kept_in_place_at_its_size_and_nothing_added():
    scorer = ShapesScorer()
    task = next(t for t in shapes_tasks("change_object", count=20) if len(t.expected["objects"]) == 2
                and max(o["size"] for o in t.expected["objects"]) <= 12)
    target = _scene(task)
    kept, edited = _kept_index(task), task.expected["edited"]

    def variant(index: int, **change) -> Scene:
        objects = list(target.objects)
        objects[index] = dataclasses.replace(objects[index], **change)
        return Scene(target.background, tuple(objects))

    k, e = target.objects[kept], target.objects[edited]
    grow = SIZE_SLACK + 2  # past the slack; centred on the same point
    cases = {
        "kept object grown": variant(kept, size=k.size + grow, x=k.x - grow // 2, y=k.y - grow // 2),
        "kept object grown by 1 px": variant(kept, size=k.size + 1),
        "edited object grown": variant(edited, size=e.size + grow, x=e.x - grow // 2, y=e.y - grow // 2),
        "background repainted": Scene(_other_background(target.background), target.objects),
        "an object added": Scene(target.background, (*target.objects, Obj("circle", "orange", 0, 0, 10))),
    }
    rows = dict(zip(cases, scorer.score(task, torch.stack([_render(s) for s in cases.values()])), strict=True))
    assert rows["kept object grown by 1 px"]["full_success"] == 1.0  # the VAE's own wobble, accepted
    for name in ("kept object grown", "background repainted"):
        assert rows[name]["edit_success"] == 1.0 and rows[name]["preservation"] < 1.0, name
        assert rows[name]["full_success"] == 0.0, name
    assert rows["edited object grown"]["edit_success"] == 1.0 and rows["edited object grown"]["preservation"] == 1.0
    assert rows["edited object grown"]["full_success"] == 0.0  # reshaped in place means at its size
    assert rows["an object added"]["edit_success"] == rows["an object added"]["preservation"] == 1.0
    assert rows["an object added"]["full_success"] == 0.0


def _other_background(background: str) -> str:
    return "black" if background != "black" else "white"


def test_the_vae_round_trip_of_target_scenes_is_a_full_success():
    """The ceiling: what the shipped model's VAE does to a perfect edit stays a full success (the size and box
    slack were chosen against it)."""
    from autotune.bench.shapes_model import load_pipeline
    from autotune.engine.checkpoint import SHAPES_MODEL_DIR

    pipe = load_pipeline(SHAPES_MODEL_DIR)
    scorer = ShapesScorer()
    for category in SHAPES_CATEGORIES:
        tasks = shapes_tasks(category, "heldout", count=8)
        x = torch.stack([_render(_scene(t)) for t in tasks]) * 2 - 1
        with torch.no_grad():
            decoded = (pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1) + 1) / 2
        assert all(scorer.score(t, d[None])[0]["full_success"] == 1.0 for t, d in zip(tasks, decoded)), category


def test_candidates_at_another_size_are_scored_at_native_size():
    task = shapes_tasks("change_object", count=1)[0]
    big = torch.nn.functional.interpolate(_render(_scene(task))[None], size=(64, 64), mode="nearest")
    (result,) = ShapesScorer().score(task, big)
    assert result["full_success"] == 1.0 and result["background_psnr"] > 30.0
