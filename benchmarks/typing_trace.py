"""A typing trace: the requests an editor sends while a developer types a region of a real file.

The developer is the replay's (:mod:`editloop.eval.replay`): 6 characters a second, and the editor
asks at every fresh line and after a word where the developer pauses. Nothing is accepted, so the
trace is the same for every server it is replayed against; each request carries the text the
developer typed next (``truth``) and when it was sent (``at_s``, typing time).

>>> trace = typing_trace(Path(sysconfig.get_paths()["stdlib"]) / "email/feedparser.py", 600)
>>> len(trace.requests), trace.requests[0].prefix[-20:]  # doctest: +SKIP
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

from lean_http import JsonClient

from editloop.eval.replay import ReplayConfig, Suggestion, replay
from editloop.eval.replay_tasks import Hunk, TypingTask

SUFFIX_KEPT = 1500  # characters a trace leaves after the typed region, where the file has them


@dataclass(frozen=True)
class TraceRequest:
    at_s: float
    prefix: str
    suffix: str
    truth: str  # the rest of the line the developer went on to type


@dataclass
class Trace:
    path: str
    typed_chars: int
    requests: list[TraceRequest] = field(default_factory=list)

    def bodies(self, **extra: object) -> list[dict]:
        return [
            {"prefix": r.prefix, "suffix": r.suffix, "filepath": self.path, "mode": "line", **extra}
            for r in self.requests
        ]


class _Recorder:
    """An editor that records each request and shows nothing."""

    def __init__(self, text: str, start: int) -> None:
        self.text, self.start = text, start
        self.doc, self.cursor, self.clock = "", 0, 0.0
        self.requests: list[TraceRequest] = []

    def open(self, task: TypingTask) -> None:
        self.doc, self.cursor = task.before, 0

    def replace(self, offset: int, removed: int, text: str) -> None:
        self.doc = self.doc[:offset] + text + self.doc[offset + removed :]
        self.cursor = offset + len(text)

    def type(self, text: str) -> None:
        self.replace(self.cursor, 0, text)

    def suggest(self) -> Suggestion | None:
        rest = self.text[self.cursor :]
        truth = rest[: rest.find("\n")] if "\n" in rest else rest
        self.requests.append(
            TraceRequest(self.clock, self.doc[: self.cursor], self.doc[self.cursor :], truth)
        )
        return None

    def accept(self, suggestion: Suggestion, length: int) -> None:
        raise AssertionError("the recorder shows nothing, so nothing is accepted")

    def advance(self, seconds: float) -> None:
        self.clock += seconds

    def close(self) -> None:
        pass


def typing_trace(path: Path, chars: int, seed: int = 0, pause_after_word: float = 0.5) -> Trace:
    """Type ``chars`` characters of ``path`` starting at a method in its middle; the rest stays as
    suffix. A region that would run to the end of the file starts at an earlier method: an editor
    mostly types with code after the cursor, and the suffix is part of every prompt."""
    text = path.read_text(encoding="utf-8")
    start = text.find("\n    def ", len(text) // 2) + 1 or len(text) // 2
    if len(text) - (start + chars) < SUFFIX_KEPT:
        start = text.rfind("\n    def ", 0, max(0, len(text) - chars - SUFFIX_KEPT)) + 1 or start
    end = min(len(text), start + chars)
    task = TypingTask(path.name, "python", text[:start] + text[end:], [Hunk(start, 0, text[start:end])])
    recorder = _Recorder(text, start)
    replay([task], recorder, ReplayConfig(seed=seed, partial_accept=False, pause_after_word=pause_after_word))
    return Trace(f"{path.parent.name}/{path.name}", end - start, recorder.requests)


@dataclass
class Replayed:
    latencies_s: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # wall clock (time.time()) of each request
    texts: list[str] = field(default_factory=list)  # the best choice shown, "" when none
    typeahead_s: list[float] = field(default_factory=list)  # after typing into a shown completion
    typeahead_misses: int = 0
    cached: int = 0  # trace requests the completion cache answered


class Editor:
    """One editor's connection to ``/complete``: it asks, and records what it was shown and how fast.

    With ``typeahead``, after each shown completion the request after typing its first two
    characters is timed too, as if the developer had (a completion-cache hit, if all is well);
    the trace itself goes on with what the developer really typed.
    """

    def __init__(self, url: str, headers: dict, typeahead: bool = False) -> None:
        self.http = JsonClient(url, headers)
        self.typeahead = typeahead
        self.out = Replayed()

    def ask(self, body: dict, truth: str) -> None:
        self.out.sent_at.append(time.time())
        sent = time.perf_counter()
        result = self.http.post("/complete", body)
        self.out.latencies_s.append(time.perf_counter() - sent)
        shown = result["choices"][0]["text"] if result["choices"] else ""
        self.out.texts.append(shown)
        self.out.cached += bool(result.get("cached"))
        if self.typeahead:
            self._type_into(body, shown)

    def replay(self, bodies: list[dict], trace: Trace, paced: bool = False) -> Replayed:
        """Every request of ``trace`` in order, each at its typing time if ``paced``."""
        started = time.perf_counter()
        for body, request in zip(bodies, trace.requests, strict=True):
            if paced:
                time.sleep(max(0.0, request.at_s - (time.perf_counter() - started)))
            self.ask(body, request.truth)
        return self.out

    def close(self) -> None:
        self.http.close()

    def _type_into(self, body: dict, shown: str) -> None:
        typed = shown[: len(shown) - len(shown.lstrip()) + 2]
        if len(shown.strip()) < 3:  # typing 2 of 2 characters leaves nothing to suggest
            return
        sent = time.perf_counter()
        reply = self.http.post("/complete", {**body, "prefix": body["prefix"] + typed})
        elapsed = time.perf_counter() - sent
        if reply.get("cached"):
            self.out.typeahead_s.append(elapsed)
        else:
            self.out.typeahead_misses += 1
