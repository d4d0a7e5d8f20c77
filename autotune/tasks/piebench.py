"""Load a PIE-Bench directory (``mapping_file.json`` + ``annotation_images/``) as `EditTask`s.

    tasks = load_piebench("/data/PIE-Bench_v1", category="change_color")

Follows PIE-Bench's own evaluation code: prompts with the square brackets stripped, the run-length mask
decoded over the flattened row-major image with its 1-pixel border forced to "edit", categories from
``editing_type_id`` (0-9). The data set is not redistributable; users obtain it from its authors.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from autotune.errors import TaskFileError
from autotune.task import CATEGORIES, IMAGE_SHA256, EditTask, category_name

MAPPING_FILE = "mapping_file.json"
IMAGES_DIR = "annotation_images"
_REQUIRED = ("image_path", "original_prompt", "editing_prompt", "editing_type_id", "mask")


def strip_brackets(prompt: str) -> str:
    """PIE-Bench marks the changed words as "[red] car"; the prompt used is "red car"."""
    return prompt.replace("[", "").replace("]", "")


def decode_mask(rle: list[int], shape: tuple[int, int] = (512, 512), border: bool = True) -> np.ndarray:
    """Run-length pairs [start, length, ...] over the flattened row-major image -> bool (H, W), True = edit.

    Runs that pass the end are cut there. With `border`, the 1-pixel image border is forced to True, as
    PIE-Bench does "to avoid annotation errors in boundary".
    """
    if len(rle) % 2:
        raise ValueError(f"run-length mask has an odd number of values ({len(rle)}); expected start/length pairs")
    height, width = shape
    flat = np.zeros(height * width, dtype=bool)
    for start, length in zip(rle[0::2], rle[1::2]):
        if start < 0 or length < 0:
            raise ValueError(f"run-length mask has a negative start or length ({start}, {length})")
        flat[start : start + length] = True
    mask = flat.reshape(height, width)
    if border:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def encode_mask(mask: np.ndarray) -> list[int]:
    """Inverse of `decode_mask` (without the border): bool (H, W) -> run-length pairs."""
    flat = np.concatenate([[False], np.asarray(mask, dtype=bool).ravel(), [False]])
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = changes[0::2], changes[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


def _blend_words(value: str | None) -> tuple[str, str] | None:
    words = (value or "").split()
    return (words[0], words[1]) if len(words) == 2 else None


def load_piebench(root: str | Path, category: int | str | None = None) -> list[EditTask]:
    """All tasks of a PIE-Bench directory, or those of one category (id 0-9 or name), in mapping-file order."""
    root = Path(root)
    mapping_path = root / MAPPING_FILE
    if not mapping_path.is_file():
        raise TaskFileError(f"{root}: no {MAPPING_FILE}; a PIE-Bench directory holds {MAPPING_FILE} and {IMAGES_DIR}/")
    try:
        mapping = json.loads(mapping_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaskFileError(f"{mapping_path}: not valid JSON ({exc})") from exc
    if not isinstance(mapping, dict):
        raise TaskFileError(f"{mapping_path}: expected an object keyed by image id, got {type(mapping).__name__}")
    wanted = None if category is None else _category(category, mapping_path)
    tasks = []
    for key, entry in mapping.items():
        where = f"{mapping_path}, entry {key!r}"
        if not isinstance(entry, dict):
            raise TaskFileError(f"{where}: expected an object, got {type(entry).__name__}")
        missing = [f for f in _REQUIRED if f not in entry]
        if missing:
            raise TaskFileError(f"{where}: missing field(s) {', '.join(missing)}")
        name = _category(entry["editing_type_id"], where + ", field 'editing_type_id'")
        if wanted is not None and name != wanted:
            continue
        tasks.append(_task(root, key, entry, name, where))
    return tasks


def _category(value, where) -> str:
    try:
        return category_name(value)
    except ValueError as exc:
        raise TaskFileError(f"{where}: {exc}") from None


def _task(root: Path, key: str, entry: dict, category: str, where: str) -> EditTask:
    image_path = root / IMAGES_DIR / entry["image_path"]
    if not image_path.is_file():
        raise TaskFileError(f"{where}, field 'image_path': no image at {image_path}")
    try:
        data = image_path.read_bytes()
        with Image.open(io.BytesIO(data)) as handle:
            image = handle.convert("RGB")
    except OSError as exc:
        raise TaskFileError(f"{where}, field 'image_path': cannot read {image_path} ({exc})") from exc
    try:
        mask = decode_mask(list(entry["mask"]), (image.height, image.width))
    except (TypeError, ValueError) as exc:
        raise TaskFileError(f"{where}, field 'mask': {exc}") from exc
    return EditTask(
        id=str(key),
        image=image,
        source_prompt=strip_brackets(entry["original_prompt"]),
        target_prompt=strip_brackets(entry["editing_prompt"]),
        category=category,
        blend_words=_blend_words(entry.get("blended_word")),
        mask=mask,
        metadata={
            "source": "piebench",
            "image_path": entry["image_path"],
            "editing_type_id": str(entry["editing_type_id"]),
            "editing_instruction": entry.get("editing_instruction", ""),
            "blended_word": entry.get("blended_word", ""),
            IMAGE_SHA256: hashlib.sha256(data).hexdigest(),  # the task's digest and split are computed on it
        },
    )


__all__ = ["CATEGORIES", "decode_mask", "encode_mask", "load_piebench", "strip_brackets"]
