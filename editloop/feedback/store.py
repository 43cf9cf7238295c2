"""Feedback events in Redis streams: one stream per project, idempotent by event_id, durable before ack.

Writing (what every sink ends in)::

    store = FeedbackStore.from_url("redis://127.0.0.1:6379/0")
    store.record([ShownEvent(event_id="e1", completion_id="c1")])   # returns once fsynced
    store.record([ShownEvent(event_id="e1", completion_id="c1")])   # a retry: stored once

Reading, at least once, for the trainer::

    consumer = store.consumer("trainer", "worker-1")
    while deliveries := consumer.read(count=100, block_ms=1000):
        save_durably(d.event for d in deliveries)
        consumer.ack(deliveries)          # only now; unacked ones come back on the next read

Each write is one Lua script per project and batch: check the event's dedupe key, XADD, set the
key (with a TTL) and bump the per-type counter, atomically, so a client retry or redis-py's own
retry after a lost reply never stores an event twice. Redis 7.0 has no WAITAOF, so durability
comes from ``appendfsync always`` (checked at first use; on Redis >= 7.2 ``WAITAOF`` is used).
"""

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import islice

import redis

from editloop.errors import FeedbackError
from editloop.feedback.events import FeedbackEvent, event_from_json
from editloop.feedback.privacy import Privacy

log = logging.getLogger(__name__)

PREFIX = "editloop:feedback"
DEDUPE_TTL_S = 7 * 86400
MAX_DELIVERIES = 5
CHUNK = 500  # events per script call: bounds how long one script holds Redis
WAITAOF_TIMEOUT_MS = 5000
MIN_IDLE_MS = 100

# KEYS: stream, counts, projects, seen_1..seen_n   ARGV: ttl, project, type_1, json_1, ...
# Returns per event 1 (stored) or 0 (its event_id was seen before: a retry).
WRITE_SCRIPT = """
local out, counts, added = {}, {}, 0
for i = 4, #KEYS do
  local j = 2 * (i - 3) + 1
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 't', ARGV[j], 'e', ARGV[j + 1])
    counts[ARGV[j]] = (counts[ARGV[j]] or 0) + 1
    out[#out + 1] = 1
    added = added + 1
  else
    out[#out + 1] = 0
  end
end
for kind, n in pairs(counts) do redis.call('HINCRBY', KEYS[2], kind, n) end
if added > 0 then redis.call('SADD', KEYS[3], ARGV[2]) end
return out
"""

# KEYS: stream   ARGV: cutoff id. Trims below the cutoff but never below the oldest entry a
# consumer group still needs: its oldest pending entry, or the first one it has not read yet.
TRIM_SCRIPT = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local floor = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, floor} end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for k = 1, #group, 2 do info[group[k]] = group[k + 1] end
  local needed
  local pending = redis.call('XPENDING', KEYS[1], info['name'])
  if pending[1] > 0 then
    needed = pending[2]
  else
    local ms, seq = parse(info['last-delivered-id'])
    needed = string.format('%d-%d', ms, seq + 1)
  end
  if less(needed, floor) then floor = needed end
end
return {redis.call('XTRIM', KEYS[1], 'MINID', floor), floor}
"""


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    DROPPED = "dropped"  # privacy: the user opted out
    SPOOLED = "spooled"  # Redis was unreachable: in the local spool, replayed later


@dataclass(frozen=True)
class Keys:
    """Every key the store uses; namespaces never collide (event and project ids contain no '/')."""

    prefix: str = PREFIX

    def stream(self, project: str) -> str:
        return f"{self.prefix}:stream:{project}"

    def dead(self, project: str) -> str:
        return f"{self.prefix}:dead:{project}"

    def seen(self, project: str, event_id: str) -> str:
        return f"{self.prefix}:seen:{project}/{event_id}"

    def counts(self, project: str) -> str:
        return f"{self.prefix}:counts:{project}"

    @property
    def projects(self) -> str:
        return f"{self.prefix}:projects"

    @property
    def dropped(self) -> str:
        return f"{self.prefix}:dropped"


@dataclass(frozen=True)
class StoredEvent:
    project: str
    entry_id: str
    event: FeedbackEvent


@dataclass(frozen=True)
class Delivery(StoredEvent):
    """An event handed to a consumer; ``deliveries`` counts this one (1 the first time)."""

    deliveries: int = 1


def redis_client(url: str, ca_file: str | None = None) -> redis.Redis:
    """A client for ``redis://``, ``rediss://`` (TLS; user and password in the URL) or ``unix://``."""
    options: dict = {"decode_responses": True, "socket_timeout": 10, "socket_connect_timeout": 5}
    if ca_file and url.startswith("rediss://"):
        options["ssl_ca_certs"] = ca_file
    return redis.Redis.from_url(url, **options)


def text(value: bytes | str | None) -> str:
    """A reply of the client (it decodes responses; the typing of redis-py allows bytes and None)."""
    return value.decode() if isinstance(value, bytes) else "" if value is None else value


def stream_entries(reply: object) -> list[tuple[str, dict[str, str] | None]]:
    """XRANGE/XAUTOCLAIM/XREADGROUP entries as (id, fields); fields are None for an entry deleted
    since it was delivered (a claim or a pending read still names it)."""
    if not isinstance(reply, list):
        return []
    return [
        (text(i), {text(k): text(v) for k, v in f.items()} if f else None) for i, f in reply if i is not None
    ]


def group_entries(reply: object) -> list[tuple[str, str, dict[str, str] | None]]:
    """XREADGROUP's reply as (stream, id, fields)."""
    if not isinstance(reply, list):
        return []
    return [(text(stream), i, f) for stream, entries in reply for i, f in stream_entries(entries)]


def id_at(when: datetime) -> str:
    """The stream id of the first entry at or after ``when`` (ids start with epoch milliseconds)."""
    return f"{int(when.timestamp() * 1000)}-0"


def time_of(entry_id: str) -> datetime:
    return datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC)


def _chunks(items: list, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class FeedbackStore:
    """The Redis side of the feedback log. ``record`` redacts first; ``write`` takes redacted events."""

    def __init__(
        self,
        client: redis.Redis,
        privacy: Privacy | None = None,
        *,
        prefix: str = PREFIX,
        dedupe_ttl_s: int = DEDUPE_TTL_S,
        max_deliveries: int = MAX_DELIVERIES,
        require_fsync: bool = True,
    ) -> None:
        self.client = client
        self.privacy = privacy or Privacy()
        self.keys = Keys(prefix)
        self.dedupe_ttl_s = dedupe_ttl_s
        self.max_deliveries = max_deliveries
        self.require_fsync = require_fsync
        self._durability: str | None = None
        self._write = client.register_script(WRITE_SCRIPT)
        self._trim = client.register_script(TRIM_SCRIPT)

    @classmethod
    def from_url(cls, url: str, privacy: Privacy | None = None, **options) -> "FeedbackStore":
        return cls(redis_client(url), privacy, **options)

    # -- writing ---------------------------------------------------------------------------

    def record(self, events: list[FeedbackEvent]) -> None:
        """The :class:`FeedbackSink` call: returns once every kept event is durably stored."""
        self.append(events)

    def append(self, events: list[FeedbackEvent]) -> list[Outcome]:
        """Privacy, then write; one outcome per event, in order."""
        private = self.privacy.apply(events)
        kept = [e for e in private if e is not None]
        written = iter(self.write(kept)) if kept else iter(())
        dropped = len(private) - len(kept)
        if dropped:
            self.count_dropped("opt_out", dropped)
        return [Outcome.DROPPED if e is None else next(written) for e in private]

    def write(self, events: list[FeedbackEvent]) -> list[Outcome]:
        """Store events that already passed :class:`Privacy` (the spool's replay, the log)."""
        if not events:
            return []
        self.check_durability()
        by_project: dict[str, list[int]] = {}
        for i, event in enumerate(events):
            by_project.setdefault(event.project, []).append(i)
        pipe = self.client.pipeline(transaction=False)
        order: list[list[int]] = []
        for project, indices in by_project.items():
            for chunk in _chunks(indices, CHUNK):
                self._queue_write(pipe, project, [events[i] for i in chunk])
                order.append(chunk)
        if self._durability == "waitaof":
            pipe.execute_command("WAITAOF", 1, 0, WAITAOF_TIMEOUT_MS)
        replies = pipe.execute()
        self._check_waitaof(replies)
        outcomes: list[Outcome] = [Outcome.STORED] * len(events)
        for chunk, flags in zip(order, replies, strict=False):
            for i, stored in zip(chunk, flags, strict=True):
                outcomes[i] = Outcome.STORED if stored else Outcome.DUPLICATE
        return outcomes

    def _queue_write(self, pipe, project: str, events: list[FeedbackEvent]) -> None:
        keys = [self.keys.stream(project), self.keys.counts(project), self.keys.projects]
        keys += [self.keys.seen(project, e.event_id) for e in events]
        args: list = [self.dedupe_ttl_s, project]
        for event in events:
            args += [event.type, event.model_dump_json(exclude_none=True)]
        self._write(keys=keys, args=args, client=pipe)

    def _check_waitaof(self, replies: list) -> None:
        if self._durability == "waitaof":
            local, _ = replies[-1]
            if local < 1:
                raise FeedbackError(f"Redis did not fsync the AOF within {WAITAOF_TIMEOUT_MS} ms")

    def count_dropped(self, reason: str, n: int) -> None:
        self.client.hincrby(self.keys.dropped, reason, n)

    @property
    def durability(self) -> str | None:
        """How writes are made durable, once the first write checked: fsync_always, waitaof, none."""
        return self._durability

    def check_durability(self) -> str:
        """How acknowledged writes are made durable here; raises if they would not be."""
        if self._durability is None:
            self._durability = _durability(self.client, self.require_fsync)
        return self._durability

    # -- reading ---------------------------------------------------------------------------

    def projects(self) -> list[str]:
        return sorted(text(p) for p in self.client.smembers(self.keys.projects))

    def events(self, project: str, since: datetime | None = None, page: int = 1000) -> Iterator[StoredEvent]:
        """Every stored event of ``project`` from ``since`` on, oldest first."""
        start = id_at(since) if since else "-"
        stream = self.keys.stream(project)
        while entries := stream_entries(self.client.xrange(stream, start, "+", count=page)):
            for entry_id, fields in entries:
                if fields:
                    yield StoredEvent(project, entry_id, event_from_json(fields["e"]))
            start = f"({entries[-1][0]}"

    def dead_letters(self, project: str) -> list[dict]:
        return [
            {"id": i, **(f or {})} for i, f in stream_entries(self.client.xrange(self.keys.dead(project)))
        ]

    def stats(self) -> dict:
        """Counts by type, stream lengths, consumer groups with their pending, dead letters, drops."""
        projects = {p: self._project_stats(p) for p in self.projects()}
        totals: dict[str, int] = {}
        for info in projects.values():
            for kind, n in info["counts"].items():
                totals[kind] = totals.get(kind, 0) + n
        dropped = {k: int(v) for k, v in self.client.hgetall(self.keys.dropped).items()}
        return {
            "projects": projects,
            "counts": totals,
            "pending": sum(g["pending"] for info in projects.values() for g in info["groups"]),
            "dead_lettered": sum(info["dead_lettered"] for info in projects.values()),
            "dropped": dropped,
        }

    def _project_stats(self, project: str) -> dict:
        stream = self.keys.stream(project)
        groups = self.client.xinfo_groups(stream) if self.client.exists(stream) else []
        return {
            "length": self.client.xlen(stream),
            "counts": {k: int(v) for k, v in self.client.hgetall(self.keys.counts(project)).items()},
            "groups": [
                {"name": g["name"], "pending": g["pending"], "lag": g.get("lag"), "consumers": g["consumers"]}
                for g in groups
            ],
            "dead_lettered": self.client.xlen(self.keys.dead(project)),
        }

    # -- retention -------------------------------------------------------------------------

    def trim(self, older_than: datetime, projects: Iterable[str] | None = None) -> dict[str, int]:
        """Drop events older than ``older_than``, never one a consumer group has not acked (MINID)."""
        cutoff = id_at(older_than)
        trimmed = {}
        for project in projects or self.projects():
            removed, _floor = self._trim(keys=[self.keys.stream(project)], args=[cutoff])
            trimmed[project] = int(removed)
        return trimmed

    # -- consuming -------------------------------------------------------------------------

    def consumer(
        self, group: str, name: str, *, min_idle_ms: int = 60_000, projects: Iterable[str] | None = None
    ) -> "FeedbackConsumer":
        return FeedbackConsumer(self, group, name, min_idle_ms=min_idle_ms, projects=projects)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def close(self) -> None:
        self.client.close()


def _durability(client: redis.Redis, require_fsync: bool) -> str:
    """``fsync_always`` (every write fsynced before its reply), ``waitaof`` (Redis >= 7.2), or refuse."""
    try:
        version = tuple(int(x) for x in client.info("server")["redis_version"].split(".")[:2])
    except redis.ResponseError:  # INFO denied by ACL
        version = (0, 0)
    try:
        config = client.config_get("append*")
    except redis.ResponseError:
        config = None
    if config is not None and config.get("appendonly") == "yes" and config.get("appendfsync") == "always":
        return "fsync_always"
    if version >= (7, 2):
        return "waitaof"  # WAITAOF fails loudly if appendonly is off
    if not require_fsync:
        log.warning("feedback: Redis does not fsync every write; a crash may lose acknowledged events")
        return "none"
    found = "unreadable (CONFIG denied)" if config is None else json.dumps(config)
    raise FeedbackError(
        f"Redis {'.'.join(map(str, version))} does not fsync every write (config {found}): set "
        "`appendonly yes` and `appendfsync always` on it, or use Redis >= 7.2 (WAITAOF)"
    )


class FeedbackConsumer:
    """At-least-once reading through a consumer group, across every project's stream.

    ``read`` returns, in order: this consumer's own pending entries (read before but not acked),
    entries idle longer than ``min_idle_ms`` in other consumers' pending lists (XAUTOCLAIM: a
    consumer that died), then new entries. Everything ``read`` returns must be acked or it comes
    back; an entry delivered ``max_deliveries`` times without an ack goes to the project's
    dead-letter stream instead of a further delivery.
    """

    def __init__(
        self,
        store: FeedbackStore,
        group: str,
        name: str,
        *,
        min_idle_ms: int = 60_000,
        projects: Iterable[str] | None = None,
    ) -> None:
        if min_idle_ms < MIN_IDLE_MS:
            # Own pending entries are re-read (their idle time reset) just before XAUTOCLAIM runs;
            # with a tiny idle bar it would claim them again and count a second delivery.
            raise ValueError(f"min_idle_ms must be at least {MIN_IDLE_MS}")
        self.store = store
        self.client = store.client
        self.group = group
        self.name = name
        self.min_idle_ms = min_idle_ms
        self.only = set(projects) if projects is not None else None
        self._grouped: set[str] = set()

    def _streams(self) -> dict[str, str]:
        projects = [p for p in self.store.projects() if self.only is None or p in self.only]
        streams = {self.store.keys.stream(p): p for p in projects}
        for stream in streams.keys() - self._grouped:
            try:
                # From the start of the stream: a new trainer sees all the history kept.
                self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._grouped.add(stream)
        return streams

    def read(self, count: int = 100, block_ms: int | None = None) -> list[Delivery]:
        """Up to ``count`` entries per project (own pending, then idle claimed, then new)."""
        streams = self._streams()
        if not streams:
            return []
        entries: list[tuple[str, str, dict | None]] = []
        for stream in streams:
            entries += self._own_pending(stream, count - len(entries))
        for stream in streams:
            entries += self._claim_idle(stream, count - len(entries))
        if len(entries) < count:
            entries += self._new(streams, count - len(entries), None if entries else block_ms)
        unique = {(stream, entry_id): (stream, entry_id, fields) for stream, entry_id, fields in entries}
        return self._screen(list(unique.values()), streams)

    def _own_pending(self, stream: str, count: int) -> list[tuple[str, str, dict | None]]:
        if count <= 0:
            return []
        return group_entries(self.client.xreadgroup(self.group, self.name, {stream: "0"}, count=count))

    def _claim_idle(self, stream: str, count: int) -> list[tuple[str, str, dict | None]]:
        if count <= 0:
            return []
        reply = self.client.xautoclaim(stream, self.group, self.name, self.min_idle_ms, "0-0", count=count)
        return [(stream, i, f) for i, f in stream_entries(reply[1])]

    def _new(self, streams: dict[str, str], count: int, block_ms: int | None):
        return group_entries(
            self.client.xreadgroup(
                self.group, self.name, dict.fromkeys(streams, ">"), count=count, block=block_ms
            )
        )

    def _screen(self, entries, streams: dict[str, str]) -> list[Delivery]:
        """Attach delivery counts; dead-letter entries past the limit and ack ones trimmed away."""
        pipe = self.client.pipeline(transaction=False)
        for stream, entry_id, _ in entries:
            pipe.xpending_range(stream, self.group, entry_id, entry_id, 1, self.name)
        counts = [rows[0]["times_delivered"] if rows else 1 for rows in pipe.execute()]
        deliveries = []
        for (stream, entry_id, fields), times in zip(entries, counts, strict=True):
            project = streams[stream]
            if not fields:  # deleted (trimmed or XDEL'd) while pending: nothing left to deliver
                self.client.xack(stream, self.group, entry_id)
            elif times > self.store.max_deliveries:
                self._dead_letter(stream, project, entry_id, fields, times)
            else:
                event = self._parse(stream, project, entry_id, fields, times)
                if event is not None:
                    deliveries.append(Delivery(project, entry_id, event, times))
        return deliveries

    def _parse(self, stream, project, entry_id, fields, times) -> FeedbackEvent | None:
        try:
            return event_from_json(fields["e"])
        except (KeyError, ValueError) as exc:  # an entry no version of the schema can read
            log.warning("feedback entry %s in %s unreadable (%s): dead-lettered", entry_id, stream, exc)
            self._dead_letter(stream, project, entry_id, fields, times)
            return None

    def _dead_letter(self, stream: str, project: str, entry_id: str, fields: dict, times: int) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(
            self.store.keys.dead(project),
            {**fields, "source_id": entry_id, "group": self.group, "deliveries": times},
        )
        pipe.xack(stream, self.group, entry_id)
        pipe.execute()

    def ack(self, deliveries: Iterable[Delivery]) -> int:
        """Acknowledge entries the caller has stored durably; returns how many were pending."""
        by_stream: dict[str, list[str]] = {}
        for d in deliveries:
            by_stream.setdefault(self.store.keys.stream(d.project), []).append(d.entry_id)
        pipe = self.client.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.group, *ids)
        return sum(pipe.execute()) if by_stream else 0
