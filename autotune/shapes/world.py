"""Scenes of one or two flat-coloured shapes on a plain background, rendered without anti-aliasing.

Hard pixel edges and a palette where object and background colours are disjoint make the ground truth
readable back from an image by nearest-colour classification alone (see `reader.py`).
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
    """A background colour and objects ordered left to right (the caption's order)."""

    background: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)

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


def render_array(scene: Scene, size: int = SIZE) -> np.ndarray:
    """uint8 H x W x 3 image of a scene; later objects paint over earlier ones."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND_COLORS[scene.background]
    for obj in scene.objects:
        image[object_mask(obj, size)] = OBJECT_COLORS[obj.color]
    return image


def render(scene: Scene, size: int = SIZE) -> Image.Image:
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


def place(rng: np.random.Generator, shape: str, color: str, others: list[Obj], size: int = SIZE,
          tries: int = 200) -> Obj | None:
    """A randomly sized and placed object clear of `others`, or None if none fits in `tries`."""
    for _ in range(tries):
        s = int(rng.integers(MIN_OBJECT, MAX_OBJECT + 1))
        x = int(rng.integers(0, size - s + 1))
        y = int(rng.integers(0, size - s + 1))
        obj = Obj(shape, color, x, y, s)
        if all(_boxes_apart(obj.box, o.box) for o in others):
            return obj
    return None


def random_scene(rng: np.random.Generator, n_objects: int | None = None, size: int = SIZE) -> Scene:
    """One or two objects of distinct colours on a random background."""
    n = int(rng.integers(1, 3)) if n_objects is None else n_objects
    while True:
        colors = rng.choice(list(OBJECT_COLORS), size=n, replace=False)
        objects: list[Obj] = []
        for color in colors:
            obj = place(rng, str(rng.choice(SHAPES)), str(color), objects, size)
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == n:
            return Scene(str(rng.choice(list(BACKGROUND_COLORS)))).with_objects(objects)
