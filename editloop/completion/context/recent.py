"""A ring of recently visited and edited chunks, as llama.vim keeps one (16 chunks of 64 lines).

A new chunk evicts the older ones it nearly repeats (most of their lines in common), so scrolling
through one function leaves one chunk, not sixteen copies of it.

>>> ring = RecentChunks(capacity=2, lines=4)
>>> ring.add("a.py", "one\\ntwo\\nthree\\nfour\\nfive", line=1)
>>> ring.add("a.py", "one\\ntwo\\nthree\\nfour", line=1)
>>> len(ring.chunks())
1
"""

import threading
from collections import deque
from dataclasses import dataclass

NEAR_DUPLICATE = 0.9  # share of a chunk's lines another has


@dataclass(frozen=True)
class RecentChunk:
    rel: str
    start: int
    text: str


class RecentChunks:
    def __init__(self, capacity: int = 16, lines: int = 64) -> None:
        self.lines = lines
        self._ring: deque[RecentChunk] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, rel: str, text: str, line: int) -> None:
        """The ``lines`` lines of ``text`` around ``line`` become the newest chunk."""
        all_lines = text.split("\n")
        start = max(0, min(line - self.lines // 2, len(all_lines) - self.lines))
        body = all_lines[start : start + self.lines]
        if not any(s.strip() for s in body):
            return
        chunk = RecentChunk(rel, start, "\n".join(body))
        with self._lock:
            kept = [c for c in self._ring if not _near_duplicate(c.text, chunk.text)]
            self._ring.clear()
            self._ring.extend(kept)
            self._ring.append(chunk)

    def chunks(self) -> list[RecentChunk]:
        """Newest last."""
        with self._lock:
            return list(self._ring)


def _near_duplicate(a: str, b: str) -> bool:
    lines_a, lines_b = set(a.split("\n")), set(b.split("\n"))
    common = len(lines_a & lines_b)
    return common >= NEAR_DUPLICATE * min(len(lines_a), len(lines_b))
