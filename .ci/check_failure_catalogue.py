"""A docs check, run by .ci/run beside ruff (it tests no product code, so it is not part of the test suite):
docs/failures.md and the test suite are the same list. Every test the page names exists, every failure row names a
test, and every test of the failure test files is on the page. Exits 1 with what is wrong.

    python .ci/check_failure_catalogue.py
"""

from __future__ import annotations

import ast
import re
import sys
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


def tests_in(path: Path) -> set[str]:
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


def sections(text: str) -> dict[str, str]:
    """Level-2 section title -> its text."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def rows(body: str) -> list[str]:
    """Table rows, without header and separator rows."""
    lines = [line for line in body.splitlines() if line.startswith("|")]
    return [r for r in lines if not re.fullmatch(r"\|[-| ]+\|", r) and not r.startswith("| Input |")
            and not r.startswith("| Fault |") and not r.startswith("| Threat |")]


def problems(doc: Path = DOC, root: Path = ROOT) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    cited = set(TEST_ID.findall(text))
    found = []
    for file, name in sorted(cited):
        path = root / file
        if not path.is_file() or name not in tests_in(path):
            found.append(f"{doc.name} names {file}::{name}, which does not exist")
    for file in OWN_FILES:
        for name in sorted(tests_in(root / file)):
            if (file, name) not in cited:
                found.append(f"{file}::{name} is not on {doc.name}")
    parts = sections(text)
    for group, subgroups in GROUPS.items():
        if group not in parts:
            found.append(f"{doc.name} has no section '## {group}'")
            continue
        for sub in subgroups:
            if not re.search(rf"^### {re.escape(sub)}$", parts[group], flags=re.MULTILINE):
                found.append(f"{doc.name}, '{group}': no subsection '### {sub}'")
        for row in rows(parts[group]):
            if not TEST_ID.search(row):
                found.append(f"{doc.name}, '{group}': a row names no test: {row[:80]}")
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(f"check_failure_catalogue: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
