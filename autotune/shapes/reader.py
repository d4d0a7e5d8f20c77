"""Read a scene back from pixels without any learned model: nearest palette colour, connected components,
and the best-matching shape template inside each component's box.

Works on clean renders (exact) and on model outputs (noisy colours, soft edges), which is what the
measurement and the edit scorer need.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image
from scipy import ndimage

from autotune.shapes.world import BACKGROUND_COLORS, OBJECT_COLORS, SHAPES, shape_mask, world

MIN_AREA = 12  # components smaller than this are edge noise, not objects (version 1's 32 px scenes)
# Per world version: at 64 px an object's area is at least 50 px and the edge noise of decoded images is larger.
MIN_AREAS = {1: MIN_AREA, 2: 24}

_NAMES = list(OBJECT_COLORS) + list(BACKGROUND_COLORS)
_PALETTE = np.array([OBJECT_COLORS[n] for n in OBJECT_COLORS] + [BACKGROUND_COLORS[n] for n in BACKGROUND_COLORS],
                    dtype=np.float64)
_N_OBJECT = len(OBJECT_COLORS)


@dataclass(frozen=True)
class ReadObject:
    """An object as read: `box` is (x0, y0, x1, y1) exclusive; `match` is the shape template IoU."""

    color: str
    shape: str
    box: tuple[int, int, int, int]
    center: tuple[float, float]
    area: int
    match: float


@dataclass(frozen=True)
class ReadScene:
    background: str
    objects: tuple[ReadObject, ...]

    def attributes(self) -> list[tuple[str, str]]:
        """(colour, shape) of each object, left to right."""
        return [(o.color, o.shape) for o in self.objects]


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """H x W x 3 float array in 0..255 from PIL, uint8 HxWx3, or float CHW/HWC in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64)
    return np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0


@cache
def _palette(version: int) -> tuple[list[str], np.ndarray, int]:
    """(names, RGB palette, number of object colours) of a world version: object colours, then backgrounds."""
    if version == 1:
        return _NAMES, _PALETTE, _N_OBJECT
    w = world(version)
    names = list(w.object_colors) + list(w.background_colors)
    rgb = [w.object_colors[n] for n in w.object_colors] + [w.background_colors[n] for n in w.background_colors]
    return names, np.array(rgb, dtype=np.float64), len(w.object_colors)


def palette_labels(image: Image.Image | np.ndarray, version: int = 1) -> np.ndarray:
    """Index into object colours then background colours (see `_palette`) of each pixel's nearest colour."""
    arr = to_array(image)
    palette = _palette(version)[1]
    dist = ((arr[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    return dist.argmin(-1)


@cache
def _template(shape: str, w: int, h: int) -> np.ndarray:
    big = shape_mask(shape, 64)
    ys, xs = np.nonzero(big)
    big = big[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    small = Image.fromarray(big.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)
    return np.asarray(small) >= 128


def classify_shape(component: np.ndarray, shapes: tuple[str, ...] = SHAPES) -> tuple[str, float]:
    """Best shape for a boolean mask cropped to its box, and its template IoU."""
    h, w = component.shape
    best, best_iou = shapes[0], -1.0
    for shape in shapes:
        tmpl = _template(shape, w, h)
        iou = float((tmpl & component).sum() / max((tmpl | component).sum(), 1))
        if iou > best_iou:
            best, best_iou = shape, iou
    return best, best_iou


def read_background(image: Image.Image | np.ndarray, version: int = 1) -> str:
    """The background colour name: the most common background-palette colour."""
    names, _, n_object = _palette(version)
    labels = palette_labels(image, version)
    counts = np.bincount(labels.ravel(), minlength=len(names))[n_object:]
    return names[n_object + int(counts.argmax())]


def read_scene(image: Image.Image | np.ndarray, min_area: int | None = None, version: int = 1) -> ReadScene:
    """Background colour and every object (colour, shape, box), left to right, in world `version`."""
    names, _, n_object = _palette(version)
    min_area = MIN_AREAS.get(version, MIN_AREA) if min_area is None else min_area
    shapes = world(version).shapes
    labels = palette_labels(image, version)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    background = names[n_object + int(counts[n_object:].argmax())]
    foreground = labels < n_object
    components, _n = ndimage.label(foreground)
    objects = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        mask = components[box] == index
        area = int(mask.sum())
        if area < min_area:
            continue
        colors = np.bincount(labels[box][mask], minlength=n_object)
        shape, match = classify_shape(mask, shapes)
        y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        ys, xs = np.nonzero(mask)
        objects.append(ReadObject(names[int(colors.argmax())], shape, (x0, y0, x1, y1),
                                  (float(xs.mean() + x0 + 0.5), float(ys.mean() + y0 + 0.5)), area, match))
    objects.sort(key=lambda o: (o.center[0], o.center[1]))
    return ReadScene(background, tuple(objects))
