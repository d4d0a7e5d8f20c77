"""BENCHMARKS.md: each benchmark's section (title, exact command, date, machine, table, reading) kept between
markers and rewritten alone, atomically, by its own command."""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotune import atomic
from autotune.bench._common import BENCHMARKS, other_load


def _marker(name: str, end: bool = False) -> str:
    return f"<!-- autotune-bench:{name}:{'end' if end else 'start'} -->"


def write_section(path: str | Path, name: str, body: str) -> Path:
    """Replace benchmark `name`'s section of the markdown file (kept between markers), or add it in the order of
    `BENCHMARKS`; other sections are left as they are. Written atomically (temp file + os.replace)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)  # lock the directory: two benchmark processes may write at once
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _rewrite_section(path, name, body)
    finally:
        os.close(fd)


def _rewrite_section(path: Path, name: str, body: str) -> Path:
    text = path.read_text(encoding="utf-8") if path.is_file() else (
        "# Benchmarks\n\nMeasured with `autotune bench`; each section is rewritten by its own command.\n")
    block = f"{_marker(name)}\n{body.strip()}\n{_marker(name, end=True)}"
    pattern = re.compile(re.escape(_marker(name)) + r".*?" + re.escape(_marker(name, end=True)), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        later = [n for n in BENCHMARKS[BENCHMARKS.index(name) + 1:] if _marker(n) in text] if name in BENCHMARKS \
            else []
        if later:
            at = text.index(_marker(later[0]))
            text = text[:at] + block + "\n\n" + text[at:]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    return atomic.write_text(path, text)


def section(title: str, command: str, machine: dict[str, Any], table: str, notes: str = "") -> str:
    """A BENCHMARKS.md section: title, exact command, date, machine, figures, notes."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = machine.get("load_average_1min")
    busy = ""
    others = other_load(machine)
    if others is not None and others > 0.25 * machine["cpu_count"]:
        busy = (f" **The machine was busy** (1-minute load {load} on {machine['cpu_count']} CPUs, about "
                f"{others:.1f} beyond this benchmark's own): absolute times are inflated; ratios measured in the same "
                "run are the figures to read.")
    lines = [f"## {title}", "", f"Command: `{command}`", "",
             f"Measured {date} on {machine.get('cpu_count')} CPUs, torch {machine.get('torch')} "
             f"({machine.get('torch_threads')} threads), device {machine.get('device')}"
             + (f" ({machine['gpu']})" if machine.get("gpu") else "")
             + (f", load {load}" if load is not None else "") + "." + busy, "", table.strip()]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)
