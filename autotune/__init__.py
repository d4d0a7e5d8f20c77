"""autotune: tune the source/target guidance of inversion-based image editing, per edit category."""

from autotune.editor import Editor, EditResult
from autotune.guidance import GuidanceSchedule
from autotune.inversion import Inversion
from autotune.params import EditParams
from autotune.tasks import CATEGORIES, EditTask

__version__ = "0.1.0"

__all__ = ["CATEGORIES", "EditParams", "EditResult", "EditTask", "Editor", "GuidanceSchedule", "Inversion", "__version__"]
