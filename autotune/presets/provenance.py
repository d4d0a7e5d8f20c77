"""A preset's provenance: who made it, when, with which autotune, from which study; storage URLs redacted."""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import getpass
import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from autotune.redact import redact_url


def current_author() -> str:
    """`$AUTOTUNE_AUTHOR`, else the git user name, else the OS user."""
    author = os.environ.get("AUTOTUNE_AUTHOR", "").strip()
    if author:
        return author
    git = shutil.which("git")
    if git:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([git, "config", "user.name"], capture_output=True, text=True, timeout=5, check=False)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return "unknown"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def make_provenance(kind: str = "tuned", **fields_: Any) -> dict[str, Any]:
    """Provenance with the autotune version, creation date (UTC) and author filled in; storage URLs redacted."""
    from autotune import __version__

    out: dict[str, Any] = {
        "kind": kind,
        "autotune_version": __version__,
        "created": utc_now(),
        "author": current_author(),
    }
    out.update({k: v for k, v in fields_.items() if v is not None})
    study = out.get("study")
    if isinstance(study, dict) and "storage" in study:
        out["study"] = {**study, "storage": redact_url(study["storage"])}
    return out



def redacted(provenance: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(provenance))
    study = out.get("study")
    if isinstance(study, dict) and study.get("storage") is not None:
        study["storage"] = redact_url(str(study["storage"]))
    return out

