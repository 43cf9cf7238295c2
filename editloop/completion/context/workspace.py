"""What one project root offers a request: snippets for the prompt and candidates to copy.

>>> service = ContextService([Path("/srv/repos")], ContextLimits())  # doctest: +SKIP
>>> workspace = service.workspace("/srv/repos/shop")  # doctest: +SKIP
>>> workspace.gather("shop/cart.py", prefix, suffix)  # doctest: +SKIP
[Snippet(filepath='shop/money.py', text='class Money: ...', score=1.0), ...]
"""

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from editloop.completion.context.files import inside, within_any
from editloop.completion.context.index import KEY_CHARS, LineHit, RepoIndex
from editloop.completion.context.recent import RecentChunks
from editloop.completion.context.tokens import identifiers
from editloop.completion.types import Snippet
from editloop.errors import ContextRootError

QUERY_LINES_BEFORE, QUERY_LINES_AFTER = 15, 5
NEAR_CURSOR_LINES = 3  # identifiers this close to the cursor get their definitions looked up
DEFINITION_LINES = 12  # a definition's head: signature, docstring, first statements
MAX_DEFINITIONS, MAX_SIMILAR, MAX_RECENT = 4, 4, 4
MAX_BLOCK_LINES = 8
MAX_CODEBASE = 3


@dataclass(frozen=True)
class ContextLimits:
    max_files: int = 20_000
    max_file_bytes: int = 1_000_000
    max_workspaces: int = 4
    refresh_s: float = 30.0
    build_wait_s: float = 2.0


@dataclass(frozen=True)
class CodebaseCandidate:
    """A continuation copied from the codebase: how many places support it, and one of them."""

    text: str
    support: float  # weighted count of places that continue this way
    share: float  # support / (all places matched + 1): the chance that this is what comes next
    rel: str  # "" for the cursor's own file (the lines above it)


class Workspace:
    """The context of one root: its index (built incrementally) and the ring of recent chunks."""

    def __init__(self, root: Path, limits: ContextLimits) -> None:
        self.root = root.resolve()
        self.limits = limits
        self.index = RepoIndex(self.root, limits.max_files, limits.max_file_bytes)
        self.recent = RecentChunks()
        self._refreshed = -math.inf
        self._lock = threading.Lock()
        self.ready = threading.Event()  # set once the first build (or any refresh) is done

    @classmethod
    def in_memory(cls, files: list[tuple[str, str]], name: str = "memory") -> "Workspace":
        """A workspace over ``(path, text)`` pairs, never read from disk (training rows, evals)."""
        workspace = cls(Path(f"/editloop-{name}"), ContextLimits(max_files=len(files) + 1))
        for path, text in files:
            workspace.index.update_text(path, text)
        workspace._refreshed = math.inf  # nothing on disk to look at
        workspace.ready.set()
        return workspace

    def refresh(self, force: bool = False) -> None:
        """Re-read what changed on disk, at most every ``refresh_s`` unless forced; returns at once
        when another thread is at it (lookups use what is indexed so far)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._refreshed == math.inf or (
                not force and time.monotonic() - self._refreshed < self.limits.refresh_s
            ):
                return
            self.index.refresh()
            self._refreshed = time.monotonic()
        finally:
            self._lock.release()
            self.ready.set()

    def refresh_soon(self) -> None:
        """:meth:`refresh` on a thread of its own when one is due: requests never walk the disk."""
        due = time.monotonic() - self._refreshed >= self.limits.refresh_s
        if due and not self._lock.locked():
            threading.Thread(target=self.refresh, name="editloop-context-index", daemon=True).start()

    def visited(self, path: str | Path, text: str, line: int, edited: bool = False) -> None:
        """An editor opened, changed or saved ``path``: the ring gets the chunk, the index the text."""
        rel = self.index.relative(path)
        if rel is None:
            return
        self.recent.add(rel, text, line)
        if edited:
            self.index.update_text(rel, text)

    def gather(self, filepath: str | None, prefix: str, suffix: str) -> list[Snippet]:
        """Snippets for the prompt, best first: definitions near the cursor, recent chunks, similar ones."""
        current = self.index.relative(filepath) if filepath else None
        window = prefix[-4000:] + suffix[:1000]
        snippets = self._definitions(prefix, suffix, current, window)
        snippets += self._recent(current, window)
        snippets += self._similar(prefix, suffix, current, window, {s.text for s in snippets})
        return sorted(snippets, key=lambda s: -(s.score or 0.0))

    def _definitions(self, prefix: str, suffix: str, current: str | None, window: str) -> list[Snippet]:
        near = "\n".join(prefix.split("\n")[-NEAR_CURSOR_LINES:] + suffix.split("\n")[:1])
        names = list(dict.fromkeys(reversed(identifiers(near))))  # nearest first
        found: list[Snippet] = []
        seen: set[tuple[str, int]] = set()
        for rel, definition, text in self.index.definitions(names, current):
            head = "\n".join(text.split("\n")[:DEFINITION_LINES])
            if (rel, definition.start) in seen or head in window:
                continue
            seen.add((rel, definition.start))
            found.append(Snippet(filepath=rel, text=head, score=round(1.0 - 0.01 * len(found), 4)))
            if len(found) >= MAX_DEFINITIONS:
                break
        return found

    def _recent(self, current: str | None, window: str) -> list[Snippet]:
        chunks = [c for c in self.recent.chunks() if c.rel != current and c.text not in window]
        newest = chunks[-MAX_RECENT:]
        return [
            Snippet(filepath=c.rel, text=c.text, score=round(0.5 + 0.1 * i / max(1, len(newest)), 4))
            for i, c in enumerate(newest)
        ]

    def _similar(
        self, prefix: str, suffix: str, current: str | None, window: str, taken: set[str]
    ) -> list[Snippet]:
        query = "\n".join(prefix.split("\n")[-QUERY_LINES_BEFORE:] + suffix.split("\n")[:QUERY_LINES_AFTER])
        hits = [(c, s) for c, s in self.index.similar(query, current, MAX_SIMILAR * 2) if c.text not in taken]
        best = hits[0][1] if hits else 1.0
        return [
            Snippet(filepath=c.rel, text=c.text, score=round(0.8 * s / best, 4))
            for c, s in hits[:MAX_SIMILAR]
            if c.text not in window
        ]

    def continuations(self, filepath: str | None, prefix: str, block: bool) -> list[CodebaseCandidate]:
        """Continuations of the cursor's line copied from elsewhere (whole lines; a block in ``block``)."""
        current = self.index.relative(filepath) if filepath else None
        return continuations(self.index, current, prefix, block)


def continuations(index: RepoIndex, current: str | None, prefix: str, block: bool) -> list[CodebaseCandidate]:
    """The best supported continuations of the cursor's line, from the index and the lines above it.

    With at least ``KEY_CHARS`` on the cursor's line, any line elsewhere that starts the same way
    supplies the rest of it (one preceded by the same line as the cursor's counts twice); with
    fewer, only lines that follow a copy of the cursor's previous line do: an n-gram of lines.
    The previous line itself, repeated, is a half vote.
    """
    lines = prefix.split("\n")
    before, above = lines[-1], lines[:-1]
    head = before.lstrip()
    previous = next((s.strip() for s in reversed(above) if s.strip()), "")
    if len(head) >= KEY_CHARS:
        hits = index.lines_starting(head, current)
        own = [(i, s) for i, s in enumerate(above) if s.strip().startswith(head)]
    elif previous:
        hits = index.lines_after(previous, head, current)
        own = [
            (i + 1, above[i + 1])
            for i, s in enumerate(above[:-1])
            if s.strip() == previous and above[i + 1].strip().startswith(head)
        ]
    else:
        return []
    support: dict[str, float] = {}
    # text -> (file, its line, the lines after it, or where to look them up) of its first copy
    source: dict[str, _Origin] = {}
    for hit, line, line_before in hits:
        weight = 2.0 if line_before.strip() == previous else 1.0
        _count(support, source, _rest(line, before, head), (hit.rel, line, hit), weight)
    last = next((i for i in range(len(above) - 1, -1, -1) if above[i].strip()), None)
    if last is not None and above[last].strip().startswith(head) and (last, above[last]) not in own:
        own.append((last, above[last]))  # repeating the previous line: a weak vote of its own
    for number, line in own:
        earlier = above[number - 1].strip() if number else ""
        following = above[number + 1 : number + 1 + MAX_BLOCK_LINES]
        _count(
            support,
            source,
            _rest(line, before, head),
            ("", line, following),
            (2.0 if earlier == previous else 1.0) / (2 if number == last else 1),
        )
    ranked = sorted(support.items(), key=lambda item: (-item[1], len(item[0])))[:MAX_CODEBASE]
    total = sum(support.values()) + 1.0
    found: list[CodebaseCandidate] = []
    for text, weight in ranked:
        rel, line, where = source[text]
        if block:  # only the few shown need their bodies: one lookup each
            following = where if isinstance(where, list) else index.following(where, MAX_BLOCK_LINES)
            text += _body(line, following, before)
        found.append(CodebaseCandidate(text, weight, round(weight / total, 4), rel))
    return found


_Origin = tuple[str, str, list[str] | LineHit]


def _rest(line: str, before: str, head: str) -> str:
    stripped = line.strip()
    if head:
        return stripped[len(head) :]
    return stripped if before else line.rstrip()


def _body(line: str, following: list[str], before: str) -> str:
    """The lines after ``line`` indented deeper than it, re-indented to the cursor's line."""
    indent = len(line) - len(line.lstrip())
    target = before[: len(before) - len(before.lstrip())]
    body = []
    for nxt in following:
        depth = len(nxt) - len(nxt.lstrip())
        if not nxt.strip() or depth <= indent:
            break
        body.append(target + nxt[indent:].rstrip())
    return "".join("\n" + b for b in body)


def _count(
    support: dict[str, float], source: dict[str, _Origin], text: str, origin: _Origin, weight: float
) -> None:
    if not text.strip():
        return
    support[text] = support.get(text, 0.0) + weight
    source.setdefault(text, origin)


class ContextService:
    """One workspace per allowed root, the least recently used dropped beyond ``max_workspaces``."""

    def __init__(self, roots: list[Path], limits: ContextLimits) -> None:
        self.roots = [Path(r) for r in roots]
        self.limits = limits
        self._workspaces: OrderedDict[Path, Workspace] = OrderedDict()
        self._lock = threading.Lock()

    def workspace(self, project_root: str) -> Workspace:
        """The workspace of ``project_root``; :class:`ContextRootError` unless an allowed root holds it."""
        if not self.roots:
            raise ContextRootError("context_roots is empty: this server reads no project's files")
        if not Path(project_root).is_absolute() or within_any(self.roots, project_root) is None:
            raise ContextRootError(
                f"project_root {project_root[:200]!r} is not inside any of the server's context_roots"
            )
        root = inside(Path("/"), project_root)
        if root is None or not root.is_dir():
            raise ContextRootError(f"project_root {project_root[:200]!r} is not a directory")
        with self._lock:
            workspace = self._workspaces.get(root)
            if workspace is None:
                workspace = self._workspaces[root] = Workspace(root, self.limits)
                while len(self._workspaces) > self.limits.max_workspaces:
                    self._workspaces.popitem(last=False)
            self._workspaces.move_to_end(root)
        workspace.refresh_soon()
        # The first request to a project waits a little for its index; a large one is built on
        # while requests go on with what is indexed so far.
        workspace.ready.wait(self.limits.build_wait_s)
        return workspace
