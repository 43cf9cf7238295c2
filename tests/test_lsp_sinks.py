"""Events leave the LSP through a pump: into a real Redis store, or spooled while a server is away."""

import pytest

from editloop.errors import BackendError
from editloop.feedback.events import AcceptedEvent, ShownEvent
from editloop.feedback.spool import Spool
from editloop.feedback.store import FeedbackStore
from editloop.lsp.sinks import EventPump, HttpSink
from editloop.server.background import free_port


def events(n: int, start: int = 0) -> list:
    return [
        ShownEvent(event_id=f"c{i}.0.shown", completion_id=f"c{i}", project="sinks")
        for i in range(start, start + n)
    ]


def stored_ids(store: FeedbackStore) -> list[str]:
    return [s.event.event_id for s in store.events("sinks")]


def test_pump_delivers_to_the_store_and_a_retry_stores_nothing_twice(redis_proc) -> None:
    store = FeedbackStore.from_url(redis_proc.url)
    pump = EventPump(lambda: FeedbackStore.from_url(redis_proc.url))
    pump.put(events(3))
    pump.put(events(3))  # the client sent them again
    pump.put([AcceptedEvent(event_id="c0.0.accepted", completion_id="c0", project="sinks")])
    assert pump.flush(10)
    pump.close()
    assert stored_ids(store) == ["c0.0.shown", "c1.0.shown", "c2.0.shown", "c0.0.accepted"]
    assert (pump.sent, pump.dropped) == (7, 0)
    store.close()


def test_unreachable_server_spools_and_the_next_delivery_replays(redis_proc, tmp_path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendError, match="/feedback"):
        HttpSink(dead, token=None).record(events(1))

    spool = Spool(tmp_path / "lsp-spool.jsonl")
    offline = EventPump(lambda: HttpSink(dead, token=None), spool, retry_delays_s=(0.0,))
    offline.put(events(2))
    offline.close()
    assert (offline.sent, offline.spooled, spool.pending()) == (0, 2, 2)

    store = FeedbackStore.from_url(redis_proc.url)
    online = EventPump(lambda: FeedbackStore.from_url(redis_proc.url), spool)
    online.put(events(1, start=5))
    online.close()
    assert sorted(stored_ids(store)) == ["c0.0.shown", "c1.0.shown", "c5.0.shown"]
    assert spool.pending() == 0
    store.close()


def test_without_a_spool_a_batch_that_never_gets_through_is_dropped_and_counted() -> None:
    pump = EventPump(lambda: HttpSink(f"http://127.0.0.1:{free_port()}", None), retry_delays_s=(0.0, 0.0))
    pump.put(events(4))
    pump.close()
    assert (pump.sent, pump.dropped) == (0, 4)


def test_a_full_queue_drops_the_overflow() -> None:
    pump = EventPump(
        lambda: HttpSink(f"http://127.0.0.1:{free_port()}", None), max_queued=2, retry_delays_s=()
    )
    pump.put(events(5))
    pump.close()
    assert pump.dropped == 5  # 3 refused at once, 2 undeliverable
