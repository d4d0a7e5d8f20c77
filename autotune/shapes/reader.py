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

from autotune.shapes.world import BACKGROUND_COLORS, OBJECT_COLORS, SHAPES, shape_mask

MIN_AREA = 12  # components smaller than this are edge noise, not objects

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


def palette_labels(image: Image.Image | np.ndarray) -> np.ndarray:
    """Index into object colours then background colours (see `_NAMES`) of each pixel's nearest colour."""
    arr = to_array(image)
    dist = ((arr[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    return dist.argmin(-1)


@cache
def _template(shape: str, w: int, h: int) -> np.ndarray:
    big = shape_mask(shape, 64)
    ys, xs = np.nonzero(big)
    big = big[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    small = Image.fromarray(big.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)
    return np.asarray(small) >= 128


def classify_shape(component: np.ndarray) -> tuple[str, float]:
    """Best shape for a boolean mask cropped to its box, and its template IoU."""
    h, w = component.shape
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        tmpl = _template(shape, w, h)
        iou = float((tmpl & component).sum() / max((tmpl | component).sum(), 1))
        if iou > best_iou:
            best, best_iou = shape, iou
    return best, best_iou


def read_background(image: Image.Image | np.ndarray) -> str:
    """The background colour name: the most common background-palette colour."""
    labels = palette_labels(image)
    counts = np.bincount(labels.ravel(), minlength=len(_NAMES))[_N_OBJECT:]
    return _NAMES[_N_OBJECT + int(counts.argmax())]


def read_scene(image: Image.Image | np.ndarray, min_area: int = MIN_AREA) -> ReadScene:
    """Background colour and every object (colour, shape, box), left to right."""
    labels = palette_labels(image)
    counts = np.bincount(labels.ravel(), minlength=len(_NAMES))
    background = _NAMES[_N_OBJECT + int(counts[_N_OBJECT:].argmax())]
    foreground = labels < _N_OBJECT
    components, _n = ndimage.label(foreground)
    objects = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        mask = components[box] == index
        area = int(mask.sum())
        if area < min_area:
            continue
        colors = np.bincount(labels[box][mask], minlength=_N_OBJECT)
        shape, match = classify_shape(mask)
        y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        ys, xs = np.nonzero(mask)
        objects.append(ReadObject(_NAMES[int(colors.argmax())], shape, (x0, y0, x1, y1),
                                  (float(xs.mean() + x0 + 0.5), float(ys.mean() + y0 + 0.5)), area, match))
    objects.sort(key=lambda o: (o.center[0], o.center[1]))
    return ReadScene(background, tuple(objects))
