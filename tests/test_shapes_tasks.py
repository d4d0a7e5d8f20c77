"""Edit tasks of the shapes world: determinism, disjoint splits, and truth that matches the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from autotune.shapes.reader import read_scene
from autotune.shapes.tasks import SHAPES_CATEGORIES, shapes_tasks


def _words(prompt: str) -> list[str]:
    return prompt.split()


@pytest.mark.parametrize("category", SHAPES_CATEGORIES)
def test_tasks_are_consistent_with_their_images(category):
    tasks = shapes_tasks(category, count=8)
    assert len(tasks) == 8 and len({t.id for t in tasks}) == 8
    for task in tasks:
        assert task.category == category
        assert task.image.mode == "RGB" and task.image.size == (32, 32)
        assert task.mask.shape == (32, 32) and task.mask.any()
        assert task.source_prompt != task.target_prompt
        src_word, tgt_word = task.blend_words
        assert _words(task.source_prompt).count(src_word) == 1
        assert _words(task.target_prompt).count(tgt_word) == 1
        # The source image reads back as the source scene recorded with the task.
        source = task.metadata["source"]
        read = read_scene(task.image)
        assert read.background == source["background"]
        assert read.attributes() == [(o["color"], o["shape"]) for o in source["objects"]]
        # The target prompt names exactly the expected scene.
        expected = task.expected
        phrases = " and ".join(f"{'an' if o['color'] == 'orange' else 'a'} {o['color']} {o['shape']}"
                               for o in expected["objects"])
        assert task.target_prompt == f"{phrases} on a {expected['background']} background"


def test_change_color_mask_is_the_recoloured_object():
    for task in shapes_tasks("change_color", count=5):
        old, new = task.blend_words
        pixels = np.asarray(task.image)
        from autotune.shapes.world import OBJECT_COLORS

        old_pixels = (pixels == OBJECT_COLORS[old]).all(-1)
        assert (old_pixels == task.mask).all()
        assert new in [o["color"] for o in task.expected["objects"]]


def test_splits_are_deterministic_and_disjoint():
    a = shapes_tasks("delete_object", "tune", count=30, seed=1)
    b = shapes_tasks("delete_object", "tune", count=30, seed=1)
    assert [t.source_prompt for t in a] == [t.source_prompt for t in b]
    assert all((x.mask == y.mask).all() for x, y in zip(a, b))
    held = shapes_tasks("delete_object", "heldout", count=30, seed=1)
    def key(t):
        return repr(t.metadata["source"])

    assert not {key(t) for t in a} & {key(t) for t in held}
    other_seed = shapes_tasks("delete_object", "tune", count=30, seed=2)
    assert [key(t) for t in other_seed] != [key(t) for t in a]


def test_categories_accept_piebench_ids_and_aliases_and_reject_others():
    assert shapes_tasks(6, count=2)[0].category == "change_color"
    assert shapes_tasks("change_shape", count=2)[0].category == "change_object"
    assert shapes_tasks("8", count=1)[0].category == "change_background"
    with pytest.raises(ValueError, match="shapes world has no"):
        shapes_tasks("change_style")
    with pytest.raises(ValueError, match="split"):
        shapes_tasks("change_color", split="test")


def test_shapes_tasks_are_drawn_in_the_models_own_world(tmp_path):
    import argparse
    import json

    from autotune.cli._common import task_source
    from autotune.tasks.sources import load_tasks, shapes_world_of

    flow = tmp_path / "flow-model"
    flow.mkdir()
    (flow / "training.json").write_text(json.dumps({"world_version": 2}))
    assert shapes_world_of(flow) == 2
    assert shapes_world_of("shapes") == 1  # the UNet model's folder records no version: the first world
    assert shapes_world_of(tmp_path / "not-a-model") == 1 and shapes_world_of("runwayml/stable-diffusion-v1-5") == 1
    v2 = load_tasks("shapes:change_color:4", world_version=shapes_world_of(flow))
    assert [t.metadata["world_version"] for t in v2] == [2] * 4
    assert [t.id for t in v2] == [t.id for t in shapes_tasks("change_color", "tune", 4, version=2)]
    v1 = load_tasks("shapes:change_color:4")  # version 1 by default
    assert [t.id for t in v1] == [t.id for t in shapes_tasks("change_color", "tune", 4)]
    args = argparse.Namespace(tasks="shapes:change_color", split="tune", heldout_fraction=None, model=str(flow))
    assert task_source(args)["world_version"] == 2  # a study records it, so its report redraws the same tasks
    args.model = "shapes"
    assert "world_version" not in task_source(args)
