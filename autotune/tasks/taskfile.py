"""Task files: a team's own edit tasks, as JSON Lines or CSV.

JSONL, one object per line (blank lines are skipped)::

    {"id": "car-1", "image": "photos/car.jpg", "source_prompt": "a blue car on a street",
     "target_prompt": "a red car on a street", "category": "change_color",
     "blend_words": ["blue", "red"], "mask": "masks/car.png"}

CSV, a header row with the same column names; ``blend_words`` as "blue red", empty cells are absent::

    id,image,source_prompt,target_prompt,category,blend_words,mask
    car-1,photos/car.jpg,a blue car on a street,a red car on a street,change_color,blue red,masks/car.png

Fields:
- ``image`` (required): path, relative to the task file's folder or absolute.
- ``source_prompt``, ``target_prompt`` (required): what the photo shows, what it should show.
- ``category`` (required): a PIE-Bench id 0-9 or name (``change_color``, ``change_object``, ...).
- ``id`` (optional, unique): defaults to ``<file stem>-<line number>``.
- ``blend_words`` (optional): source and target word for LocalBlend and re-weighting.
- ``mask`` (optional): an image the size of ``image``, white (>= 128) where the edit should happen; in JSONL
  also PIE-Bench's run-length list ``[start, length, ...]``. A mask that is not black and white (a JPEG, soft
  edges) is thresholded at 128 with a warning; an empty or full mask is kept with a warning.
- ``metadata`` (optional, JSONL only): any JSON object, kept with the task.

Errors name the file, the line and the field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from autotune.errors import TaskFileError
from autotune.images import MAX_PIXELS, to_rgb
from autotune.task import IMAGE_SHA256, EditTask, category_name, contains_words
from autotune.tasks.piebench import decode_mask

log = logging.getLogger(__name__)

FIELDS = ("id", "image", "source_prompt", "target_prompt", "category", "blend_words", "mask", "metadata")
REQUIRED = ("image", "source_prompt", "target_prompt", "category")


def load_task_file(path: str | Path, category: int | str | None = None) -> list[EditTask]:
    """Tasks from a .jsonl or .csv file, optionally only those of one category."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: no such task file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv"):
        raise TaskFileError(f"{path}: unknown task file type {suffix!r}; use .jsonl or .csv (see docs/metrics.md)")
    try:
        entries = _read_csv(path) if suffix == ".csv" else _read_jsonl(path)
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except csv.Error as exc:
        raise TaskFileError(f"{path}: not valid CSV ({exc})") from None
    wanted = None if category is None else category_name(category)
    tasks, seen = [], {}
    for line, entry in entries:
        task = _to_task(path, line, entry)
        if task.id in seen:
            raise TaskFileError(f"{path}, line {line}, field 'id': {task.id!r} already used on line {seen[task.id]}")
        seen[task.id] = line
        if wanted is None or task.category == wanted:
            tasks.append(task)
    if not seen:
        raise TaskFileError(f"{path}: holds no tasks")
    return tasks


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    entries = []
    with open(path, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                entry = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TaskFileError(f"{path}, line {line}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(entry, dict):
                raise TaskFileError(f"{path}, line {line}: expected a JSON object, got {type(entry).__name__}")
            entries.append((line, entry))
    return entries


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        unknown = [name for name in header if name not in FIELDS or name == "metadata"]
        if unknown:
            known = ", ".join(FIELDS[:-1])
            raise TaskFileError(f"{path}, line 1: unknown column(s) {', '.join(unknown)}; known: {known}")
        entries = []
        for row in reader:
            if None in row:
                raise TaskFileError(f"{path}, line {reader.line_num}: more cells than header columns")
            entries.append((reader.line_num, {k: v for k, v in row.items() if v not in ("", None)}))
    return entries


def _to_task(path: Path, line: int, entry: dict[str, Any]) -> EditTask:
    task_id = str(entry.get("id", f"{path.stem}-{line}"))
    where = f"{path}, line {line} (task {task_id!r})"
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise TaskFileError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    for name in REQUIRED:
        value = entry.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise TaskFileError(f"{where}, field {name!r}: missing")
    for name in ("source_prompt", "target_prompt", "image"):
        if not isinstance(entry[name], str):
            raise TaskFileError(f"{where}, field {name!r}: expected text, got {type(entry[name]).__name__}")
    try:
        category = category_name(entry["category"])
    except ValueError as exc:
        raise TaskFileError(f"{where}, field 'category': {exc}") from None
    opened, image_sha256 = _open_image(path, entry["image"], f"{where}, field 'image'")
    image = to_rgb(opened)
    mask = None
    if entry.get("mask") is not None:
        mask = _mask(path, entry["mask"], image, f"{where}, field 'mask'")
    metadata = entry.get("metadata", {})
    if not isinstance(metadata, dict):
        raise TaskFileError(f"{where}, field 'metadata': expected an object, got {type(metadata).__name__}")
    blend_words = _blend_words(entry.get("blend_words"), f"{where}, field 'blend_words'")
    if blend_words is not None:  # the engine would refuse the task mid-run; refuse the file now
        for word, role in zip(blend_words, ("source_prompt", "target_prompt"), strict=True):
            if not contains_words(entry[role], word):
                raise TaskFileError(
                    f"{where}, field 'blend_words': {word!r} does not appear in the {role} {entry[role]!r}; "
                    "blend words are a word of the source prompt and a word of the target prompt"
                )
    return EditTask(
        id=task_id,
        image=image,
        source_prompt=entry["source_prompt"].strip(),
        target_prompt=entry["target_prompt"].strip(),
        category=category,
        blend_words=blend_words,
        mask=mask,
        metadata={"source": str(path), "line": line, **metadata, IMAGE_SHA256: image_sha256},
    )


def _open_image(path: Path, relative: str, where: str) -> tuple[Image.Image, str]:
    """The image and the sha256 of its file's bytes (what the task's digest, and so its split, is computed on)."""
    image_path = Path(relative) if Path(relative).is_absolute() else path.parent / relative
    if not image_path.is_file():
        raise TaskFileError(f"{where}: no image at {image_path}")
    try:
        data = image_path.read_bytes()
        with Image.open(io.BytesIO(data)) as handle:
            if handle.width * handle.height > MAX_PIXELS:
                raise TaskFileError(
                    f"{where}: {image_path} is {handle.width}x{handle.height}, over {MAX_PIXELS:,} pixels; "
                    "downscale it first"
                )
            handle.load()
            return handle.copy(), hashlib.sha256(data).hexdigest()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise TaskFileError(f"{where}: cannot read {image_path} as an image ({exc})") from None


def _mask(path: Path, value: Any, image: Image.Image, where: str) -> np.ndarray:
    if isinstance(value, list):
        try:
            mask = decode_mask([int(v) for v in value], (image.height, image.width), border=False)
        except (TypeError, ValueError) as exc:
            raise TaskFileError(f"{where}: {exc}") from None
    elif isinstance(value, str):
        mask_image, _ = _open_image(path, value, where)
        if mask_image.size != image.size:
            raise TaskFileError(
                f"{where}: mask is {mask_image.width}x{mask_image.height} but the image is "
                f"{image.width}x{image.height}"
            )
        gray = np.asarray(mask_image.convert("L"))
        if not np.isin(gray, (0, 255)).all():  # a JPEG's noise or soft edges would mark half the image at > 0
            log.warning("%s: mask is not black and white; pixels >= 128 count as edited", where)
        mask = gray >= 128
    else:
        raise TaskFileError(f"{where}: expected an image path or a run-length list, got {type(value).__name__}")
    if not mask.any():
        log.warning("%s: mask marks no pixel; the task is scored as if it had no mask", where)
    elif mask.all():
        log.warning("%s: mask marks every pixel; background metrics are NaN in masked mode", where)
    return mask


def _blend_words(value: Any, where: str) -> tuple[str, str] | None:
    if value is None:
        return None
    words = value.split() if isinstance(value, str) else value
    if not isinstance(words, (list, tuple)) or len(words) != 2 or not all(isinstance(w, str) and w for w in words):
        example = '"cat dog" or ["cat", "dog"]'
        raise TaskFileError(f"{where}: expected two words (source, target), e.g. {example}; got {value!r}")
    return (words[0], words[1])
