"""training/ and server/ never import each other: both go through models/ and feedback/."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "editloop"


def _imports(folder: str) -> set[tuple[str, str]]:
    found = set()
    for path in (PACKAGE / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(path.name, alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add((path.name, node.module))
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"), [("training", "editloop.server"), ("server", "editloop.training")]
)
def test_no_cross_imports(folder: str, forbidden: str) -> None:
    bad = [(f, m) for f, m in _imports(folder) if m == forbidden or m.startswith(forbidden + ".")]
    assert bad == []


def test_the_rule_sees_imports() -> None:
    # The scan must find this package's own imports, or the rule above could never fail.
    assert any(m.startswith("editloop.") for _, m in _imports("models"))
