"""Scenes of flat-coloured shapes on a plain background, rendered without anti-aliasing.

Hard pixel edges and a palette where object and background colours are disjoint make the ground truth
readable back from an image by nearest-colour classification alone (see `reader.py`).

The world has versions (`WORLDS`), each reproducible bit for bit from its seeds:

- version 1 (the default everywhere, the UNet `shapes` model's world): 32 x 32 px, one or two objects of 10 to
  16 px, at least 2 px apart;
- version 2 (the `shapes-flow` model's world): 64 x 64 px, one to four objects of 10 to 20 px, at least 3 px
  apart; the same colours, shapes, backgrounds and caption template. Richer through the number of objects: a
  caption binds up to four colour-shape pairs, which is where an unguided small model fails and guidance helps.
  The colours stay version 1's because the shapes VAE, reused at 64 px (16 x 16 latents), reconstructs only the
  colours it was trained on.

A `Scene` carries its version (not shown in its repr, so version-1 reprs, and the task splits hashed from them,
are unchanged); rendering and captions follow it, the reader takes it as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

SIZE = 32  # native pixel size of the world and of the trained model

OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MIN_OBJECT, MAX_OBJECT = 10, 16  # side / diameter in pixels
GAP = 2  # minimum empty pixels between two objects' boxes


@dataclass(frozen=True, eq=False)
class World:
    """One version of the world: image size, palettes, shapes, object sizes, spacing and object count."""

    version: int
    size: int
    object_colors: dict[str, tuple[int, int, int]]
    background_colors: dict[str, tuple[int, int, int]]
    shapes: tuple[str, ...]
    min_object: int
    max_object: int
    gap: int
    min_objects: int
    max_objects: int


WORLDS: dict[int, World] = {
    1: World(1, SIZE, OBJECT_COLORS, BACKGROUND_COLORS, SHAPES, MIN_OBJECT, MAX_OBJECT, GAP, 1, 2),
    2: World(2, 64, OBJECT_COLORS, BACKGROUND_COLORS, SHAPES, 10, 20, 3, 1, 4),
}
LATEST_VERSION = max(WORLDS)


def world(version: int = 1) -> World:
    """The world of one version (1 or 2)."""
    try:
        return WORLDS[int(version)]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"unknown shapes world version {version!r}; known: {', '.join(map(str, WORLDS))}") from None


@dataclass(frozen=True)
class Obj:
    """One shape: `x`, `y` are the top-left corner of its `size` x `size` box."""

    shape: str
    color: str
    x: int
    y: int
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), exclusive ends."""
        return self.x, self.y, self.x + self.size, self.y + self.size

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.size / 2, self.y + self.size / 2


@dataclass(frozen=True)
class Scene:
    """A background colour and objects ordered left to right (the caption's order), in world `version`."""

    background: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)
    version: int = field(default=1, repr=False)

    def with_objects(self, objects: list[Obj] | tuple[Obj, ...]) -> Scene:
        return replace(self, objects=tuple(sorted(objects, key=lambda o: (o.center[0], o.center[1]))))


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean `size` x `size` mask of a shape filling its box (triangle points up)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    c = size / 2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        return (xx - c) ** 2 + (yy - c) ** 2 <= c**2
    if shape == "triangle":
        return np.abs(xx - c) <= (yy + 0.5) / 2
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def object_mask(obj: Obj, size: int = SIZE) -> np.ndarray:
    """Boolean full-image mask of the pixels one object covers."""
    mask = np.zeros((size, size), dtype=bool)
    local = shape_mask(obj.shape, obj.size)
    x0, y0, x1, y1 = obj.box
    mask[y0:y1, x0:x1] = local[: size - y0, : size - x0][: y1 - y0, : x1 - x0]
    return mask


def render_array(scene: Scene, size: int | None = None) -> np.ndarray:
    """uint8 H x W x 3 image of a scene (at its world's size unless `size`); later objects paint over earlier ones."""
    w = world(scene.version)
    size = w.size if size is None else size
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = w.background_colors[scene.background]
    for obj in scene.objects:
        image[object_mask(obj, size)] = w.object_colors[obj.color]
    return image


def render(scene: Scene, size: int | None = None) -> Image.Image:
    """PIL RGB image of a scene."""
    return Image.fromarray(render_array(scene, size), "RGB")


def object_phrase(obj: Obj) -> str:
    article = "an" if obj.color[0] in "aeiou" else "a"
    return f"{article} {obj.color} {obj.shape}"


def caption(scene: Scene) -> str:
    """Template caption, e.g. "a red circle and a blue square on a white background"."""
    objects = " and ".join(object_phrase(o) for o in scene.objects)
    return f"{objects} on a {scene.background} background" if objects else f"a {scene.background} background"


def vocabulary() -> frozenset[str]:
    """Every word a caption of this world can hold: what the shapes model learned to read."""
    words = {"a", "an", "and", "on", "background", *OBJECT_COLORS, *BACKGROUND_COLORS, *SHAPES}
    return frozenset(words)


def unknown_words(text: str) -> list[str]:
    """The words of `text` outside `vocabulary()`, in order, once each (case and punctuation ignored)."""
    known = vocabulary()
    out: list[str] = []
    for raw in text.split():
        word = "".join(c for c in raw.lower() if c.isalnum())
        if word and word not in known and word not in out:
            out.append(word)
    return out


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = GAP) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def place(rng: np.random.Generator, shape: str, color: str, others: list[Obj], size: int | None = None,
          tries: int = 200, version: int = 1) -> Obj | None:
    """A randomly sized and placed object clear of `others`, or None if none fits in `tries`."""
    w = world(version)
    size = w.size if size is None else size
    for _ in range(tries):
        s = int(rng.integers(w.min_object, w.max_object + 1))
        x = int(rng.integers(0, size - s + 1))
        y = int(rng.integers(0, size - s + 1))
        obj = Obj(shape, color, x, y, s)
        if all(_boxes_apart(obj.box, o.box, w.gap) for o in others):
            return obj
    return None


def random_scene(rng: np.random.Generator, n_objects: int | None = None, size: int | None = None,
                 version: int = 1) -> Scene:
    """Objects of distinct colours (as many as the world allows, or `n_objects`) on a random background."""
    w = world(version)
    n = int(rng.integers(w.min_objects, w.max_objects + 1)) if n_objects is None else n_objects
    while True:
        colors = rng.choice(list(w.object_colors), size=n, replace=False)
        objects: list[Obj] = []
        for color in colors:
            obj = place(rng, str(rng.choice(w.shapes)), str(color), objects, size, version=version)
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == n:
            return Scene(str(rng.choice(list(w.background_colors))), version=w.version).with_objects(objects)
