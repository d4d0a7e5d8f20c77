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

World versions (`autotune.shapes.world`): `version=1` (the default) gives the UNet model's tasks, unchanged; `version=2`
gives tasks of the 64 px world with up to four objects (ids `shapes-v2-...`, their own random streams). In version 2,
add_object starts from one to three objects and delete_object from two to four; change_object keeps the rule that
the old shape appears once in the source prompt and the new once in the target, which favours scenes with fewer
objects. Every task's metadata records `world_version`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from autotune.shapes.world import (
    Obj,
    Scene,
    caption,
    object_mask,
    place,
    random_scene,
    render,
    world,
)
from autotune.task import EditTask, category_name

SHAPES_CATEGORIES = ("change_color", "change_object", "change_background", "add_object", "delete_object")
SPLITS = ("tune", "heldout")
DEFAULT_COUNT = 20
HELDOUT_SHARE = 5  # one scene hash in five belongs to the held-out split
HELDOUT_FRACTION = 1 / HELDOUT_SHARE


def _split_of(scene: Scene) -> str:
    key = repr(scene) if scene.version == 1 else f"v{scene.version}|{scene!r}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return "heldout" if digest[0] % HELDOUT_SHARE == 0 else "tune"


def _expected(scene: Scene, edited: Obj | None) -> dict:
    objects = [{"color": o.color, "shape": o.shape, "x": o.x, "y": o.y, "size": o.size} for o in scene.objects]
    return {"background": scene.background, "objects": objects,
            "edited": scene.objects.index(edited) if edited is not None else None}


def _pick(rng: np.random.Generator, options) -> str:
    options = list(options)
    return str(options[int(rng.integers(len(options)))])


def _make(category: str, rng: np.random.Generator, version: int = 1):
    """(source scene, target scene, blend words, mask, edited object in target or None), or None to retry.

    Version 1 draws exactly what it always drew (its random stream is unchanged)."""
    w = world(version)
    if category == "change_color":
        src = random_scene(rng, version=version)
        old = src.objects[int(rng.integers(len(src.objects)))]
        color = _pick(rng, sorted(set(w.object_colors) - {o.color for o in src.objects}))
        new = Obj(old.shape, color, old.x, old.y, old.size)
        tgt = src.with_objects([new if o is old else o for o in src.objects])
        return src, tgt, (old.color, color), object_mask(old, w.size), new
    if category == "change_object":
        src = random_scene(rng, version=version)
        old = src.objects[int(rng.integers(len(src.objects)))]
        others = [o for o in src.objects if o is not old]
        options = sorted(set(w.shapes) - {old.shape} - {o.shape for o in others})
        if version != 1 and not options:  # version 1's two objects always leave a shape free
            return None
        shape = _pick(rng, options)
        if not shape or any(o.shape == old.shape for o in others):
            return None
        new = Obj(shape, old.color, old.x, old.y, old.size)
        tgt = src.with_objects([new if o is old else o for o in src.objects])
        return src, tgt, (old.shape, shape), object_mask(old, w.size) | object_mask(new, w.size), new
    if category == "change_background":
        src = random_scene(rng, version=version)
        background = _pick(rng, sorted(set(w.background_colors) - {src.background}))
        tgt = Scene(background, src.objects, version=version)
        covered = np.zeros_like(object_mask(src.objects[0], w.size))
        for o in src.objects:
            covered |= object_mask(o, w.size)
        return src, tgt, (src.background, background), ~covered, None
    if category == "add_object":
        n = 1 if version == 1 else int(rng.integers(w.min_objects, w.max_objects))
        src = random_scene(rng, n_objects=n, version=version)
        color = _pick(rng, sorted(set(w.object_colors) - {o.color for o in src.objects}))
        new = place(rng, _pick(rng, w.shapes), color, list(src.objects), w.size, version=version)
        if new is None:
            return None
        tgt = src.with_objects([*src.objects, new])
        return src, tgt, ("background", color), object_mask(new, w.size), new
    if category == "delete_object":
        n = 2 if version == 1 else int(rng.integers(2, w.max_objects + 1))
        src = random_scene(rng, n_objects=n, version=version)
        gone = src.objects[int(rng.integers(n))]
        tgt = src.with_objects([o for o in src.objects if o is not gone])
        return src, tgt, (gone.color, "background"), object_mask(gone, w.size), None
    raise ValueError(f"the shapes world has no {category!r} tasks; it has: {', '.join(SHAPES_CATEGORIES)}")


def shapes_tasks(category: str | int, split: str = "tune", count: int | None = None, seed: int = 0,
                 version: int = 1) -> list[EditTask]:
    """`count` tasks (default 20) of one category from one split ("tune", "heldout" or "all": both) of world
    `version` (1: the UNet model's, 2: the flow model's); the same arguments give the same tasks."""
    name = category_name(category)
    if name not in SHAPES_CATEGORIES:
        raise ValueError(f"the shapes world has no {name!r} tasks; it has: {', '.join(SHAPES_CATEGORIES)}")
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; use 'tune', 'heldout' or 'all'")
    count = DEFAULT_COUNT if count is None else int(count)
    version = world(version).version
    stream = [seed, SHAPES_CATEGORIES.index(name)] + ([] if version == 1 else [version])
    prefix = "shapes" if version == 1 else f"shapes-v{version}"
    rng = np.random.default_rng(stream)
    tasks: list[EditTask] = []
    drawn = dict.fromkeys(SPLITS, 0)  # tasks of each split so far: the index in a task's id
    seen: set[str] = set()
    while len(tasks) < count:
        made = _make(name, rng, version)
        if made is None:
            continue
        src, tgt, words, mask, edited = made
        which = _split_of(src)
        if (split != "all" and which != split) or repr(src) in seen:
            continue
        seen.add(repr(src))
        tasks.append(EditTask(
            id=f"{prefix}-{name}-{which}-{seed}-{drawn[which]:04d}",
            image=render(src), source_prompt=caption(src), target_prompt=caption(tgt), category=name,
            blend_words=words, mask=mask, expected=_expected(tgt, edited),
            metadata={"world": "shapes", "world_version": version, "split": which, "seed": seed,
                      "source": _expected(src, None) | {"edited": None}},
        ))
        drawn[which] += 1
    return tasks
