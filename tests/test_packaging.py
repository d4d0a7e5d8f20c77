"""pyproject.toml lists the packages by hand (the shipped presets install as autotune._presets): none is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the package itself supports 3.10

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_and_the_data_is_included():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "autotune").rglob("__init__.py")}
    assert found - set(config["packages"]) == set(), "add these to [tool.setuptools] packages"
    assert config["package-dir"]["autotune._presets"] == "presets"
    assert "weights/**/*" in config["package-data"]["autotune.shapes"]
    assert "configs/**/*.json" in config["package-data"]["autotune.bench"]  # `autotune bench gpu` reads them
    assert list((ROOT / "autotune" / "bench" / "configs").glob("*/bench.json")), "the GPU benchmark's configs"
    assert list((ROOT / "presets").glob("*.json")), "the shipped presets"
