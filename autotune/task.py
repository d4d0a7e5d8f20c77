"""An edit task: one image, what it shows, what it should become, and where; its fingerprints; word matching.

Categories follow PIE-Bench's `editing_type_id` (0-9); names are accepted wherever an id is.

Two fingerprints, for two questions. `task_fingerprint(tasks)` identifies a whole task *set* as loaded (ids,
prompts, blend words, categories, pixels, masks, in order): a study is resumed only on the same set.
`task_digest(task)` identifies one edit by what it is, whatever it is called: its source image and its two
prompts. It decides a task's held-out split (`autotune.tasks.split`) and tells whether a preset was tuned on a
task (`autotune evaluate`'s overlap check), so it must not change between machines or versions: it is sha256
under a fixed scheme name, over the image *file's* bytes where the task came from a file (decoders differ across
libjpeg builds; bytes do not) and over the decoded RGB pixels for a task built in code.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

# PIE-Bench editing_type_id -> canonical name.
CATEGORIES: dict[int, str] = {
    0: "random",
    1: "change_object",
    2: "add_object",
    3: "delete_object",
    4: "change_content",
    5: "change_pose",
    6: "change_color",
    7: "change_material",
    8: "change_background",
    9: "change_style",
}
_ALIASES = {"change_colour": "change_color", "change_shape": "change_object"}
_PUNCT = re.compile(r"[^\w']+")


def category_name(value: int | str) -> str:
    """Canonical category name from an id (6, "6") or a name ("change_color", "change colour")."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value in CATEGORIES:
            return CATEGORIES[value]
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "_").replace("-", "_")
        if text.isdigit() and int(text) in CATEGORIES:
            return CATEGORIES[int(text)]
        text = _ALIASES.get(text, text)
        if text in CATEGORIES.values():
            return text
    known = ", ".join(f"{i}={n}" for i, n in CATEGORIES.items())
    raise ValueError(f"unknown edit category {value!r}; use an id or a name: {known}")


@dataclass
class EditTask:
    """One edit to make and score.

    `mask` is a boolean HxW array, True where the edit should happen (PIE-Bench convention).
    `blend_words` is (source word, target word) for LocalBlend and re-weighting, or None.
    `expected` holds ground truth where a world knows it (the shapes world), else None.
    """

    id: str
    image: Image.Image
    source_prompt: str
    target_prompt: str
    category: str
    blend_words: tuple[str, str] | None = None
    mask: np.ndarray | None = None
    expected: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.category = category_name(self.category)
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.ndim != 2:
                raise ValueError(f"task {self.id}: mask must be 2-D (H, W), got shape {mask.shape}")
            if mask.shape != (self.image.height, self.image.width):
                raise ValueError(
                    f"task {self.id}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                    f"{self.image.width}x{self.image.height}; they must match"
                )
            self.mask = mask.astype(bool)


IMAGE_SHA256 = "image_sha256"  # metadata key: sha256 of the image file's bytes, set by the file loaders
DIGEST_SCHEME = b"autotune-task-digest-v1"  # part of every digest; a new scheme would need a new name
DIGEST_HEX = 16  # 64 bits: collisions are negligible for any task set that fits in memory


def image_sha256(task: EditTask) -> str:
    """sha256 of the task's image: of its file's bytes when a loader recorded them, else of its RGB pixels."""
    recorded = task.metadata.get(IMAGE_SHA256)
    if isinstance(recorded, str) and recorded:
        return recorded
    image = task.image.convert("RGB")
    h = hashlib.sha256(f"rgb {image.width}x{image.height}\0".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def task_digest(task: EditTask) -> str:
    """One edit's identity: the first 64 bits (16 hex digits) of sha256 over the scheme name, the image's sha256
    and the source and target prompts. The id, category, blend words and mask do not enter: the same photo with
    the same prompts is the same edit, under any name."""
    h = hashlib.sha256(DIGEST_SCHEME)
    for part in (image_sha256(task), task.source_prompt, task.target_prompt):
        h.update(b"\0")
        h.update(part.encode("utf-8"))
    return h.hexdigest()[:DIGEST_HEX]


def task_fingerprint(tasks: Sequence[EditTask]) -> str:
    """sha256 over the tasks' ids, prompts, blend words, categories, image and mask bytes, in order."""
    h = hashlib.sha256()
    for task in tasks:
        for text in (task.id, task.source_prompt, task.target_prompt, task.category, repr(task.blend_words)):
            h.update(text.encode("utf-8"))
            h.update(b"\0")
        image = task.image.convert("RGB")
        h.update(f"{image.size}".encode())
        h.update(image.tobytes())
        if task.mask is not None:
            h.update(np.packbits(np.asarray(task.mask, dtype=bool)).tobytes())
        h.update(b"\1")
    return "sha256:" + h.hexdigest()


def normalise_word(word: str) -> str:
    """A word as blend words are matched: lower case, punctuation dropped."""
    return _PUNCT.sub("", word.lower())


def contains_words(text: str, words: str) -> bool:
    """Whether `words` appear, consecutively, among the whitespace words of `text`, matched as the engine matches
    blend words (case and punctuation ignored); lets task files be checked without a tokenizer."""
    wanted = [normalise_word(w) for w in words.split()]
    have = [normalise_word(w) for w in text.split()]
    return bool(wanted) and all(wanted) and any(
        have[i : i + len(wanted)] == wanted for i in range(len(have) - len(wanted) + 1)
    )
