"""The shapes world's version 2 (the flow model's): 64 px scenes of one to four objects, and its edit tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from autotune.shapes.reader import read_scene
from autotune.shapes.scoring import ShapesScorer
from autotune.shapes.tasks import SHAPES_CATEGORIES, SPLITS, shapes_tasks
from autotune.shapes.world import WORLDS, Obj, Scene, caption, object_mask, random_scene, render, render_array, world


def _truth(scene: Scene):
    return scene.background, sorted((o.color, o.shape) for o in scene.objects)


def test_version_2_scenes_are_64_px_with_one_to_four_objects_apart():
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, version=2) for _ in range(300)]
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}
    for scene in scenes:
        assert scene.version == 2
        assert render_array(scene).shape == (64, 64, 3) and render(scene).size == (64, 64)
        colors = [o.color for o in scene.objects]
        assert len(set(colors)) == len(colors)
        masks = [object_mask(o, 64) for o in scene.objects]
        for i, a in enumerate(masks):
            for b in masks[i + 1 :]:
                assert not (ndimage.binary_dilation(a, iterations=2) & b).any()
        assert all(10 <= o.size <= 20 for o in scene.objects)
        centers = [o.center[0] for o in scene.objects]
        assert centers == sorted(centers)
        assert read_scene(render_array(scene), version=2).background == scene.background
    assert sum(_truth(s) == (lambda r: (r.background, sorted(r.attributes())))(read_scene(render_array(s), version=2))
               for s in scenes) == len(scenes)


def test_version_2_keeps_the_caption_template_and_is_deterministic():
    scene = Scene("gray", version=2).with_objects([Obj("square", "red", 40, 3, 20), Obj("circle", "blue", 2, 30, 12)])
    assert scene.version == 2 and caption(scene) == "a blue circle and a red square on a gray background"
    assert repr(scene) == repr(Scene("gray").with_objects(scene.objects))  # the version is not in the repr
    a = [random_scene(np.random.default_rng(4), version=2) for _ in range(3)]
    b = [random_scene(np.random.default_rng(4), version=2) for _ in range(3)]
    assert a == b
    assert world(2) is WORLDS[2] and world(1).size == 32
    with pytest.raises(ValueError, match="version"):
        world(3)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("category", SHAPES_CATEGORIES)
def test_version_2_tasks_generate_for_every_category_and_split(category, split):
    tasks = shapes_tasks(category, split, count=6, version=2)
    assert len(tasks) == 6 and len({t.id for t in tasks}) == 6
    for task in tasks:
        assert task.id.startswith(f"shapes-v2-{category}-{split}-")
        assert task.metadata["world_version"] == 2 and task.metadata["split"] == split
        assert task.image.size == (64, 64) and task.mask.shape == (64, 64) and task.mask.any()
        src_word, tgt_word = task.blend_words
        assert task.source_prompt.split().count(src_word) == 1
        assert task.target_prompt.split().count(tgt_word) == 1
        source = task.metadata["source"]
        read = read_scene(task.image, version=2)
        assert read.background == source["background"]
        assert read.attributes() == [(o["color"], o["shape"]) for o in source["objects"]]
        assert 1 <= len(source["objects"]) <= 4 and 1 <= len(task.expected["objects"]) <= 4
        # The expected scene rendered is what a perfect edit gives: the scorer calls it a full success.
        expected = Scene(task.expected["background"], version=2).with_objects(
            [Obj(o["shape"], o["color"], o["x"], o["y"], o["size"]) for o in task.expected["objects"]])
        assert task.target_prompt == caption(expected)
        pixels = torch.from_numpy(render_array(expected)).permute(2, 0, 1).float() / 255
        (scores,) = ShapesScorer().score(task, pixels)
        assert scores["edit_success"] == scores["full_success"] == 1.0


def test_version_2_tasks_are_deterministic_disjoint_and_apart_from_version_1():
    a = shapes_tasks("delete_object", "tune", count=20, seed=1, version=2)
    b = shapes_tasks("delete_object", "tune", count=20, seed=1, version=2)
    assert [t.id for t in a] == [t.id for t in b] and [t.source_prompt for t in a] == [t.source_prompt for t in b]
    held = shapes_tasks("delete_object", "heldout", count=20, seed=1, version=2)
    assert not {repr(t.metadata["source"]) for t in a} & {repr(t.metadata["source"]) for t in held}
    v1 = shapes_tasks("delete_object", "tune", count=2, seed=1)
    assert v1[0].metadata["world_version"] == 1 and v1[0].image.size == (32, 32)
    assert {len(t.metadata["source"]["objects"]) for t in a + held} > {2}  # two to four objects
