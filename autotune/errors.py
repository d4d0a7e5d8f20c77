"""Errors a user can act on. The CLI prints their message (no traceback) and exits with code 2."""


class AutotuneError(Exception):
    """Base class: the message says what is wrong, where, and what to do."""


class ModelNotFoundError(AutotuneError):
    """A checkpoint could not be found or fetched."""


class WeightsNotFoundError(AutotuneError):
    """Scorer weights (CLIP, DINO, LPIPS) are missing."""


class InputError(AutotuneError, ValueError):
    """A bad image, mask, prompt or parameter (also a ValueError, for callers that catch those)."""


class TaskFileError(AutotuneError):
    """A task file or data set directory that cannot be read."""


class PresetError(AutotuneError):
    """A preset file that is malformed, incompatible or unsafe."""


class StorageError(AutotuneError):
    """An Optuna storage that cannot be reached or used."""
