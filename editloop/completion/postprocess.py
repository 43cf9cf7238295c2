"""Cleaning raw model candidates before they are checked, ranked and shown.

The engine runs every candidate through one request's :class:`Cleaner`: ``truncate`` (cut to the
line or block asked for, and trim text the model re-generated from the suffix), then ``drop_reason``
(why it must not be shown at all), then ``dedupe``. All of it is plain string work on the few lines
around the cursor, so five candidates cost well under a few milliseconds whatever the size of the file.

>>> truncate("x + 1)\\nprint(total)", "line", "total = f(", ")\\n", "python")
'x + 1'
>>> drop_reason("x + 1", "total = f(", ")\\n", "python") is None
True
>>> drop_reason("x + 1", "total = f(", "x + 1)\\n", "python")
'duplicates_suffix'
"""

import itertools
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from editloop.completion.syntax import canonical_language

EMPTY = "empty"
WHITESPACE = "whitespace"
DUPLICATES_SUFFIX = "duplicates_suffix"
REPETITIVE = "repetitive"
UNBALANCED_BRACKETS = "unbalanced_brackets"

MAX_BLOCK_LINES = 20
# Repeating the previous line is only suspicious when that line says something: `i += 1` or `}` twice
# is ordinary code.
LONG_LINE_CHARS = 12
# Bracket state is read from this much text before the cursor: enough for any open call or literal,
# small enough that scanning it for five candidates stays far below a millisecond.
WINDOW_CHARS = 3000

_OPENERS = "([{"
_CLOSERS = ")]}"
_OPENER_OF = {")": "(", "]": "[", "}": "{"}
_CONTINUING_WORDS = frozenset({"and", "or", "not", "in", "is", "if", "else", "lambda", "for", "await"})

_DQ = r'"(?:\\.|[^"\\\n])*"'
_SQ = r"'(?:\\.|[^'\\\n])*'"
_BACKTICK = r"`(?:\\.|[^`\\])*`"
_RUST_CHAR = r"'(?:\\[^'\n]{1,10}|[^'\\\n])'"  # a bare ' is a lifetime, not a string
_TRIPLE = r'"""[\s\S]*?"""|' + r"'''[\s\S]*?'''"
_SLASH_COMMENTS = r"/\*[\s\S]*?\*/|//[^\n]*"
_BRACKET = r"([()\[\]{}])"  # the only group: a bracket outside strings and comments


def _tokens(*parts: str) -> re.Pattern[str]:
    return re.compile("|".join(parts))


# Strings and comments are matched whole so that the brackets inside them are skipped.
_TOKENS_PYTHON = _tokens(_TRIPLE, _DQ, _SQ, r"#[^\n]*", _BRACKET)
_TOKENS_RUST = _tokens(_SLASH_COMMENTS, _DQ, _RUST_CHAR, _BRACKET)
_TOKENS_C_LIKE = _tokens(_SLASH_COMMENTS, _DQ, _SQ, _BACKTICK, _BRACKET)
_TOKENS_HASH = _tokens(_DQ, _SQ, r"#[^\n]*", _BRACKET)
_TOKENS_PLAIN = _tokens(_DQ, _SQ, _BRACKET)

_C_LIKE = frozenset(
    {"javascript", "typescript", "tsx", "java", "go", "c", "cpp", "csharp", "kotlin", "swift", "scala", "php"}
    | {"dart", "objc", "zig", "groovy"}
)
_HASH_COMMENTS = frozenset({"ruby", "bash", "perl", "r", "elixir", "julia", "nim", "toml", "yaml", "make"})

_CLOSING_LINE = re.compile(r"[)\]}]+[;,]?")
_REPEATED_UNIT = re.compile(r"(.{4,80}?)\1{3,}", re.DOTALL)
# A quote, bracket or operator stuttered eight times is a model stuck in a loop, not a separator
# line (those use -, =, #, *, ~, / or .): `''` or `((((((((`.
_STUTTER = re.compile(r"([^\w\s\-=#*~/.])\1{7,}")
_PYTHON_COMMENT = re.compile(r"\s+#[^'\"]*$")
_SLASH_COMMENT = re.compile(r"\s*//[^'\"]*$")


class _Cursor:
    """The lines around the cursor, cut out once per call; the brackets before it are read on demand."""

    def __init__(self, prefix: str, suffix: str, language: str) -> None:
        line_start = prefix.rfind("\n") + 1
        start = 0 if line_start <= WINDOW_CHARS else prefix.find("\n", line_start - WINDOW_CHARS) + 1
        rest_end = suffix.find("\n")
        self.language = language
        self.line_prefix = prefix[line_start:]  # text before the cursor on its line
        self.line_rest = suffix if rest_end < 0 else suffix[:rest_end]  # text after it on its line
        self.before = prefix[start:line_start]  # whole lines before the cursor line, WINDOW_CHARS at most
        self.truncated = start > 0  # `before` does not reach the start of the file

    @cached_property
    def open_before(self) -> list[str] | None:
        """Brackets the lines before the cursor line leave open; None when the cursor is in prose."""
        head = _readable_head(self.before, self.line_prefix, self.language)
        return None if head is None else _open_stack(head, self.language)


@dataclass(frozen=True)
class _Scan:
    depth: int  # brackets still open at the end
    extra_middle: list[str]  # closers in the candidate with no opener before them
    extra_tail: list[str]  # closers after the candidate with no opener before them


def resolve_mode(mode: str, prefix: str, suffix: str, language: str) -> Literal["line", "block"]:
    """Turn "auto" into "block" on a fresh line inside a block that was just opened, else "line".

    >>> resolve_mode("auto", "def f(x):\\n    ", "\\n", "python")
    'block'
    >>> resolve_mode("auto", "x = 1\\ny = ", "\\n", "python")
    'line'
    """
    return _resolve(mode, _Cursor(prefix, suffix, canonical_language(language)))


def _resolve(mode: str, cursor: _Cursor) -> Literal["line", "block"]:
    if mode == "line":
        return "line"
    if mode == "block":
        return "block"
    if mode != "auto":
        raise ValueError(f"mode must be line, block or auto, not {mode!r}")
    lang = cursor.language
    previous = _previous_nonblank_line(cursor.before)
    if previous is None or not _opens_block(previous, lang):
        return "line"
    # Only a fresh line gets a block: mid-statement (`path = os.path.|`) the user wants the line.
    return "block" if not cursor.line_prefix.strip() else "line"


class Cleaner:
    """``truncate`` and ``drop_reason`` for one cursor: the lines around it are cut out, and the
    brackets open before it read, once for all of a request's candidates."""

    def __init__(self, prefix: str, suffix: str, language: str) -> None:
        self.suffix = suffix
        self.language = canonical_language(language)
        self.cursor = _Cursor(prefix, suffix, self.language)

    def truncate(self, text: str, mode: str) -> str:
        """See :func:`truncate`."""
        if _resolve(mode, self.cursor) == "line":
            out = text.split("\n", 1)[0].rstrip("\r")
        else:
            block = _truncate_block(text, self.cursor, self.suffix, self.language)
            out = _trim_repeated_lines(block, self.suffix)
        return _trim_suffix_overlap(out, self.cursor, self.language)

    def drop_reason(self, text: str) -> str | None:
        """See :func:`drop_reason`."""
        if not text:
            return EMPTY
        if not text.strip():
            return WHITESPACE
        if _duplicates_suffix(text, self.suffix):
            return DUPLICATES_SUFFIX
        if _is_repetitive(text, self.cursor):
            return REPETITIVE
        if _is_unbalanced(text, self.cursor, self.language):
            return UNBALANCED_BRACKETS
        return None


def truncate(text: str, mode: str, prefix: str, suffix: str, language: str) -> str:
    """Cut a raw candidate to the rest of the line or to the block, then trim what the suffix repeats.

    >>> truncate("return x\\n    y = 2", "line", "def f(x):\\n    ", "", "python")
    'return x'
    >>> truncate("if x:\\n        y()\\n    z()", "block", "def f(x):\\n    a = 1\\n    ", "", "python")
    'if x:\\n        y()'
    """
    return Cleaner(prefix, suffix, language).truncate(text, mode)


def drop_reason(text: str, prefix: str, suffix: str, language: str) -> str | None:
    """Why a (truncated) candidate must not be shown, or None when it may be.

    >>> drop_reason("    ", "x = ", "\\n", "python")
    'whitespace'
    >>> drop_reason("foo(a, b", "x = ", "\\n", "python")
    'unbalanced_brackets'
    """
    return Cleaner(prefix, suffix, language).drop_reason(text)


def dedupe(texts: list[str]) -> list[int]:
    """Indices of the first candidate of each distinct text, trailing whitespace ignored.

    >>> dedupe(["a", "b", "a  ", "c\\n"])
    [0, 1, 3]
    """
    seen: set[str] = set()
    first: list[int] = []
    for i, text in enumerate(texts):
        key = text.rstrip()
        if key not in seen:
            seen.add(key)
            first.append(i)
    return first


# --- the cursor and its lines ---------------------------------------------------------------------


def _readable_head(before: str, line_prefix: str, language: str) -> str | None:
    """The part of the lines before the cursor line whose brackets can be trusted.

    Text that starts inside a docstring or block comment would read code as strings and prose as
    code, and a cursor inside one is in prose, where brackets say nothing: both answer None or cut.
    """
    text = before + line_prefix
    if language == "python" and (text.count('"""') % 2 or text.count("'''") % 2):
        return None
    if language in _C_LIKE or language == "rust":
        if text.rfind("/*") > text.rfind("*/"):
            return None
        first_close, first_open = text.find("*/"), text.find("/*")
        if first_close >= 0 and (first_open < 0 or first_close < first_open):
            return None if first_close + 2 > len(before) else before[first_close + 2 :]
    return before


def _previous_nonblank_line(before: str) -> str | None:
    for line in reversed(before.split("\n")):
        if line.strip():
            return line
    return None


def _indent(line: str) -> int:
    stripped = line.lstrip(" \t")
    return len(line[: len(line) - len(stripped)].expandtabs(4))


def _code_part(line: str, language: str) -> str:
    """The line without a trailing comment (one without quotes in it: enough to see a block opener)."""
    comment = _PYTHON_COMMENT if language == "python" else _SLASH_COMMENT
    return comment.sub("", line).rstrip()


def _opens_block(line: str, language: str) -> bool:
    code = _code_part(line, language)
    return code.endswith(":") if language == "python" else code.endswith("{")


def _opens_region(line: str, language: str) -> bool:
    """A block opener, or a line that leaves a bracket open for the lines below it."""
    code = _code_part(line, language)
    return _opens_block(line, language) or (code != "" and code[-1] in _OPENERS)


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


# --- brackets --------------------------------------------------------------------------------------


def _token_pattern(language: str) -> re.Pattern[str]:
    if language == "python":
        return _TOKENS_PYTHON
    if language == "rust":
        return _TOKENS_RUST
    if language in _C_LIKE:
        return _TOKENS_C_LIKE
    if language in _HASH_COMMENTS:
        return _TOKENS_HASH
    return _TOKENS_PLAIN


def _brackets(text: str, language: str) -> list[tuple[int, str]]:
    """(offset, bracket) of every bracket outside strings and comments."""
    return [(m.start(), m.group(1)) for m in _token_pattern(language).finditer(text) if m.group(1)]


def _close(stack: list[str], closer: str) -> bool:
    """Pop up to the matching opener (leniently through mismatched ones); False when there is none."""
    opener = _OPENER_OF[closer]
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] == opener:
            del stack[i:]
            return True
    return False


def _open_stack(text: str, language: str, stack: list[str] | None = None) -> list[str]:
    """The brackets left open after text (on top of stack); closers with no opener are ignored."""
    opened = [] if stack is None else list(stack)
    for bracket in "".join(_token_pattern(language).findall(text)):
        if bracket in _OPENERS:
            opened.append(bracket)
        else:
            _close(opened, bracket)
    return opened


def _scan(opened: list[str], line_prefix: str, middle: str, tail: str, language: str) -> _Scan:
    """Brackets of the cursor line with middle inserted, read as one text so strings span the joins."""
    middle_start, tail_start = len(line_prefix), len(line_prefix) + len(middle)
    stack = list(opened)
    extra_middle: list[str] = []
    extra_tail: list[str] = []
    for offset, bracket in _brackets(line_prefix + middle + tail, language):
        if bracket in _OPENERS:
            stack.append(bracket)
        elif not _close(stack, bracket) and offset >= middle_start:
            (extra_middle if offset < tail_start else extra_tail).append(bracket)
    return _Scan(len(stack), extra_middle, extra_tail)


def _countable(extra: list[str], cursor: _Cursor) -> int:
    """Extra closers that are surely extra: a `}` may close a block opened before `before`."""
    if not cursor.truncated:
        return len(extra)
    return sum(1 for bracket in extra if bracket != "}")


def _bracket_errors(text: str, cursor: _Cursor, language: str) -> int:
    opened = cursor.open_before
    if opened is None:
        return 0
    scan = _scan(opened, cursor.line_prefix, text, cursor.line_rest, language)
    return scan.depth + _countable(scan.extra_middle, cursor) + _countable(scan.extra_tail, cursor)


# --- truncation ------------------------------------------------------------------------------------


def _block_base_indent(cursor: _Cursor, first_line: str, language: str) -> int:
    """Indentation a block's lines must exceed: its opener's, else the cursor line's."""
    if cursor.line_prefix.strip() and _opens_region(cursor.line_prefix, language):
        return _indent(cursor.line_prefix)
    previous = _previous_nonblank_line(cursor.before)
    if previous is not None and _opens_region(previous, language):
        return _indent(previous)
    return _indent(cursor.line_prefix + first_line)


def _line_start_depths(line_prefix: str, lines: list[str], language: str) -> list[int]:
    """Brackets opened on the cursor line or by the candidate and still open at each line's start."""
    text = line_prefix + "\n".join(lines)
    starts = []
    offset = len(line_prefix)
    for line in lines:
        starts.append(offset)
        offset += len(line) + 1
    brackets = _brackets(text, language)
    depths, depth, i = [], 0, 0
    for start in starts:
        while i < len(brackets) and brackets[i][0] < start:
            depth = depth + 1 if brackets[i][1] in _OPENERS else max(0, depth - 1)
            i += 1
        depths.append(depth)
    return depths


def _closes_block(kept: list[str], line: str, cursor: _Cursor, suffix: str, language: str) -> bool:
    """A dedented line that only closes brackets the block opened, which the editor does not have yet."""
    stripped = line.strip()
    opened = cursor.open_before
    if opened is None or not _CLOSING_LINE.fullmatch(stripped):
        return False
    if suffix.lstrip().startswith(stripped[0]):
        return False
    stack = _open_stack(cursor.line_prefix + "\n".join(kept), language, opened)
    for closer in (c for c in stripped if c in _CLOSERS):
        if not stack or stack.pop() != _OPENER_OF[closer]:
            return False
    return True


def _truncate_block(text: str, cursor: _Cursor, suffix: str, language: str) -> str:
    lines = text.split("\n")
    base = _block_base_indent(cursor, lines[0], language)
    depths = _line_start_depths(cursor.line_prefix, lines, language)
    kept = [lines[0]]
    for line, depth in zip(lines[1:], depths[1:], strict=True):
        if len(kept) >= MAX_BLOCK_LINES:
            break
        if not line.strip() or depth > 0 or _indent(line) > base:
            kept.append(line)
            continue
        if _closes_block(kept, line, cursor, suffix, language):
            kept.append(line)
        break
    while len(kept) > 1 and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept).rstrip()


def _trim_repeated_lines(text: str, suffix: str) -> str:
    """Drop the block's last lines when they are exactly the lines that follow in the suffix."""
    lines = text.split("\n")
    following = [line.rstrip() for line in suffix.split("\n")[1 : len(lines) + 8] if line.strip()]
    for count in range(min(len(lines) - 1, len(following)), 0, -1):
        if [line.rstrip() for line in lines[-count:]] == following[:count]:
            return "\n".join(lines[:-count]).rstrip()
    return text


def _may_trim(text: str, overlap: str, rest: str) -> bool:
    """Punctuation may be trimmed anywhere; words only when the whole rest of the line is repeated."""
    if not any(_is_word_char(c) for c in overlap):
        return True
    if overlap != rest.rstrip():
        return False
    cut = len(text) - len(overlap)
    return cut == 0 or not (_is_word_char(overlap[0]) and _is_word_char(text[cut - 1]))


def _trim_suffix_overlap(text: str, cursor: _Cursor, language: str) -> str:
    """Trim the candidate's end where it re-generates the start of the line's rest, e.g. its `)`.

    Only when trimming leaves the brackets no worse, so `f(a)` before a suffix `)` that closes an outer
    call keeps its own `)`.
    """
    rest = cursor.line_rest
    longest = min(len(rest), len(text) - text.rfind("\n") - 1)
    errors_before: int | None = None
    for size in range(longest, 0, -1):
        overlap = rest[:size]
        if not text.endswith(overlap) or not _may_trim(text, overlap, rest):
            continue
        if errors_before is None:
            errors_before = _bracket_errors(text, cursor, language)
        trimmed = text[:-size]
        if _bracket_errors(trimmed, cursor, language) <= errors_before:
            return trimmed
    return text


# --- drop reasons ----------------------------------------------------------------------------------


def _duplicates_suffix(text: str, suffix: str) -> bool:
    """The candidate is what already follows the cursor (bare closers are left to the bracket check)."""
    candidate = text.strip()
    if not any(_is_word_char(c) for c in candidate):
        return False
    following = suffix.lstrip()
    if not following.startswith(candidate):
        return False
    after = following[len(candidate) : len(candidate) + 1]
    return not (after and _is_word_char(after) and _is_word_char(candidate[-1]))


def _has_repeated_lines(lines: list[str]) -> bool:
    run = 1
    for previous, line in itertools.pairwise(lines):
        substantive = any(_is_word_char(c) for c in line)
        run = run + 1 if substantive and line == previous else 1
        if run >= 3:
            return True
    return False


def _is_repetitive(text: str, cursor: _Cursor) -> bool:
    whole = cursor.line_prefix + text
    if _has_repeated_lines([line.strip() for line in whole.split("\n")]):
        return True
    # A unit must hold a letter: runs like `----`, `0, 0, 0, 0` or indentation are ordinary code.
    if any(any(c.isalpha() for c in m.group(1)) for m in _REPEATED_UNIT.finditer(text)):
        return True
    if _STUTTER.search(text):
        return True
    previous = _previous_nonblank_line(cursor.before)
    line = whole.strip()
    return previous is not None and len(line) >= LONG_LINE_CHARS and line == previous.strip()


def _ends_expression(text: str) -> bool:
    """The line looks finished (a name, number or closer), not continued on the next line."""
    code = text.rstrip()
    if not code or not (_is_word_char(code[-1]) or code[-1] in _CLOSERS):
        return False
    last_word = re.split(r"\W+", code)[-1]
    return last_word not in _CONTINUING_WORDS


def _is_unbalanced(text: str, cursor: _Cursor, language: str) -> bool:
    """Closes a bracket nobody opened, or (one line) opens one that nothing on the line closes.

    Uncertain cases pass: a false drop loses a good completion, a false pass is caught by the syntax
    check and the ranker.
    """
    opened = cursor.open_before
    if opened is None:
        return False
    with_text = _scan(opened, cursor.line_prefix, text, cursor.line_rest, language)
    if _countable(with_text.extra_middle, cursor):
        return True
    if "\n" in text:
        return False
    without = _scan(opened, cursor.line_prefix, "", cursor.line_rest, language)
    if _countable(with_text.extra_tail, cursor) > _countable(without.extra_tail, cursor):
        return True
    return with_text.depth > without.depth and _ends_expression(text)
