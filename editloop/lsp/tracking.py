"""What became of each shown completion, read from the edits that follow it. Pure: no LSP inside.

Each completion offered at a cursor is an :class:`Offer` with a *region*: the span of the document
that holds what was written at that spot, empty at first. Edits move and resize the region
(:func:`follow`), and the offer goes through three phases:

- **pending** — shown, nothing decided. Typing that agrees with a candidate is the user typing
  through it; typing anything else at the spot *diverges*: ``rejected`` now, and once the user
  settles (no edit at the spot for ``settle_s``, or an edit elsewhere) ``edited`` with what they
  wrote there — the line or block the completion would have filled. A newer completion in the same
  document, an edit elsewhere or closing the document while still pending: ``rejected``.
- **accepted** — the region holds the accepted text (whether the editor's insertion arrives before or
  after the accept command); at each retention horizon a ``retained`` event carries the region's text
  and its similarity to what was accepted, and after the last one ``edited`` if the user changed it.
- **diverged** — rejected, waiting to settle.

Events get deterministic ids (completion, choice, kind), so a retry or a duplicate notification
from the client is harmless.

>>> tracker = EditTracker(horizons=(30.0,), settle_s=2.0)
>>> doc = Document("file:///a.py", "python", 1, "x = \\n")
>>> [e.type for e in tracker.offer(doc, "c1", ["compute()"], "line", 4)]
['shown']
>>> [e.type for e in tracker.accept("c1", 0, now=1.0)]
['accepted']
>>> _ = tracker.edit(doc, doc.apply(2, [((0, 4), (0, 4), "compute()")]), now=1.1)
>>> [(e.type, e.text, e.similarity) for e in tracker.tick({doc.uri: doc}, now=31.0)]
[('retained', 'compute()', 1.0)]
"""

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from editloop.feedback.events import (
    TEXT_LIMIT,
    AcceptedEvent,
    EditedEvent,
    FeedbackEvent,
    RejectedEvent,
    RetainedEvent,
    ShownEvent,
)
from editloop.lsp.document import Document, TextEdit
from editloop.metrics import edit_similarity

Phase = Literal["pending", "accepted", "diverged"]
Reason = Literal["dismissed", "superseded"]
After = Literal["rejected", "accepted", "abstained"]
MAX_OFFERS_PER_DOCUMENT = 64  # accepted ones waiting for horizons; older ones are dropped first


def follow(start: int, end: int, edit: TextEdit, grow_at_end: bool) -> tuple[int, int, bool]:
    """Move region ``[start, end)`` through ``edit``; also say whether the edit touched it.

    Text inserted into an empty region belongs to it (the user writing at the spot); text inserted
    at a non-empty region's start is before it, at its end inside only with ``grow_at_end``; a
    replacement overlapping the region takes the region over its extent.

    >>> follow(10, 10, TextEdit(10, 10, "abc"), grow_at_end=False)
    (10, 13, True)
    >>> follow(10, 20, TextEdit(0, 5, ""), grow_at_end=False)
    (5, 15, False)
    >>> follow(10, 20, TextEdit(15, 25, "q"), grow_at_end=False)
    (10, 16, True)
    """
    es, ee = edit.start, edit.end
    at_empty_spot = start == end and es == start
    if not at_empty_spot:
        if ee < start or (ee == start and (es < ee or start < end)):
            return start + edit.delta, end + edit.delta, False
        if es > end or (es == end and not (es == ee and grow_at_end)):
            return start, end, False
    return min(start, es), max(end + edit.delta, es + len(edit.text)), True


def similarity(a: str, b: str) -> float:
    """:func:`editloop.metrics.edit_similarity`, rounded for the event."""
    return round(edit_similarity(a, b), 6)


@dataclass
class Offer:
    completion_id: str
    uri: str
    mode: str
    candidates: list[str]
    start: int
    end: int
    shown: set[int] = field(default_factory=set)
    phase: Phase = "pending"
    accepted: int = 0
    accepted_text: str = ""
    accepted_at: float = 0.0
    horizons_done: int = 0
    touched_at: float = 0.0
    abstained: bool = False  # nothing was shown: only what the user writes at the spot is reported

    def region(self, doc: Document) -> str:
        return doc.text[self.start : self.end]

    def agrees(self, text: str) -> bool:
        """Typed text that is still the start of some candidate: the user is typing through it."""
        return any(candidate.startswith(text) for candidate in self.candidates)


class EditTracker:
    """Follows offers through edits and time; every method returns the events it caused."""

    def __init__(self, horizons: Sequence[float], settle_s: float) -> None:
        self.horizons = tuple(sorted(horizons))
        self.settle_s = settle_s
        self.offers: dict[str, Offer] = {}

    def offer(
        self, doc: Document, completion_id: str, candidates: list[str], mode: str, offset: int
    ) -> list[FeedbackEvent]:
        """A completion returned at ``offset``; its first candidate is what the editor shows."""
        events = self._supersede(doc.uri)
        self.offers[completion_id] = Offer(completion_id, doc.uri, mode, candidates, offset, offset)
        self._bound(doc.uri)
        return events + self.shown(completion_id, 0)

    def abstain(
        self, doc: Document, completion_id: str, mode: str, offset: int, now: float
    ) -> list[FeedbackEvent]:
        """A completion that showed nothing: what the user writes at the spot still belongs there."""
        offer = Offer(completion_id, doc.uri, mode, [], offset, offset, phase="diverged", abstained=True)
        offer.touched_at = now
        self.offers[completion_id] = offer
        self._bound(doc.uri)
        return []

    def shown(self, completion_id: str, choice: int) -> list[FeedbackEvent]:
        offer = self.offers.get(completion_id)
        if offer is not None:
            if choice in offer.shown:
                return []
            offer.shown.add(choice)
        return [
            ShownEvent(
                event_id=_id(completion_id, choice, "shown"), completion_id=completion_id, choice=choice
            )
        ]

    def accept(
        self, completion_id: str, choice: int, now: float, length: int | None = None
    ) -> list[FeedbackEvent]:
        """The user took candidate ``choice`` (its first ``length`` characters on a partial accept)."""
        offer = self.offers.get(completion_id)
        if offer is not None and choice < len(offer.candidates):
            if offer.phase != "accepted":
                offer.accepted_at = now
            offer.phase, offer.accepted = "accepted", choice
            offer.accepted_text = offer.candidates[choice][:length]
        kind = "accepted" if length is None else f"accepted.{length}"
        return [
            AcceptedEvent(
                event_id=_id(completion_id, choice, kind),
                completion_id=completion_id,
                choice=choice,
                accepted_length=length,
            )
        ]

    def edit(self, doc: Document, edits: list[TextEdit], now: float) -> list[FeedbackEvent]:
        events: list[FeedbackEvent] = []
        for offer in self._in(doc.uri):
            touched = False
            for edit in edits:
                grow = offer.phase != "accepted" or offer.end - offer.start < len(offer.accepted_text)
                offer.start, offer.end, hit = follow(offer.start, offer.end, edit, grow)
                touched |= hit
            events += self._after_edit(offer, doc, touched, now)
        return events

    def _after_edit(self, offer: Offer, doc: Document, touched: bool, now: float) -> list[FeedbackEvent]:
        if offer.phase == "accepted":
            return []
        if offer.phase == "diverged":
            if touched:
                offer.touched_at = now
                return []
            return self._settle(offer, doc)  # the user moved elsewhere: what they wrote is done
        if not touched:
            return self._reject(offer, "dismissed", drop=True)
        if offer.agrees(offer.region(doc)):
            return []
        offer.phase, offer.touched_at = "diverged", now
        return self._reject(offer, "dismissed", drop=False)

    def tick(self, documents: Mapping[str, Document], now: float) -> list[FeedbackEvent]:
        """Events that are due by ``now``: retention horizons, settled rejections."""
        events: list[FeedbackEvent] = []
        for offer in list(self.offers.values()):
            doc = documents.get(offer.uri)
            if doc is None:
                continue
            if offer.phase == "accepted":
                events += self._retention(offer, doc, now)
            elif offer.phase == "diverged" and now - offer.touched_at >= self.settle_s:
                events += self._settle(offer, doc)
        return events

    def close(self, doc: Document) -> list[FeedbackEvent]:
        """The document closed: pending offers were not taken, rejected ones are settled."""
        events: list[FeedbackEvent] = []
        for offer in self._in(doc.uri):
            if offer.phase == "pending":
                events += self._reject(offer, "dismissed", drop=True)
            elif offer.phase == "diverged":
                events += self._settle(offer, doc)
            else:
                self.offers.pop(offer.completion_id, None)  # its horizons can no longer be observed
        return events

    def _retention(self, offer: Offer, doc: Document, now: float) -> list[FeedbackEvent]:
        events: list[FeedbackEvent] = []
        text = offer.region(doc)
        while offer.horizons_done < len(self.horizons):
            horizon = self.horizons[offer.horizons_done]
            if now - offer.accepted_at < horizon:
                return events
            offer.horizons_done += 1
            events.append(
                RetainedEvent(
                    event_id=_id(offer.completion_id, offer.accepted, f"retained.{horizon:g}"),
                    completion_id=offer.completion_id,
                    choice=offer.accepted,
                    horizon_s=horizon,
                    text=text[:TEXT_LIMIT],
                    similarity=similarity(offer.accepted_text, text),
                )
            )
        self.offers.pop(offer.completion_id, None)
        if text != offer.accepted_text:
            events.append(_edited(offer, text, "accepted"))
        return events

    def _settle(self, offer: Offer, doc: Document) -> list[FeedbackEvent]:
        self.offers.pop(offer.completion_id, None)
        text = written(offer.region(doc), offer.mode)
        if offer.abstained and not text.strip():
            return []  # nothing shown, nothing written there: nothing to learn
        return [_edited(offer, text, "abstained" if offer.abstained else "rejected")]

    def _reject(self, offer: Offer, reason: Reason, drop: bool) -> list[FeedbackEvent]:
        if drop:
            self.offers.pop(offer.completion_id, None)
        return [
            RejectedEvent(
                event_id=_id(offer.completion_id, choice, "rejected"),
                completion_id=offer.completion_id,
                choice=choice,
                reason=reason,
            )
            for choice in sorted(offer.shown)
        ]

    def _supersede(self, uri: str) -> list[FeedbackEvent]:
        """A newer completion in the document ends the pending ones: untouched ones were passed over."""
        events: list[FeedbackEvent] = []
        for offer in self._in(uri):
            if offer.phase != "pending":
                continue
            if offer.start == offer.end:
                events += self._reject(offer, "superseded", drop=True)
            else:  # typed partly through: the newer completion continues from there
                self.offers.pop(offer.completion_id, None)
        return events

    def _bound(self, uri: str) -> None:
        offers = self._in(uri)
        for offer in offers[: max(0, len(offers) - MAX_OFFERS_PER_DOCUMENT)]:
            self.offers.pop(offer.completion_id, None)

    def _in(self, uri: str) -> list[Offer]:
        return [offer for offer in self.offers.values() if offer.uri == uri]


def written(text: str, mode: str) -> str:
    """What the user wrote at the spot, in the completion's shape: its line, or its block."""
    if mode == "line":
        return text.splitlines()[0] if text else ""
    return text.rstrip("\r\n")


def _edited(offer: Offer, text: str, after: After) -> EditedEvent:
    """One per completion; after a rejection its choice is the first candidate shown."""
    choice = offer.accepted if after == "accepted" else min(offer.shown, default=0)
    return EditedEvent(
        event_id=_id(offer.completion_id, choice, f"edited.{after}"),
        completion_id=offer.completion_id,
        choice=choice,
        after=after,
        text=text[:TEXT_LIMIT],
    )


def _id(completion_id: str, choice: int, kind: str) -> str:
    """Deterministic event id; hashed when it would exceed the schema's 128 characters."""
    event_id = f"{completion_id}.{choice}.{kind}"
    return event_id if len(event_id) <= 128 else hashlib.sha256(event_id.encode()).hexdigest()
