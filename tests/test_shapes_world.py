"""The shapes world's renderer and its model-free reader."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from autotune.shapes.reader import read_background, read_scene
from autotune.shapes.world import (
    BACKGROUND_COLORS,
    OBJECT_COLORS,
    SIZE,
    Obj,
    Scene,
    caption,
    object_mask,
    random_scene,
    render,
    render_array,
    shape_mask,
)


def _truth(scene: Scene) -> tuple[str, list[tuple[str, str]]]:
    return scene.background, [(o.color, o.shape) for o in scene.objects]


def _read(image) -> tuple[str, list[tuple[str, str]]]:
    read = read_scene(image)
    return read.background, read.attributes()


def test_shape_masks_have_their_expected_areas():
    # Independent references: a filled box, a disc (pi/4 of the box), an upward triangle (about half).
    assert shape_mask("square", 12).mean() == 1.0
    assert shape_mask("circle", 16).mean() == pytest.approx(np.pi / 4, abs=0.03)
    assert shape_mask("triangle", 16).mean() == pytest.approx(0.5, abs=0.08)  # half, plus pixelised edges
    tri = shape_mask("triangle", 12)
    assert tri[0].sum() < tri[-1].sum() == 12  # narrow apex at the top, full base at the bottom


def test_render_paints_exact_palette_colours_where_the_objects_are():
    scene = Scene("white").with_objects([Obj("square", "red", 2, 3, 10), Obj("circle", "blue", 18, 16, 12)])
    image = render_array(scene)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert (image[3:13, 2:12] == OBJECT_COLORS["red"]).all()
    assert tuple(image[0, 31]) == BACKGROUND_COLORS["white"]
    blue = (image == OBJECT_COLORS["blue"]).all(-1)
    assert (blue == object_mask(scene.objects[1])).all()
    assert caption(scene) == "a red square and a blue circle on a white background"
    assert caption(Scene("gray").with_objects([Obj("triangle", "orange", 2, 3, 10)])) == (
        "an orange triangle on a gray background")
    assert render(scene).size == (SIZE, SIZE)


def test_random_scenes_keep_objects_apart_and_colours_distinct():
    rng = np.random.default_rng(3)
    for _ in range(200):
        scene = random_scene(rng)
        assert 1 <= len(scene.objects) <= 2
        if len(scene.objects) == 2:
            a, b = (object_mask(o) for o in scene.objects)
            assert not (ndimage.binary_dilation(a) & b).any()
            assert scene.objects[0].color != scene.objects[1].color
            assert scene.objects[0].center[0] <= scene.objects[1].center[0]  # caption order: left to right


def test_reader_accuracy_on_fresh_renders_is_at_least_98_percent():
    rng = np.random.default_rng(12345)
    scenes = [random_scene(rng) for _ in range(400)]
    correct = sum(_read(render_array(s)) == _truth(s) for s in scenes)
    assert correct / len(scenes) >= 0.98


def test_reader_survives_noise_and_soft_edges_like_decoded_images():
    rng = np.random.default_rng(7)
    scenes = [random_scene(rng) for _ in range(200)]
    correct = 0
    for scene in scenes:
        image = render_array(scene).astype(np.float64)
        image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0)) + rng.normal(0, 8, image.shape)
        correct += _read(np.clip(image, 0, 255).astype(np.uint8)) == _truth(scene)
    assert correct / len(scenes) >= 0.95


def test_reader_reports_positions_and_accepts_float_chw_tensors():
    scene = Scene("gray").with_objects([Obj("triangle", "yellow", 20, 4, 11)])
    chw = render_array(scene).transpose(2, 0, 1).astype(np.float32) / 255.0
    read = read_scene(chw)
    assert read.background == "gray" == read_background(chw)
    (obj,) = read.objects
    assert obj.box == (20, 4, 31, 15)
    assert (obj.color, obj.shape) == ("yellow", "triangle")


def test_reader_finds_nothing_on_a_plain_background():
    assert read_scene(render_array(Scene("black"))).objects == ()
