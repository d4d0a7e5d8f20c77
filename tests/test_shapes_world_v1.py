"""The shapes world's version 1 (the UNet model's world) stays reproducible bit for bit.

The digests below were computed from the world as it was before world versions existed (commit cbf399f): scenes,
renders, captions, what the reader reads, and the edit tasks of every category and split. A change to any of them
changes what the shipped `shapes` model, its presets and recorded studies were measured on.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from autotune.shapes.reader import read_scene
from autotune.shapes.tasks import SHAPES_CATEGORIES, SPLITS, shapes_tasks
from autotune.shapes.world import caption, random_scene, render_array
from autotune.task import task_fingerprint

SCENES_DIGEST = "sha256:72b9926ed990ed5982a6e917d83de1c7a7e6c07d53b49962554c12a6f3a9b2d3"
TASKS_DIGEST = {
    ("change_color", "tune"): "sha256:16906fb3cbaf8cebec87d3d16b9d469ad15c5bad3c6c97507e8a5a6e0e4d842e",
    ("change_color", "heldout"): "sha256:7337144310ececde03d561603a60b9f0ac6e8799bf29bef34c920660585e1cc5",
    ("change_object", "tune"): "sha256:5d7d13fa2f1c399bb23a08a10aefbf9d893a6bd4ab7d3e2ae5784ef317933dc0",
    ("change_object", "heldout"): "sha256:f54ffca69e654d20fbb9369dfaa7a43fd334afb6b3d8e7a3a5b2636b06136f3a",
    ("change_background", "tune"): "sha256:f33f775ac7b5a3a43fb21c80b61a0dcc75a80715dbb7478964d5f51c3fa5e0fa",
    ("change_background", "heldout"): "sha256:a492452bca36b55df5ced1ff6499e43ca314b11f5eccd26ece69758ad43ac2c8",
    ("add_object", "tune"): "sha256:9cc2cddcc57ff3766c81472b1fe6f57e00746866efb239fd1cb7c830867817ce",
    ("add_object", "heldout"): "sha256:86965be3fcf91c2f70d224661c38b97de87df2a67c4bbebabc6e5092d6f456a5",
    ("delete_object", "tune"): "sha256:7f3fa22c6323fb7dea84001cc8da0fcf2f84fddfc12f9d2532899923759894f3",
    ("delete_object", "heldout"): "sha256:9830c4e477afc7945768bba41ddbda1a9d11f368e3021294800fe32235ac9d5a",
}


def scenes_digest(seeds=range(8), per_seed: int = 25) -> str:
    """sha256 over repr, caption, render bytes and reader output of random scenes for fixed seeds."""
    h = hashlib.sha256()
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for _ in range(per_seed):
            scene = random_scene(rng)
            pixels = render_array(scene)
            read = read_scene(pixels)
            for text in (repr(scene), caption(scene), repr((read.background, read.attributes()))):
                h.update(text.encode("utf-8"))
                h.update(b"\0")
            h.update(pixels.tobytes())
    return "sha256:" + h.hexdigest()


def tasks_digest(category: str, split: str, count: int = 6, seed: int = 0) -> str:
    """The tuner's task fingerprint plus each task's expected scene and recorded source scene."""
    tasks = shapes_tasks(category, split, count, seed)
    h = hashlib.sha256(task_fingerprint(tasks).encode())
    for task in tasks:
        h.update(json.dumps([task.expected, task.metadata["source"], task.metadata["split"],
                             task.metadata["seed"], task.metadata["world"]], sort_keys=True).encode())
    return "sha256:" + h.hexdigest()


def test_version_1_scenes_renders_captions_and_readings_are_unchanged():
    assert scenes_digest() == SCENES_DIGEST


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("category", SHAPES_CATEGORIES)
def test_version_1_tasks_are_unchanged(category, split):
    assert tasks_digest(category, split) == TASKS_DIGEST[category, split]
