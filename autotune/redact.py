"""Passwords out of storage URLs, and out of messages that quote them: what is printed, logged, and recorded in
studies and presets never holds one.

Both forms are caught: `scheme://user:password@host/...` and a `password=` (`passwd=`, `pwd=`) query value. The text
may be a whole message; every URL in it is redacted, and a URL too broken to parse loses its password all the same.
"""

from __future__ import annotations

import os
import re

_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<password>[^/\s]*)@")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<key>[?&](?:password|passwd|pwd)=)(?P<password>[^&#\s]*)")


def redact_url(url: str | os.PathLike | None) -> str | None:
    """`url` (or a message holding URLs) with every password replaced by `***`; None stays None."""
    if url is None:
        return None
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(url))
    return _QUERY_PASSWORD.sub(lambda m: f"{m['key']}***", text)


def has_password(url: str | os.PathLike | None) -> bool:
    """Whether `url` holds a password in clear."""
    text = str(url or "")
    return any(m["password"] not in ("", "***") for pattern in (_URL_PASSWORD, _QUERY_PASSWORD)
               for m in pattern.finditer(text))
