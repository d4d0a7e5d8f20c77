"""docs/failures.md and the test suite are the same list: every test the page names exists, every failure row names a
test, and every test of the failure test files is on the page."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "failures.md"
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+(?:::\w+)?)`")
GROUPS = {
    "Bad input": ["Images", "Masks", "Prompts", "Task files", "Presets", "Storage", "Parameters and output paths"],
    "Faults": [],
    "Security": [],
}
OWN_FILES = ("tests/test_failures_input.py", "tests/test_failures_faults.py")


def _tests_in(path: Path) -> set[str]:
    """Test functions and Class::method names defined in a test file (without importing it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test_"):
                    names.add(f"{node.name}::{item.name}")
    return names


def _sections(text: str) -> dict[str, str]:
    """Level-2 section title -> its text."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def _rows(body: str) -> list[str]:
    """Table rows, without header and separator rows."""
    rows = [line for line in body.splitlines() if line.startswith("|")]
    return [r for r in rows if not re.fullmatch(r"\|[-| ]+\|", r) and not r.startswith("| Input |")
            and not r.startswith("| Fault |") and not r.startswith("| Threat |")]


def test_every_named_test_exists():
    cited = TEST_ID.findall(DOC.read_text(encoding="utf-8"))
    assert len(cited) >= 100
    missing = []
    for file, name in sorted(set(cited)):
        path = ROOT / file
        if not path.is_file() or name not in _tests_in(path):
            missing.append(f"{file}::{name}")
    assert missing == [], "docs/failures.md names tests that do not exist"


def test_every_failure_test_is_on_the_page():
    cited = set(TEST_ID.findall(DOC.read_text(encoding="utf-8")))
    for file in OWN_FILES:
        absent = sorted(name for name in _tests_in(ROOT / file) if (file, name) not in cited)
        assert absent == [], f"tests in {file} missing from docs/failures.md"


def test_groups_rows_and_tests_per_row():
    sections = _sections(DOC.read_text(encoding="utf-8"))
    for group, subgroups in GROUPS.items():
        assert group in sections, group
        body = sections[group]
        for sub in subgroups:
            assert re.search(rf"^### {re.escape(sub)}$", body, flags=re.MULTILINE), sub
        rows = _rows(body)
        assert rows, group
        for row in rows:
            assert TEST_ID.search(row), f"a row of '{group}' names no test: {row[:80]}"
    assert len(_rows(sections["Bad input"])) >= 30


def test_the_catalogue_parser_sees_a_missing_test(tmp_path):
    """The checks above can fail: a page naming a test that is not there is caught."""
    (tmp_path / "t.py").write_text("def test_here():\n    pass\n\nclass TestX:\n    def test_m(self):\n        pass\n")
    assert _tests_in(tmp_path / "t.py") == {"test_here", "TestX::test_m"}
    assert TEST_ID.findall("| x | y | `tests/a.py::test_gone`, `tests/b.py::TestX::test_m` |") == [
        ("tests/a.py", "test_gone"), ("tests/b.py", "TestX::test_m")]
