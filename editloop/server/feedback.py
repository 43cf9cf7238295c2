"""The server's side of the feedback log: group-committed ingest, completion events off the request path.

Every ``POST /feedback`` and ``/tabby/v1/events`` waits for its own events to be durable, but
requests arriving together share one Redis write and one fsync (a single writer task drains
whatever is queued into one batch). Completion events are queued without waiting: the reply to a
completion never waits on Redis.

>>> service = FeedbackService(open_feedback(settings), settings)  # doctest: +SKIP
>>> await service.start()
>>> outcomes = await service.submit([ShownEvent(event_id="e1", completion_id="c1")])
"""

import asyncio
import hashlib
import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from editloop.completion.types import CompletionRequest, CompletionResult
from editloop.errors import BadRequestError, FeedbackError
from editloop.feedback.completions import completion_event
from editloop.feedback.events import (
    AcceptedEvent,
    FeedbackEvent,
    RejectedEvent,
    ShownEvent,
    parse_event,
)
from editloop.feedback.log import FeedbackLog
from editloop.feedback.store import Outcome
from editloop.settings import Settings

log = logging.getLogger(__name__)

MAX_BATCH = 5000  # events per group commit
MAX_QUEUED_COMPLETIONS = 10_000  # beyond this, completion events are dropped (and counted)
RECENT_COMPLETIONS = 10_000
TRIM_EVERY_S = 3600.0


@dataclass(frozen=True)
class Origin:
    """Who asked for a completion: later events that carry only its id inherit these."""

    project: str
    user: str


@dataclass
class _Item:
    events: list[FeedbackEvent]
    done: asyncio.Future | None  # None: nobody waits (completion events)


_STOP = _Item([], None)  # the writer's last item: it stops when it reaches it


class TabbyEvent(BaseModel):
    """tabby-agent 1.5's ``POST /v1/events`` body (``select_kind`` also arrives as a query parameter)."""

    model_config = ConfigDict(extra="allow")  # view_id, elapsed, raw_event_id, ...: kept in the id hash

    type: Literal["view", "select", "dismiss"]
    completion_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
    choice_index: int = Field(default=0, ge=0)
    view_id: str | None = None
    elapsed: int | None = None
    select_kind: Literal["line"] | None = None


def tabby_feedback(body: TabbyEvent, select_kind: str | None, origin: Origin | None) -> FeedbackEvent:
    """view → shown, select → accepted (``line``: partial), dismiss → rejected; a deterministic id.

    Tabby sends no event id, so it is a hash of everything it sent: a resent event is the same
    event, while two views of one completion differ by ``view_id``.
    """
    raw = body.model_dump(mode="json") | {"select_kind": body.select_kind or select_kind}
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:32]
    common: dict[str, Any] = {
        "event_id": f"tabby-{digest}",
        "completion_id": body.completion_id,
        "choice": body.choice_index,
        **({"project": origin.project, "user": origin.user} if origin else {}),
    }
    if body.type == "view":
        return ShownEvent(**common)
    if body.type == "select":
        partial: Literal["line"] | None = "line" if raw["select_kind"] == "line" else None
        return AcceptedEvent(**common, partial=partial)
    return RejectedEvent(**common, reason="dismissed")


def _loc(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Parsed:
    events: list[FeedbackEvent]
    errors: list[dict]  # {"field": "events[2].completion_id", "message": ...}


def parse_batch(body: object, default_project: str) -> Parsed:
    """One event, a list, or ``{"events": [...]}``; each event validated on its own."""
    items, prefix = (body["events"], "events") if isinstance(body, dict) and "events" in body else (body, "")
    single = isinstance(items, dict)
    if single:
        items = [items]
    if not isinstance(items, list):
        return Parsed(
            [], [{"field": prefix or "body", "message": "expected an event, a list or {events: [...]}"}]
        )
    events, errors = [], []
    for i, item in enumerate(items):
        where = () if single else ((prefix, i) if prefix else (i,))
        if isinstance(item, dict) and "project" not in item:
            item = {**item, "project": default_project}
        try:
            events.append(parse_event(item))
        except ValidationError as exc:
            for err in exc.errors():
                loc = [p for p in err["loc"] if p not in EVENT_TAGS]
                if err["type"].startswith("union_tag"):  # no or an unknown "type"
                    loc = ["type"]
                errors.append({"field": _loc((*where, *loc)) or "body", "message": err["msg"]})
    return Parsed(events, errors)


EVENT_TAGS = {"completion", "shown", "accepted", "rejected", "retained", "edited"}


class _Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[FeedbackEvent]


_ONE = TypeAdapter(FeedbackEvent)
_LIST = TypeAdapter(list[FeedbackEvent])
_BATCH = TypeAdapter(_Batch)


def parse_body(raw: bytes, default_project: str) -> Parsed:
    """The request body as events: validated straight from the bytes when all is well (most of the
    time, and 2-3x faster than via dicts), else item by item to name every bad field."""
    head = raw[:64].lstrip()
    try:
        if head.startswith(b"["):
            events = _LIST.validate_json(raw)
        elif head.startswith(b'{"events"'):
            events = _BATCH.validate_json(raw).events
        else:
            events = [_ONE.validate_json(raw)]
    except ValidationError:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise BadRequestError(f"body: not JSON ({exc})") from exc
        except RecursionError as exc:  # [[[[...]]]] thousands deep: no event is shaped like that
            raise BadRequestError("body: JSON nested too deeply") from exc
        return parse_batch(body, default_project)
    if default_project != "default":
        events = [
            e if "project" in e.model_fields_set else e.model_copy(update={"project": default_project})
            for e in events
        ]
    return Parsed(events, [])


def project_of(git_url: str | None) -> str | None:
    """A project id from a repository URL (credentials and scheme stripped): github.com_org_repo."""
    if not git_url:
        return None
    url = re.sub(r"^[a-z+]+://", "", git_url.strip()).split("@")[-1]
    url = re.sub(r"\.git$", "", url.rstrip("/"))
    project = re.sub(r"[^A-Za-z0-9_.\-]+", "_", url).strip("_")[:128]
    return project or None


class FeedbackService:
    def __init__(self, log: FeedbackLog, settings: Settings) -> None:
        self.log = log
        self.settings = settings
        self.dropped_completions = 0
        self.outcomes: dict[str, int] = {}
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._queued_completions = 0
        self._recent: OrderedDict[str, Origin] = OrderedDict()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._writer()), asyncio.create_task(self._retention())]

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put_nowait(_STOP)
        writer, retention = self._tasks
        retention.cancel()
        try:
            await asyncio.wait_for(writer, timeout_s)
        except TimeoutError:
            log.warning("feedback: %d queued items not written at shutdown", self._queue.qsize())

    async def submit(self, events: list[FeedbackEvent]) -> list[Outcome]:
        """Returns once every event is durable (Redis fsynced, or the spool) or was a duplicate."""
        if not events:
            return []
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(events, done))
        return await done

    def record_completion(
        self, request: CompletionRequest, result: CompletionResult, endpoint: str, latency_s: float
    ) -> None:
        """Queue the completion's event; never waits, drops (and counts) when far behind."""
        origin = Origin(
            request.project or self.settings.feedback_default_project, request.user or "anonymous"
        )
        self.remember(result.id, origin)
        if self._queued_completions >= MAX_QUEUED_COMPLETIONS:
            self.dropped_completions += 1
            return
        try:
            event = completion_event(
                request,
                result,
                source=endpoint,
                latency_ms=round(latency_s * 1000, 3),
                user=origin.user,
                project=origin.project,
            )
        except ValidationError as exc:  # e.g. a client's 200-character language name: the reply still goes
            log.warning("feedback: completion %s not recorded: %s", result.id, exc.errors()[0]["msg"])
            self.dropped_completions += 1
            return
        self._queued_completions += 1
        self._queue.put_nowait(_Item([event], None))

    def remember(self, completion_id: str, origin: Origin) -> None:
        self._recent[completion_id] = origin
        self._recent.move_to_end(completion_id)
        while len(self._recent) > RECENT_COMPLETIONS:
            self._recent.popitem(last=False)

    def origin_of(self, completion_id: str) -> Origin | None:
        return self._recent.get(completion_id)

    async def _writer(self) -> None:
        while True:
            first = await self._queue.get()
            if first is _STOP:
                return
            items, stop = self._drain([first])
            await self._write(items)
            if stop:
                return

    def _drain(self, items: list) -> tuple[list[_Item], bool]:
        count = sum(len(i.events) for i in items)
        while count < MAX_BATCH and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _STOP:
                return items, True
            items.append(item)
            count += len(item.events)
        return items, False

    async def _write(self, items: list[_Item]) -> None:
        events = [e for item in items for e in item.events]
        self._queued_completions -= sum(1 for item in items if item.done is None)
        try:
            outcomes = await asyncio.to_thread(self.log.ingest, events)
        except Exception as exc:  # the spool failed too (disk full?): nothing durable, say so
            log.error("feedback: cannot store %d events: %r", len(events), exc)
            for item in items:
                if item.done is not None and not item.done.done():
                    item.done.set_exception(FeedbackError(f"feedback not stored: {exc}"))
            return
        for outcome in outcomes:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        start = 0
        for item in items:
            end = start + len(item.events)
            if item.done is not None and not item.done.done():
                item.done.set_result(outcomes[start:end])
            start = end

    async def _retention(self) -> None:
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            cutoff = datetime.now(UTC) - timedelta(days=self.settings.feedback_retention_days)
            try:
                trimmed = await asyncio.to_thread(self.log.store.trim, cutoff)
                log.info("feedback retention: trimmed %s", trimmed)
            except Exception as exc:  # Redis down: the next round trims
                log.warning("feedback retention skipped: %r", exc)

    def status(self) -> dict:
        return self.log.status() | {
            "queued": self._queue.qsize(),
            "dropped_completions": self.dropped_completions,
            "outcomes": dict(self.outcomes),
        }


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    return {o.value: sum(1 for x in outcomes if x is o) for o in Outcome}
