"""An open editor buffer: its text, version, and LSP positions ↔ string offsets.

LSP positions count a line's characters in the negotiated encoding (UTF-16 code units unless the
client asked otherwise); Python strings count code points. Every change is turned into a
:class:`TextEdit` in code points of the text *before* it, which is what the range tracker follows.

>>> doc = Document("file:///a.py", "python", 1, "x = '😀'\\ny = 2\\n")
>>> doc.offset_at(0, 7)  # the emoji is two UTF-16 units: character 7 is after it
6
>>> doc.apply(2, [((1, 4), (1, 5), "3")])
[TextEdit(start=12, end=13, text='3')]
>>> doc.text
"x = '😀'\\ny = 3\\n"
"""

import bisect
import re
from dataclasses import dataclass, field
from typing import Literal

Encoding = Literal["utf-16", "utf-8", "utf-32"]
Position = tuple[int, int]  # (line, character) in the document's encoding
Change = tuple[Position | None, Position | None, str]  # (start, end, text); no range: the whole text

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class TextEdit:
    """``text`` replaced ``[start, end)`` (code-point offsets into the text before the edit)."""

    start: int
    end: int
    text: str

    @property
    def delta(self) -> int:
        return len(self.text) - (self.end - self.start)


@dataclass
class Document:
    uri: str
    language_id: str
    version: int
    text: str
    encoding: Encoding = "utf-16"
    _line_starts: list[int] | None = field(default=None, repr=False)

    def offset_at(self, line: int, character: int) -> int:
        """Code-point offset of an LSP position; past the end of a line (or file) clamps, as LSP says."""
        starts = self.line_starts()
        if line < 0:
            return 0
        if line >= len(starts):
            return len(self.text)
        begin = starts[line]
        end = starts[line + 1] if line + 1 < len(starts) else len(self.text)
        content = _strip_break(self.text[begin:end])
        return begin + code_points(content, character, self.encoding)

    def position_at(self, offset: int) -> Position:
        starts = self.line_starts()
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(starts, offset) - 1
        return line, units(self.text[starts[line] : offset], self.encoding)

    def line_starts(self) -> list[int]:
        if self._line_starts is None:
            self._line_starts = [0] + [m.end() for m in _LINE_BREAK.finditer(self.text)]
        return self._line_starts

    def apply(self, version: int, changes: list[Change]) -> list[TextEdit]:
        """Apply LSP content changes in order; return each as an edit of the text before it."""
        edits = []
        for start, end, text in changes:
            edit = self._edit(start, end, text)
            self.text = self.text[: edit.start] + edit.text + self.text[edit.end :]
            self._line_starts = None
            edits.append(edit)
        self.version = version
        return edits

    def _edit(self, start: Position | None, end: Position | None, text: str) -> TextEdit:
        if start is None or end is None:
            return diff(self.text, text)
        begin, finish = self.offset_at(*start), self.offset_at(*end)
        return TextEdit(min(begin, finish), max(begin, finish), text)


def diff(old: str, new: str) -> TextEdit:
    """The one edit turning ``old`` into ``new`` (common prefix and suffix kept): full-sync changes."""
    limit = min(len(old), len(new))
    head = 0
    while head < limit and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < limit - head and old[len(old) - 1 - tail] == new[len(new) - 1 - tail]:
        tail += 1
    return TextEdit(head, len(old) - tail, new[head : len(new) - tail])


def units(text: str, encoding: Encoding) -> int:
    """Length of ``text`` in the encoding's units."""
    if encoding == "utf-32":
        return len(text)
    if encoding == "utf-8":
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def code_points(line: str, character: int, encoding: Encoding) -> int:
    """How many code points of ``line`` the first ``character`` units cover (clamped to the line)."""
    if encoding == "utf-32":
        return max(0, min(character, len(line)))
    seen = 0
    for index, char in enumerate(line):
        if seen >= character:
            return index
        seen += units(char, encoding)
    return len(line)


def _strip_break(line: str) -> str:
    if line.endswith("\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(("\n", "\r")) else line
