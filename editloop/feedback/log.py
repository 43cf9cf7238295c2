"""The feedback log every editloop process opens: privacy, then Redis, the spool while Redis is down.

The server, the LSP, the trainer and the CLI all get theirs the same way::

    with open_feedback(settings) as feedback:
        feedback.record(events)                          # FeedbackSink: durable when it returns
        outcomes = feedback.ingest(events)               # the same, with one Outcome per event
        consumer = feedback.store.consumer("trainer", "worker-1")   # the trainer's side

With ``EDITLOOP_REDIS_URL`` unset it starts (or joins) the embedded ``redis-server`` of the home
directory; with it set, it uses that server (``rediss://user:password@host:port/db`` for TLS and
an ACL user). An event is acknowledged only once it is in Redis with the AOF fsynced, or in the
fsynced spool file, which a background thread replays, with the same event ids, when Redis answers.
"""

import logging
import threading
import time
from types import TracebackType

import redis

from editloop.errors import FeedbackError
from editloop.feedback.events import FeedbackEvent
from editloop.feedback.privacy import Privacy
from editloop.feedback.redis_server import EmbeddedRedis
from editloop.feedback.spool import Spool
from editloop.feedback.store import FeedbackStore, Outcome, redis_client
from editloop.settings import Settings

log = logging.getLogger(__name__)

UNAVAILABLE = (redis.RedisError, FeedbackError, OSError)


class FeedbackLog:
    """A :class:`FeedbackSink` that never loses an acknowledged event and never blocks long on Redis."""

    def __init__(
        self,
        store: FeedbackStore,
        spool: Spool,
        *,
        embedded: EmbeddedRedis | None = None,
        retry_s: float = 1.0,
        replay_s: float = 2.0,
    ) -> None:
        self.store = store
        self.privacy: Privacy = store.privacy
        self.spool = spool
        self.embedded = embedded
        self.retry_s = retry_s
        self.replay_s = replay_s
        self.last_error: str | None = None
        self.spooled = 0
        self.replayed = 0
        self._down_until = 0.0
        self._unsent_drops = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._replayer: threading.Thread | None = None

    def record(self, events: list[FeedbackEvent]) -> None:
        self.ingest(events)

    def ingest(self, events: list[FeedbackEvent]) -> list[Outcome]:
        """Privacy, then Redis or the spool; one outcome per event, in order. Durable on return."""
        private = self.privacy.apply(events)
        kept = [e for e in private if e is not None]
        with self._lock:
            self._unsent_drops += len(private) - len(kept)
        written = iter(self._write(kept))
        return [Outcome.DROPPED if e is None else next(written) for e in private]

    def _write(self, events: list[FeedbackEvent]) -> list[Outcome]:
        if not events:
            self._flush_drops()
            return []
        if time.monotonic() >= self._down_until:
            try:
                outcomes = self.store.write(events)
                self.last_error = None
                self._flush_drops()
                return outcomes
            except UNAVAILABLE as exc:
                self._down_until = time.monotonic() + self.retry_s
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("feedback: Redis unavailable (%s); spooling", self.last_error)
        self.spool.append(events)
        self.spooled += len(events)
        return [Outcome.SPOOLED] * len(events)

    def _flush_drops(self) -> None:
        with self._lock:
            drops, self._unsent_drops = self._unsent_drops, 0
        if not drops:
            return
        try:
            self.store.count_dropped("opt_out", drops)
        except UNAVAILABLE:
            with self._lock:
                self._unsent_drops += drops  # a counter, not an event: kept in memory until Redis is back

    def replay(self) -> int:
        """Send the spool to Redis now; returns how many events it held (duplicates included)."""
        sent = self.spool.replay(self.store.write)
        self.replayed += sent
        if sent:
            log.info("feedback: replayed %d spooled events", sent)
        return sent

    def start(self) -> "FeedbackLog":
        """Replay the spool in the background whenever Redis answers."""
        self._stop.clear()
        self._replayer = threading.Thread(target=self._replay_loop, name="editloop-spool", daemon=True)
        self._replayer.start()
        return self

    def _replay_loop(self) -> None:
        while not self._stop.wait(self.replay_s):
            if not self.spool.pending() or not self.store.ping():
                continue
            try:
                self.replay()
            except UNAVAILABLE as exc:
                log.warning("feedback: spool replay stopped (%s); will retry", exc)

    def status(self) -> dict:
        # A write just failed: say so without another ping (to a dead host that can take seconds).
        connected = time.monotonic() >= self._down_until and self.store.ping()
        return {
            "status": "ok" if connected else "spooling",
            "redis": self.embedded.status() if self.embedded else {"mode": "external"},
            "connected": connected,
            "durability": self.store.durability,
            "spool_pending": self.spool.pending(),
            "spooled": self.spooled,
            "replayed": self.replayed,
            "last_error": self.last_error,
        }

    def close(self) -> None:
        self._stop.set()
        if self._replayer is not None:
            self._replayer.join(timeout=10)
            self._replayer = None
        if self.spool.pending() and self.store.ping():
            try:
                self.replay()
            except UNAVAILABLE as exc:
                log.warning("feedback: spool kept for next start (%s)", exc)
        self.store.close()
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> "FeedbackLog":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_feedback(settings: Settings, *, replay: bool = True) -> FeedbackLog:
    """The feedback log of ``settings``: external Redis if ``redis_url`` is set, else the embedded one.

    Never raises for an unreachable Redis: events then go to the spool and ``status()`` says why.
    """
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.redis_dir, settings.redis_server_bin)
        url = embedded.url
        try:
            embedded.start()
        except FeedbackError as exc:
            log.error("feedback: %s; events will be spooled", exc.message)
    ca_file = str(settings.redis_ca_file) if settings.redis_ca_file else None
    store = FeedbackStore(
        redis_client(url, ca_file),
        Privacy.from_settings(settings),
        dedupe_ttl_s=settings.feedback_dedupe_ttl_s,
        max_deliveries=settings.feedback_max_deliveries,
    )
    feedback = FeedbackLog(store, Spool(settings.feedback_dir / "spool.jsonl"), embedded=embedded)
    if embedded is not None and embedded.last_error:
        feedback.last_error = embedded.last_error
    return feedback.start() if replay else feedback
