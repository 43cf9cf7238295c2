"""Definitions in a file (functions, classes, types), found with tree-sitter.

>>> defs = Definitions(); defs.find("python", "class Header:\\n    def parse(self): ...\\n")  # doctest: +SKIP
[Definition(name='Header', start=0, end=1), Definition(name='parse', start=1, end=1)]
"""

import threading
from dataclasses import dataclass

from tree_sitter import Node, Parser

from editloop.completion.syntax import has_grammar, load_grammar

MAX_DEPTH = 6
# Node types whose names are definitions, across the grammars editloop ships: *_definition
# (python, c++), *_declaration (java, go, typescript), *_item (rust), type_spec (go).
DEFINING = ("definition", "declaration", "_item", "type_spec")
# Inside these only locals live: not worth a lookup, and skipping them keeps the walk short.
OPAQUE = ("function", "method", "lambda", "closure", "arrow")


@dataclass(frozen=True)
class Definition:
    name: str
    start: int  # first line (0-based)
    end: int  # last line


class Definitions:
    """One parser per language, made on first use; safe to share between threads."""

    def __init__(self) -> None:
        self._parsers: dict[str, Parser | None] = {}
        self._lock = threading.Lock()

    def find(self, language: str, text: str) -> list[Definition]:
        parser = self._parser(language)
        if parser is None:
            return []
        with self._lock:  # a Parser is not thread-safe
            tree = parser.parse(text.encode("utf-8", "replace"))
        found: list[Definition] = []
        _walk(tree.root_node, 0, found)
        return found

    def _parser(self, language: str) -> Parser | None:
        if language not in self._parsers:
            grammar = load_grammar(language) if has_grammar(language) else None
            self._parsers[language] = None if grammar is None else Parser(grammar)
        return self._parsers[language]


def _walk(node: Node, depth: int, found: list[Definition]) -> None:
    for child in node.named_children:
        kind = child.type
        if kind.endswith(DEFINING):
            name = child.child_by_field_name("name")
            if name is not None and name.text:
                found.append(
                    Definition(name.text.decode("utf-8", "replace"), child.start_point[0], child.end_point[0])
                )
        if depth < MAX_DEPTH and child.named_child_count and not any(w in kind for w in OPAQUE):
            _walk(child, depth + 1, found)
