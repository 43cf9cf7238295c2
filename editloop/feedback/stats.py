"""What the feedback log says about serving: acceptance, characters saved, abstentions, latency.

Figures are kept per project, model version and time bucket, read incrementally: each
``refresh`` reads only the stream entries after the last one it saw, so a dashboard that refreshes
every few seconds never rescans the log::

    stats = FeedbackStats(bucket_s=300)
    stats.refresh(store)                        # reads what is new in every project's stream
    report = stats.report(project=None)         # {"totals", "versions", "series", "definitions"}

Outcome events (``shown``, ``accepted``, ``rejected``, ``retained``, ``edited``) join their
``completion`` event by ``completion_id`` and count in the completion's version and bucket,
whichever of the two was written first. A completion stops taking outcomes ``JOIN_WINDOW_S``
(stream time) after it was served, so memory holds only recent completions.

Definitions (also in every report, under ``definitions``):

- *served*: completion events that did not abstain.
- *abstain rate*: abstained / completions.
- *seen*: completions the client reports the user saw: a ``shown``, ``accepted`` or ``rejected``
  event names them.
- *acceptance rate*: completions with an ``accepted`` event / seen.
- *full-accept rate*: completions whose candidate was accepted whole (no partial accept) / seen.
- *chars retained at 2 min*: per accepted completion, the characters taken times the similarity the
  first ``retained`` report at or after 120 s gave (what is still there); accepts without such a
  report are left out, and ``retained_known`` counts the ones with it.
- *chars accepted*: per accepted candidate, ``accepted_length`` when the client measured a partial
  accept (the longest one sent), the first line or word for Tabby-style partial accepts, else the
  candidate's whole text; summed over completions.
- *chars written*: what ended up at the completion's spot, for completions where the log says:
  the last ``retained``/``edited`` text after an accept (else the accepted text), or the ``edited``
  text written instead of a rejected or abstained completion. Completions without such an event
  are left out of both sides of the share.
- *chars saved share*: Σ min(chars accepted, chars written) / Σ chars written over those
  completions: the part of what was written where completions were requested that came from them.
"""

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

from editloop.feedback.events import (
    AcceptedEvent,
    CompletionEvent,
    EditedEvent,
    FeedbackEvent,
    RetainedEvent,
    event_from_json,
)
from editloop.feedback.store import FeedbackStore, stream_entries

JOIN_WINDOW_S = 2 * 3600  # outcomes arrive within minutes (retention's last horizon is 10 min)
PAGE = 1000
RETAINED_HORIZON_S = 120  # what is still there after 2 minutes (Copilot checks 30 s .. 10 min)
LATENCY_RATIO = 1.1  # latency histogram bins grow 10 %: percentiles within ~5 %
MAX_SERIES_POINTS = 120

DEFINITIONS = {
    "served": "completion events that did not abstain",
    "abstain_rate": "abstained completions / completions",
    "seen": "completions named by a shown, accepted or rejected event (the user saw them)",
    "acceptance_rate": "completions with an accepted event / seen completions",
    "full_accept_rate": "completions accepted whole (not partially) / seen completions",
    "chars_retained_2min": "characters taken times their similarity at the first retention report at or "
    "after 2 min, over accepted completions with such a report (retained_known of them)",
    "chars_accepted": "characters taken from completions: accepted_length on partial accepts, "
    "else the first line or word (Tabby line/word accepts), else the whole candidate",
    "chars_written": "characters at the completion's spot afterwards, where a retained/edited event "
    "says (an accept with no later edit: the accepted text)",
    "chars_saved_share": "sum of min(accepted, written) / sum of written, over completions whose written "
    "text is known: the share of what was written where completions were requested that came from them",
    "latency_ms": "server-side completion latency (p50/p95 from a histogram with 10 % wide bins)",
}


@dataclass
class Counts:
    """Additive figures of one (project, version, bucket); reports merge and divide them."""

    completions: int = 0
    abstained: int = 0
    served: int = 0
    seen: int = 0
    accepted: int = 0
    full_accepted: int = 0
    rejected: int = 0
    chars_accepted: int = 0
    retained_known: int = 0
    chars_retained_2min: int = 0
    written_known: int = 0
    chars_written: int = 0
    chars_saved: int = 0
    latency_count: int = 0
    latency_sum: float = 0.0
    latency_bins: dict[int, int] = field(default_factory=dict)

    def add(self, other: "Counts", sign: int = 1) -> None:
        for f in fields(self):
            if f.name != "latency_bins":
                setattr(self, f.name, getattr(self, f.name) + sign * getattr(other, f.name))
        for b, n in other.latency_bins.items():
            self.latency_bins[b] = self.latency_bins.get(b, 0) + sign * n

    def figures(self) -> dict:
        """Counts plus the rates and latency percentiles the dashboard draws (None: no data)."""
        return {
            "completions": self.completions,
            "abstained": self.abstained,
            "served": self.served,
            "seen": self.seen,
            "accepted": self.accepted,
            "full_accepted": self.full_accepted,
            "rejected": self.rejected,
            "abstain_rate": _ratio(self.abstained, self.completions),
            "acceptance_rate": _ratio(self.accepted, self.seen),
            "full_accept_rate": _ratio(self.full_accepted, self.seen),
            "chars_accepted": self.chars_accepted,
            "retained_known": self.retained_known,
            "chars_retained_2min": self.chars_retained_2min,
            "chars_written": self.chars_written,
            "chars_saved": self.chars_saved,
            "written_known": self.written_known,
            "chars_saved_share": _ratio(self.chars_saved, self.chars_written),
            "latency_ms": {
                "mean": round(self.latency_sum / self.latency_count, 3) if self.latency_count else None,
                "p50": _percentile(self.latency_bins, 0.5),
                "p95": _percentile(self.latency_bins, 0.95),
            },
        }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def latency_bin(ms: float) -> int:
    return 0 if ms < 1 else 1 + int(math.log(ms) / math.log(LATENCY_RATIO))


def bin_value(index: int) -> float:
    """A bin's geometric middle: bin i ≥ 1 holds [r^(i-1), r^i)."""
    return 0.5 if index == 0 else LATENCY_RATIO ** (index - 0.5)


def _percentile(bins: dict[int, int], q: float) -> float | None:
    total = sum(bins.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for index in sorted(bins):
        seen += bins[index]
        if seen >= rank:
            return round(bin_value(index), 1)
    return round(bin_value(max(bins)), 1)


def _length(text: str | None, chars: int | None) -> int:
    """Characters of a text, or its recorded length when the text was dropped (code-free)."""
    return len(text) if text else (chars or 0)


@dataclass
class _Joined:
    """One completion and what its outcome events said so far."""

    completion: CompletionEvent | None = None
    first_seen_ms: int = 0
    seen: bool = False
    rejected: bool = False
    # choice → its accepts as (accepted_length, partial): sized once the candidates are known,
    # since an accept may be read before the completion event it joins.
    accepted: dict[int, set[tuple[int | None, str | None]]] = field(default_factory=dict)
    final_text: int | None = None  # chars at the spot after an accept (retained / edited)
    retained_2min: float | None = None  # similarity at the first retention report at or after 2 min
    written_instead: int | None = None  # chars the user wrote after a rejection or abstention

    def candidate_chars(self, choice: int, partial: str | None) -> int:
        candidates = self.completion.candidates if self.completion else []
        cand = next((c for c in candidates if c.index == choice), None)
        if cand is None:
            return 0
        if partial and cand.text:
            # What a Tabby-style line or word accept inserts: up to the end of the first line
            # (or word) with text, leading newlines or spaces included.
            match = re.match(r"\n*[^\n]*" if partial == "line" else r"\s*\S*", cand.text)
            return len(match.group(0)) if match else 0
        return _length(cand.text, cand.text_chars)

    def taken(self, choice: int) -> int:
        """Characters taken from candidate ``choice``: its longest accept (partial accepts grow)."""
        return max(
            length if length is not None else self.candidate_chars(choice, partial)
            for length, partial in self.accepted[choice]
        )

    def outcome(self) -> Counts:
        """This completion's outcome figures; nothing until its completion event is known."""
        out = Counts()
        if self.completion is None:
            return out
        taken = sum(self.taken(choice) for choice in self.accepted)
        out.seen = int(self.seen)
        out.accepted = int(bool(self.accepted))
        out.full_accepted = int(any((None, None) in accepts for accepts in self.accepted.values()))
        out.rejected = int(self.rejected and not self.accepted)
        out.chars_accepted = taken
        if self.accepted and self.retained_2min is not None:
            out.retained_known = 1
            out.chars_retained_2min = round(taken * self.retained_2min)
        written: int | None
        if self.accepted:
            written = self.final_text if self.final_text is not None else taken
        else:
            written = self.written_instead
        if written is not None:
            out.written_known = 1
            out.chars_written = written
            out.chars_saved = min(taken, written)
        return out

    def apply(self, event: FeedbackEvent) -> None:
        kind = event.type
        if kind in ("shown", "rejected", "accepted"):
            self.seen = True
        if kind == "rejected":
            self.rejected = True
        elif isinstance(event, AcceptedEvent):
            self.accepted.setdefault(event.choice, set()).add((event.accepted_length, event.partial))
        elif isinstance(event, RetainedEvent):
            self.final_text = _length(event.text, event.text_chars)
            if event.horizon_s >= RETAINED_HORIZON_S and self.retained_2min is None:
                self.retained_2min = event.similarity
        elif isinstance(event, EditedEvent):
            chars = _length(event.text, event.text_chars)
            if event.after == "accepted":
                self.final_text = chars
            else:
                self.written_instead = chars


def base_counts(event: CompletionEvent) -> Counts:
    """What a completion event adds by itself: it happened, abstained or not, how fast."""
    counts = Counts(completions=1, abstained=int(event.abstained), served=int(not event.abstained))
    if event.latency_ms is not None:
        counts.latency_count, counts.latency_sum = 1, event.latency_ms
        counts.latency_bins = {latency_bin(event.latency_ms): 1}
    return counts


Key = tuple[str, str, int]  # project, model version, bucket start (epoch seconds)


class FeedbackStats:
    """Incremental aggregation of the feedback log; thread-safe (one refresh at a time)."""

    def __init__(self, bucket_s: int = 300, since: datetime | None = None) -> None:
        if bucket_s < 1:
            raise ValueError("bucket_s must be at least 1 second")
        self.bucket_s = bucket_s
        self.cells: dict[Key, Counts] = {}
        self.unreadable = 0
        self.unjoined = 0  # outcome events whose completion never arrived within the join window
        self._last: dict[str, str] = {}
        self._start = f"{int(since.timestamp() * 1000)}-0" if since else "-"
        # Per project, completions still taking outcomes, oldest first (stream order).
        self._open: dict[str, OrderedDict[str, _Joined]] = {}
        self._first_seen: dict[str, float] = {}  # version → epoch seconds of its first completion
        self._lock = threading.Lock()

    # -- reading -----------------------------------------------------------------------------

    def refresh(self, store: FeedbackStore) -> int:
        """Read every project's new entries; returns how many."""
        with self._lock:
            read = 0
            for project in store.projects():
                read += self._read_project(store, project)
            return read

    def _read_project(self, store: FeedbackStore, project: str) -> int:
        stream = store.keys.stream(project)
        start = f"({self._last[project]}" if project in self._last else self._start
        read = 0
        while entries := stream_entries(store.client.xrange(stream, start, "+", count=PAGE)):
            for entry_id, entry in entries:
                self._entry(project, entry_id, (entry or {}).get("e"))
            read += len(entries)
            self._last[project] = entries[-1][0]
            start = f"({entries[-1][0]}"
        return read

    def _entry(self, project: str, entry_id: str, raw: str | None) -> None:
        try:
            event = event_from_json(raw or "")
        except ValueError:  # a schema no version of this code reads: not a figure, but counted
            self.unreadable += 1
            return
        self.add(project, event, int(entry_id.split("-")[0]))

    def add(self, project: str, event: FeedbackEvent, at_ms: int) -> None:
        """One event as read at stream time ``at_ms``; events of one project must come in order."""
        open_ = self._open.setdefault(project, OrderedDict())
        joined = open_.get(event.completion_id)
        if joined is None:
            joined = open_[event.completion_id] = _Joined(first_seen_ms=at_ms)
        before = joined.outcome()
        if isinstance(event, CompletionEvent):
            if joined.completion is not None:
                return  # the same completion recorded twice (different event ids): count it once
            joined.completion = event
            self._cell(project, event).add(base_counts(event))
            self._first_seen.setdefault(event.model_version, event.timestamp.timestamp())
        else:
            joined.apply(event)
        if joined.completion is not None:
            cell = self._cell(project, joined.completion)
            cell.add(before, -1)
            cell.add(joined.outcome())
        self._expire(open_, at_ms)

    def _cell(self, project: str, event: CompletionEvent) -> Counts:
        bucket = int(event.timestamp.timestamp()) // self.bucket_s * self.bucket_s
        return self.cells.setdefault((project, event.model_version, bucket), Counts())

    def _expire(self, open_: "OrderedDict[str, _Joined]", now_ms: int) -> None:
        """Forget completions first seen more than the join window ago (stream time): later
        outcomes for them start an orphan that never joins and is counted as ``unjoined``."""
        cutoff = now_ms - JOIN_WINDOW_S * 1000
        while open_:
            oldest = next(iter(open_.values()))
            if oldest.first_seen_ms >= cutoff:
                return
            _, joined = open_.popitem(last=False)
            if joined.completion is None:
                self.unjoined += 1

    # -- reporting ---------------------------------------------------------------------------

    def report(
        self, project: str | None = None, since: datetime | None = None, max_points: int = MAX_SERIES_POINTS
    ) -> dict:
        """Totals, per version, and per (time bucket, version) figures, for one project or all."""
        with self._lock:
            cells = [
                (version, bucket, counts)
                for (p, version, bucket), counts in self.cells.items()
                if (project is None or p == project) and (since is None or bucket >= since.timestamp())
            ]
            first_seen = dict(self._first_seen)
            projects = sorted({p for p, _, _ in self.cells})
        step = self._series_step([b for _, b, _ in cells], max_points)
        totals, by_version, series = Counts(), dict[str, Counts](), dict[tuple[float, str], Counts]()
        for version, bucket, counts in cells:
            totals.add(counts)
            by_version.setdefault(version, Counts()).add(counts)
            series.setdefault((bucket // step * step, version), Counts()).add(counts)
        versions = sorted(by_version, key=lambda v: (first_seen.get(v, 0.0), v))
        return {
            "bucket_s": step,
            "projects": projects,
            "totals": totals.figures(),
            "versions": [
                {"version": v, "first_seen": _iso(first_seen.get(v)), **by_version[v].figures()}
                for v in versions
            ],
            "series": [
                {"t": bucket, "time": _iso(bucket), "version": v, **series[(bucket, v)].figures()}
                for bucket, v in sorted(series)
            ],
            "unreadable": self.unreadable,
            "unjoined": self.unjoined,
            "definitions": DEFINITIONS,
        }

    def _series_step(self, buckets: Iterable[int], max_points: int) -> int:
        """The smallest multiple of ``bucket_s`` that draws the span in at most ``max_points``."""
        buckets = list(buckets)
        if not buckets:
            return self.bucket_s
        span = max(buckets) - min(buckets) + self.bucket_s
        factor = max(1, math.ceil(span / self.bucket_s / max(1, max_points)))
        return self.bucket_s * factor


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch is not None else None
