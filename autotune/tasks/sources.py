"""One entry point for every kind of task source: `load_tasks(spec, category, split)`.

- ``"shapes:<category>[:<count>]"``: the shapes world's generated tasks (``autotune.shapes.tasks.shapes_tasks``;
  20 unless a count is given: the first 20 of a longer list are the default 20);
- a directory holding ``mapping_file.json``: PIE-Bench;
- a ``.jsonl`` / ``.csv`` file: a task file (see `autotune.tasks.taskfile`).
"""

from __future__ import annotations

from pathlib import Path

from autotune.errors import TaskFileError
from autotune.shapes.tasks import shapes_tasks
from autotune.task import EditTask, category_name
from autotune.tasks.piebench import MAPPING_FILE, load_piebench
from autotune.tasks.taskfile import load_task_file

_KINDS = "use shapes:<category>[:<count>], a PIE-Bench directory (with mapping_file.json), or a .jsonl / .csv task file"


def shapes_spec(spec: str) -> tuple[str, int | None]:
    """`shapes:<category>[:<count>]` -> (category or "", count or None)."""
    world_category, _, count_text = spec.partition(":")[2].partition(":")
    if not count_text:
        return world_category, None
    if not count_text.isdigit() or int(count_text) < 1:
        raise TaskFileError(f"{spec}: the task count must be a whole number >= 1, as in shapes:add_object:60")
    return world_category, int(count_text)


def load_tasks(spec: str, category: str | None = None, split: str = "tune") -> list[EditTask]:
    """Tasks named by `spec`, optionally only one category; `split` applies to generated worlds only."""
    if category is not None:
        try:
            category = category_name(category)
        except ValueError as exc:
            raise TaskFileError(f"--category: {exc}") from None
    if spec.startswith("shapes:") or spec == "shapes":
        world_category, count = shapes_spec(spec)
        world_category = world_category or category
        if not world_category:
            raise TaskFileError("shapes tasks need a category: use 'shapes:<category>', e.g. shapes:change_color")
        try:
            world_category = category_name(world_category)
        except ValueError as exc:
            raise TaskFileError(f"{spec}: {exc}") from None
        if category is not None and category != world_category:
            raise TaskFileError(f"{spec} holds {world_category} tasks but --category asks for {category}")
        try:
            return list(shapes_tasks(world_category, split, count))
        except ValueError as exc:
            raise TaskFileError(f"{spec}: {exc}") from None
    path = Path(spec)
    if path.is_dir():
        if not (path / MAPPING_FILE).is_file():
            raise TaskFileError(f"{path}: a directory of tasks must be a PIE-Bench directory with {MAPPING_FILE}")
        tasks = load_piebench(path, category)
    elif path.suffix.lower() in (".jsonl", ".ndjson", ".csv"):
        tasks = load_task_file(path, category)
    elif not path.exists():
        raise TaskFileError(f"{spec}: no such file or directory; {_KINDS}")
    else:
        raise TaskFileError(f"{spec}: not a task source; {_KINDS}")
    if not tasks:
        raise TaskFileError(f"{spec}: no tasks" + (f" in category {category}" if category else ""))
    return tasks
