"""The Redis feedback store against a real redis-server: idempotent, survives SIGKILL, at least once."""

import json
import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from editloop.errors import FeedbackError
from editloop.feedback.events import AcceptedEvent, ShownEvent
from editloop.feedback.log import FeedbackLog, open_feedback
from editloop.feedback.redis_server import RedisServer
from editloop.feedback.spool import Spool
from editloop.feedback.store import FeedbackStore, Outcome, redis_client
from editloop.server.background import free_port
from editloop.settings import load_settings
from tests.redis_fixtures import running_redis

N_EVENTS = 1000
IDLE_MS = 1500  # long enough that a busy 2-core machine does not make e0, e1 idle too early


def shown(i: int, project: str = "default", prefix: str = "e") -> ShownEvent:
    return ShownEvent(event_id=f"{prefix}{i}", completion_id=f"c{i}", project=project)


def stored_ids(store: FeedbackStore, project: str = "default") -> list[str]:
    return [s.event.event_id for s in store.events(project)]


def test_a_retried_event_is_stored_once(redis_url) -> None:
    store = FeedbackStore.from_url(redis_url)
    first = store.append([shown(0), shown(1), shown(1)])  # a duplicate inside one batch, too
    again = store.append([shown(0), shown(2)])
    assert first == [Outcome.STORED, Outcome.STORED, Outcome.DUPLICATE]
    assert again == [Outcome.DUPLICATE, Outcome.STORED]
    assert stored_ids(store) == ["e0", "e1", "e2"]
    assert store.stats()["counts"] == {"shown": 3}


def test_one_stream_per_project(redis_url) -> None:
    store = FeedbackStore.from_url(redis_url)
    store.record([shown(0, "alpha"), shown(1, "beta"), shown(2, "alpha")])
    assert store.projects() == ["alpha", "beta"]
    assert stored_ids(store, "alpha") == ["e0", "e2"]
    assert stored_ids(store, "beta") == ["e1"]
    # the same event id in another project is another event
    assert store.append([shown(0, "beta")]) == [Outcome.STORED]


def test_dedupe_key_expires_with_its_ttl(redis_url) -> None:
    store = FeedbackStore.from_url(redis_url, dedupe_ttl_s=60)
    store.record([shown(0)])
    ttl = store.client.ttl(store.keys.seen("default", "e0"))
    assert 0 < ttl <= 60


def test_refuses_a_redis_that_does_not_fsync_every_write(tmp_path) -> None:
    with running_redis(tmp_path / "r", appendfsync="everysec") as proc:
        store = FeedbackStore.from_url(proc.url)
        with pytest.raises(FeedbackError, match="appendfsync always"):
            store.record([shown(0)])
        assert store.client.xlen(store.keys.stream("default")) == 0


def _write_through_kills(write, proc, acked: list[str], n: int = N_EVENTS) -> int:
    """Write n events one by one, retrying each (same id) until acknowledged, while a thread
    SIGKILLs redis-server twice mid-stream and restarts it. Returns how many writes failed."""
    failures = 0

    def killer() -> None:
        for threshold in (n // 4, n // 2):
            while len(acked) < threshold:
                time.sleep(0.001)
            proc.kill()
            time.sleep(0.3)
            proc.start()

    thread = threading.Thread(target=killer)
    thread.start()
    for i in range(n):
        while True:
            try:
                write([shown(i)])
                acked.append(f"e{i}")
                break
            except (redis.RedisError, FeedbackError, OSError):
                failures += 1
                time.sleep(0.02)
    thread.join()
    return failures


def test_sigkill_during_1000_acknowledged_events_loses_and_duplicates_none(redis_proc) -> None:
    store = FeedbackStore.from_url(redis_proc.url)
    acked: list[str] = []
    failures = _write_through_kills(store.record, redis_proc, acked)
    redis_proc.kill()  # and once more at the end: what is left is what the AOF kept
    redis_proc.start()
    ids = stored_ids(FeedbackStore.from_url(redis_proc.url))
    assert failures > 0, "the kills never hit a write: the test proved nothing"
    assert len(acked) == N_EVENTS
    assert sorted(ids) == sorted(set(ids)), "duplicated"
    assert set(ids) == set(acked), f"lost {sorted(set(acked) - set(ids))[:5]}"


def test_sigkill_with_the_spool_acknowledges_every_event_and_replays_them(redis_proc, tmp_path) -> None:
    store = FeedbackStore(redis_client(redis_proc.url))
    log = FeedbackLog(store, Spool(tmp_path / "spool.jsonl"), retry_s=0.05)
    acked: list[str] = []
    failures = _write_through_kills(log.record, redis_proc, acked)
    assert failures == 0  # Redis down: the spool took them, durably
    assert log.spooled > 0, "no event was spooled: Redis was never down during a write"
    assert log.replay() == log.spooled
    redis_proc.kill()
    redis_proc.start()
    ids = stored_ids(FeedbackStore.from_url(redis_proc.url))
    assert sorted(ids) == sorted(set(ids))
    assert set(ids) == set(acked)
    assert not (tmp_path / "spool.jsonl").exists() and log.spool.pending() == 0


def test_consumer_rereads_its_pending_then_claims_idle_then_new(redis_url) -> None:
    store = FeedbackStore.from_url(redis_url)
    store.record([shown(i) for i in range(6)])
    dying = store.consumer("trainer", "dying", min_idle_ms=IDLE_MS)
    taken = dying.read(count=2)
    assert [d.event.event_id for d in taken] == ["e0", "e1"]  # never acked: the consumer died

    worker = store.consumer("trainer", "worker", min_idle_ms=IDLE_MS)
    first = worker.read(count=2)
    assert [d.event.event_id for d in first] == ["e2", "e3"]  # e0, e1 not idle long enough yet
    again = worker.read(count=2)  # not acked: its own pending comes back first
    assert [(d.event.event_id, d.deliveries) for d in again] == [("e2", 2), ("e3", 2)]
    assert worker.ack(again) == 2
    time.sleep(IDLE_MS / 1000 + 0.1)
    claimed = worker.read(count=3)
    assert [(d.event.event_id, d.deliveries) for d in claimed] == [("e0", 2), ("e1", 2), ("e4", 1)]
    worker.ack(claimed)
    rest = worker.read(count=10)
    assert [d.event.event_id for d in rest] == ["e5"]
    worker.ack(rest)
    assert worker.read(count=10) == []
    assert store.stats()["pending"] == 0


def test_a_poison_event_reaches_the_dead_letter_stream(redis_url) -> None:
    store = FeedbackStore.from_url(redis_url, max_deliveries=5)
    store.record([shown(0), shown(1)])
    # An entry no schema can read (written by something else into the stream).
    store.client.xadd(store.keys.stream("default"), {"t": "shown", "e": "{not json"})
    consumer = store.consumer("trainer", "w", min_idle_ms=100)
    deliveries = []
    for _ in range(7):  # a consumer that fails on e0 every time: it acks the others only
        batch = consumer.read(count=10)
        deliveries += [d.event.event_id for d in batch]
        consumer.ack([d for d in batch if d.event.event_id != "e0"])
    assert deliveries.count("e0") == 5
    assert deliveries.count("e1") == 1
    unreadable, poison = store.dead_letters("default")
    assert unreadable["e"] == "{not json"  # dead-lettered at its first delivery: no retry can help
    assert json.loads(poison["e"])["event_id"] == "e0"
    assert poison["deliveries"] == "6" and poison["group"] == "trainer"
    assert store.stats()["dead_lettered"] == 2
    assert store.stats()["pending"] == 0


def test_trimming_never_drops_a_pending_or_unread_entry(redis_url) -> None:
    store = FeedbackStore.from_url(redis_url)
    store.record([shown(i) for i in range(10)])
    trainer = store.consumer("trainer", "w")
    batch = trainer.read(count=6)
    trainer.ack(batch[:2] + batch[3:])  # e2 stays pending; e6..e9 are unread by this group
    slow = store.consumer("slow-group", "w")
    slow_batch = slow.read(count=10)
    slow.ack(slow_batch)  # another group that has read everything

    trimmed = store.trim(datetime.now(UTC) + timedelta(days=1))  # everything is "old"
    left = stored_ids(store)
    assert trimmed == {"default": 2}
    assert left == [f"e{i}" for i in range(2, 10)]
    assert [d.event.event_id for d in trainer.read(count=10)] == ["e2"] + [f"e{i}" for i in range(6, 10)]


def test_trim_keeps_recent_events(redis_url) -> None:
    store = FeedbackStore.from_url(redis_url)
    store.record([shown(i) for i in range(3)])
    assert store.trim(datetime.now(UTC) - timedelta(days=1)) == {"default": 0}
    assert len(stored_ids(store)) == 3


def test_events_since_and_stats(redis_url) -> None:
    store = FeedbackStore.from_url(redis_url)
    store.record([shown(0)])
    time.sleep(0.01)
    middle = datetime.now(UTC)
    time.sleep(0.01)
    store.record([AcceptedEvent(event_id="a1", completion_id="c0"), shown(1, "other")])
    assert [s.event.event_id for s in store.events("default", since=middle)] == ["a1"]
    stats = store.stats()
    assert stats["counts"] == {"shown": 2, "accepted": 1}
    assert stats["projects"]["default"]["counts"] == {"shown": 1, "accepted": 1}


def _tls_files(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made by openssl."""
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=editloop-test-ca",
        "-keyout",
        files["ca-key"],
        "-out",
        files["ca"],
    )
    csr = directory / "server.csr"
    run(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", files["key"], "-out", csr
    )
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        files["ca"],
        "-CAkey",
        files["ca-key"],
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        extensions,
        "-out",
        files["cert"],
    )
    return files


# No default user; editloop's: its keys only, no dangerous commands except reading the AOF config.
ACL = (
    "user default off\n"
    "user editloop on >s3cret ~editloop:* resetchannels +@all -@dangerous +config|get +info\n"
)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
def test_an_external_redis_over_tls_with_an_acl_user(tmp_path: Path) -> None:
    tls = _tls_files(tmp_path)
    port = free_port()
    config = {
        "port": "0",
        "tls-port": str(port),
        "tls-cert-file": str(tls["cert"]),
        "tls-key-file": str(tls["key"]),
        "tls-ca-cert-file": str(tls["ca"]),
        "tls-auth-clients": "no",
    }
    conf = RedisServer(tmp_path / "redis", port=port, config=config).config_text() + ACL
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "redis.conf").write_text(conf)
    process = subprocess.Popen(
        ["redis-server", str(tmp_path / "redis" / "redis.conf")], stdout=subprocess.DEVNULL
    )
    url = f"rediss://editloop:s3cret@127.0.0.1:{port}/0"
    try:
        settings = load_settings(home=tmp_path / "home", redis_url=url, redis_ca_file=tls["ca"])
        deadline = time.monotonic() + 20
        with open_feedback(settings) as feedback:
            while not feedback.store.ping() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert feedback.ingest([shown(0), shown(0)]) == [Outcome.STORED, Outcome.DUPLICATE]
            assert feedback.store.durability == "fsync_always"
            assert stored_ids(feedback.store) == ["e0"]
            assert feedback.status()["redis"] == {"mode": "external"}
        wrong = redis_client(url.replace("s3cret", "nope"), str(tls["ca"]))
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
        plain = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        with pytest.raises(redis.ConnectionError):
            plain.ping()  # no TLS: refused
    finally:
        process.terminate()
        process.wait(10)
