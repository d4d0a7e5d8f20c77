"""5. Inversion error against w_inv: reconstruction PSNR (`autotune.bench.shapes_model.inversion_table`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class InversionResult:
    rows: list[dict[str, Any]]  # {"setting", "psnr", "read_ok"}
    samples: int
    steps: int
    table: str

    def markdown(self) -> str:
        return (self.table + f"\n\n{self.samples} rendered scenes, {self.steps} DDIM steps; reconstruction = the "
                "source branch of an edit with identical prompts, inverted at w_inv = w_src "
                "(`autotune.bench.shapes_model.inversion_table`).")


def bench_inversion(model: str | Path, samples: int = 20, steps: int = 50, seed: int = 0) -> InversionResult:
    """The SimInversion replication table, computed by the shapes world's own measurement (not duplicated here)."""
    from autotune.bench.shapes_model import inversion_table

    table = inversion_table(model, samples, steps, seed)
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 3:
            psnr = float(cells[1])
            read = float(cells[2].rstrip("%")) / 100 if cells[2].endswith("%") else None
            rows.append({"setting": cells[0], "psnr": psnr, "read_ok": read})
    return InversionResult(rows, samples, steps, table)
