"""A bounded cache of inversion trajectories (and source branch records), in memory and optionally on disk.

Inverting is a full sampling pass, and a tuning run asks for the same (image, prompt, guidance,
steps) inversion for every candidate; the cache makes that a look-up. With a directory, workers on
one machine (or a shared file system) reuse each other's inversions, stored as safetensors.
Source branch records (`autotune.engine.unet.source_record`) are bigger and kept in memory only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from autotune.errors import InputError


def cache_key(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return int(value.nbytes)


class TensorCache:
    """LRU by count and bytes over tensors (or objects with `nbytes`); `directory` adds a persistent second
    level for tensors."""

    def __init__(self, max_items: int = 4096, max_bytes: int = 2 << 30, directory: str | Path | None = None
                 ) -> None:
        if max_items < 1 or max_bytes < 0:
            raise InputError(f"cache bounds must be at least 1 item and 0 bytes, got {max_items} items and "
                             f"{max_bytes} bytes")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.directory = Path(directory) if directory else None
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, device: torch.device | None = None) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        if self.directory is not None:
            path = self.directory / f"{key}.safetensors"
            if path.is_file():
                try:
                    tensor = load_file(str(path), device=str(device or "cpu"))["value"]
                except Exception:  # a torn or foreign file: recompute rather than fail
                    tensor = None
                if tensor is not None:
                    self.hits += 1
                    self._remember(key, tensor)
                    return tensor
        self.misses += 1
        return None

    def peek(self, key: str) -> Any:
        """The in-memory value, or None; not counted as a hit or miss and not moved up the LRU order."""
        return self._items.get(key)

    def put(self, key: str, tensor: Any, persist: bool = True) -> None:
        """Keep `tensor`; on disk too when the cache has a directory and `persist` is on (tensors only)."""
        self._remember(key, tensor)
        if self.directory is not None and persist and isinstance(tensor, torch.Tensor):
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            os.close(fd)
            try:
                save_file({"value": tensor.detach().contiguous().cpu()}, tmp)
                os.replace(tmp, self.directory / f"{key}.safetensors")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def _remember(self, key: str, value: Any) -> None:
        if key in self._items:
            self._bytes -= _nbytes(self._items[key])
        self._items[key] = value
        self._items.move_to_end(key)
        self._bytes += _nbytes(value)
        while self._items and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
            _, old = self._items.popitem(last=False)
            self._bytes -= _nbytes(old)

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0
