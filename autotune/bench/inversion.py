"""5. Inversion error against w_inv: reconstruction PSNR (`autotune.bench.shapes_model.inversion_table`), DDIM on the
UNet shapes model, Euler inversion of the flow ODE on the flow shapes model."""

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
    flow: bool = False  # the rectified-flow shapes model: Euler inversion of the flow ODE

    def markdown(self) -> str:
        how = ("Euler steps, full-depth inversion of the flow ODE (`flow_siminversion`, n_max = 1); reconstruction = "
               "the source branch of an edit with identical prompts, sampled at the inversion's guidance w_src"
               if self.flow else "DDIM steps; reconstruction = the source branch of an edit with identical prompts, "
               "inverted at w_inv = w_src")
        return (self.table + f"\n\n{self.samples} rendered scenes, {self.steps} {how} "
                "(`autotune.bench.shapes_model.inversion_table`).")


def bench_inversion(model: str | Path, samples: int = 20, steps: int = 50, seed: int = 0) -> InversionResult:
    """The SimInversion replication table, computed by the shapes world's own measurement (not duplicated here)."""
    from autotune.bench.shapes_model import inversion_table, is_flow_model

    table = inversion_table(model, samples, steps, seed)
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 3:
            psnr = float(cells[1].split()[0])  # "33.26 [32.10, 34.02]": the mean, then its interval
            read = float(cells[2].rstrip("%")) / 100 if cells[2].endswith("%") else None
            rows.append({"setting": cells[0], "psnr": psnr, "read_ok": read})
    return InversionResult(rows, samples, steps, table, is_flow_model(model))
