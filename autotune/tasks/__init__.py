"""Where edit tasks come from: PIE-Bench folders, task files, and the generated shapes world, behind one entry
(`load_tasks`). The task itself (`EditTask`) is part of the shared vocabulary, `autotune.task`."""

from autotune.task import CATEGORIES, EditTask, category_name, task_fingerprint
from autotune.tasks.sources import load_tasks

__all__ = ["CATEGORIES", "EditTask", "category_name", "load_tasks", "task_fingerprint"]
