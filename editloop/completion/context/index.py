"""An incremental index over one root's source files: chunks for BM25, definitions, and lines.

Files are re-read only when their size or mtime changed (``refresh``), or replaced by an editor's
unsaved buffer (``update_text``). Lookups take the index's lock briefly; nothing blocks on I/O.

>>> index = RepoIndex(Path("/srv/repo"), max_files=20_000, max_file_bytes=1_000_000)  # doctest: +SKIP
>>> index.refresh(); index.similar("parse the header", exclude=None, k=4)  # doctest: +SKIP
"""

import heapq
import math
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from editloop.completion.context.definitions import Definition, Definitions
from editloop.completion.context.files import inside, read_text, source_files
from editloop.completion.context.tokens import identifiers
from editloop.completion.syntax import language_for_path

CHUNK_LINES = 20
KEY_CHARS = 8  # a line is found by the first characters of its stripped text (or by the line before)
MAX_SCAN = 2000  # lines looked at per continuation lookup, whatever the bucket's size
BM25_K1, BM25_B = 1.2, 0.75
COMMON_MIN = 50
MAX_QUERY_TERMS = 24


@dataclass
class _File:
    rel: str
    stamp: tuple[int, int]  # (mtime_ns, size); (0, 0) for an editor's buffer
    lines: list[str]
    generation: int
    chunks: list[int] = field(default_factory=list)
    definitions: list[Definition] = field(default_factory=list)


@dataclass(frozen=True)
class Chunk:
    rel: str
    start: int  # first line (0-based)
    text: str
    terms: Counter
    length: int = 0  # identifiers in it (BM25's document length), set when indexed


@dataclass(frozen=True)
class LineHit:
    rel: str
    line: int  # 0-based line number in that file


class RepoIndex:
    def __init__(self, root: Path, max_files: int, max_file_bytes: int) -> None:
        self.root = root.resolve()
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self._lock = threading.RLock()
        self._parsers = Definitions()
        self._files: dict[str, _File] = {}
        self._chunks: dict[int, Chunk] = {}
        self._postings: dict[str, dict[int, int]] = {}
        self._total_terms = 0
        self._next_chunk = 0
        self._generation = 0
        self._definitions: dict[str, list[tuple[str, Definition]]] = {}
        self._starts: dict[str, list[tuple[str, int, int]]] = {}  # key -> (rel, generation, line)
        self._followers: dict[str, list[tuple[str, int, int]]] = {}  # stripped line -> the next one
        self._stale_lines = 0

    # -- building ---------------------------------------------------------------------------

    def refresh(self) -> int:
        """Re-read files that changed on disk, forget vanished ones; how many files changed."""
        seen, changed = set(), 0
        for path in source_files(self.root, self.max_files, self.max_file_bytes):
            rel = path.relative_to(self.root).as_posix()
            seen.add(rel)
            try:
                stat = path.stat()
            except OSError:
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            known = self._files.get(rel)
            if known is not None and known.stamp in (stamp, (0, 0)):
                continue  # unchanged, or an open buffer that is newer than the disk
            text = read_text(path, self.max_file_bytes)
            if text is not None:
                self._put(rel, text, stamp)
                changed += 1
        with self._lock:
            for rel in [r for r, f in self._files.items() if r not in seen and f.stamp != (0, 0)]:
                self._remove(rel)
                changed += 1
        return changed

    def update_text(self, path: str | Path, text: str) -> bool:
        """An editor's buffer for ``path`` (inside the root, else ignored): indexed as it is now."""
        resolved = inside(self.root, path)
        if resolved is None or len(text) > self.max_file_bytes:
            return False
        rel = resolved.relative_to(self.root).as_posix()
        if rel not in self._files and len(self._files) >= self.max_files:
            return False
        self._put(rel, text, (0, 0))
        return True

    def relative(self, path: str | Path | None) -> str | None:
        """``path`` relative to the root, if it lies inside it."""
        if not path:
            return None
        resolved = inside(self.root, path)
        return resolved.relative_to(self.root).as_posix() if resolved is not None else None

    def _put(self, rel: str, text: str, stamp: tuple[int, int]) -> None:
        lines = text.split("\n")
        language = language_for_path(rel)
        definitions = self._parsers.find(language, text) if language else []
        chunks = [
            Chunk(rel, start, "\n".join(lines[start : start + CHUNK_LINES]), Counter())
            for start in range(0, len(lines), CHUNK_LINES)
        ]
        with self._lock:
            self._remove(rel)
            self._generation += 1
            entry = _File(rel, stamp, lines, self._generation, definitions=definitions)
            self._files[rel] = entry
            for chunk in chunks:
                words = identifiers(chunk.text)
                if words:
                    chunk.terms.update(words)
                    self._add_chunk(entry, replace(chunk, length=len(words)))
            for definition in definitions:
                self._definitions.setdefault(definition.name, []).append((rel, definition))
            self._add_lines(entry)

    def _add_chunk(self, entry: _File, chunk: Chunk) -> None:
        cid = self._next_chunk
        self._next_chunk += 1
        self._chunks[cid] = chunk
        entry.chunks.append(cid)
        for term, count in chunk.terms.items():
            self._postings.setdefault(term, {})[cid] = count
        self._total_terms += chunk.length

    def _add_lines(self, entry: _File) -> None:
        previous = ""
        for number, line in enumerate(entry.lines):
            stripped = line.strip()
            if len(stripped) >= KEY_CHARS:
                self._starts.setdefault(stripped[:KEY_CHARS], []).append(
                    (entry.rel, entry.generation, number)
                )
            if previous:
                self._followers.setdefault(previous, []).append((entry.rel, entry.generation, number))
            previous = stripped

    def _remove(self, rel: str) -> None:
        entry = self._files.pop(rel, None)
        if entry is None:
            return
        for cid in entry.chunks:
            chunk = self._chunks.pop(cid)
            self._total_terms -= chunk.length
            for term in chunk.terms:
                postings = self._postings[term]
                del postings[cid]
                if not postings:
                    del self._postings[term]
        for definition in entry.definitions:
            kept = [d for d in self._definitions.get(definition.name, []) if d[0] != rel]
            if kept:
                self._definitions[definition.name] = kept
            else:
                self._definitions.pop(definition.name, None)
        self._stale_lines += len(entry.lines)
        if self._stale_lines > sum(len(f.lines) for f in self._files.values()):
            self._rebuild_lines()

    def _rebuild_lines(self) -> None:
        self._starts, self._followers, self._stale_lines = {}, {}, 0
        for entry in self._files.values():
            self._add_lines(entry)

    # -- lookups ----------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            lines = sum(len(f.lines) for f in self._files.values())
            return {"files": len(self._files), "chunks": len(self._chunks), "lines": lines}

    def similar(self, query: str, exclude: str | None, k: int) -> list[tuple[Chunk, float]]:
        """The ``k`` chunks most similar to ``query`` by BM25 over identifiers, not from ``exclude``."""
        with self._lock:
            n = len(self._chunks)
            # The rarest query terms carry the score and have the shortest postings: a term in a
            # quarter of all chunks adds little idf and would cost the longest walk.
            found = [(len(p), p) for t in set(identifiers(query)) if (p := self._postings.get(t))]
            found = sorted((f for f in found if f[0] <= max(COMMON_MIN, n // 4)), key=lambda f: f[0])
            found = found[:MAX_QUERY_TERMS]
            if not n or not found:
                return []
            average = self._total_terms / n
            scores: dict[int, float] = {}
            for df, postings in found:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                for cid, tf in postings.items():
                    length = self._chunks[cid].length
                    norm = tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * length / average))
                    scores[cid] = scores.get(cid, 0.0) + idf * norm
            ranked = heapq.nlargest(k * 4, scores.items(), key=lambda item: item[1])
            best: list[tuple[Chunk, float]] = []
            for cid, score in ranked:
                chunk = self._chunks[cid]
                if chunk.rel != exclude:
                    best.append((chunk, score))
                if len(best) >= k:
                    break
            return best

    def definitions(self, names: list[str], exclude: str | None) -> list[tuple[str, Definition, str]]:
        """(path, definition, its text) of each name defined in a file other than ``exclude``."""
        found = []
        with self._lock:
            for name in names:
                for rel, definition in self._definitions.get(name, [])[:2]:
                    if rel == exclude:
                        continue
                    lines = self._files[rel].lines[definition.start : definition.end + 1]
                    found.append((rel, definition, "\n".join(lines)))
        return found

    def lines_starting(self, head: str, exclude: str | None) -> list[tuple[LineHit, str, str]]:
        """(where, the line, the line before it) of lines whose stripped text starts with ``head``."""
        return self._scan(self._starts.get(head[:KEY_CHARS], []), exclude, lambda s: s.startswith(head))

    def lines_after(self, previous: str, head: str, exclude: str | None) -> list[tuple[LineHit, str, str]]:
        """Lines starting with ``head`` that follow a line whose stripped text is ``previous``."""
        return self._scan(self._followers.get(previous, []), exclude, lambda s: s.startswith(head))

    def following(self, hit: LineHit, count: int) -> list[str]:
        with self._lock:
            entry = self._files.get(hit.rel)
            return entry.lines[hit.line + 1 : hit.line + 1 + count] if entry else []

    def _scan(self, bucket, exclude, keep) -> list[tuple[LineHit, str, str]]:
        found = []
        with self._lock:
            for rel, generation, number in bucket[:MAX_SCAN]:
                entry = self._files.get(rel)
                if entry is None or entry.generation != generation or rel == exclude:
                    continue
                line = entry.lines[number]
                if keep(line.strip()):
                    before = entry.lines[number - 1] if number else ""
                    found.append((LineHit(rel, number), line, before))
        return found
