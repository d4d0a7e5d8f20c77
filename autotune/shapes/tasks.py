"""Edit tasks in the shapes world, with the truth of every edit known.

Categories use PIE-Bench's names: change_color (6), change_object (1, the shape), change_background (8),
add_object (2), delete_object (3). Each task's `expected` is the scene after the edit:
``{"background": str, "objects": [{"color", "shape", "x", "y", "size"}, ...], "edited": int | None}``
with `edited` the index (in `objects`, left to right) of the changed or added object.

Blend words (source word, target word) for LocalBlend, each found exactly once in its own prompt:
- change_color: (old colour, new colour); change_background: (old background, new background);
- change_object: (old shape, new shape) -- the other object never shares either shape;
- add_object: ("background", colour of the new object): the new object appears where the source shows background;
- delete_object: (colour of the removed object, "background"): that region becomes background.

Splits are disjoint by construction: a scene's hash decides whether it may appear in "tune" or "heldout" (one
scene in five is held out). "all" is both, in the order they are drawn: the first N tasks of "all" are the tasks
of "tune" and "heldout" drawn among the first N scenes, each with the same id and content as in its own split.
"""

from __future__ import annotations

import hashlib

import numpy as np

from autotune.shapes.world import (
    BACKGROUND_COLORS,
    OBJECT_COLORS,
    SHAPES,
    Obj,
    Scene,
    caption,
    object_mask,
    place,
    random_scene,
    render,
)
from autotune.task import EditTask, category_name

SHAPES_CATEGORIES = ("change_color", "change_object", "change_background", "add_object", "delete_object")
SPLITS = ("tune", "heldout")
DEFAULT_COUNT = 20
HELDOUT_SHARE = 5  # one scene hash in five belongs to the held-out split
HELDOUT_FRACTION = 1 / HELDOUT_SHARE


def _split_of(scene: Scene) -> str:
    digest = hashlib.sha256(repr(scene).encode("utf-8")).digest()
    return "heldout" if digest[0] % HELDOUT_SHARE == 0 else "tune"


def _expected(scene: Scene, edited: Obj | None) -> dict:
    objects = [{"color": o.color, "shape": o.shape, "x": o.x, "y": o.y, "size": o.size} for o in scene.objects]
    return {"background": scene.background, "objects": objects,
            "edited": scene.objects.index(edited) if edited is not None else None}


def _pick(rng: np.random.Generator, options) -> str:
    options = list(options)
    return str(options[int(rng.integers(len(options)))])


def _make(category: str, rng: np.random.Generator):
    """(source scene, target scene, blend words, mask, edited object in target or None), or None to retry."""
    if category == "change_color":
        src = random_scene(rng)
        old = src.objects[int(rng.integers(len(src.objects)))]
        color = _pick(rng, sorted(set(OBJECT_COLORS) - {o.color for o in src.objects}))
        new = Obj(old.shape, color, old.x, old.y, old.size)
        tgt = src.with_objects([new if o is old else o for o in src.objects])
        return src, tgt, (old.color, color), object_mask(old), new
    if category == "change_object":
        src = random_scene(rng)
        old = src.objects[int(rng.integers(len(src.objects)))]
        others = [o for o in src.objects if o is not old]
        shape = _pick(rng, sorted(set(SHAPES) - {old.shape} - {o.shape for o in others}))
        if not shape or any(o.shape == old.shape for o in others):
            return None
        new = Obj(shape, old.color, old.x, old.y, old.size)
        tgt = src.with_objects([new if o is old else o for o in src.objects])
        return src, tgt, (old.shape, shape), object_mask(old) | object_mask(new), new
    if category == "change_background":
        src = random_scene(rng)
        background = _pick(rng, sorted(set(BACKGROUND_COLORS) - {src.background}))
        tgt = Scene(background, src.objects)
        covered = np.zeros_like(object_mask(src.objects[0]))
        for o in src.objects:
            covered |= object_mask(o)
        return src, tgt, (src.background, background), ~covered, None
    if category == "add_object":
        src = random_scene(rng, n_objects=1)
        color = _pick(rng, sorted(set(OBJECT_COLORS) - {src.objects[0].color}))
        new = place(rng, _pick(rng, SHAPES), color, list(src.objects))
        if new is None:
            return None
        tgt = src.with_objects([*src.objects, new])
        return src, tgt, ("background", color), object_mask(new), new
    if category == "delete_object":
        src = random_scene(rng, n_objects=2)
        gone = src.objects[int(rng.integers(2))]
        tgt = src.with_objects([o for o in src.objects if o is not gone])
        return src, tgt, (gone.color, "background"), object_mask(gone), None
    raise ValueError(f"the shapes world has no {category!r} tasks; it has: {', '.join(SHAPES_CATEGORIES)}")


def shapes_tasks(category: str | int, split: str = "tune", count: int | None = None, seed: int = 0) -> list[EditTask]:
    """`count` tasks (default 20) of one category from one split ("tune", "heldout" or "all": both); the same
    arguments give the same tasks."""
    name = category_name(category)
    if name not in SHAPES_CATEGORIES:
        raise ValueError(f"the shapes world has no {name!r} tasks; it has: {', '.join(SHAPES_CATEGORIES)}")
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; use 'tune', 'heldout' or 'all'")
    count = DEFAULT_COUNT if count is None else int(count)
    rng = np.random.default_rng([seed, SHAPES_CATEGORIES.index(name)])
    tasks: list[EditTask] = []
    drawn = dict.fromkeys(SPLITS, 0)  # tasks of each split so far: the index in a task's id
    seen: set[str] = set()
    while len(tasks) < count:
        made = _make(name, rng)
        if made is None:
            continue
        src, tgt, words, mask, edited = made
        which = _split_of(src)
        if (split != "all" and which != split) or repr(src) in seen:
            continue
        seen.add(repr(src))
        tasks.append(EditTask(
            id=f"shapes-{name}-{which}-{seed}-{drawn[which]:04d}",
            image=render(src), source_prompt=caption(src), target_prompt=caption(tgt), category=name,
            blend_words=words, mask=mask, expected=_expected(tgt, edited),
            metadata={"world": "shapes", "split": which, "seed": seed,
                      "source": _expected(src, None) | {"edited": None}},
        ))
        drawn[which] += 1
    return tasks
