"""Atomic file writes: a reader sees the old file or the new one, never a part of either.

The text goes to a temporary file in the same directory, is fsync'ed, then renamed over the target (os.replace
is atomic on POSIX and Windows). On any failure the temporary file is removed and the target is untouched; the
OSError is raised for the caller to word.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def file_mode() -> int:
    """The mode a new file gets from `open()` under the current umask (0644 under the usual 022): temporary files
    are made 0600, and a renamed one would otherwise keep that, unreadable to the group that reads its neighbours."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    return path


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); best effort elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
