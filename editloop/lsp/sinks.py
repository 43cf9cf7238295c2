"""Getting feedback events out of the editor's path: an HTTP sink and a background pump.

The LSP never waits on the feedback store while the user types: handlers hand events to an
:class:`EventPump`, whose thread delivers them in batches to a :class:`FeedbackSink` — the
feedback log in-process, or :class:`HttpSink` (the server's ``POST /feedback``) in ``--server``
mode, where a batch the server does not take after a few tries waits in a local spool file until
one gets through. Event ids are deterministic, so a retried batch stores nothing twice.

>>> pump = EventPump(lambda: HttpSink("http://127.0.0.1:8765", token="t"))  # doctest: +SKIP
>>> pump.put([ShownEvent(event_id="c1.0.shown", completion_id="c1")])  # doctest: +SKIP
>>> pump.close()  # doctest: +SKIP
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import httpx

from editloop.clients import bearer
from editloop.errors import BackendError
from editloop.feedback.events import FeedbackEvent, FeedbackSink
from editloop.feedback.spool import Spool

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (0.2, 1.0, 5.0)
BATCH = 100


class HttpSink:
    """``POST {url}/feedback`` with a batch of events; returns once the server stored them."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 10.0) -> None:
        headers = bearer(token)
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def record(self, events: list[FeedbackEvent]) -> None:
        body = {"events": [event.model_dump(mode="json") for event in events]}
        try:
            reply = self.http.post("/feedback", json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"{self.url}/feedback: {exc!r}") from exc
        if reply.status_code >= 300:
            raise BackendError(f"{self.url}/feedback answered {reply.status_code}: {reply.text[:200]}")

    def close(self) -> None:
        self.http.close()


class EventPump:
    """A thread that delivers queued events to a sink, retrying a failed batch a few times.

    The sink is opened by ``open_sink`` on the pump's own thread (starting the embedded Redis
    may take a moment), so nothing on the editor's path waits for it.
    """

    def __init__(
        self,
        open_sink: Callable[[], FeedbackSink],
        spool: Spool | None = None,
        max_queued: int = 10_000,
        retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S,
    ) -> None:
        self.open_sink = open_sink
        self.spool = spool
        self.retry_delays_s = retry_delays_s
        self.sink: FeedbackSink | None = None
        self.sent = 0
        self.spooled = 0
        self.dropped = 0
        self._queue: deque[FeedbackEvent] = deque()
        self._max_queued = max_queued
        self._busy = 0  # events taken from the queue and not yet delivered or dropped
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="editloop-lsp-feedback", daemon=True)
        self._thread.start()

    def put(self, events: list[FeedbackEvent]) -> None:
        if not events:
            return
        with self._cond:
            room = self._max_queued - len(self._queue)
            if room < len(events):
                self.dropped += len(events) - max(room, 0)
                log.warning("feedback queue full: dropping %d events", len(events) - max(room, 0))
            self._queue.extend(events[: max(room, 0)])
            self._cond.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is delivered (or given up on); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        close = getattr(self.sink, "close", None)
        if close is not None:
            close()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                self._busy = len(batch)
            self._deliver(batch)
            with self._cond:
                self._busy = 0
                self._cond.notify_all()

    def _deliver(self, batch: list[FeedbackEvent]) -> None:
        for attempt, delay in enumerate((0.0, *self.retry_delays_s)):
            time.sleep(delay)
            try:
                if self.sink is None:
                    self.sink = self.open_sink()
                self.sink.record(batch)
                self.sent += len(batch)
                self._replay(self.sink)
                return
            except Exception as exc:  # any sink failure: retry, then give up on this batch only
                log.warning("feedback delivery failed (attempt %d): %s", attempt + 1, exc)
        if self.spool is not None:
            self.spool.append(batch)  # sent with the next batch that gets through
            self.spooled += len(batch)
            return
        self.dropped += len(batch)
        log.error("dropped %d feedback events after %d attempts", len(batch), len(self.retry_delays_s) + 1)

    def _replay(self, sink: FeedbackSink) -> None:
        if self.spool is not None and self.spool.pending():
            self.sent += self.spool.replay(sink.record)
