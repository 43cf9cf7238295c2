"""The package's folders import in the loop's order, never upward; server and lsp never import each other.

Shared infrastructure sits at the bottom, then the loop: models (registry, backends, export,
hot-swap) → completion (the engine) → feedback → the transports (server, lsp) → eval →
training → the starter's own training code, with the command line and the demo on top.
A module may import its own layer and the layers below it; ``server`` and ``lsp`` are peers
that meet only through the engine and the feedback log, as ``training`` and ``server`` meet only
through the registry.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "editloop"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset(
        {"", "errors", "settings", "settings_doc", "metrics", "corpus", "sandbox", "filelock", "clients"}
    ),  # "": the package root
    frozenset({"models"}),
    frozenset({"completion"}),
    frozenset({"feedback"}),
    frozenset({"server", "lsp"}),
    frozenset({"eval"}),
    frozenset({"training"}),
    frozenset({"starter"}),
    frozenset({"cli", "demo", "doctor", "__main__"}),
)
PEERS = {("server", "lsp"), ("lsp", "server")}


def _unit(module: str) -> str:
    """The top-level part of ``editloop.x.y`` (``x``), or "" for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"editloop.{unit} belongs to no layer: add it to LAYERS")


def _edges() -> list[tuple[str, str, str]]:
    """(file, importing unit, imported unit) for every editloop import, lazy ones included."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        here = rel.parts[0] if len(rel.parts) > 1 else rel.name
        here = "" if here == "__init__" else here
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name == "editloop" or name.startswith("editloop."):
                    found.append((str(rel), here, _unit(name)))
    return found


def test_every_import_goes_down_the_loop() -> None:
    upward = [
        f"{file}: {here or 'editloop'} imports editloop.{there}"
        for file, here, there in _edges()
        if _layer(there) > _layer(here) or (here, there) in PEERS
    ]
    assert upward == []


def test_every_folder_has_a_layer() -> None:
    units = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    units |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    for unit in units:
        _layer(unit)


def test_the_rule_sees_imports() -> None:
    # The scan must find this package's imports, lazy ones inside functions included (the CLI
    # imports the server inside its command), or the rules above could never fail.
    edges = _edges()
    assert ("models/registry", "models", "errors") in {(f, h, t) for f, h, t in edges}
    assert any(here == "cli" and there == "server" for _, here, there in edges)
