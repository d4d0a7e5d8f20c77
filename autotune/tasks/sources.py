"""One entry point for every kind of task source: `load_tasks(spec, category, split, heldout_fraction)`.

- ``"shapes:<category>[:<count>]"``: the shapes world's generated tasks (``autotune.shapes.tasks.shapes_tasks``;
  20 unless a count is given: the first 20 of a longer list are the default 20), whose split is drawn by
  construction (one scene in five held out);
- a directory holding ``mapping_file.json``: PIE-Bench;
- a ``.jsonl`` / ``.csv`` file: a task file (see `autotune.tasks.taskfile`).

Every source has the splits tune, heldout and all; for PIE-Bench and task files a task's digest decides its split
(`autotune.tasks.split`), with 30% held out unless `heldout_fraction` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

from autotune.errors import InputError, TaskFileError
from autotune.shapes.tasks import HELDOUT_FRACTION as SHAPES_HELDOUT_FRACTION
from autotune.shapes.tasks import shapes_tasks
from autotune.task import EditTask, category_name
from autotune.tasks.piebench import MAPPING_FILE, load_piebench
from autotune.tasks.split import DEFAULT_HELDOUT_FRACTION, check_split, select_split, split_of
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


def is_shapes(spec: str) -> bool:
    return spec.startswith("shapes:") or spec == "shapes"


def shapes_world_of(model: str | Path | None) -> int:
    """The shapes world version a model was trained on (its folder's `training.json`, `world_version`): 2 for
    `shapes-flow`, 1 for the UNet `shapes` model and for any model that is not a shapes model. `shapes:<category>`
    tasks are drawn in this version, so that a model edits scenes of its own world."""
    import json

    import autotune.shapes

    if model is None:
        return 1
    folder = Path(str(model))
    shipped = Path(autotune.shapes.__file__).parent / "weights" / str(model)  # `shapes`, `shapes-flow`
    meta = (folder if folder.is_dir() or not shipped.is_dir() else shipped) / "training.json"
    try:
        return int(json.loads(meta.read_text(encoding="utf-8")).get("world_version", 1))
    except (OSError, ValueError, TypeError, AttributeError):
        return 1


def heldout_fraction_of(spec: str, heldout_fraction: float | None = None) -> float:
    """The held-out fraction `load_tasks` applies to `spec`: the shapes world's own, else the one given or 30%.
    A fraction given for the shapes world is refused: its split is fixed by construction."""
    if is_shapes(spec):
        if heldout_fraction is not None and heldout_fraction != SHAPES_HELDOUT_FRACTION:
            raise InputError(f"{spec}: the shapes world holds out one scene in five by construction (fraction "
                             f"{SHAPES_HELDOUT_FRACTION:g}); --heldout-fraction applies to PIE-Bench folders and task "
                             "files")
        return SHAPES_HELDOUT_FRACTION
    return DEFAULT_HELDOUT_FRACTION if heldout_fraction is None else heldout_fraction


def load_tasks(spec: str, category: str | None = None, split: str = "tune",
               heldout_fraction: float | None = None, world_version: int = 1) -> list[EditTask]:
    """Tasks named by `spec`, optionally only one category, of one split: "tune" (the default), "heldout" or "all".

    PIE-Bench folders and task files hold out `heldout_fraction` of their tasks (default 0.3) by each task's
    digest (`autotune.tasks.split`); the shapes world draws its split by construction (one scene in five), in
    `world_version` (`shapes_world_of(model)`: the model's own world)."""
    fraction = heldout_fraction_of(spec, heldout_fraction)
    check_split(split, fraction)
    if category is not None:
        try:
            category = category_name(category)
        except ValueError as exc:
            raise TaskFileError(f"--category: {exc}") from None
    if is_shapes(spec):
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
            return list(shapes_tasks(world_category, split, count, version=world_version))
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
    chosen = select_split(tasks, split, fraction)
    if not chosen:
        held = sum(split_of(t, fraction) == "heldout" for t in tasks)
        raise TaskFileError(
            f"{spec}: none of its {len(tasks)} task(s){f' of category {category}' if category else ''} falls in the "
            f"{split} split ({held} held out at a held-out fraction of {fraction:g}); use --split all, another "
            "--heldout-fraction, or more tasks")
    return chosen
