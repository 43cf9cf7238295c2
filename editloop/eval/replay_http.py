"""The HTTP editor path of the replay: ``/complete`` for suggestions, ``/feedback`` for what happened.

It plays the part an editor plugin plus editloop's LSP play for a real user: it reports each
shown suggestion, accepts and rejections, what the developer wrote instead of a rejected
suggestion (``edited``), and what is left of accepted text at each retention horizon —
measured on the simulated document as the developer goes on typing, on a simulated clock.
"""

import hashlib
from dataclasses import dataclass, field

import httpx

from editloop.errors import BackendError
from editloop.eval.replay import Suggestion, shift, similarity, span_of
from editloop.eval.replay_tasks import TypingTask
from editloop.lsp.session import context_window

FLUSH_EVERY = 256


@dataclass
class _Region:
    """Accepted text being followed: where it is now, and the horizons not yet reported."""

    suggestion: Suggestion
    start: int
    end: int
    accepted: str
    accepted_at: float
    horizons: list[float]


@dataclass
class _Awaiting:
    """A rejected (or partly taken) suggestion whose spot the developer has not finished writing."""

    suggestion: Suggestion
    start: int
    lines: int
    after: str


@dataclass
class HttpEditor:
    client: httpx.Client
    run_key: str
    user: str = "replay"
    project: str = "default"
    horizons: tuple[float, ...] = (30.0, 120.0, 600.0)
    candidates: int = 3
    ranker: str | None = None  # rank with this ("value", "logprob"); None: the server's choice
    project_root: str | None = None  # the server gathers context from this project (--context repo)
    doc: str = ""
    cursor: int = 0
    clock: float = 0.0
    task: TypingTask | None = None
    events: list[dict] = field(default_factory=list)
    sent: int = 0
    _shown: tuple[Suggestion, int] | None = None
    _regions: list[_Region] = field(default_factory=list)
    _awaiting: list[_Awaiting] = field(default_factory=list)

    def open(self, task: TypingTask) -> None:
        self.task, self.doc, self.cursor, self.clock = task, task.before, 0, 0.0

    def replace(self, offset: int, removed: int, text: str) -> None:
        if self._shown is not None and (text or removed):
            self._reject()
        self.doc = self.doc[:offset] + text + self.doc[offset + removed :]
        self.cursor = offset + len(text)
        shift(self._regions, offset, removed, len(text))
        self._settle_awaiting()

    def type(self, text: str) -> None:
        self.replace(self.cursor, 0, text)

    def suggest(self) -> Suggestion | None:
        assert self.task is not None
        begin, end = context_window(self.doc, self.cursor)
        body = {
            "prefix": self.doc[begin : self.cursor],
            "suffix": self.doc[self.cursor : end],
            "filepath": self.task.path.split("@")[0],
            "language": self.task.language,
            "mode": "auto",
            "n": self.candidates,  # as editloop's LSP asks: the best of n is shown
            "document_id": f"{self.run_key}:{self.task.path}",
            "project": self.project,
            "user": self.user,
        }
        if self.ranker:
            body["ranker"] = self.ranker
        if self.project_root:
            body["project_root"] = self.project_root
        reply = self.client.post("/complete", json=body)
        if reply.status_code != 200:
            raise BackendError(f"/complete answered {reply.status_code}: {reply.text[:200]}")
        data = reply.json()
        top = data["choices"][0] if data["choices"] and not data["abstained"] else {}
        text = top.get("text", "")
        latency = float(data.get("timings", {}).get("total_ms", 0.0))
        rank_ms = data.get("timings", {}).get("rank_ms")
        suggestion = Suggestion(
            data["id"],
            text,
            latency,
            data["model_version"],
            data.get("ranker", ""),
            rank_ms,
            top.get("source", "model"),
        )
        if text:
            self._shown = (suggestion, self.cursor)
            self._emit("shown", suggestion)
        else:  # nothing shown: what the developer writes here is still what belonged here
            self._awaiting.append(_Awaiting(suggestion, self.cursor, 1, "abstained"))
        return suggestion

    def accept(self, suggestion: Suggestion, length: int) -> None:
        self._shown = None
        start = self.cursor
        partial = length < len(suggestion.text)
        self._emit("accepted", suggestion, accepted_length=length if partial else None)
        self.replace(start, 0, suggestion.text[:length])
        taken = suggestion.text[:length]
        self._regions.append(
            _Region(suggestion, start, start + length, taken, self.clock, list(self.horizons))
        )
        if partial:
            self._awaiting.append(_Awaiting(suggestion, start, suggestion.text.count("\n") + 1, "accepted"))

    def advance(self, seconds: float) -> None:
        self.clock += seconds
        for region in self._regions:
            while region.horizons and self.clock - region.accepted_at >= region.horizons[0]:
                horizon = region.horizons.pop(0)
                now = self.doc[region.start : region.end]
                self._emit(
                    "retained",
                    region.suggestion,
                    horizon_s=horizon,
                    text=now,
                    similarity=similarity(now, region.accepted),
                )
        self._regions = [r for r in self._regions if r.horizons]
        if len(self.events) >= FLUSH_EVERY:
            self.flush()

    def close(self) -> None:
        if self._shown is not None:
            self._reject()
        for waiting in self._awaiting:
            self._edited(waiting)
        self._awaiting = []
        self.advance(max(self.horizons, default=0.0))  # the file stays open past the last horizon
        self.flush()

    def flush(self) -> None:
        if not self.events:
            return
        reply = self.client.post("/feedback", json=self.events)
        if reply.status_code != 202:
            raise BackendError(f"/feedback answered {reply.status_code}: {reply.text[:300]}")
        self.sent += len(self.events)
        self.events = []

    def _reject(self) -> None:
        assert self._shown is not None
        suggestion, start = self._shown
        self._shown = None
        self._emit("rejected", suggestion, reason="dismissed")
        self._awaiting.append(_Awaiting(suggestion, start, suggestion.text.count("\n") + 1, "rejected"))

    def _settle_awaiting(self) -> None:
        """Report what was written at a left suggestion's spot once its lines are complete."""
        still = []
        for waiting in self._awaiting:
            written = self.doc[waiting.start : self.cursor]
            if written.count("\n") >= waiting.lines:
                self._edited(waiting)
            else:
                still.append(waiting)
        self._awaiting = still

    def _edited(self, waiting: _Awaiting) -> None:
        text = span_of(self.doc, waiting.start, waiting.lines)
        self._emit("edited", waiting.suggestion, after=waiting.after, text=text)

    def _emit(self, kind: str, suggestion: Suggestion, **fields: object) -> None:
        number = self.sent + len(self.events)
        self.events.append(
            {
                "type": kind,
                "event_id": f"{self.run_key}-{number}",
                "completion_id": suggestion.completion_id,
                "user": self.user,
                "project": self.project,
                "choice": 0,
                **fields,
            }
        )


def run_key(
    seed: int, model_version: str, split: str, root: str, ranker: str | None = None, context: str = "none"
) -> str:
    """Event ids of one replay: the same run (seed, model, split, code, ranker, context) sends the same
    ids."""
    run = f"{seed}|{model_version}|{split}|{root}" + (f"|{ranker}" if ranker else "")
    run += f"|context={context}" if context != "none" else ""
    return "replay-" + hashlib.sha256(run.encode()).hexdigest()[:12]
