"""Does a candidate leave the file parsing worse than before? A tree-sitter check per candidate.

Grammars come from the per-language wheels (``tree-sitter-python``, ``tree-sitter-rust``, ...) when
installed, else from the grammars ``tree-sitter-language-pack`` has already downloaded (its 1.x
releases fetch a grammar on first use; a request never triggers that). A language with no grammar
answers None (unknown), never an error: the check only ever informs the ranker.

>>> checker = SyntaxChecker()
>>> checker.check("python", "def f(x):\\n    return ", "x + 1", "\\n")
True
>>> checker.check("python", "def f(x):\\n    return ", "x +", "\\n")
False
"""

import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import PurePath

from tree_sitter import Language, Node, Parser, Tree

from editloop.models.tokens import common_prefix

log = logging.getLogger(__name__)

# Names editors and APIs use for a language → the one editloop uses everywhere.
ALIASES = {
    "py": "python",
    "python3": "python",
    "rs": "rust",
    "js": "javascript",
    "jsx": "javascript",
    "javascriptreact": "javascript",
    "node": "javascript",
    "ts": "typescript",
    "typescriptreact": "tsx",
    "golang": "go",
    "c++": "cpp",
    "cxx": "cpp",
    "c_sharp": "csharp",
    "cs": "csharp",
    "c#": "csharp",
    "rb": "ruby",
    "kt": "kotlin",
    "sh": "bash",
    "shell": "bash",
    "shellscript": "bash",
    "zsh": "bash",
}

EXTENSIONS = {
    ".py": "python",
    ".pyi": "python",
    ".rs": "rust",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hh": "cpp",
    ".hpp": "cpp",
    ".hxx": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".swift": "swift",
    ".scala": "scala",
    ".lua": "lua",
    ".sh": "bash",
    ".bash": "bash",
}

# language → (module of its own wheel, function returning the grammar)
GRAMMAR_WHEELS = {
    "python": ("tree_sitter_python", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
    "csharp": ("tree_sitter_c_sharp", "language"),
    "ruby": ("tree_sitter_ruby", "language"),
    "php": ("tree_sitter_php", "language_php"),
    "kotlin": ("tree_sitter_kotlin", "language"),
    "swift": ("tree_sitter_swift", "language"),
    "scala": ("tree_sitter_scala", "language"),
    "lua": ("tree_sitter_lua", "language"),
    "bash": ("tree_sitter_bash", "language"),
}


def canonical_language(name: str) -> str:
    """The editloop name of a language as an editor or client may spell it.

    >>> canonical_language("TypeScriptReact"), canonical_language("c_sharp"), canonical_language("rust")
    ('tsx', 'csharp', 'rust')
    """
    lowered = name.strip().lower()
    return ALIASES.get(lowered, lowered)


def language_for_path(path: str) -> str | None:
    """The language of a file by its extension, or None.

    >>> language_for_path("src/main.rs"), language_for_path("notes.txt")
    ('rust', None)
    """
    return EXTENSIONS.get(PurePath(path).suffix.lower())


@dataclass(frozen=True)
class _Baseline:
    """The buffer without a candidate, parsed once; candidates are parsed incrementally from it."""

    language: str
    prefix: str
    suffix: str
    prefix_bytes: bytes
    suffix_bytes: bytes
    tree: Tree
    errors: int
    cursor: tuple[int, int]  # (row, byte column) of the insertion point


class SyntaxChecker:
    """Counts parse errors with one cached parser per language; safe to share between threads.

    Checking n candidates of one request costs one full parse of the buffer and n incremental ones,
    which reuse everything outside the inserted text (about a millisecond each for a 3,000-line file).
    """

    def __init__(self) -> None:
        self._parsers: dict[str, Parser | None] = {}
        self._baseline: _Baseline | None = None
        self._lock = threading.Lock()

    def check(self, language: str, prefix: str, candidate: str, suffix: str) -> bool | None:
        """True when inserting the candidate adds no parse error; None when the language is unknown."""
        lang = canonical_language(language)
        with self._lock:
            parser = self._parser(lang)
            if parser is None:
                return None
            baseline = self._baseline_for(parser, lang, prefix, suffix)
            return _errors_with(parser, baseline, candidate) <= baseline.errors

    def supports(self, language: str) -> bool:
        with self._lock:
            return self._parser(canonical_language(language)) is not None

    def _baseline_for(self, parser: Parser, language: str, prefix: str, suffix: str) -> _Baseline:
        cached = self._baseline
        if cached is not None and _same_buffer(cached, language, prefix, suffix):
            return cached
        prefix_bytes, suffix_bytes = prefix.encode("utf-8"), suffix.encode("utf-8")
        source = prefix_bytes + suffix_bytes
        if cached is not None and cached.language == language:
            # The next request of a typing editor: the same buffer a few characters on. Reparse
            # incrementally from the last one (tree-sitter reuses every subtree outside the edit).
            old = cached.prefix_bytes + cached.suffix_bytes
            tree = parser.parse(source, _edited(cached.tree, old, source))
        else:
            tree = parser.parse(source)
        line_start = prefix.rfind("\n") + 1
        cursor = (prefix.count("\n"), len(prefix[line_start:].encode("utf-8")))
        baseline = _Baseline(
            language, prefix, suffix, prefix_bytes, suffix_bytes, tree, _count(tree.root_node), cursor
        )
        self._baseline = baseline
        return baseline

    def _parser(self, language: str) -> Parser | None:
        if language not in self._parsers:
            if not has_grammar(language):  # never cached: names a client makes up cannot grow this
                return None
            grammar = load_grammar(language)
            self._parsers[language] = None if grammar is None else Parser(grammar)
        return self._parsers[language]


def _edited(tree: Tree, old: bytes, new: bytes) -> Tree:
    """A copy of ``tree`` (of ``old``) told which bytes changed to make ``new``."""
    start = common_prefix(old, new)
    tail = common_prefix(old[start:][::-1], new[start:][::-1])
    old_end, new_end = len(old) - tail, len(new) - tail
    edited = tree.copy()
    edited.edit(
        start_byte=start,
        old_end_byte=old_end,
        new_end_byte=new_end,
        start_point=_point(old, start),
        old_end_point=_point(old, old_end),
        new_end_point=_point(new, new_end),
    )
    return edited


def _point(source: bytes, offset: int) -> tuple[int, int]:
    """(row, byte column) of a byte offset."""
    return source.count(b"\n", 0, offset), offset - (source.rfind(b"\n", 0, offset) + 1)


def _same_buffer(baseline: _Baseline, language: str, prefix: str, suffix: str) -> bool:
    # Identity first: the engine passes the same request strings for every candidate.
    if baseline.prefix is prefix and baseline.suffix is suffix:
        return baseline.language == language
    return (baseline.language, baseline.prefix, baseline.suffix) == (language, prefix, suffix)


def _errors_with(parser: Parser, baseline: _Baseline, candidate: str) -> int:
    inserted = candidate.encode("utf-8")
    start = len(baseline.prefix_bytes)
    row, column = baseline.cursor
    lines = candidate.split("\n")
    if len(lines) == 1:
        end = (row, column + len(inserted))
    else:
        end = (row + len(lines) - 1, len(lines[-1].encode("utf-8")))
    edited = baseline.tree.copy()
    edited.edit(
        start_byte=start,
        old_end_byte=start,
        new_end_byte=start + len(inserted),
        start_point=baseline.cursor,
        old_end_point=baseline.cursor,
        new_end_point=end,
    )
    tree = parser.parse(baseline.prefix_bytes + inserted + baseline.suffix_bytes, edited)
    return _count(tree.root_node)


def count_errors(parser: Parser, source: str) -> int:
    """ERROR and MISSING nodes in a full parse of source."""
    return _count(parser.parse(source.encode("utf-8")).root_node)


def _count(root: Node) -> int:
    """ERROR and MISSING nodes under root, visiting only the subtrees that hold errors."""
    if not root.has_error:
        return 0
    count = 0
    pending: list[Node] = [root]
    while pending:
        node = pending.pop()
        if node.is_error or node.is_missing:
            count += 1
        pending.extend(child for child in node.children if child.has_error or child.is_missing)
    return count


def has_grammar(language: str) -> bool:
    """Whether a grammar for ``language`` (a canonical name) is on this machine, without loading it.

    Only grammar wheels and the language pack's already-downloaded grammars count: the pack's
    ``get_language`` would fetch an unknown name from the network, under the checker's lock.
    """
    return language in GRAMMAR_WHEELS or language in _downloaded_pack_languages()


def _downloaded_pack_languages() -> list[str]:
    try:
        import tree_sitter_language_pack as pack

        return list(pack.downloaded_languages())
    except Exception:  # not installed, or its cache unreadable: no pack grammars
        return []


def load_grammar(language: str) -> Language | None:
    """The grammar from its own wheel, else from tree-sitter-language-pack, else None.

    Callers on the request path check :func:`has_grammar` first.
    """
    wheel = GRAMMAR_WHEELS.get(language)
    if wheel is not None:
        try:
            module = importlib.import_module(wheel[0])
            return Language(getattr(module, wheel[1])())
        except (ImportError, AttributeError, ValueError) as exc:
            log.debug("no grammar wheel for %s: %s", language, exc)
    return _from_language_pack(language)


def _from_language_pack(language: str) -> Language | None:
    try:
        import tree_sitter_language_pack as pack

        grammar = pack.get_language(language)
        return grammar if isinstance(grammar, Language) else Language(grammar)
    except Exception as exc:  # the pack has its own error types, and may fail to download a grammar
        log.info("no tree-sitter grammar for %s: %s", language, exc)
        return None
